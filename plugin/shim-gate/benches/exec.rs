//! The gate's two figures: the size of the release binary, stripped (target < 1.5 MiB), and the
//! time it adds between containerd's exec of the shim and the real shim running, for a sandbox
//! start of a ready class (target < 1 ms p99), against a direct exec of the same shim.
//!
//! `cargo bench -p kata-nri-shim-gate --bench exec` (`KNM_BENCH_ROUNDS` sets the runs, 1000;
//! `KNM_BENCH_GATE=PATH` measures another build of the gate, e.g. the image's static musl one).
//!
//! The real shim is this bench itself, re-run in a mode that only prints the time it started
//! and exits. Each round runs it directly and through the gate's link, back to back, each timed
//! from just before the spawn to the shim's first line of `main`; the gate's share is the
//! difference within a round, so what both share (fork, exec and start-up of the shim) cancels.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kata_nri_shim_gate::shared::{GateState, links};

const GATE: &str = env!("CARGO_BIN_EXE_kata-nri-shim-gate");
/// Set in the environment of the shim runs: the gate passes it through unchanged.
const SHIM_MODE: &str = "KNM_GATE_BENCH_SHIM";
const CLASS: &str = "kata-bench";
/// What containerd passes to a shim to start a sandbox.
const START: [&str; 9] = [
    "-namespace",
    "k8s.io",
    "-address",
    "/run/containerd/containerd.sock",
    "-publish-binary",
    "/usr/bin/containerd",
    "-id",
    "bench",
    "start",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(SHIM_MODE).is_some() {
        // The real shim: the wall clock, because the time crosses processes.
        println!(
            "{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
        );
        return Ok(());
    }
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) only checks it runs.
    let rounds: usize = match std::env::args().any(|a| a == "--bench") {
        true => std::env::var("KNM_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1000),
        false => 20,
    };

    let gate = std::env::var_os("KNM_BENCH_GATE").map_or_else(|| GATE.into(), PathBuf::from);
    let built = std::fs::metadata(&gate)?.len();
    let stripped = stripped_size(&gate);

    let dir = tempfile::tempdir()?;
    let gate_dir = dir.path().join("gate");
    let link = links::install(&gate_dir, &gate, &[CLASS])?
        .pop()
        .ok_or("no link installed")?;
    GateState {
        class: CLASS.into(),
        real_shim: std::env::current_exe()?,
        ready: true,
        digest: Some("sha256:bench".into()),
        // Never asked: the class is ready.
        daemon_socket: dir.path().join("no-daemon.sock"),
        timeout_ms: 1000,
        files: Default::default(),
    }
    .write(&gate_dir)?;
    let shim = std::env::current_exe()?;

    // Warm the page cache and the dynamic loader's files for both.
    for _ in 0..rounds.min(50) {
        to_shim(&shim)?;
        to_shim(&link)?;
    }
    let (mut direct, mut gated, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = to_shim(&shim)?;
        let g = to_shim(&link)?;
        direct.push(d);
        gated.push(g);
        added.push(g.saturating_sub(d));
    }

    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    println!(
        "shim gate {} ({}, {rounds} rounds)",
        gate.display(),
        std::env::consts::ARCH
    );
    println!("| what | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| release binary, stripped (target < 1.5 MiB) | {} | |",
        stripped.map_or_else(|e| format!("unknown: {e}"), kib)
    );
    println!("| release binary, as built | {} | |", kib(built));
    row("exec → shim, direct", &mut direct);
    row(
        "exec → shim, through the gate (ready class, `start`)",
        &mut gated,
    );
    row(
        "added by the gate (same round; target < 1 ms p99)",
        &mut added,
    );
    Ok(())
}

/// Spawns `program` as a shim start and returns the time from just before the spawn to the
/// shim's start.
fn to_shim(program: &Path) -> Result<Duration, Box<dyn std::error::Error>> {
    let before = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let out = Command::new(program)
        .args(START)
        .env(SHIM_MODE, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", program.display(), out.status).into());
    }
    let started: u128 = String::from_utf8(out.stdout)?.trim().parse()?;
    let nanos = started.saturating_sub(before.as_nanos());
    Ok(Duration::from_nanos(u64::try_from(nanos)?))
}

fn stripped_size(binary: &Path) -> Result<u64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = dir.path().join("gate");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .status()
        .map_err(|e| format!("running strip: {e}"))?;
    if !status.success() {
        return Err(format!("strip failed: {status}"));
    }
    std::fs::metadata(&copy)
        .map(|m| m.len())
        .map_err(|e| e.to_string())
}

fn row(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        format!("{:.0} µs", samples[i].as_secs_f64() * 1e6)
    };
    println!("| {what} | {} | {} |", at(0.50), at(0.99));
}
