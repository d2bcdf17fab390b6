//! One policy, compiled and linked once, instantiated afresh for every call in the store of the
//! decision. Every way a call can go wrong comes back as a [`PolicyFailure`] naming the policy.

use std::path::{Path, PathBuf};

use wasmtime::component::{ComponentExportIndex, ComponentNamedList, Lift, Lower, TypedFunc};

use crate::config::FailurePolicy;

use super::bindings::{
    Admission, Node, Pod, PolicyPre, RuntimeDecision, RuntimeSettings, Source, SourceDecision, wit,
};
use super::cache::hex_sha256;
use super::engine::PolicyEngine;
use super::error::{PolicyError, PolicyFailure, bounded};
use super::limits::StoreState;
use super::store::{DecisionStore, MakeAheadError, PolicyId};

/// A policy ready to run.
pub struct LoadedPolicy {
    name: String,
    file: PathBuf,
    /// `sha256:<hex>` of the component file.
    digest: String,
    /// The operator's settings as JSON text, handed to every call.
    settings: String,
    failure_policy: FailurePolicy,
    engine: PolicyEngine,
    pre: PolicyPre<StoreState>,
    exports: Exports,
    /// Which of a decision store's instances made ahead is this policy's.
    id: PolicyId,
}

/// The world's exports, found once at load. The generated `PolicyPre::instantiate` looks up
/// and type-checks all four on every instantiation, a tenth of a decision's cost; a call needs
/// one, and its type was checked when `PolicyPre::new` accepted the component.
#[derive(Debug)]
struct Exports {
    validate_settings: ComponentExportIndex,
    select_source: ComponentExportIndex,
    mutate_runtime: ComponentExportIndex,
    admit: ComponentExportIndex,
}

impl Exports {
    fn find(pre: &PolicyPre<StoreState>) -> Result<Self, String> {
        let component = pre.instance_pre().component();
        let find = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| format!("no export named {name}"))
        };
        Ok(Self {
            validate_settings: find("validate-settings")?,
            select_source: find("select-source")?,
            mutate_runtime: find("mutate-runtime")?,
            admit: find("admit")?,
        })
    }
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("digest", &self.digest)
            .field("failure_policy", &self.failure_policy)
            .finish_non_exhaustive()
    }
}

impl LoadedPolicy {
    /// Reads, compiles (through the cache) and links `file`, then has the policy validate its
    /// settings (`None`: `{}`).
    pub fn load(
        engine: &PolicyEngine,
        name: &str,
        file: &Path,
        settings: Option<&serde_json::Value>,
        failure_policy: FailurePolicy,
    ) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(file).map_err(|source| PolicyError::Read {
            policy: name.to_owned(),
            file: file.to_owned(),
            source,
        })?;
        Self::from_bytes(engine, name, file, &bytes, settings, failure_policy)
    }

    /// [`load`](Self::load) from bytes already read; `file` is for messages.
    pub fn from_bytes(
        engine: &PolicyEngine,
        name: &str,
        file: &Path,
        bytes: &[u8],
        settings: Option<&serde_json::Value>,
        failure_policy: FailurePolicy,
    ) -> Result<Self, PolicyError> {
        // Hashed once: the cache key and the digest we report.
        let sha256_hex = hex_sha256(bytes);
        let component =
            engine
                .compile(bytes, &sha256_hex)
                .map_err(|reason| PolicyError::Compile {
                    policy: name.to_owned(),
                    file: file.to_owned(),
                    reason,
                })?;
        let pre = engine
            .instantiate_pre(&component)
            .map_err(|reason| PolicyError::WrongWorld {
                policy: name.to_owned(),
                file: file.to_owned(),
                reason,
            })?;
        let exports = Exports::find(&pre).map_err(|reason| PolicyError::WrongWorld {
            policy: name.to_owned(),
            file: file.to_owned(),
            reason,
        })?;
        let policy = Self {
            exports,
            name: name.to_owned(),
            file: file.to_owned(),
            digest: format!("sha256:{sha256_hex}"),
            settings: settings.map_or_else(|| "{}".to_owned(), serde_json::Value::to_string),
            failure_policy,
            engine: engine.clone(),
            pre,
            id: PolicyId::next(),
        };
        let settings_error = |reason| PolicyError::Settings {
            policy: name.to_owned(),
            reason,
        };
        let validated = policy.call::<(&str,), (Result<(), String>,)>(
            &mut DecisionStore::for_load(),
            &policy.exports.validate_settings,
            (&policy.settings,),
        );
        match validated {
            Ok((Ok(()),)) => Ok(policy),
            Ok((Err(reason),)) => Err(settings_error(bounded(reason))),
            Err(failure) => Err(settings_error(failure.to_string())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure_policy
    }

    pub(crate) fn select_source(
        &self,
        store: &mut DecisionStore,
        request: &wit::Request,
        node: &Node,
        current: &[Source],
    ) -> Result<SourceDecision, PolicyFailure> {
        self.call::<(&str, &wit::Request, &Node, &[Source]), (SourceDecision,)>(
            store,
            &self.exports.select_source,
            (&self.settings, request, node, current),
        )
        .map(|(answer,)| answer)
    }

    pub(crate) fn mutate_runtime(
        &self,
        store: &mut DecisionStore,
        request: &wit::Request,
        node: &Node,
        current: &RuntimeSettings,
    ) -> Result<RuntimeDecision, PolicyFailure> {
        self.call::<(&str, &wit::Request, &Node, &RuntimeSettings), (RuntimeDecision,)>(
            store,
            &self.exports.mutate_runtime,
            (&self.settings, request, node, current),
        )
        .map(|(answer,)| answer)
    }

    pub(crate) fn admit(
        &self,
        store: &mut DecisionStore,
        request: &wit::Request,
        node: &Node,
        pod: &Pod,
    ) -> Result<Admission, PolicyFailure> {
        self.call::<(&str, &wit::Request, &Node, &Pod), (Admission,)>(
            store,
            &self.exports.admit,
            (&self.settings, request, node, pod),
        )
        .map(|(answer,)| answer)
    }

    /// Makes this policy's instance in `decision` ahead of its call. `Ok(false)`: the store
    /// has no room for it (or belongs to another engine).
    pub(crate) fn make_ahead(&self, decision: &mut DecisionStore) -> Result<bool, MakeAheadError> {
        decision.make_ahead(&self.engine, (self.id, &self.name), |store| {
            self.pre.instance_pre().instantiate(store)
        })
    }

    /// Makes one call in a fresh instance: the one made ahead in the decision's store (which
    /// ran no call), or one made now. The instance and its memory are this call's alone; when
    /// the decision's store drops, the pool resets the slots, so nothing carries over to the
    /// next call or decision.
    fn call<P, R>(
        &self,
        decision: &mut DecisionStore,
        export: &ComponentExportIndex,
        params: P,
    ) -> Result<R, PolicyFailure>
    where
        P: ComponentNamedList + Lower,
        R: ComponentNamedList + Lift,
    {
        let at_load = decision.at_load();
        let (store, made) = decision.for_call(&self.engine, self.id);
        let instance = match made {
            Some(instance) => Ok(instance),
            None => self.pre.instance_pre().instantiate(&mut *store),
        };
        let result = instance.and_then(|instance| {
            let func = instance
                .get_func(&mut *store, export)
                .ok_or_else(|| wasmtime::format_err!("{MISSING_EXPORT}"))?;
            // SAFETY: `PolicyPre::new` checked at load that each export of the world has exactly
            // the type the caller names here (the bindings' own signatures).
            let typed = unsafe { TypedFunc::<P, R>::new_unchecked(func) };
            typed.call(&mut *store, params)
        });
        match result {
            Ok(answer) => Ok(answer),
            Err(error) => {
                let failure = self.engine.failure(&self.name, store, &error, at_load);
                decision.discard();
                Err(failure)
            }
        }
    }
}

/// An instance without an export its component had at load: a host and SDK out of step.
const MISSING_EXPORT: &str =
    "the instance lacks an export found at load: rebuild the policy against this release's SDK";
