//! Pull benchmark (not a test: it prints a table): `kata-nri-manager pull` against `oras pull`
//! on the same local registry in the same run, for a 1 GiB artifact of 3 files. Wall time and
//! peak RSS of each process (`wait4` rusage of that child).
//!
//! Run: `cargo bench -p kata-nri-integration --bench pull` (as root, after
//! `bash integration/scripts/fetch-deps.sh`). `KNM_BENCH_PULL_MIB` changes the size (default 1024),
//! `KNM_BENCH_PULL_ROUNDS` the rounds per tool (default 3).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kata_nri_integration::{Deps, Registry, RegistryOptions};

const PULL: &str = env!("CARGO_BIN_EXE_knm-under-test");

struct Sample {
    wall: Duration,
    max_rss_kib: i64,
}

/// Runs `command` to completion; its wall time and peak RSS.
fn measure(command: &mut Command) -> Result<Sample> {
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data filled by the kernel; pid is our child, not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr {
            use std::io::Read;
            let _ = err.read_to_string(&mut stderr);
        }
        bail!("{command:?} failed ({status}): {stderr}");
    }
    Ok(Sample {
        wall,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn noise_file(path: &Path, mib: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(fs::File::create(path)?);
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<()> {
    let deps = match Deps::from_env() {
        Ok(deps) => deps,
        Err(reason) => {
            eprintln!("SKIPPED: pull bench: {reason}");
            return Ok(());
        }
    };
    let total_mib: usize = std::env::var("KNM_BENCH_PULL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rounds: usize = std::env::var("KNM_BENCH_PULL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let registry = Registry::start(&deps, RegistryOptions::plain())?;
    let work = tempfile::Builder::new()
        .prefix("knm-bench-pull-")
        .tempdir()?;
    let sizes = [
        total_mib / 2,
        total_mib * 3 / 8,
        total_mib - total_mib / 2 - total_mib * 3 / 8,
    ];
    let names = ["kata-containers.img", "vmlinux.container", "initrd.img"];
    let src = work.path().join("src");
    fs::create_dir(&src)?;
    for (i, (name, mib)) in names.iter().zip(sizes).enumerate() {
        noise_file(&src.join(name), mib, i as u64 + 1)?;
    }
    let tag = "kata/bench:1";
    let target = format!("{}/{tag}", registry.host());
    let mut push = vec![
        "push",
        target.as_str(),
        "--annotation",
        "org.opencontainers.image.created=2024-01-01T00:00:00Z",
    ];
    push.extend(names);
    registry.oras(&src, &push)?;

    let config = work.path().join("config.yaml");
    let artifacts = work.path().join("artifacts");
    fs::write(
        &config,
        format!(
            "artifactsDir: {}\nregistries:\n  insecure: [\"{}\"]\nruntimeClasses:\n  - name: kata-bench\n    artifacts:\n      url: {target}\n",
            artifacts.display(),
            registry.host()
        ),
    )?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;
    let oras_out = work.path().join("oras-out");

    let mut ours = Vec::new();
    let mut oras = Vec::new();
    for _ in 0..rounds {
        // Fresh destinations each round, alternating the tools so neither always runs second.
        let _ = fs::remove_dir_all(&artifacts);
        let _ = fs::remove_dir_all(&oras_out);
        ours.push(measure(
            Command::new(PULL)
                .args(["pull", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn"),
        )?);
        let oras_bin: PathBuf = deps.oras.clone();
        oras.push(measure(
            Command::new(&oras_bin)
                .args(["pull", "--plain-http", "-o"])
                .arg(&oras_out)
                .arg(&target)
                .arg("--registry-config")
                .arg(work.path().join("oras-auth.json")),
        )?);
    }
    for name in names {
        let a = fs::read(artifacts.join("kata-bench").join(name))?;
        let b = fs::read(oras_out.join(name))?;
        if a != b {
            bail!("{name}: the two pulls differ");
        }
    }

    let row = |tool: &str, samples: &[Sample]| {
        let wall = median(samples.iter().map(|s| s.wall).collect());
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        println!(
            "| {tool:<24} | {:>9.2} s | {:>9.0} MiB/s | {:>8.1} MiB |",
            wall.as_secs_f64(),
            total_mib as f64 / wall.as_secs_f64(),
            rss as f64 / 1024.0
        );
    };
    println!();
    println!(
        "pull of {total_mib} MiB in 3 files from docker-registry on 127.0.0.1 (plain HTTP), median of {rounds} rounds, peak RSS the max"
    );
    println!(
        "| {:<24} | {:>11} | {:>15} | {:>12} |",
        "tool", "wall", "throughput", "peak RSS"
    );
    println!("|{:-<26}|{:-<13}|{:-<17}|{:-<14}|", "", "", "", "");
    row("kata-nri-manager pull", &ours);
    row("oras pull 1.2.0", &oras);
    Ok(())
}
