//! Kernel modules kata needs, loaded before any class is served (`node.kernelModules`): kata
//! reaches its guest's agent over vsock (`vhost_vsock`), and its default network model uses
//! vhost-net. Without them every sandbox of every class fails at boot with an error about the
//! guest, far from the cause; checked here, the cause is in `status` and `/readyz` instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::NodeSetup;

/// How long one `modprobe` may take: loading a module with its dependencies takes well under a
/// second; one hung on a broken module must not hold the daemon's start.
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a module is not loaded. The text names the module and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error(
        "kernel module {module}: cannot run {program}: {why} (set node.modprobe in the node file, or load the module on the host, e.g. in /etc/modules-load.d/)"
    )]
    Spawn {
        module: String,
        program: String,
        why: String,
    },
    #[error("kernel module {module}: {program} failed ({status}): {stderr}")]
    Failed {
        module: String,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("kernel module {module}: {program} did not finish within {}s", MODPROBE_TIMEOUT.as_secs())]
    Timeout { module: String, program: String },
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoad {
    pub name: String,
    /// `loaded` (by us now), `present` (the kernel had it: loaded before, or built in), or
    /// `failed`.
    pub state: ModuleState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModuleState {
    Loaded,
    Present,
    Failed,
}

/// Makes sure every module of `setup` is in the kernel: `present` when `/sys/module/<name>`
/// (under `root`) already exists, else loaded with `setup.modprobe`. Every module is tried,
/// so `status` names all that are missing at once.
pub async fn load_modules(setup: &NodeSetup, root: &Path) -> Vec<ModuleLoad> {
    let mut results = Vec::with_capacity(setup.kernel_modules.len());
    for name in &setup.kernel_modules {
        let result = if is_present(root, name) {
            Ok(ModuleState::Present)
        } else {
            modprobe(setup, name).await.map(|()| ModuleState::Loaded)
        };
        results.push(match result {
            Ok(state) => {
                info!(module = %name, state = ?state, "kernel module");
                ModuleLoad {
                    name: name.clone(),
                    state,
                    error: None,
                }
            }
            Err(e) => {
                warn!(module = %name, error = %e, "kernel module not loaded: no class is served");
                ModuleLoad {
                    name: name.clone(),
                    state: ModuleState::Failed,
                    error: Some(e.to_string()),
                }
            }
        });
    }
    results
}

/// The kernel lists each loaded or built-in module under `/sys/module`, with `-` as `_`.
fn is_present(root: &Path, name: &str) -> bool {
    root.join("sys/module")
        .join(name.replace('-', "_"))
        .exists()
}

async fn modprobe(setup: &NodeSetup, module: &str) -> Result<(), ModuleError> {
    let default = [String::from("modprobe")];
    let argv = setup.modprobe.as_deref().unwrap_or(&default);
    let Some((program, leading)) = argv.split_first() else {
        return Err(ModuleError::Spawn {
            module: module.to_owned(),
            program: String::new(),
            why: "node.modprobe is empty".to_owned(),
        });
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(leading)
        .arg(module)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(root) = &setup.modprobe_root {
        enter_root(&mut command, root.clone());
    }
    let spawn_failed = |why: String| ModuleError::Spawn {
        module: module.to_owned(),
        program: program.clone(),
        why,
    };
    let child = command.spawn().map_err(|e| spawn_failed(e.to_string()))?;
    let output = tokio::time::timeout(MODPROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ModuleError::Timeout {
            module: module.to_owned(),
            program: program.clone(),
        })?
        .map_err(|e| spawn_failed(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // modprobe's own message is the useful part; a flood from a broken wrapper is cut.
    let stderr: String = stderr.trim().chars().take(500).collect();
    Err(ModuleError::Failed {
        module: module.to_owned(),
        program: program.clone(),
        status: output.status.to_string(),
        stderr,
    })
}

/// The child runs with its root changed to `root` (the host's `/` mounted into a container):
/// the host's modprobe loads the host's modules, which an image cannot carry. The image has no
/// `chroot` program, so the child changes root itself, before exec.
fn enter_root(command: &mut tokio::process::Command, root: PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(root) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
        // A path with a NUL byte cannot be a root; exec then fails on the program name.
        return;
    };
    // SAFETY: between fork and exec only async-signal-safe calls run: chroot(2) and chdir(2)
    // on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake modprobe recording its arguments, failing for the modules named in `fail`.
    fn fake_modprobe(dir: &Path, fail: &[&str]) -> PathBuf {
        let log = dir.join("calls");
        let script = dir.join("modprobe");
        let failing = fail.join(" ");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\nfor m in {failing}; do\n  if [ \"$1\" = \"$m\" ]; then echo \"modprobe: FATAL: Module $1 not found in directory /lib/modules/6.1.0\" >&2; exit 1; fi\ndone\nexit 0\n",
                log = log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        script
    }

    fn setup(modprobe: &Path, modules: &[&str]) -> NodeSetup {
        NodeSetup {
            kernel_modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            modprobe: Some(vec![modprobe.display().to_string()]),
            modprobe_root: None,
        }
    }

    fn calls(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("calls")).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_present_module_is_not_loaded_again_and_a_missing_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sys/module/vhost_net")).expect("module");
        let modprobe = fake_modprobe(dir.path(), &[]);
        let results = load_modules(&setup(&modprobe, &["vhost_vsock", "vhost-net"]), &root).await;
        assert_eq!(
            results
                .iter()
                .map(|r| (r.name.as_str(), r.state))
                .collect::<Vec<_>>(),
            [
                ("vhost_vsock", ModuleState::Loaded),
                ("vhost-net", ModuleState::Present)
            ]
        );
        assert_eq!(calls(dir.path()), "vhost_vsock\n");
    }

    #[tokio::test]
    async fn a_failure_names_the_module_and_modprobe_s_reason_and_the_rest_are_still_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let modprobe = fake_modprobe(dir.path(), &["vhost_vsock"]);
        let results = load_modules(
            &setup(&modprobe, &["vhost_vsock", "vhost_net"]),
            &dir.path().join("root"),
        )
        .await;
        assert_eq!(results[0].state, ModuleState::Failed);
        let error = results[0].error.as_deref().expect("error");
        assert!(error.starts_with("kernel module vhost_vsock: "), "{error}");
        assert!(
            error.contains("Module vhost_vsock not found in directory"),
            "{error}"
        );
        assert_eq!(results[1].state, ModuleState::Loaded);
        assert_eq!(calls(dir.path()), "vhost_vsock\nvhost_net\n");
    }

    #[tokio::test]
    async fn a_missing_modprobe_says_what_to_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = load_modules(
            &setup(&dir.path().join("no-modprobe"), &["vhost_vsock"]),
            dir.path(),
        )
        .await;
        let error = results[0].error.as_deref().expect("error");
        assert!(error.contains("set node.modprobe"), "{error}");
    }

    #[tokio::test]
    async fn leading_arguments_come_before_the_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let modprobe = fake_modprobe(dir.path(), &[]);
        let mut setup = setup(&modprobe, &["vhost_vsock"]);
        if let Some(argv) = setup.modprobe.as_mut() {
            argv.push("--quiet".into());
        }
        load_modules(&setup, dir.path()).await;
        assert_eq!(calls(dir.path()), "--quiet vhost_vsock\n");
    }
}
