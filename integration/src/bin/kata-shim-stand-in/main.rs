//! A stand-in for kata's `containerd-shim-kata-v2`, for the end-to-end tests and the demo: it is
//! kata up to the point where kata would launch the hypervisor, then runc's shim, so the pod
//! really runs.
//!
//! - `--version` answers as kata's shim does.
//! - `start` reads the runtime options containerd writes to the shim's stdin, starts runc's shim
//!   (without them), and puts a proxy in front of its ttrpc socket (`proxy.rs`).
//! - At the sandbox's `Task/Create` the proxy resolves the kata configuration from the request's
//!   options as kata does (`resolve.rs`), refuses the sandbox with one line when a file kata
//!   would open is missing, not executable, outside the installed version or not the bytes the
//!   store recorded, optionally boots the guest (`guest.rs`), and appends what it resolved to
//!   `$KNM_STANDIN_DIR/sandboxes.jsonl`, the record the tests read.
//! - Anything else (`delete`, …) is runc's shim's.
//!
//! Environment (set by the harness's wrapper for the node): `KNM_STANDIN_RUNC_SHIM` (runc's shim),
//! `KNM_STANDIN_DIR` (records), `KNM_STANDIN_RUNC_ROOT` (runc's root for runc's options),
//! `KNM_STANDIN_BOOT=1` (boot the resolved guest under KVM), `KNM_STANDIN_SHIM` (the path the
//! shim was run as, recorded); `KATA_CONF_FILE` as kata reads it.

mod guest;
mod options;
mod pb;
mod proxy;
mod resolve;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const RUNC_SHIM_ENV: &str = "KNM_STANDIN_RUNC_SHIM";
const DIR_ENV: &str = "KNM_STANDIN_DIR";
const RUNC_ROOT_ENV: &str = "KNM_STANDIN_RUNC_ROOT";
const BOOT_ENV: &str = "KNM_STANDIN_BOOT";
const PROXY_UPSTREAM_ENV: &str = "KNM_STANDIN_PROXY_UPSTREAM";
const PROXY_LISTEN_ENV: &str = "KNM_STANDIN_PROXY_LISTEN";
/// The kata version `--version` reports unless `$KNM_STANDIN_DIR/version` says otherwise.
const KATA_VERSION: &str = "3.2.0";
/// CRI's annotations on the sandbox's OCI spec.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const RUNTIME_HANDLER: &str = "io.kubernetes.cri.runtime-handler";

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = if args.first().is_some_and(|a| a == "--version") {
        version()
    } else if let (Some(up), Some(listen)) = (
        std::env::var_os(PROXY_UPSTREAM_ENV),
        std::env::var_os(PROXY_LISTEN_ENV),
    ) {
        run_proxy(PathBuf::from(listen), PathBuf::from(up))
    } else if args.last().is_some_and(|a| a == "start") {
        start(&args)
    } else {
        exec_runc(&args)
    };
    if let Err(e) = result {
        // containerd shows a failed `start`'s stderr in the pod's error.
        eprintln!("kata-shim-stand-in: {e:#}");
        std::process::exit(1);
    }
}

fn dir() -> Result<PathBuf> {
    std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .with_context(|| format!("{DIR_ENV} is not set"))
}

fn version() -> Result<()> {
    let v = dir()
        .ok()
        .and_then(|d| std::fs::read_to_string(d.join("version")).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| KATA_VERSION.to_owned());
    println!(
        "Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: {v}, commit: stand-in"
    );
    Ok(())
}

fn runc_shim() -> Result<PathBuf> {
    std::env::var_os(RUNC_SHIM_ENV)
        .map(PathBuf::from)
        .with_context(|| format!("{RUNC_SHIM_ENV} is not set"))
}

fn exec_runc(args: &[OsString]) -> Result<()> {
    let shim = runc_shim()?;
    let e = Command::new(&shim).args(args).exec();
    bail!("exec {}: {e}", shim.display())
}

/// `start`: runc's shim starts (or finds) the sandbox's shim; containerd is handed our proxy's
/// address in its place, in the same format (a plain address, or 2.x's bootstrap JSON).
fn start(args: &[OsString]) -> Result<()> {
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin)?;
    let id = arg_after(args, "-id").unwrap_or_default();
    // What arrived at `start`, kept beside the record that `Create` writes.
    if let (Ok(dir), Ok(Some(options))) = (dir(), options::decode(&stdin)) {
        let dir = dir.join("start-options");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_vec(&options)?,
        )?;
    }
    let out = Command::new(runc_shim()?)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running runc's shim")?;
    if !out.status.success() {
        std::io::stdout().write_all(&out.stdout)?;
        std::process::exit(
            out.status
                .code()
                .unwrap_or(128 + out.status.signal().unwrap_or(0)),
        );
    }
    let text = String::from_utf8(out.stdout).context("runc's shim printed non-UTF-8")?;
    let (address, json) = match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) if v.is_object() => (
            v["address"].as_str().unwrap_or_default().to_owned(),
            Some(v),
        ),
        _ => (text.trim().to_owned(), None),
    };
    let upstream = PathBuf::from(address.strip_prefix("unix://").unwrap_or(&address));
    let mut listen = upstream.clone().into_os_string();
    listen.push(".kata");
    let listen = PathBuf::from(listen);
    if UnixStream::connect(&listen).is_err() {
        spawn_proxy(args, &upstream, &listen)?;
    }
    let ours = format!("unix://{}", listen.display());
    match json {
        Some(mut v) => {
            v["address"] = Value::String(ours);
            println!("{v}");
        }
        None => print!("{ours}"),
    }
    Ok(())
}

fn spawn_proxy(args: &[OsString], upstream: &Path, listen: &Path) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir()?.join("proxy.log"))?;
    let mut command = Command::new(std::env::current_exe()?);
    // The same arguments (`-address` among them), so whatever cleans up shims finds it too.
    command
        .args(args)
        .env(PROXY_UPSTREAM_ENV, upstream)
        .env(PROXY_LISTEN_ENV, listen)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid(2) only, between fork and exec: the proxy outlives this `start`, as the shim.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    command.spawn().context("starting the proxy")?;
    let started = Instant::now();
    while UnixStream::connect(listen).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "the proxy did not listen on {} within 10 s",
                listen.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn run_proxy(listen: PathBuf, upstream: PathBuf) -> Result<()> {
    let dir = dir()?;
    let boot = std::env::var(BOOT_ENV).is_ok_and(|v| v == "1");
    let runc_root = std::env::var(RUNC_ROOT_ENV).ok();
    let kata_conf_file = std::env::var("KATA_CONF_FILE").ok();
    let on_create = move |id: &str, bundle: &Path, options: &[u8]| -> Result<Vec<u8>, String> {
        let runc = options::runc_options(runc_root.as_deref());
        let spec: Value = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let annotations: BTreeMap<String, String> = spec["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        // kata resolves its configuration once per sandbox; containers join the sandbox's VM.
        if annotations.get(CONTAINER_TYPE).map(String::as_str) != Some("sandbox") {
            return Ok(runc);
        }
        let _ = std::fs::write(
            dir.join("last-sandbox-spec.json"),
            serde_json::to_vec(&spec).unwrap_or_default(),
        );
        let checked = Instant::now();
        let outcome = sandbox(&annotations, options, kata_conf_file.as_deref(), boot);
        let check_ms = u64::try_from(checked.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start_options: Value =
            std::fs::read(dir.join("start-options").join(format!("{id}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
        let mut record = json!({
            "sandbox": id,
            "pod": annotations.get(SANDBOX_NAME),
            "runtimeHandler": annotations.get(RUNTIME_HANDLER),
            // The path containerd (or the gate) ran this shim as, from its wrapper: which
            // installation of kata served the sandbox.
            "shim": std::env::var("KNM_STANDIN_SHIM").ok(),
            "startOptions": start_options,
            "createOptions": options::decode(options).ok().flatten(),
            "checkMs": check_ms,
            "atMs": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        });
        let result = match outcome {
            Ok((resolution, boot)) => {
                record["outcome"] = json!("started");
                record["resolution"] = json!(resolution);
                record["guest"] = json!(boot);
                Ok(runc)
            }
            Err(e) => {
                let line = format!("kata-shim-stand-in refused sandbox {id}: {e:#}");
                record["outcome"] = json!("refused");
                record["reason"] = json!(line);
                Err(line)
            }
        };
        append_record(&dir.join("sandboxes.jsonl"), &record);
        result
    };
    proxy::serve(&listen, upstream, Arc::new(on_create))
}

/// What kata would do for the sandbox: resolve and check its configuration, and boot the guest
/// when asked to.
fn sandbox(
    annotations: &BTreeMap<String, String>,
    options: &[u8],
    kata_conf_file: Option<&str>,
    boot: bool,
) -> Result<(resolve::Resolution, Option<guest::Boot>)> {
    let options = options::decode(options)?;
    let handler = annotations.get(RUNTIME_HANDLER).map(String::as_str);
    let resolution = resolve::resolve(annotations, options.as_ref(), kata_conf_file, handler)?;
    if !boot {
        return Ok((resolution, None));
    }
    let file = |role: &str| resolution.files.get(role).map(|f| f.real.clone());
    let (Some(hypervisor), Some(kernel)) = (file("hypervisor"), file("kernel")) else {
        bail!("no hypervisor or kernel to boot");
    };
    let initrd = file("initrd")
        .context("booting needs an initrd guest (image guests are not booted here)")?;
    let booted = guest::boot(&hypervisor, &kernel, &initrd)?;
    Ok((resolution, Some(booted)))
}

fn append_record(path: &Path, record: &Value) {
    let mut line = record.to_string();
    line.push('\n');
    // One write per record with O_APPEND: proxies of several sandboxes share the file.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("stand-in: writing {}: {e}", path.display());
    }
}

fn arg_after(args: &[OsString], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(|a| a.to_string_lossy().into_owned())
}
