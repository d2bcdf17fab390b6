//! The reconciler's side of the shim gate: installing the gate and its per-class state, and
//! answering the gates that wait on the daemon's socket.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tracing::info;

use super::{Plan, Reconciler, lock};
use crate::artifacts::ClassState;
use crate::config::Provision;
use crate::gate::{self, EnsureRequest, Ensurer, GateState, Refusal};
use crate::policy::{PodInfo, Trigger};
use crate::reconcile::status::ArtifactState;

impl Reconciler {
    /// Installs the gate (the binary `locate` finds as `<gate.dir>/shim-gate`, a link per
    /// `onDemand` class) and writes each gated class's state file. `locate` is asked only when a
    /// class is gated: a node with no `onDemand` class needs no gate binary. Classes gated before
    /// but no longer served keep their link (containerd may still run their sandboxes' `delete`
    /// through it) and are marked not ready, so a start asks the daemon, which refuses it.
    pub fn prepare_gate(
        &self,
        locate: impl FnOnce() -> Result<PathBuf, String>,
    ) -> Result<(), String> {
        let gated: Vec<(String, PathBuf)> = lock(&self.plans)
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) if served.class.provision == Provision::OnDemand => served
                    .real_shim
                    .clone()
                    .map(|real| (served.class.name.clone(), real)),
                _ => None,
            })
            .collect();
        let gate_dir = &self.config.gate.dir;
        if !gated.is_empty() {
            let names: Vec<&str> = gated.iter().map(|(name, _)| name.as_str()).collect();
            let binary = locate()?;
            gate::links::install(gate_dir, &binary, &names).map_err(|e| e.to_string())?;
        }
        for (name, real_shim) in &gated {
            let ready = self.board.class(name).map(|s| s.state) == Some(ArtifactState::Ready);
            let installed = self.store.installed(name);
            self.write_gate_state(name, real_shim.clone(), ready, installed.as_ref())?;
        }
        let state_dir = gate_dir.join(gate::state::STATE_DIR);
        for entry in std::fs::read_dir(&state_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name();
            let Some(class) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if gated.iter().any(|(name, _)| name == class) {
                continue;
            }
            if let Ok(mut state) = GateState::read(gate_dir, class)
                && state.ready
            {
                state.ready = false;
                state.digest = None;
                state.write(gate_dir).map_err(|e| e.to_string())?;
                info!(
                    runtime_class = class,
                    "gate of a class no longer served now refuses starts"
                );
            }
        }
        Ok(())
    }

    /// `installed`: the class's install record, whose files a ready class's starts check.
    pub(super) fn write_gate_state(
        &self,
        class: &str,
        real_shim: PathBuf,
        ready: bool,
        installed: Option<&ClassState>,
    ) -> Result<(), String> {
        let digest = self.board.class(class).and_then(|s| s.digest);
        let files = match installed {
            Some(record) if ready => record
                .files
                .iter()
                .map(|(rel, file)| (record.path.join(rel), file.size))
                .collect(),
            _ => BTreeMap::new(),
        };
        GateState {
            class: class.to_owned(),
            real_shim,
            ready,
            digest: if ready { digest } else { None },
            daemon_socket: self.config.gate.socket.clone(),
            timeout_ms: u64::try_from(self.config.gate.timeout.get().as_millis())
                .unwrap_or(u64::MAX),
            files,
        }
        .write(&self.config.gate.dir)
        .map_err(|e| e.to_string())
    }
}

/// The gate socket's side: each waiting gate is an ensure with the pod's identity.
pub struct GateEnsurer(pub Arc<Reconciler>);

impl Ensurer for GateEnsurer {
    fn ensure(&self, request: EnsureRequest) -> BoxFuture<'static, Result<(), Refusal>> {
        let reconciler = Arc::clone(&self.0);
        Box::pin(async move {
            // An unknown identity is an empty one: a namespace rule then denies, never admits.
            let pod = PodInfo {
                namespace: request.pod_namespace.unwrap_or_default(),
                name: request.pod_name.unwrap_or_default(),
                annotations: BTreeMap::new(),
            };
            let started = Instant::now();
            let result = reconciler
                .ensure(&request.class, Trigger::Gate, Some(pod))
                .await;
            reconciler
                .metrics
                .gate_answered(&request.class, result.is_ok(), started.elapsed());
            result.map(|_| ()).map_err(Refusal::from)
        })
    }
}
