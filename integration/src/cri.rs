//! A CRI client playing kubelet, over containerd's unix socket (`k8s-cri`, tonic).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub use api::{PodSandbox, PodSandboxState, PodSandboxStatus, RuntimeCondition};

/// A failed CRI call: which call, on what, and containerd's gRPC status.
#[derive(Debug, Clone)]
pub struct CriCallError {
    /// The CRI method, e.g. `RunPodSandbox`.
    pub call: &'static str,
    /// What it was called on (pod name and handler, sandbox id, ...).
    pub target: String,
    /// The gRPC status containerd answered.
    pub status: tonic::Status,
}

impl CriCallError {
    /// The gRPC status code.
    pub fn code(&self) -> tonic::Code {
        self.status.code()
    }

    /// containerd's error message.
    pub fn message(&self) -> &str {
        self.status.message()
    }
}

impl fmt::Display for CriCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CRI {} {} failed: {:?}: {}",
            self.call,
            self.target,
            self.status.code(),
            self.status.message()
        )
    }
}

impl std::error::Error for CriCallError {}

/// The gRPC status of a failed CRI call, if `err` is one.
pub fn cri_status(err: &anyhow::Error) -> Option<&tonic::Status> {
    err.downcast_ref::<CriCallError>().map(|e| &e.status)
}

fn call_err(
    call: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    let target = target.into();
    move |status| {
        anyhow::Error::new(CriCallError {
            call,
            target,
            status,
        })
    }
}

/// A pod as kubelet would describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID (unique per pod; part of the pod's cgroup path).
    pub uid: String,
    /// Runtime handler (the RuntimeClass's handler); empty: containerd's default.
    pub handler: String,
    /// Pod annotations.
    pub annotations: HashMap<String, String>,
    /// Pod labels.
    pub labels: HashMap<String, String>,
    /// Attempt number.
    pub attempt: u32,
}

static UID_SEQ: AtomicU64 = AtomicU64::new(0);

fn fresh_uid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = UID_SEQ.fetch_add(1, Ordering::Relaxed);
    // UUID-shaped, unique per process and call.
    let a = nanos as u64;
    let b = ((std::process::id() as u64) << 32) | (n & 0xffff_ffff);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        a as u16,
        (b >> 48) as u16,
        b & 0xffff_ffff_ffff
    )
}

impl PodSpec {
    /// A pod named `name` in namespace `default`, with a fresh UID and the default handler.
    pub fn new(name: impl Into<String>) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            uid: fresh_uid(),
            handler: String::new(),
            annotations: HashMap::new(),
            labels: HashMap::new(),
            attempt: 0,
        }
    }

    /// Sets the runtime handler.
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = handler.into();
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the UID.
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = uid.into();
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A container in a pod, run from an image CRI already has (the pause image works: it runs
/// `/pause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command (entrypoint override); empty: the image's.
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Environment.
    pub envs: Vec<(String, String)>,
}

impl ContainerSpec {
    /// A container `name` running `image`.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            annotations: HashMap::new(),
            envs: Vec::new(),
        }
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

/// What CRI `Status` says.
#[derive(Debug, Clone)]
pub struct RuntimeStatus {
    /// Every condition (RuntimeReady, NetworkReady, ...).
    pub conditions: Vec<RuntimeCondition>,
    /// Runtime handler names, when the version reports them (2.x does, 1.7 does not).
    pub runtime_handlers: Vec<String>,
    /// The verbose `info` map (JSON strings), e.g. `config`.
    pub info: HashMap<String, String>,
}

impl RuntimeStatus {
    /// The condition named `name`, if reported.
    pub fn condition(&self, name: &str) -> Option<&RuntimeCondition> {
        self.conditions.iter().find(|c| c.r#type == name)
    }

    /// Whether `RuntimeReady` is true.
    pub fn runtime_ready(&self) -> bool {
        self.condition("RuntimeReady").is_some_and(|c| c.status)
    }
}

/// A CRI connection (runtime and image services). Cheap to clone.
///
/// After containerd restarts, take a new one ([`crate::Containerd::cri`]): the old channel's first
/// calls may fail while it reconnects.
#[derive(Clone)]
pub struct Cri {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    cgroup_base: String,
}

impl fmt::Debug for Cri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cri")
            .field("socket", &self.socket)
            .field("cgroup_base", &self.cgroup_base)
            .finish_non_exhaustive()
    }
}

/// A tonic channel to a unix socket (the URI is a placeholder).
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to CRI at {}", socket.display()))
}

impl Cri {
    /// Connects to the CRI socket. Pods get cgroup parent `<cgroup_base>/pod<uid>` (cgroupfs
    /// syntax, e.g. `/knm-e2e-123-0`).
    pub async fn connect(socket: impl AsRef<Path>, cgroup_base: impl Into<String>) -> Result<Cri> {
        let socket = socket.as_ref();
        let channel = unix_channel(socket).await?;
        Ok(Cri {
            socket: socket.to_path_buf(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
            cgroup_base: cgroup_base.into(),
        })
    }

    /// The raw runtime service client, for calls the helpers do not cover.
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// The raw image service client.
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        self.image.clone()
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The cgroup parent of `spec`'s pod: `<cgroup_base>/pod<uid>`.
    pub fn cgroup_parent(&self, spec: &PodSpec) -> String {
        format!("{}/pod{}", self.cgroup_base, spec.uid)
    }

    /// The `PodSandboxConfig` kubelet would send for `spec`: host network, no hostname, own
    /// cgroup parent. Deterministic, so `create_container` can send it again.
    pub fn pod_config(&self, spec: &PodSpec) -> api::PodSandboxConfig {
        let node = api::NamespaceMode::Node as i32;
        let pod = api::NamespaceMode::Pod as i32;
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: spec.attempt,
            }),
            hostname: String::new(),
            log_directory: String::new(),
            dns_config: None,
            port_mappings: Vec::new(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(spec),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: node,
                        pid: pod,
                        ipc: pod,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            windows: None,
        }
    }

    /// RunPodSandbox, as kubelet sends it; returns the sandbox id.
    pub async fn run_pod(&mut self, spec: &PodSpec) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(self.pod_config(spec)),
            runtime_handler: spec.handler.clone(),
        };
        let target = format!(
            "{}/{} (handler {:?})",
            spec.namespace, spec.name, spec.handler
        );
        let resp = self
            .runtime
            .run_pod_sandbox(req)
            .await
            .map_err(call_err("RunPodSandbox", target))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(call_err("StopPodSandbox", id))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(call_err("RemovePodSandbox", id))?;
        Ok(())
    }

    /// ListPodSandbox (all pods).
    pub async fn list_pods(&mut self) -> Result<Vec<PodSandbox>> {
        let resp = self
            .runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .map_err(call_err("ListPodSandbox", "all"))?;
        Ok(resp.into_inner().items)
    }

    /// PodSandboxStatus.
    pub async fn pod_status(&mut self, id: &str) -> Result<PodSandboxStatus> {
        let resp = self
            .runtime
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(call_err("PodSandboxStatus", id))?;
        resp.into_inner()
            .status
            .with_context(|| format!("PodSandboxStatus {id}: no status in the answer"))
    }

    /// The sandbox's state (`SandboxReady` / `SandboxNotready`).
    pub async fn pod_state(&mut self, id: &str) -> Result<PodSandboxState> {
        let st = self.pod_status(id).await?;
        PodSandboxState::try_from(st.state)
            .map_err(|_| anyhow::anyhow!("pod {id}: unknown sandbox state {}", st.state))
    }

    /// Stops and removes every pod (errors of single pods are collected, not fatal).
    pub async fn remove_all_pods(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for pod in self.list_pods().await? {
            if let Err(e) = self.stop_pod(&pod.id).await {
                errors.push(format!("{e:#}"));
            }
            if let Err(e) = self.remove_pod(&pod.id).await {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("removing pods: {}", errors.join("; "))
        }
    }

    /// Status (verbose), with runtime conditions and handlers.
    pub async fn status(&mut self) -> Result<RuntimeStatus> {
        let resp = self
            .runtime
            .status(api::StatusRequest { verbose: true })
            .await
            .map_err(call_err("Status", "runtime"))?
            .into_inner();
        Ok(RuntimeStatus {
            conditions: resp.status.map(|s| s.conditions).unwrap_or_default(),
            runtime_handlers: resp.runtime_handlers.into_iter().map(|h| h.name).collect(),
            info: resp.info,
        })
    }

    /// Version: (runtime name, runtime version, CRI API version).
    pub async fn version(&mut self) -> Result<(String, String, String)> {
        let v = self
            .runtime
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(call_err("Version", "runtime"))?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// ImageStatus: the image if CRI knows it.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<api::Image>> {
        let resp = self
            .image
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(call_err("ImageStatus", image))?;
        Ok(resp.into_inner().image)
    }

    /// Polls ImageStatus until CRI knows `image`.
    pub async fn wait_image(&mut self, image: &str, timeout: Duration) -> Result<api::Image> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(img) = self.image_status(image).await? {
                return Ok(img);
            }
            if Instant::now() > deadline {
                bail!("CRI does not see image {image} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// CreateContainer in pod `pod_id` (created from `pod`); returns the container id.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        spec: &ContainerSpec,
    ) -> Result<String> {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(k, v)| api::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            annotations: spec.annotations.clone(),
            labels: HashMap::new(),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let resp = self
            .runtime
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(self.pod_config(pod)),
            })
            .await
            .map_err(call_err(
                "CreateContainer",
                format!("{} in {pod_id}", spec.name),
            ))?;
        Ok(resp.into_inner().container_id)
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(api::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(call_err("StartContainer", id))?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds.
    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        self.runtime
            .stop_container(api::StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_s,
            })
            .await
            .map_err(call_err("StopContainer", id))?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(api::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(call_err("RemoveContainer", id))?;
        Ok(())
    }

    /// ListContainers (all).
    pub async fn list_containers(&mut self) -> Result<Vec<api::Container>> {
        let resp = self
            .runtime
            .list_containers(api::ListContainersRequest { filter: None })
            .await
            .map_err(call_err("ListContainers", "all"))?;
        Ok(resp.into_inner().containers)
    }

    /// ContainerStatus.
    pub async fn container_status(&mut self, id: &str) -> Result<api::ContainerStatus> {
        let resp = self
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(call_err("ContainerStatus", id))?;
        resp.into_inner()
            .status
            .with_context(|| format!("ContainerStatus {id}: no status in the answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_and_uuid_shaped() {
        let a = fresh_uid();
        let b = fresh_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
