//! Tearing a test's containerd down whatever state the test left it in: its pods through CRI,
//! then the process, leftover shims, mounts, cgroups and the temp dir (on drop too).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};

use super::{Containerd, K8S_NAMESPACE, KEEP_ENV, shim_socket};

impl Containerd {
    pub(super) async fn cleanup(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        // Pods go through CRI, so shims and runc containers end properly. A stopped containerd
        // with live shims is started again for that.
        if !self.is_running() && !self.shim_pids().is_empty() {
            self.opts.ready_timeout = Duration::from_secs(10);
            if let Err(e) = self.start_again().await {
                errors.push(format!("restarting for cleanup: {e:#}"));
            }
        }
        if self.is_running() {
            match self.cri().await {
                Ok(mut cri) => {
                    if let Err(e) = cri.remove_all_pods().await {
                        errors.push(format!("{e:#}"));
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if let Err(e) = self.stop().await {
            errors.push(format!("{e:#}"));
        }
        self.sweep();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up {}: {}", self.version, errors.join("; "))
        }
    }

    /// Shims serving this instance (their command line names our socket).
    pub(super) fn shim_pids(&self) -> Vec<(i32, Vec<String>)> {
        let address = self.layout.address.to_string_lossy().into_owned();
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return out;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // Shims run as `<shim> -namespace NS -id ID -address <containerd.sock> ...`.
            if arg_after(&args, "-address") == Some(address.as_str()) {
                out.push((pid, args));
            }
        }
        out
    }

    /// Last resort after CRI cleanup: runc containers, shims, shim sockets, mounts, cgroups.
    fn sweep(&mut self) {
        // runc containers still in our runc root (root/<namespace>/<id>/state.json).
        let runc = &self.deps.runc;
        if let Ok(nss) = fs::read_dir(&self.layout.runc_root) {
            for ns in nss.flatten() {
                let Ok(ids) = fs::read_dir(ns.path()) else {
                    continue;
                };
                for id in ids.flatten() {
                    let _ = Command::new(runc)
                        .arg("--root")
                        .arg(ns.path())
                        .args(["delete", "--force"])
                        .arg(id.file_name())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        for (pid, args) in self.shim_pids() {
            // SAFETY: plain kill(2).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let ns = arg_after(&args, "-namespace").unwrap_or(K8S_NAMESPACE);
            if let Some(id) = arg_after(&args, "-id") {
                let socket = shim_socket(&self.layout.address, ns, id);
                // The kata stand-in's proxy listens beside runc's shim (`<socket>.kata`).
                let mut proxy = socket.clone().into_os_string();
                proxy.push(".kata");
                let _ = fs::remove_file(proxy);
                let _ = fs::remove_file(socket);
            }
        }
        unmount_under(&self.layout.dir);
        remove_cgroups(&self.cgroup_base);
    }

    pub(super) fn finish(&mut self) {
        if let Some(dir) = self.dir.take()
            && std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
        {
            let kept = dir.keep();
            eprintln!("{KEEP_ENV}=1: kept {}", kept.display());
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}), last lines ---\n{}\n---",
                self.version,
                self.layout.log.display(),
                self.log_tail(60)
            );
        }
        if self.dir.is_some() {
            // Drop cannot await, and may run inside a test's runtime: clean up on a thread with
            // a runtime (and CRI connection) of its own.
            let version = self.version;
            std::thread::scope(|s| {
                let h = s.spawn(|| {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(self.cleanup()),
                        Err(e) => Err(e.into()),
                    }
                });
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("warning: {e:#}"),
                    Err(_) => eprintln!("warning: cleanup of {version} panicked"),
                }
            });
        }
        self.finish();
    }
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Mount points at or under `dir`, from /proc/self/mountinfo (octal escapes decoded).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Removes `base` (cgroupfs path) and everything below it in every cgroup hierarchy.
fn remove_cgroups(base: &str) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let rel = base.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for line in info.lines() {
        // "... mountpoint ... - fstype source options"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let top = Path::new(&unescape_mountinfo(mp)).join(rel);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
