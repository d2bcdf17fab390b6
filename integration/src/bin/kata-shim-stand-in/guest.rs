//! Boots the guest kata would boot: the resolved hypervisor with the resolved kernel and initrd,
//! under KVM, until the guest's `/init` prints its marker on the serial console.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What the demo's `/init` prints once the guest kernel has booted it.
pub const MARKER: &str = "KNM-GUEST-BOOTED";
/// How long a boot may take before the sandbox is refused.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    pub marker: String,
    /// From exec of the hypervisor to the marker on the console.
    pub boot_ms: u64,
    /// The console's first line with the kernel's version (`Linux version …`), when printed.
    pub kernel_banner: Option<String>,
}

/// Whether this machine can run a KVM guest (`/dev/kvm` opens read-write).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub fn boot(hypervisor: &Path, kernel: &Path, initrd: &Path) -> Result<Boot> {
    if !kvm_usable() {
        bail!("cannot boot the guest: /dev/kvm is not usable on this machine");
    }
    let started = Instant::now();
    let mut child = Command::new(hypervisor)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 reboot=t"])
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
    let mut banner = None;
    let mut tail = Vec::new();
    let outcome = loop {
        let left = BOOT_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if banner.is_none() && line.contains("Linux version") {
                    banner = Some(line.clone());
                }
                if line.contains(MARKER) {
                    break Ok(started.elapsed());
                }
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("no {MARKER} within {BOOT_TIMEOUT:?}"));
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
        Ok(elapsed) => Ok(Boot {
            marker: MARKER.to_owned(),
            boot_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            kernel_banner: banner,
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
