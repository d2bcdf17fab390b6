//! Policy host costs: `cargo bench -p kata-nri-manager --features bench --bench policy`.
//!
//! Prints a table first (percentiles criterion does not give), then criterion's own figures:
//! - cache-cold compile of three example policies (what the first start on a node pays),
//! - first decision after a start with the compile cache warm (a new engine loading three
//!   cached policies, then one decision), and
//! - one warm decision through a chain of three policies (one store per decision, a fresh
//!   instance per policy), as long as a caller waits for it and with the work of readying the
//!   next decision that follows it on the same thread.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::hint::black_box;

use criterion::Criterion;
use kata_nri_manager::config::{FailurePolicy, PolicyLimits};
use kata_nri_manager::policy::{
    Chain, Decision, EngineOptions, Guard, LoadedPolicy, NodeFacts, PciGpu, PolicyEngine, Request,
    SourceOutcome, SourceSpec, Trigger,
};
use serde_json::json;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn components() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-wasm");
    let status = Command::new("bash")
        .arg(root.join("build.sh"))
        .status()
        .expect("run policies-wasm/build.sh");
    assert!(status.success(), "policies-wasm/build.sh failed");
    root.join("target/wasm32-wasip2/release")
}

fn engine(cache: &Path) -> PolicyEngine {
    PolicyEngine::new(EngineOptions {
        // A generous deadline: this measures cost, and a busy machine must not turn a
        // preempted call into a denial that aborts the run.
        limits: PolicyLimits {
            deadline: "1s".parse().expect("duration"),
            ..PolicyLimits::default()
        },
        cache_dir: Some(cache.to_owned()),
    })
    .expect("engine")
}

/// gpu-variant → pin-digests → mirror, as an operator would order them.
fn chain(engine: &PolicyEngine, dir: &Path) -> Chain {
    let policies = [
        (
            "gpu_variant",
            json!({"gpuClasses": ["kata-gpu"], "vendors": {"10de": "nvidia"}}),
        ),
        (
            "pin_digests",
            json!({"pins": {"nvcr.io/kata:1.0-nvidia": DIGEST}}),
        ),
        (
            "mirror",
            json!({"from": "nvcr.io", "to": "registry.local:5000"}),
        ),
    ];
    let loaded = policies
        .iter()
        .map(|(name, settings)| {
            let file = dir.join(format!("{name}.wasm"));
            LoadedPolicy::load(engine, name, &file, Some(settings), FailurePolicy::Deny)
                .expect("load")
        })
        .collect();
    Chain::new(loaded, Guard::default())
}

fn request() -> Request {
    Request {
        class_name: "kata-gpu".into(),
        configured: SourceSpec {
            reference: "nvcr.io/kata:1.0".into(),
            digest: None,
        },
        trigger: Trigger::Startup,
    }
}

fn node() -> NodeFacts {
    NodeFacts {
        arch: "x86_64".into(),
        kernel: "6.1.0".into(),
        has_kvm: true,
        gpus: vec![PciGpu {
            vendor_id: 0x10de,
            device_id: 0x2330,
            address: "0000:3b:00.0".into(),
        }],
        ..NodeFacts::default()
    }
}

fn decide(chain: &Chain, request: &Request, node: &NodeFacts) {
    check(chain.select_source(request, node));
}

fn check(decision: Decision<SourceOutcome>) {
    assert!(
        matches!(decision.outcome, SourceOutcome::Pull { .. }),
        "{decision:?}"
    );
}

/// One decision as the daemon makes it: answered (the time returned), then the next one's
/// store readied on the same thread.
fn answer_then_tidy(chain: &Chain, request: &Request, node: &NodeFacts) -> Duration {
    let started = Instant::now();
    let mut store = chain.decision_store();
    let decision = chain.select_source_in(&mut store, request, node);
    let answered = started.elapsed();
    check(decision);
    chain.tidy(store);
    answered
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn row(what: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    println!(
        "| {what:<44} | {:>10.1?} | {:>10.1?} | {:>10.1?} | {:>10.1?} | {target:<8} |",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

fn table(dir: &Path) {
    println!(
        "| {:<44} | {:>10} | {:>10} | {:>10} | {:>10} | {:<8} |",
        "policy host", "p50", "p90", "p99", "max", "target"
    );
    println!(
        "|{:-<46}|{:-<12}|{:-<12}|{:-<12}|{:-<12}|{:-<10}|",
        "", "", "", "", "", ""
    );
    let cold: Vec<Duration> = (0..5)
        .map(|_| {
            let cache = tempfile::tempdir().expect("tempdir");
            let started = Instant::now();
            chain(&engine(cache.path()), dir);
            started.elapsed()
        })
        .collect();
    row("compile 3 policies, cache cold", cold, "-");

    let cache = tempfile::tempdir().expect("tempdir");
    chain(&engine(cache.path()), dir);
    let (request, node) = (request(), node());
    // The first decision after a start, then the same split into its parts: engine start
    // (wasmtime Engine with the pool, WASI linker, epoch thread), loading three cached policies
    // (read, verify, deserialize, link, validate-settings), and the decision itself.
    let (mut first, mut start, mut load, mut decision) = (vec![], vec![], vec![], vec![]);
    for _ in 0..20 {
        let started = Instant::now();
        let engine = engine(cache.path());
        let engine_ready = Instant::now();
        let chain = chain(&engine, dir);
        let loaded = Instant::now();
        decide(&chain, &request, &node);
        let done = Instant::now();
        first.push(done - started);
        start.push(engine_ready - started);
        load.push(loaded - engine_ready);
        decision.push(done - loaded);
    }
    row("first decision after start, cache warm", first, "< 10 ms");
    row("  of which: engine start", start, "-");
    row("  of which: load 3 cached policies", load, "-");
    row("  of which: the decision", decision, "-");

    let chain = chain(&engine(cache.path()), dir);
    // As the daemon runs them: the decision is answered, then its thread readies the next
    // (drops the spent store, makes the spare with fresh instances). `answered` is what a
    // caller waits for; `cycle` is all the work a decision costs.
    let warm = |node: &NodeFacts| -> (Vec<Duration>, Vec<Duration>) {
        for _ in 0..1000 {
            answer_then_tidy(&chain, &request, node);
        }
        (0..20_000)
            .map(|_| {
                let started = Instant::now();
                let answered = answer_then_tidy(&chain, &request, node);
                (answered, started.elapsed())
            })
            .unzip()
    };
    let (answered, cycle) = warm(&node);
    row(
        "warm decision, chain of 3 (select-source)",
        answered,
        "< 50 µs",
    );
    row("  with readying the next one after it", cycle, "-");
    // A daemon's decisions are far apart: the store made ahead waits, and other work runs
    // meanwhile. A millisecond's sleep between decisions lets the caches go cold.
    let spaced: Vec<Duration> = (0..2_000)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(1));
            answer_then_tidy(&chain, &request, &node)
        })
        .collect();
    row("  the same, decisions 1 ms apart", spaced, "-");
    // Nobody tidies: every decision instantiates its policies and resets the last one's slots
    // on its own path (what `policy eval` does).
    let unready: Vec<Duration> = (0..20_000)
        .map(|_| {
            let started = Instant::now();
            decide(&chain, &request, &node);
            started.elapsed()
        })
        .collect();
    row("  nothing made ahead", unready, "-");
    let unready_spaced: Vec<Duration> = (0..2_000)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(1));
            let started = Instant::now();
            decide(&chain, &request, &node);
            started.elapsed()
        })
        .collect();
    row("  nothing made ahead, 1 ms apart", unready_spaced, "-");
    // The same with this machine's CPU flags (a hundred or more on x86): every call lowers each
    // flag into the guest as a string of its own.
    let probed = NodeFacts::probe();
    let flagged = NodeFacts {
        cpu_flags: probed.cpu_flags,
        ..node.clone()
    };
    let what = format!("  the same, {} CPU flags", flagged.cpu_flags.len());
    row(&what, warm(&flagged).0, "-");
    println!();
    // The machine is shared: a loaded machine's preemptions land in the p99.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average during the run: {}", load.trim());
    }
}

fn main() {
    let dir = components();
    table(&dir);
    let cache = tempfile::tempdir().expect("tempdir");
    let chain = chain(&engine(cache.path()), &dir);
    let (request, node) = (request(), node());
    let mut criterion = Criterion::default().configure_from_args();
    criterion.bench_function("policy/warm decision, chain of 3", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| answer_then_tidy(black_box(&chain), &request, &node))
                .sum()
        })
    });
    criterion.bench_function(
        "policy/warm decision and readying the next, chain of 3",
        |b| b.iter(|| answer_then_tidy(black_box(&chain), &request, &node)),
    );
    criterion.bench_function("policy/first decision after start, cache warm", |b| {
        b.iter(|| {
            let chain = self::chain(&engine(cache.path()), &dir);
            decide(&chain, &request, &node)
        })
    });
    criterion.final_summary();
}
