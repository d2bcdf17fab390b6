//! On-demand benchmark (not a test: it prints tables).
//!
//! 1. Time from RunPodSandbox to sandbox ready for a pod of an `onDemand` class whose artifacts
//!    are absent (the sandbox start waits at the gate while the daemon pulls), split into the
//!    daemon's pull + verify + install and the rest (gate, containerd, shim exec); against the
//!    same pod once the artifacts are present, and a plain runc pod on the same containerd.
//!    Real containerd 2.1, real registry, the daemon as a process; a fresh node each round.
//!    The same first pod with a real guest as the artifact (Debian's kernel, a busybox initrd):
//!    the kata stand-in boots it before the sandbox starts; the table splits the pull, the
//!    stand-in's own checks (resolve, hash every file), the VM boot and the rest. The stand-in's
//!    checks and the boot are kept out of the "gate + containerd + shim exec" figure, which is
//!    the cost this project adds or rides on.
//! 2. The NRI hook cost inside the plugin for a pod that is not kata (RunPodSandbox of a runc pod
//!    with a dozen annotations through the daemon's NRI handler), target under 100 µs.
//!
//! Run: `cargo bench -p kata-nri-integration --bench on_demand` (as root, after
//! `bash scripts/install-deps.sh`). `KNM_BENCH_ROUNDS` sets the rounds (default 5).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kata_nri_integration::node::CLASS;
use kata_nri_integration::{Deps, KataNode, PodSpec, Version};
use kata_nri_manager::nri::{NriHandler, PodEvent, PodSandbox};
use kata_nri_manager::pods::PodInventory;
use kata_nri_manager::reconcile::{Metrics, NriTriggers, StatusBoard};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Milliseconds the daemon logged for the install (`artifacts installed`, `elapsed_ms`).
fn install_ms(log: &[Value]) -> Option<Duration> {
    log.iter()
        .find(|e| e["message"] == "artifacts installed")
        .and_then(|e| e["elapsed_ms"].as_u64())
        .map(Duration::from_millis)
}

struct Round {
    cold: Duration,
    install: Duration,
    /// The stand-in's resolve-and-check time for the cold pod (not the gate's).
    cold_checks: Duration,
    warm: Duration,
    runc: Duration,
}

/// The stand-in's record of pod `pod`: its checks (boot excluded) and the VM boot.
fn stand_in_times(node: &KataNode, pod: &str) -> Result<(Duration, Duration)> {
    let record = node
        .sandbox_record(pod)
        .with_context(|| format!("no stand-in record of {pod}"))?;
    let check = record["checkMs"].as_u64().context("no checkMs")?;
    let boot = record["guest"]["bootMs"].as_u64().unwrap_or(0);
    Ok((
        Duration::from_millis(check.saturating_sub(boot)),
        Duration::from_millis(boot),
    ))
}

struct GuestRound {
    total: Duration,
    install: Duration,
    checks: Duration,
    boot: Duration,
    accel: String,
}

/// The first pod of an onDemand class whose artifact is a real guest, on a fresh node.
async fn guest_round(deps: Deps, i: usize) -> Result<GuestRound> {
    let mut node = KataNode::start(deps, Version::V2_1).await?;
    let kernel = node.push_guest()?;
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(Path::new(PLUGIN), operator, node_config, &[])
        .await?;
    let mut cri = node.cd.cri().await?;
    let pod = format!("guest-{i}");
    let started = Instant::now();
    cri.run_pod(&PodSpec::new(&pod).handler(CLASS))
        .await
        .with_context(|| daemon.process.log())?;
    let total = started.elapsed();
    let record = node.kata_used(&pod, None, &kernel)?;
    let install = install_ms(&daemon.process.events()).context("no install logged")?;
    let (checks, boot) = stand_in_times(&node, &pod)?;
    cri.remove_all_pods().await?;
    daemon.process.stop().await?;
    Ok(GuestRound {
        total,
        install,
        checks,
        boot,
        accel: record["guest"]["accel"].as_str().unwrap_or("?").to_owned(),
    })
}

async fn round(deps: Deps, i: usize) -> Result<Round> {
    let mut node = KataNode::start(deps, Version::V2_1).await?;
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(Path::new(PLUGIN), operator, node_config, &[])
        .await?;
    let mut cri = node.cd.cri().await?;

    let started = Instant::now();
    cri.run_pod(&PodSpec::new(format!("cold-{i}")).handler(CLASS))
        .await
        .with_context(|| daemon.process.log())?;
    let cold = started.elapsed();
    let install = install_ms(&daemon.process.events()).context("no install logged")?;
    let (cold_checks, _) = stand_in_times(&node, &format!("cold-{i}"))?;

    let started = Instant::now();
    cri.run_pod(&PodSpec::new(format!("warm-{i}")).handler(CLASS))
        .await?;
    let warm = started.elapsed();

    let started = Instant::now();
    cri.run_pod(&PodSpec::new(format!("runc-{i}")).handler("runc"))
        .await?;
    let runc = started.elapsed();
    cri.remove_all_pods().await?;
    daemon.process.stop().await?;
    Ok(Round {
        cold,
        install,
        cold_checks,
        warm,
        runc,
    })
}

/// Per-call cost of the daemon's NRI handler for a runc pod's RunPodSandbox.
fn hook_cost(calls: usize) -> Vec<Duration> {
    let (signals, _received) = tokio::sync::mpsc::unbounded_channel();
    let classes: BTreeSet<String> = ["kata-qemu".to_owned(), "kata-clh".to_owned()].into();
    let triggers = NriTriggers::new(
        Arc::new(PodInventory::new()),
        classes,
        signals,
        Arc::new(Metrics::new()),
        Arc::new(StatusBoard::new([])),
    );
    let annotations: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("io.kubernetes.cri.annotation-{i}"), "x".repeat(40)))
        .collect();
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let pod = PodSandbox {
            id: format!("{i:064x}"),
            name: format!("web-{i}"),
            namespace: "default".into(),
            runtime_handler: "runc".into(),
            annotations: annotations.clone(),
            ..Default::default()
        };
        let started = Instant::now();
        triggers.pod_event(PodEvent::Run, pod);
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("KNM_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);

    // The hook first, with no containerd running beside it, and with the daemon's JSON log
    // formatting (to a sink): the daemon logs one line per pod event.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .finish();
    let mut hook = tracing::subscriber::with_default(subscriber, || hook_cost(20_000));
    println!("NRI hook cost in the plugin, RunPodSandbox of a runc pod (20000 calls):");
    println!("| p50 | p99 | max | target |");
    println!("|---|---|---|---|");
    let max = *hook.iter().max().unwrap_or(&Duration::ZERO);
    println!(
        "| {:.1} µs | {:.1} µs | {:.1} µs | < 100 µs |",
        percentile(&mut hook, 0.5).as_secs_f64() * 1e6,
        percentile(&mut hook, 0.99).as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
    println!();

    let deps = Deps::from_env().map_err(|reason| anyhow::anyhow!("{}", reason.0))?;
    let mut results = Vec::new();
    for i in 0..rounds {
        results.push(round(deps.clone(), i).await?);
        eprintln!("round {}/{rounds} done", i + 1);
    }
    let pick = |f: fn(&Round) -> Duration| {
        let mut v: Vec<Duration> = results.iter().map(f).collect();
        (percentile(&mut v, 0.5), percentile(&mut v, 1.0))
    };
    let cold = pick(|r| r.cold);
    let install = pick(|r| r.install);
    let rest = pick(|r| r.cold.saturating_sub(r.install + r.cold_checks));
    let checks = pick(|r| r.cold_checks);
    let warm = pick(|r| r.warm);
    let runc = pick(|r| r.runc);
    println!("RunPodSandbox to sandbox ready, containerd 2.1, {rounds} fresh nodes (p50 / max):");
    println!(
        "| pod | total | of which pull + verify + install | gate + containerd + shim exec | the stand-in's checks |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| onDemand, artifacts absent | {} / {} | {} / {} | {} / {} | {} / {} |",
        ms(cold.0),
        ms(cold.1),
        ms(install.0),
        ms(install.1),
        ms(rest.0),
        ms(rest.1),
        ms(checks.0),
        ms(checks.1)
    );
    println!(
        "| onDemand, artifacts present | {} / {} | - | {} / {} | (in the total) |",
        ms(warm.0),
        ms(warm.1),
        ms(warm.0),
        ms(warm.1)
    );
    println!(
        "| runc (no gate) | {} / {} | - | {} / {} | - |",
        ms(runc.0),
        ms(runc.1),
        ms(runc.0),
        ms(runc.1)
    );
    println!();

    if let Err(reason) = &deps.guest {
        println!("(no real guest to boot: {reason})");
        return Ok(());
    }
    let mut guests = Vec::new();
    for i in 0..rounds {
        guests.push(guest_round(deps.clone(), i).await?);
        eprintln!("guest round {}/{rounds} done", i + 1);
    }
    let pick = |f: fn(&GuestRound) -> Duration| {
        let mut v: Vec<Duration> = guests.iter().map(f).collect();
        (percentile(&mut v, 0.5), percentile(&mut v, 1.0))
    };
    let (total, install) = (pick(|g| g.total), pick(|g| g.install));
    let (checks, boot) = (pick(|g| g.checks), pick(|g| g.boot));
    let rest = pick(|g| g.total.saturating_sub(g.install + g.checks + g.boot));
    let accel: BTreeSet<&str> = guests.iter().map(|g| g.accel.as_str()).collect();
    println!(
        "First onDemand pod, artifacts absent, a real guest ({} MiB kernel + initrd), {rounds} fresh nodes, boot under {} (p50 / max):",
        deps.guest
            .as_ref()
            .ok()
            .and_then(|g| Some(
                std::fs::metadata(&g.kernel).ok()?.len() + std::fs::metadata(&g.initrd).ok()?.len()
            ))
            .unwrap_or(0)
            >> 20,
        accel.into_iter().collect::<Vec<_>>().join(", ")
    );
    println!(
        "| total | pull + verify + install | gate + containerd + shim exec | the stand-in's checks | VM boot to /init |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
        ms(total.0),
        ms(total.1),
        ms(install.0),
        ms(install.1),
        ms(rest.0),
        ms(rest.1),
        ms(checks.0),
        ms(checks.1),
        ms(boot.0),
        ms(boot.1)
    );
    Ok(())
}
