//! Making one class ready: `admit` for the asking pod, `select-source`, the store's pull over
//! each source in turn, and the record of the outcome (status board, metrics, gate state).

use std::sync::Arc;

use tracing::{info, warn};

use super::{Plan, Ready, Reconciler, freshness_for, lock};
use crate::artifacts::{ClassState, Freshness};
use crate::config::{Provision, RuntimeClass};
use crate::policy::{AdmitOutcome, PodInfo, Request, SourceOutcome, Trigger};
use crate::reconcile::error::{EnsureError, SourceFailure};
use crate::reconcile::metrics::FailureLabels;
use crate::reconcile::status::ArtifactState;

impl Reconciler {
    /// Makes `class` ready: `admit` for the asking pod (if any), then `select-source`, then the
    /// artifacts. Concurrent calls for one class share one ensure.
    pub async fn ensure(
        self: &Arc<Self>,
        class: &str,
        trigger: Trigger,
        pod: Option<PodInfo>,
    ) -> Result<Ready, EnsureError> {
        let result = self.ensure_fresh(class, trigger, pod, None).await;
        if let Err(e) = &result {
            self.metrics
                .ensure_failures
                .get_or_create(&FailureLabels {
                    class: class.to_owned(),
                    kind: e.kind(),
                })
                .inc();
        }
        result
    }

    /// [`ensure`](Self::ensure) with the freshness chosen by the caller instead of by the
    /// class's `updatePolicy` and the trigger.
    pub(super) async fn ensure_fresh(
        self: &Arc<Self>,
        class: &str,
        trigger: Trigger,
        pod: Option<PodInfo>,
        freshness: Option<Freshness>,
    ) -> Result<Ready, EnsureError> {
        let planned = match lock(&self.plans).get(class) {
            None => {
                return Err(EnsureError::NotConfigured {
                    class: class.to_owned(),
                });
            }
            Some(Plan::NotServed { reason }) => {
                return Err(EnsureError::NotServed {
                    class: class.to_owned(),
                    reason: reason.clone(),
                });
            }
            Some(Plan::Serve(served)) => served.class.clone(),
        };
        if let Some(pod) = pod {
            let who = format!("{}/{}", pod.namespace, pod.name);
            let admit = self
                .policies
                .admit(
                    Request::for_class(&planned, trigger),
                    self.node.clone(),
                    pod,
                )
                .await;
            self.log_ignored(class, &admit.ignored);
            match admit.outcome {
                AdmitOutcome::Allow => self.metrics.decision(class, "admit", "allow"),
                AdmitOutcome::Deny(denial) => {
                    self.metrics.decision(class, "admit", "deny");
                    return Err(EnsureError::PodDenied { pod: who, denial });
                }
            }
        }
        let name = planned.name.clone();
        let shared = self.inflight.run(
            class,
            || {
                let freshness = freshness.unwrap_or_else(|| freshness_for(&planned, trigger));
                self.start(planned, trigger, freshness)
            },
            move |e| {
                Err(EnsureError::Interrupted {
                    class: name,
                    reason: e.to_string(),
                })
            },
        );
        shared.await
    }

    fn start(
        self: &Arc<Self>,
        class: RuntimeClass,
        trigger: Trigger,
        freshness: Freshness,
    ) -> impl Future<Output = Result<Ready, EnsureError>> + Send + 'static {
        let this = Arc::clone(self);
        async move {
            this.board.update_class(&class.name, |s| {
                if s.state != ArtifactState::Ready {
                    s.state = ArtifactState::Pulling;
                }
            });
            let result = this.pull(&class, trigger, freshness).await;
            // Reads the install record and stats the version's files: off the async workers.
            let (store, checked) = (this.store.clone(), class.clone());
            let on_disk = tokio::task::spawn_blocking(move || {
                (store.installed(&checked.name), store.verified(&checked))
            })
            .await
            .unwrap_or((None, None));
            this.record(&class, &result, on_disk);
            result
        }
    }

    async fn pull(
        &self,
        class: &RuntimeClass,
        trigger: Trigger,
        freshness: Freshness,
    ) -> Result<Ready, EnsureError> {
        let decision = self
            .policies
            .select_source(Request::for_class(class, trigger), self.node.clone())
            .await;
        self.log_ignored(&class.name, &decision.ignored);
        let sources = match decision.outcome {
            SourceOutcome::Pull { sources } => {
                self.metrics.decision(&class.name, "select-source", "allow");
                sources
            }
            SourceOutcome::Skip { policy, reason } => {
                self.metrics.decision(&class.name, "select-source", "skip");
                return Err(EnsureError::SkippedByPolicy { policy, reason });
            }
            SourceOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "select-source", "deny");
                return Err(EnsureError::DeniedByPolicy(denial));
            }
        };
        let mut sources = sources;
        if freshness == Freshness::Installed
            && let Some(installed) = self.store.installed(&class.name)
        {
            // The source the installed version came from first: it needs no network.
            sources.sort_by_key(|s| s.reference.as_str() != installed.reference);
        }
        let mut failures = Vec::new();
        for source in sources {
            let mut attempt = class.clone();
            attempt.artifacts.url = source.reference.clone();
            if source.digest.is_some() {
                attempt.artifacts.digest = source.digest.clone();
            }
            match self.store.ensure_with(&attempt, freshness).await {
                Ok(installed) => {
                    if installed.pulled {
                        self.metrics
                            .downloaded(&class.name, installed.bytes, installed.duration);
                    } else {
                        // Only `Latest` asks the registry; `Installed` trusts intact files.
                        self.metrics
                            .up_to_date(&class.name, freshness == Freshness::Latest);
                    }
                    return Ok(Ready {
                        digest: installed.digest,
                        source: source.reference.as_str().to_owned(),
                        pulled: installed.pulled,
                        held_back: installed.held_back,
                        version_skew: installed.version_skew,
                    });
                }
                Err(e) => {
                    self.metrics.source_failed(&class.name);
                    failures.push(SourceFailure::of(&e));
                }
            }
        }
        Err(EnsureError::from_sources(failures))
    }

    /// `on_disk`: the class's install record, and the same only when its files are intact.
    fn record(
        &self,
        class: &RuntimeClass,
        result: &Result<Ready, EnsureError>,
        on_disk: (Option<ClassState>, Option<ClassState>),
    ) {
        let (recorded, intact) = on_disk;
        match result {
            Ok(ready) => {
                info!(runtime_class = %class.name, digest = %ready.digest, source = %ready.source, pulled = ready.pulled, "runtime class ready");
                let previous = recorded
                    .as_ref()
                    .map(|state| state.previous.clone())
                    .unwrap_or_default();
                let recorded_now = recorded;
                self.board.update_class(&class.name, |s| {
                    s.state = ArtifactState::Ready;
                    s.digest = Some(ready.digest.clone());
                    s.source = Some(ready.source.clone());
                    s.previous = previous;
                    s.held_back = ready.held_back.clone();
                    s.version_skew = ready.version_skew.clone();
                    s.last_error = None;
                    s.last_error_kind = None;
                    s.failures = 0;
                });
                self.metrics.set_ready(&class.name, true);
                let real_shim = match lock(&self.plans).get(&class.name) {
                    Some(Plan::Serve(served)) => served.real_shim.clone(),
                    _ => None,
                };
                if class.provision == Provision::OnDemand
                    && let Some(real) = real_shim
                    && let Err(e) =
                        self.write_gate_state(&class.name, real, true, recorded_now.as_ref())
                {
                    warn!(runtime_class = %class.name, error = %e, "gate state not written: starts keep asking the daemon");
                }
            }
            Err(e) => {
                // A failed update check leaves the installed version serving.
                let installed = intact;
                match &installed {
                    Some(state) => {
                        warn!(runtime_class = %class.name, kind = e.kind(), error = %e, digest = %state.manifest_digest, "update failed; the installed version stays current")
                    }
                    None => {
                        warn!(runtime_class = %class.name, kind = e.kind(), error = %e, "runtime class not ready")
                    }
                }
                self.board.update_class(&class.name, |s| {
                    match &installed {
                        Some(state) => {
                            s.state = ArtifactState::Ready;
                            s.digest = Some(state.manifest_digest.clone());
                        }
                        None if s.state != ArtifactState::Ready => s.state = ArtifactState::Failed,
                        None => {}
                    }
                    s.last_error = Some(e.to_string());
                    s.last_error_kind = Some(e.kind().to_owned());
                    s.failures += 1;
                });
            }
        }
    }
}
