//! A set of policies applied in file-name order, each seeing the previous result; the host's
//! guard checks every answer. Evaluation here is blocking: [`super::PolicyChain`] runs it off the
//! async workers.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{FailurePolicy, Policies};

use super::bindings::{
    Admission, Node, Pod, RuntimeDecision, RuntimeSettings, Source, SourceDecision, wit,
};
use super::engine::PolicyEngine;
use super::error::{FailureKind, PolicyError, PolicyFailure};
use super::guard::Guard;
use super::loaded::LoadedPolicy;
use super::store::{DecisionStore, MakeAheadError, Reserve};
use super::types::{
    AdmitOutcome, Decision, Denial, NodeFacts, PodInfo, Request, RuntimeOutcome, RuntimeOverrides,
    SourceOutcome,
};

/// The host's own name in denials for its checks of the configured source.
const HOST: &str = "host";

/// One step of a chain: a policy, or one that could not be loaded at start-up (which fails
/// every decision, so its `failurePolicy` decides, as for a trap).
#[derive(Debug)]
enum Step {
    Loaded(Box<LoadedPolicy>),
    Broken {
        name: String,
        file: PathBuf,
        failure_policy: FailurePolicy,
        error: String,
    },
}

impl Step {
    fn name(&self) -> &str {
        match self {
            Step::Loaded(policy) => policy.name(),
            Step::Broken { name, .. } => name,
        }
    }

    fn failure_policy(&self) -> FailurePolicy {
        match self {
            Step::Loaded(policy) => policy.failure_policy(),
            Step::Broken { failure_policy, .. } => *failure_policy,
        }
    }
}

/// A policy of a chain, for status and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    pub name: String,
    pub file: PathBuf,
    /// `sha256:<hex>` of the file; `None` when it could not be loaded.
    pub digest: Option<String>,
    pub failure_policy: FailurePolicy,
    /// Why it could not be loaded.
    pub error: Option<String>,
}

/// A loaded policy set.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<Step>,
    guard: Guard,
    reserve: Reserve,
}

/// A policy's name from its file: the stem without a leading `NN-` (`10-mirror.wasm` → `mirror`).
pub fn policy_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.split_once('-') {
        Some((digits, rest))
            if !digits.is_empty()
                && !rest.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest.to_owned()
        }
        _ => stem,
    }
}

/// The `*.wasm` files of `dir`, in file-name order.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let list_error = |source| PolicyError::ListDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Chain {
    /// A chain of already loaded policies, in the order given.
    pub fn new(policies: Vec<LoadedPolicy>, guard: Guard) -> Self {
        Self {
            steps: policies
                .into_iter()
                .map(|policy| Step::Loaded(Box::new(policy)))
                .collect(),
            guard,
            reserve: Reserve::default(),
        }
    }

    /// Loads every `*.wasm` of `policies.dir`. All must load (compile, link, accept their
    /// settings); otherwise every problem is returned together and nothing is loaded.
    pub fn load(
        engine: &PolicyEngine,
        policies: &Policies,
        guard: Guard,
    ) -> Result<Self, PolicyError> {
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for file in policy_files(&policies.dir)? {
            match load_one(engine, policies, &file) {
                Ok(policy) => loaded.push(policy),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(Self::new(loaded, guard)),
            1 => Err(errors.remove(0)),
            _ => Err(PolicyError::Several(errors)),
        }
    }

    /// Like [`load`](Self::load), but a policy that cannot be loaded stays in the chain as a
    /// failing step (its `failurePolicy` decides): at start-up there is no previous set to keep,
    /// and leaving a broken policy out would silently widen what is allowed. The errors are
    /// returned beside the chain for reporting.
    pub fn load_lenient(
        engine: &PolicyEngine,
        policies: &Policies,
        guard: Guard,
    ) -> Result<(Self, Vec<PolicyError>), PolicyError> {
        let mut steps = Vec::new();
        let mut errors = Vec::new();
        for file in policy_files(&policies.dir)? {
            match load_one(engine, policies, &file) {
                Ok(policy) => steps.push(Step::Loaded(Box::new(policy))),
                Err(e) => {
                    let name = policy_name(&file);
                    steps.push(Step::Broken {
                        failure_policy: policies.failure_policy_of(&name),
                        name,
                        file,
                        error: e.to_string(),
                    });
                    errors.push(e);
                }
            }
        }
        Ok((
            Self {
                steps,
                guard,
                reserve: Reserve::default(),
            },
            errors,
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn policies(&self) -> Vec<PolicySummary> {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Loaded(p) => PolicySummary {
                    name: p.name().to_owned(),
                    file: p.file().to_owned(),
                    digest: Some(p.digest().to_owned()),
                    failure_policy: p.failure_policy(),
                    error: None,
                },
                Step::Broken {
                    name,
                    file,
                    failure_policy,
                    error,
                } => PolicySummary {
                    name: name.clone(),
                    file: file.clone(),
                    digest: None,
                    failure_policy: *failure_policy,
                    error: Some(error.clone()),
                },
            })
            .collect()
    }

    /// Where the class's artifacts come from. The configured source passes the guard too, so
    /// an empty chain still never pulls from outside `registries.allowed`. One-off use (`policy
    /// eval`): it takes a store made ahead if one waits but readies none; the daemon uses
    /// [`select_source_in`](Self::select_source_in) and [`tidy`](Self::tidy).
    pub fn select_source(&self, request: &Request, node: &NodeFacts) -> Decision<SourceOutcome> {
        self.select_source_in(&mut self.decision_store(), request, node)
    }

    /// [`select_source`](Self::select_source) in a store from
    /// [`decision_store`](Self::decision_store), to be handed to [`tidy`](Self::tidy) after.
    pub fn select_source_in(
        &self,
        store: &mut DecisionStore,
        request: &Request,
        node: &NodeFacts,
    ) -> Decision<SourceOutcome> {
        let wit_request = wit::Request::from(request);
        let wit_node = Node::from(node);
        let mut current = vec![Source::from(&request.configured)];
        let mut ignored = Vec::new();
        for step in &self.steps {
            let answer = self.run(step, |p| {
                p.select_source(store, &wit_request, &wit_node, &current)
            });
            let answer = answer.and_then(|decision| self.check_source(step.name(), decision));
            match answer {
                Ok(Checked::Pull(sources)) => current = sources,
                Ok(Checked::Stop(outcome)) => return Decision { outcome, ignored },
                Err(failure) => match self.on_failure(step, failure, &mut ignored) {
                    Some(denial) => return deny(SourceOutcome::Deny(denial), ignored),
                    None => continue,
                },
            }
        }
        let outcome = match self.guard.sources(current) {
            Ok(sources) => SourceOutcome::Pull { sources },
            Err(reason) => SourceOutcome::Deny(Denial::said(HOST, reason)),
        };
        Decision { outcome, ignored }
    }

    /// The class's runtime settings on this node, starting from the operator's. One-off use,
    /// as [`select_source`](Self::select_source).
    pub fn mutate_runtime(
        &self,
        request: &Request,
        node: &NodeFacts,
        configured: &RuntimeOverrides,
    ) -> Decision<RuntimeOutcome> {
        self.mutate_runtime_in(&mut self.decision_store(), request, node, configured)
    }

    /// [`mutate_runtime`](Self::mutate_runtime) in a store from
    /// [`decision_store`](Self::decision_store), to be handed to [`tidy`](Self::tidy) after.
    pub fn mutate_runtime_in(
        &self,
        store: &mut DecisionStore,
        request: &Request,
        node: &NodeFacts,
        configured: &RuntimeOverrides,
    ) -> Decision<RuntimeOutcome> {
        let wit_request = wit::Request::from(request);
        let wit_node = Node::from(node);
        let mut current = configured.clone();
        let mut ignored = Vec::new();
        for step in &self.steps {
            let wit_current = RuntimeSettings::from(&current);
            let answer = self.run(step, |p| {
                p.mutate_runtime(store, &wit_request, &wit_node, &wit_current)
            });
            let answer = answer.and_then(|decision| match decision {
                RuntimeDecision::Settings(settings) => self
                    .guard
                    .runtime(settings)
                    .map(Ok)
                    .map_err(|e| invalid(step.name(), e)),
                RuntimeDecision::Deny(reason) => self
                    .guard
                    .reason(reason)
                    .map(Err)
                    .map_err(|e| invalid(step.name(), e)),
            });
            match answer {
                Ok(Ok(settings)) => current = settings,
                Ok(Err(reason)) => {
                    return deny(
                        RuntimeOutcome::Deny(Denial::said(step.name(), reason)),
                        ignored,
                    );
                }
                Err(failure) => {
                    if let Some(denial) = self.on_failure(step, failure, &mut ignored) {
                        return deny(RuntimeOutcome::Deny(denial), ignored);
                    }
                }
            }
        }
        Decision {
            outcome: RuntimeOutcome::Settings { settings: current },
            ignored,
        }
    }

    /// Whether `pod` may trigger or start the class: every policy must allow. One-off use, as
    /// [`select_source`](Self::select_source).
    pub fn admit(
        &self,
        request: &Request,
        node: &NodeFacts,
        pod: &PodInfo,
    ) -> Decision<AdmitOutcome> {
        self.admit_in(&mut self.decision_store(), request, node, pod)
    }

    /// [`admit`](Self::admit) in a store from [`decision_store`](Self::decision_store), to be
    /// handed to [`tidy`](Self::tidy) after.
    pub fn admit_in(
        &self,
        store: &mut DecisionStore,
        request: &Request,
        node: &NodeFacts,
        pod: &PodInfo,
    ) -> Decision<AdmitOutcome> {
        let wit_request = wit::Request::from(request);
        let wit_node = Node::from(node);
        let wit_pod = Pod::from(pod);
        let mut ignored = Vec::new();
        for step in &self.steps {
            let answer = self.run(step, |p| p.admit(store, &wit_request, &wit_node, &wit_pod));
            let answer = answer.and_then(|admission| match admission {
                Admission::Allow => Ok(None),
                Admission::Deny(reason) => self
                    .guard
                    .reason(reason)
                    .map(Some)
                    .map_err(|e| invalid(step.name(), e)),
            });
            match answer {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    return deny(
                        AdmitOutcome::Deny(Denial::said(step.name(), reason)),
                        ignored,
                    );
                }
                Err(failure) => {
                    if let Some(denial) = self.on_failure(step, failure, &mut ignored) {
                        return deny(AdmitOutcome::Deny(denial), ignored);
                    }
                }
            }
        }
        Decision {
            outcome: AdmitOutcome::Allow,
            ignored,
        }
    }

    /// The store for one decision: the one made ahead by the last [`tidy`](Self::tidy), or an
    /// empty one whose policies are instantiated as the decision goes.
    pub fn decision_store(&self) -> DecisionStore {
        self.reserve.take()
    }

    /// Readies the next decision once one was answered: drops the decision's `spent` store,
    /// which resets its pool slots, and makes a store with a fresh instance of each of the
    /// chain's first loaded policies (as many as a store holds), so neither is on the next
    /// decision's path. Blocking; the daemon calls it on the decision's thread after sending the
    /// answer. Without it, decisions are as right, only slower: each makes its own instances
    /// and drops its store before it returns. The engine's pool is sized for one chain making
    /// stores ahead at a time, as the daemon has.
    pub fn tidy(&self, spent: DecisionStore) {
        self.reserve.tidy(spent, |store| {
            let loaded = self.steps.iter().filter_map(|step| match step {
                Step::Loaded(policy) => Some(policy),
                Step::Broken { .. } => None,
            });
            for policy in loaded {
                // Full: the rest are instantiated as the decision goes.
                if !policy.make_ahead(store)? {
                    break;
                }
            }
            Ok::<(), MakeAheadError>(())
        });
    }

    /// Whether the next decision finds its store made ahead by [`tidy`](Self::tidy): for the
    /// policy tests.
    #[doc(hidden)]
    pub fn has_spare(&self) -> bool {
        self.reserve.has_spare()
    }

    /// This chain was replaced by another: its spare store is dropped now rather than with the
    /// last decision that still holds the chain, and it makes no more.
    pub(crate) fn retire(&self) {
        self.reserve.retire();
    }

    fn run<R>(
        &self,
        step: &Step,
        call: impl FnOnce(&LoadedPolicy) -> Result<R, PolicyFailure>,
    ) -> Result<R, PolicyFailure> {
        match step {
            Step::Loaded(policy) => call(policy),
            Step::Broken { name, error, .. } => Err(PolicyFailure {
                policy: name.clone(),
                kind: FailureKind::Unloadable,
                message: error.clone(),
            }),
        }
    }

    fn check_source(
        &self,
        policy: &str,
        decision: SourceDecision,
    ) -> Result<Checked, PolicyFailure> {
        let checked = match decision {
            // Checked now, so a bad answer is this policy's failure, not the next one's input.
            SourceDecision::Pull(sources) => {
                let kept = sources.clone();
                self.guard.sources(sources).map(|_| Checked::Pull(kept))
            }
            SourceDecision::Skip(reason) => self.guard.reason(reason).map(|reason| {
                Checked::Stop(SourceOutcome::Skip {
                    policy: policy.to_owned(),
                    reason,
                })
            }),
            SourceDecision::Deny(reason) => self
                .guard
                .reason(reason)
                .map(|reason| Checked::Stop(SourceOutcome::Deny(Denial::said(policy, reason)))),
        };
        checked.map_err(|e| invalid(policy, e))
    }

    /// A failed step: `Some(denial)` under `deny`, `None` (recorded) under `ignore`.
    fn on_failure(
        &self,
        step: &Step,
        failure: PolicyFailure,
        ignored: &mut Vec<PolicyFailure>,
    ) -> Option<Denial> {
        match step.failure_policy() {
            FailurePolicy::Deny => Some(Denial::failed(failure)),
            FailurePolicy::Ignore => {
                tracing::warn!(policy = %failure.policy, error = %failure, "policy failed; ignored by its failurePolicy");
                ignored.push(failure);
                None
            }
        }
    }
}

enum Checked {
    Pull(Vec<Source>),
    Stop(SourceOutcome),
}

fn invalid(policy: &str, message: String) -> PolicyFailure {
    PolicyFailure {
        policy: policy.to_owned(),
        kind: FailureKind::InvalidResult,
        message,
    }
}

fn deny<T>(outcome: T, ignored: Vec<PolicyFailure>) -> Decision<T> {
    Decision { outcome, ignored }
}

fn load_one(
    engine: &PolicyEngine,
    policies: &Policies,
    file: &Path,
) -> Result<LoadedPolicy, PolicyError> {
    let name = policy_name(file);
    LoadedPolicy::load(
        engine,
        &name,
        file,
        policies.settings.get(&name),
        policies.failure_policy_of(&name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_the_order_prefix() {
        assert_eq!(policy_name(Path::new("/p/10-mirror.wasm")), "mirror");
        assert_eq!(policy_name(Path::new("20-pin-digests.wasm")), "pin-digests");
        assert_eq!(policy_name(Path::new("gpu-variant.wasm")), "gpu-variant");
        assert_eq!(policy_name(Path::new("10-.wasm")), "10-");
        assert_eq!(policy_name(Path::new("v2-x.wasm")), "v2-x");
    }
}
