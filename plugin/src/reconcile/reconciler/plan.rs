//! The plan: what the policies decide for each configured class on this node, and the
//! runtime stanzas of the classes it serves.

use std::collections::BTreeMap;

use tracing::warn;

use super::{Plan, Reconciler, Served, lock};
use crate::config::{Provision, RuntimeClass};
use crate::containerd::RuntimeStanza;
use crate::gate::{self};
use crate::policy::{
    IgnoredFailure, Request, RuntimeOutcome, RuntimeOverrides, SourceOutcome, Trigger,
};
use crate::reconcile::status::{ArtifactState, ClassDecision};

impl Reconciler {
    /// Asks the policies about every class and returns the stanzas of the classes this node
    /// serves. Classes whose artifacts are installed and intact are marked ready (no network).
    pub async fn plan(&self) -> Vec<RuntimeStanza> {
        let mut plans = BTreeMap::new();
        for class in &self.config.runtime_classes {
            let plan = self.plan_class(class).await;
            match &plan {
                Plan::Serve(served) => {
                    let class = &served.class;
                    let verified = self.store.verified(class);
                    self.metrics.set_ready(&class.name, verified.is_some());
                    self.board.update_class(&class.name, |status| {
                        status.decision = ClassDecision::Serve;
                        status.reason = None;
                        match &verified {
                            Some(installed) => {
                                status.state = ArtifactState::Ready;
                                status.digest = Some(installed.manifest_digest.clone());
                                status.source = Some(installed.reference.clone());
                            }
                            None => status.state = ArtifactState::Absent,
                        }
                    });
                }
                Plan::NotServed { reason } => {
                    warn!(runtime_class = %class.name, %reason, "runtime class not served on this node");
                    self.metrics.set_ready(&class.name, false);
                }
            }
            plans.insert(class.name.clone(), plan);
        }
        let stanzas = plans
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) => Some(served.stanza.clone()),
                Plan::NotServed { .. } => None,
            })
            .collect();
        *lock(&self.plans) = plans;
        stanzas
    }

    async fn plan_class(&self, class: &RuntimeClass) -> Plan {
        // The host lacks what every kata VM needs: no stanza, so no pod of the class is sent
        // to a node where it would fail at boot.
        if let Some(problem) = self.board.host().problem() {
            return self.not_served(class, ClassDecision::Deny, problem);
        }
        let request = Request::for_class(class, Trigger::Startup);
        let source = self
            .policies
            .select_source(request.clone(), self.node.clone())
            .await;
        self.log_ignored(&class.name, &source.ignored);
        match source.outcome {
            SourceOutcome::Pull { sources } => {
                self.metrics.decision(&class.name, "select-source", "allow");
                let first = sources.first().map(|s| s.reference.as_str().to_owned());
                self.board.update_class(&class.name, |s| s.source = first);
            }
            SourceOutcome::Skip { policy, reason } => {
                self.metrics.decision(&class.name, "select-source", "skip");
                return self.not_served(
                    class,
                    ClassDecision::Skip,
                    format!("skipped by policy {policy}: {reason}"),
                );
            }
            SourceOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "select-source", "deny");
                return self.not_served(class, ClassDecision::Deny, denial.to_string());
            }
        }
        let runtime = self
            .policies
            .mutate_runtime(
                request,
                self.node.clone(),
                RuntimeOverrides::from(&class.runtime),
            )
            .await;
        self.log_ignored(&class.name, &runtime.ignored);
        let overrides = match runtime.outcome {
            RuntimeOutcome::Settings { settings } => {
                self.metrics
                    .decision(&class.name, "mutate-runtime", "allow");
                settings
            }
            RuntimeOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "mutate-runtime", "deny");
                return self.not_served(class, ClassDecision::Deny, denial.to_string());
            }
        };
        // Rendered into the installed version by the ensures to come (an empty list undoes an
        // earlier one).
        self.store
            .set_kata_settings(&class.name, overrides.kata_config.clone());

        let mut stanza = RuntimeStanza::new(&class.name, &class.runtime.runtime_type);
        stanza.pod_annotations = overrides.pod_annotations;
        stanza.container_annotations = overrides.container_annotations;
        stanza.privileged_without_host_devices = Some(overrides.privileged_without_host_devices);
        // The class's link, then the configuration kata reads: the artifact's own
        // (`runtime.configFile`, else the `kata-nri-manager.toml` every install links), or its
        // rendering with the policies' settings (a different file per settings list, so a
        // change of settings is a change of stanza, never a file changed under a sandbox).
        // Always set, and known before any pull: without it kata would boot the node's default
        // configuration, not the artifact's kernel and image.
        stanza.config_path = Some(
            crate::artifacts::kata_config_path(
                &self.config.artifacts_dir,
                class,
                &overrides.kata_config,
            )
            .display()
            .to_string(),
        );
        let real_shim = crate::containerd::class_shim(&self.config.artifacts_dir, class);
        match class.provision {
            Provision::Eager => {
                // The node's shim when it is named, the version's with fromArtifact; else
                // containerd finds it from runtime_type.
                stanza.runtime_path = match &class.runtime.from_artifact {
                    Some(_) => real_shim.as_ref(),
                    None => class.runtime.runtime_path.as_ref(),
                }
                .map(|p| p.display().to_string());
            }
            Provision::OnDemand => {
                if real_shim.is_none() {
                    return self.not_served(
                        class,
                        ClassDecision::Deny,
                        format!(
                            "no real shim for the gate to start: set runtimeClasses[].runtime.runtimePath in the node-local config, or put {} on PATH",
                            crate::containerd::shim_binary_name(&class.runtime.runtime_type)
                                .unwrap_or_else(|| "the shim".to_owned())
                        ),
                    );
                }
                stanza.runtime_path = Some(
                    gate::link_path(&self.config.gate.dir, &class.name)
                        .display()
                        .to_string(),
                );
            }
        }
        if let Err(e) = stanza.validate() {
            return self.not_served(class, ClassDecision::Deny, e.to_string());
        }
        Plan::Serve(Box::new(Served {
            class: class.clone(),
            stanza,
            real_shim,
        }))
    }

    fn not_served(&self, class: &RuntimeClass, decision: ClassDecision, reason: String) -> Plan {
        self.board.update_class(&class.name, |status| {
            status.decision = decision;
            status.state = ArtifactState::NotServed;
            status.reason = Some(reason.clone());
        });
        Plan::NotServed { reason }
    }

    pub(super) fn log_ignored(&self, class: &str, ignored: &[IgnoredFailure]) {
        for failure in ignored {
            warn!(runtime_class = class, policy = %failure.policy, error = %failure, "policy failed; skipped (failurePolicy: ignore)");
        }
    }
}
