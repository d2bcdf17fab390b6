//! The daemon's policy chain: the current [`Chain`] behind an atomic pointer, decisions run on
//! blocking threads behind a semaphore, and a watcher that reloads the directory when its files
//! change. A new set replaces the old only if all of it loads; otherwise the old keeps deciding
//! and the error is kept for status.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::Policies;

use super::chain::{Chain, PolicySummary, policy_files};
use super::engine::{MAX_CONCURRENT_CALLS, PolicyEngine};
use super::error::PolicyError;
use super::guard::Guard;
use super::store::DecisionStore;
use super::types::{
    AdmitOutcome, Decision, Denial, NodeFacts, PodInfo, Request, RuntimeOutcome, RuntimeOverrides,
    SourceOutcome,
};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are what the current chain was loaded from.
    Unchanged,
    /// A new set is in use.
    Swapped(Vec<PolicySummary>),
    /// The new set did not load; the previous one keeps deciding.
    Kept { error: String },
}

/// Name, size, mtime and inode of each policy file: cheap to read every second, and any
/// replacement (write in place or rename over) changes it.
type Fingerprint = Vec<(PathBuf, u64, i64, i64, u64)>;

/// The policy chain the daemon decides with.
pub struct PolicyChain {
    engine: PolicyEngine,
    policies: Policies,
    guard: Guard,
    current: ArcSwap<Chain>,
    fingerprint: Mutex<Fingerprint>,
    last_error: Mutex<Option<String>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for PolicyChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyChain")
            .field("dir", &self.policies.dir)
            .field("policies", &self.current.load().policies())
            .finish_non_exhaustive()
    }
}

/// How often [`PolicyChain::watch`] looks at the directory in the daemon.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

impl PolicyChain {
    /// Loads the directory at start-up. Policies that fail to load stay in the chain as failing
    /// steps (denying, or skipped under `failurePolicy: ignore`) and are returned for the log; a
    /// missing directory is an empty chain (no policies) with the error reported.
    pub fn start(
        engine: PolicyEngine,
        policies: Policies,
        guard: Guard,
    ) -> (Arc<Self>, Vec<PolicyError>) {
        let fingerprint = fingerprint(&policies.dir);
        let (chain, errors) = match Chain::load_lenient(&engine, &policies, guard.clone()) {
            Ok(loaded) => loaded,
            Err(e) => (Chain::new(Vec::new(), guard.clone()), vec![e]),
        };
        let last_error = (!errors.is_empty()).then(|| join(&errors));
        let this = Arc::new(Self {
            engine,
            policies,
            guard,
            current: ArcSwap::from_pointee(chain),
            fingerprint: Mutex::new(fingerprint),
            last_error: Mutex::new(last_error),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS as usize)),
        });
        (this, errors)
    }

    /// The chain deciding now.
    pub fn current(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// The error of the last load that failed, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub async fn select_source(
        &self,
        request: Request,
        node: Arc<NodeFacts>,
    ) -> Decision<SourceOutcome> {
        self.decide(
            move |chain, store| chain.select_source_in(store, &request, &node),
            SourceOutcome::Deny,
        )
        .await
    }

    pub async fn mutate_runtime(
        &self,
        request: Request,
        node: Arc<NodeFacts>,
        configured: RuntimeOverrides,
    ) -> Decision<RuntimeOutcome> {
        self.decide(
            move |chain, store| chain.mutate_runtime_in(store, &request, &node, &configured),
            RuntimeOutcome::Deny,
        )
        .await
    }

    pub async fn admit(
        &self,
        request: Request,
        node: Arc<NodeFacts>,
        pod: PodInfo,
    ) -> Decision<AdmitOutcome> {
        self.decide(
            move |chain, store| chain.admit_in(store, &request, &node, &pod),
            AdmitOutcome::Deny,
        )
        .await
    }

    /// Runs `f` on a blocking thread once a permit is free: Wasm never runs on an async worker,
    /// and at most [`MAX_CONCURRENT_CALLS`] decisions run at once.
    async fn decide<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Chain, &mut DecisionStore) -> Decision<T> + Send + 'static,
        deny: impl FnOnce(Denial) -> T,
    ) -> Decision<T> {
        let failed = |why: String| Decision {
            outcome: deny(Denial::said("host", why)),
            ignored: Vec::new(),
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return failed("the policy host is shutting down".into());
        };
        // The chain as it is now: a reload swapping in another one does not touch this decision.
        let chain = self.current();
        let (answer, answered) = tokio::sync::oneshot::channel();
        // The answer goes out first; the same thread then drops the decision's store and makes
        // the next one's, still under the permit, so the pool's bound holds (`store.rs`).
        let evaluation = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut store = chain.decision_store();
            // A caller that gave up no longer wants the answer; the store is readied anyway.
            let _ = answer.send(f(&chain, &mut store));
            // Caught so it is logged: the answer is out, nobody awaits this task. The store
            // being made is dropped by the unwinding and the reserve stays usable.
            let tidied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                chain.tidy(store);
            }));
            if let Err(panic) = tidied {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "readying the next policy decision panicked; decisions go on");
            }
        });
        match answered.await {
            Ok(decision) => decision,
            Err(_) => {
                let why = match evaluation.await {
                    Err(e) => e.to_string(),
                    Ok(()) => "it ended without an answer".to_owned(),
                };
                failed(format!("policy evaluation did not finish: {why}"))
            }
        }
    }

    /// Loads the directory again if its files changed. Blocking (it compiles): call it from
    /// a blocking thread, as [`watch`](Self::watch) does.
    pub fn reload(&self) -> ReloadOutcome {
        // Held for the whole reload, so reloads run one at a time: each retires the chain it
        // replaces, and two at once could both retire the same one and leave the other's spare
        // store in the pool.
        let mut known = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = fingerprint(&self.policies.dir);
        if *known == seen {
            return ReloadOutcome::Unchanged;
        }
        *known = seen;
        match Chain::load(&self.engine, &self.policies, self.guard.clone()) {
            Ok(chain) => {
                let summary = chain.policies();
                let current = self.current.load();
                if summary == current.policies() {
                    return ReloadOutcome::Unchanged;
                }
                // Retired before the swap: the old chain's spare is gone before the new one
                // can make its own, so the pool never holds both.
                current.retire();
                self.current.store(Arc::new(chain));
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                tracing::info!(policies = ?summary.iter().map(|p| &p.name).collect::<Vec<_>>(), "policy set reloaded");
                ReloadOutcome::Swapped(summary)
            }
            Err(e) => {
                let error = e.to_string();
                tracing::error!(error = %error, "new policy set refused; the previous one stays in use");
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
                ReloadOutcome::Kept { error }
            }
        }
    }

    /// Polls the directory every `interval` and reloads on change, until the returned task is
    /// aborted or the chain is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if tokio::task::spawn_blocking(move || this.reload())
                    .await
                    .is_err()
                {
                    tracing::error!("policy reload panicked; watching on");
                }
            }
        })
    }
}

fn fingerprint(dir: &std::path::Path) -> Fingerprint {
    let Ok(files) = policy_files(dir) else {
        return Vec::new();
    };
    files
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            Some((
                path,
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino(),
            ))
        })
        .collect()
}

fn join(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
