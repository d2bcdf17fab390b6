//! Boots the guest kata would boot: the resolved hypervisor with the resolved kernel and initrd,
//! until the guest's `/init` prints its marker on the serial console.
//!
//! Under KVM when the machine has hardware virtualization (`kvm_intel` or `kvm_amd` loaded); else
//! under qemu's software emulation (TCG). A `/dev/kvm` that opens is not enough: some cloud
//! machines expose a paravirtual KVM (PVM) there that cannot run a stock distribution kernel (it
//! stops with an emulation failure), and the test machines of this project are such machines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What the demo's `/init` prints once the guest kernel has booted it.
pub const MARKER: &str = "KNM-GUEST-BOOTED";
/// How long a boot may take before the sandbox is refused: seconds under KVM; software
/// emulation takes about 3 s on an idle machine and far longer beside a parallel test run.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(20);
const TCG_BOOT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    pub marker: String,
    /// From exec of the hypervisor to the marker on the console.
    pub boot_ms: u64,
    /// The kernel release the guest reported after its marker (`uname -r`).
    pub kernel: Option<String>,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
}

/// Whether this machine runs KVM guests with hardware virtualization: `/dev/kvm` opens
/// read-write and the Intel or AMD KVM module is loaded.
pub fn hardware_kvm() -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    opens
        && ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
            .iter()
            .any(|m| Path::new(m).exists())
}

pub fn boot(hypervisor: &Path, kernel: &Path, initrd: &Path) -> Result<Boot> {
    let (accel, timeout): (&'static str, _) = if hardware_kvm() {
        ("kvm", KVM_BOOT_TIMEOUT)
    } else {
        ("tcg", TCG_BOOT_TIMEOUT)
    };
    let started = Instant::now();
    let mut command = Command::new(hypervisor);
    command.args(["-M", "q35", "-accel", accel]);
    if accel == "kvm" {
        command.args(["-cpu", "host"]);
    }
    let mut child = command
        .args(["-m", "256", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // cryptomgr.notests: the kernel's crypto self-tests are a second of a 3 s emulated boot.
        .args(["-append", "console=ttyS0 quiet panic=-1 cryptomgr.notests"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", hypervisor.display()))?;
    let stdout = child.stdout.take().context("no console")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tail = Vec::new();
    let outcome = loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if let Some(at) = line.find(MARKER) {
                    let release = line[at + MARKER.len()..].trim().to_owned();
                    break Ok((started.elapsed(), Some(release).filter(|r| !r.is_empty())));
                }
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("no {MARKER} within {timeout:?} ({accel})"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("the hypervisor exited before the guest booted".to_owned());
            }
        }
    };
    // The guest powers itself off after the marker; never leave a VM behind either way.
    let _ = child.kill();
    let output = child.wait_with_output();
    match outcome {
        Ok((elapsed, kernel)) => Ok(Boot {
            marker: MARKER.to_owned(),
            boot_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            kernel,
            accel,
        }),
        Err(why) => {
            let stderr = output
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_default();
            bail!(
                "the guest did not boot: {why} (console: {:?}; hypervisor: {stderr})",
                tail.join(" | ")
            )
        }
    }
}
