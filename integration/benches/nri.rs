//! NRI benchmark against real containerd 2.1 and 1.7 (not a test: it prints a table).
//!
//! - registration: wall time from spawning `kata-nri-manager run` to its "registered" log event;
//! - RunPodSandbox: CRI RunPodSandbox latency with and without the plugin registered, in
//!   alternating blocks on the same containerd, and the difference (the plugin's added latency).
//!
//! Run: `cargo bench -p kata-nri-integration --bench nri` (as root, after
//! `bash scripts/install-deps.sh`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use kata_nri_integration::{
    Containerd, ContainerdOptions, Deps, PluginOptions, PluginProcess, PodSpec, TEST_HANDLER,
    Version,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const REGISTRATIONS: usize = 15;
const BLOCKS: usize = 4;
const PODS_PER_BLOCK: usize = 10;

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: *samples.last().unwrap_or(&Duration::ZERO),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn registration_times(cd: &Containerd) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..REGISTRATIONS {
        let started = Instant::now();
        let plugin = PluginProcess::start(
            Path::new(PLUGIN),
            cd.nri_socket(),
            &PluginOptions::default(),
        )?;
        loop {
            if plugin.log().contains("registered with the runtime") {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "plugin did not register: {}",
                plugin.log()
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(started.elapsed());
        plugin.stop().await?;
    }
    Ok(samples)
}

async fn run_pods(cd: &Containerd, n: usize) -> Result<Vec<Duration>> {
    let mut cri = cd.cri().await?;
    let mut samples = Vec::new();
    for i in 0..n {
        let spec = PodSpec::new(format!("bench-{i}")).handler(TEST_HANDLER);
        let started = Instant::now();
        let id = cri.run_pod(&spec).await?;
        samples.push(started.elapsed());
        cri.stop_pod(&id).await?;
        cri.remove_pod(&id).await?;
    }
    Ok(samples)
}

async fn bench(deps: &Deps, version: Version) -> Result<Vec<[String; 6]>> {
    let cd = Containerd::start(deps, version, ContainerdOptions::default()).await?;
    let reg = stats(registration_times(&cd).await?);

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..BLOCKS {
        without.extend(run_pods(&cd, PODS_PER_BLOCK).await?);
        let plugin = PluginProcess::start(
            Path::new(PLUGIN),
            cd.nri_socket(),
            &PluginOptions::default(),
        )?;
        plugin.wait_registered(1, Duration::from_secs(10)).await?;
        with.extend(run_pods(&cd, PODS_PER_BLOCK).await?);
        plugin.stop().await?;
    }
    let (without, with) = (stats(without), stats(with));
    let added = |a: Duration, b: Duration| {
        if a >= b {
            format!("+{}", ms(a - b))
        } else {
            format!("-{}", ms(b - a))
        }
    };
    let v = version.as_str().to_string();
    Ok(vec![
        [
            v.clone(),
            "process start → registered".into(),
            ms(reg.p50),
            ms(reg.p99),
            ms(reg.max),
            "< 50 ms".into(),
        ],
        [
            v.clone(),
            "RunPodSandbox without plugin".into(),
            ms(without.p50),
            ms(without.p99),
            ms(without.max),
            String::new(),
        ],
        [
            v.clone(),
            "RunPodSandbox with plugin".into(),
            ms(with.p50),
            ms(with.p99),
            ms(with.max),
            String::new(),
        ],
        [
            v,
            "added by the plugin".into(),
            added(with.p50, without.p50),
            added(with.p99, without.p99),
            String::new(),
            "< 1 ms at p99".into(),
        ],
    ])
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we use. Either way, run.
    let deps = match Deps::from_env() {
        Ok(deps) => deps,
        Err(reason) => {
            eprintln!("SKIPPED: nri bench: {}", reason.0);
            return Ok(());
        }
    };
    let mut rows = Vec::new();
    for version in [Version::V2_1, Version::V1_7] {
        rows.extend(bench(&deps, version).await?);
    }
    println!(
        "\nNRI benchmark ({REGISTRATIONS} registrations; {} pods each way per containerd)\n",
        BLOCKS * PODS_PER_BLOCK
    );
    println!("| containerd | measure | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    Ok(())
}
