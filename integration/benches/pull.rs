//! Pull benchmark (not a test: it prints a table): `kata-nri-manager pull` against `oras pull`
//! on the same local registry in the same run, for a 1 GiB artifact of 3 files. Wall time and
//! peak RSS of each process (`wait4` rusage of that child).
//!
//! A second table measures the blob store (issue 21) on an artifact shaped like kata's (an 8 MiB
//! kernel, the rest an image, a configuration), through a proxy that counts the bytes the
//! registry serves: a full pull, an update that changes only the kernel, and a second class on
//! the same artifact; "fetched" is what `pull` reports downloading, "served" what went over the
//! wire (manifests and headers included).
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
use kata_nri_integration::{CutProxy, Deps, Registry, RegistryOptions};

const PULL: &str = env!("CARGO_BIN_EXE_knm-under-test");

struct Sample {
    wall: Duration,
    max_rss_kib: i64,
}

/// Runs `command` to completion; its wall time and peak RSS.
fn measure(command: &mut Command) -> Result<Sample> {
    command.stdout(Stdio::null());
    measure_output(command).map(|(sample, _)| sample)
}

/// [`measure`], keeping what the command printed (a `pull --output json` report is small: the
/// pipe holds it until the child is reaped).
fn measure_output(command: &mut Command) -> Result<(Sample, String)> {
    command.stderr(Stdio::piped());
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
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout {
        use std::io::Read;
        out.read_to_string(&mut stdout)?;
    }
    Ok((
        Sample {
            wall,
            max_rss_kib: usage.ru_maxrss,
        },
        stdout,
    ))
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

    blob_store(&registry, work.path(), total_mib, rounds)
}

/// One row of the blob-store table.
struct Scenario {
    wall: Duration,
    fetched: u64,
    served: u64,
}

/// The blob-store table: full pull, kernel-only update, second class on the same artifact.
fn blob_store(registry: &Registry, work: &Path, total_mib: usize, rounds: usize) -> Result<()> {
    const KERNEL_MIB: usize = 8;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let upstream = format!("127.0.0.1:{}", registry.port()).parse()?;
    let proxy = runtime.block_on(CutProxy::start(upstream))?;
    let src = work.join("kata");
    fs::create_dir_all(&src)?;
    let image_mib = total_mib.saturating_sub(KERNEL_MIB).max(1);
    noise_file(&src.join("kata-containers.img"), image_mib, 7)?;
    fs::write(src.join("configuration-qemu.toml"), KATA_CONFIG)?;
    let push = |tag: &str, kernel_seed: u64| -> Result<()> {
        noise_file(&src.join("vmlinux.container"), KERNEL_MIB, kernel_seed)?;
        let target = format!("{}/kata/blobs:{tag}", registry.host());
        registry.oras(
            &src,
            &[
                "push",
                &target,
                "--annotation",
                "org.opencontainers.image.created=2024-01-01T00:00:00Z",
                "vmlinux.container",
                "kata-containers.img",
                "configuration-qemu.toml",
            ],
        )?;
        Ok(())
    };
    push("1", 100)?;
    push("2", 200)?;

    let artifacts = work.join("blob-artifacts");
    let config = |name: &str, classes: &[(&str, &str)]| -> Result<PathBuf> {
        let mut text = format!(
            "artifactsDir: {}\nregistries:\n  insecure: [\"{}\"]\nruntimeClasses:\n",
            artifacts.display(),
            proxy.host()
        );
        for (class, tag) in classes {
            text.push_str(&format!(
                "  - name: {class}\n    artifacts:\n      url: {}/kata/blobs:{tag}\n",
                proxy.host()
            ));
        }
        let path = work.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(path)
    };
    let at_1 = config("blobs-1.yaml", &[("kata-qemu", "1")])?;
    let at_2 = config("blobs-2.yaml", &[("kata-qemu", "2")])?;
    let two_classes = config("blobs-two.yaml", &[("kata-qemu", "1"), ("kata-clh", "1")])?;
    let pull = |config: &Path, class: &str| -> Result<Scenario> {
        // What earlier steps wrote is on disk before the clock starts: a pull's syncfs must not
        // pay for the setup's writeback.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let before = proxy.served();
        let (sample, out) = measure_output(
            Command::new(PULL)
                .args(["pull", "--output", "json", "--config"])
                .arg(config)
                .arg(class)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped()),
        )?;
        let report: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("pull's JSON report: {out}"))?;
        let fetched = report
            .as_array()
            .and_then(|classes| classes.first())
            .and_then(|installed| installed["bytes"].as_u64())
            .with_context(|| format!("no bytes in {out}"))?;
        Ok(Scenario {
            wall: sample.wall,
            fetched,
            served: proxy.served() - before,
        })
    };

    let (mut full, mut update, mut second) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let _ = fs::remove_dir_all(&artifacts);
        full.push(pull(&at_1, "kata-qemu")?);
        update.push(pull(&at_2, "kata-qemu")?);
        let _ = fs::remove_dir_all(&artifacts);
        pull(&at_1, "kata-qemu")?;
        second.push(pull(&two_classes, "kata-clh")?);
    }
    let median_of = |samples: &[Scenario]| -> Scenario {
        let mut sorted: Vec<&Scenario> = samples.iter().collect();
        sorted.sort_by_key(|s| s.wall);
        let m = sorted[sorted.len() / 2];
        Scenario {
            wall: m.wall,
            fetched: m.fetched,
            served: m.served,
        }
    };
    let (full, update, second) = (median_of(&full), median_of(&update), median_of(&second));
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let kernel = (KERNEL_MIB as u64) << 20;
    let row = |what: &str, s: &Scenario, target: &str, met: bool| {
        println!(
            "| {what:<34} | {:>7.2} s | {:>10.2} MiB | {:>10.2} MiB | {target:<34} | {:<4} |",
            s.wall.as_secs_f64(),
            mib(s.fetched),
            mib(s.served),
            if met { "met" } else { "MISSED" }
        );
    };
    println!();
    println!(
        "blob store: {} MiB artifact ({KERNEL_MIB} MiB kernel, {image_mib} MiB image, a kata configuration) through a counting proxy, median wall of {rounds} rounds",
        image_mib + KERNEL_MIB
    );
    println!(
        "| {:<34} | {:>9} | {:>14} | {:>14} | {:<34} | {:<4} |",
        "pull", "wall", "fetched (ours)", "served (wire)", "target", ""
    );
    println!(
        "|{:-<36}|{:-<11}|{:-<16}|{:-<16}|{:-<36}|{:-<6}|",
        "", "", "", "", "", ""
    );
    row("full pull", &full, "", true);
    let update_met = update.fetched as f64 <= 1.05 * kernel as f64
        && update.wall.as_secs_f64() <= 0.10 * full.wall.as_secs_f64();
    row(
        "update: only the kernel changed",
        &update,
        &format!(
            "<= {:.2} MiB, <= {:.3} s",
            1.05 * KERNEL_MIB as f64,
            0.10 * full.wall.as_secs_f64()
        ),
        update_met,
    );
    row(
        "second class, same artifact",
        &second,
        "0 bytes fetched",
        second.fetched == 0,
    );
    Ok(())
}

/// A kata configuration naming the artifact's kernel and image (rewritten into each version).
const KATA_CONFIG: &str = "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux.container\"\nimage = \"/opt/kata/share/kata-containers/kata-containers.img\"\n";
