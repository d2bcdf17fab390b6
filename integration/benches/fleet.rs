//! Fleet bench (issue 21, part 2; not a test: it prints a table): N "nodes", each a
//! `kata-nri-manager pull` process with its own `artifactsDir`, `stateDir` and `NODE_NAME`, pull
//! one new artifact at the same moment from one docker-registry (the origin) behind the
//! harness's counting proxy. Four scenarios: straight from the origin, without and with pull
//! slots (`fleet.maxConcurrentPulls` through one fake Lease API server, the
//! `KATA_NRI_MANAGER_TEST_KUBE_API` seam), and through a pull-through cache (a second,
//! cold docker-registry with `proxy.remoteurl` = the origin, named in each node's `hosts.toml`),
//! without and with slots. Reported: time until every node is ready, the most blob downloads
//! the origin served at once (blob GETs in flight in its proxy; a node fetches the artifact's
//! three layers in parallel), the bytes the origin served, the same peak at the mirror, and the
//! Lease API requests.
//!
//! Run: `cargo bench -p kata-nri-integration --features kube --bench fleet` (as root, after
//! `bash integration/scripts/fetch-deps.sh`). `KNM_FLEET_NODES` (default 50), `KNM_FLEET_MIB`
//! (artifact size, default 16), `KNM_FLEET_SLOTS` (default 5), `KNM_FLEET_JITTER`
//! (`fleet.pullJitter`, default `2s`: the shipped `10s` would add ~10 s to every slot row).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kata_nri_integration::lease_api::TEST_API_ENV;
use kata_nri_integration::{CutProxy, Deps, FakeLeaseApi, Registry, RegistryOptions};

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");
const REPO_TAG: &str = "kata/fleet:1";
const KATA_CONFIG: &str = "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux.container\"\nimage = \"/opt/kata/share/kata-containers/kata-containers.img\"\n";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn noise_file(path: &Path, bytes: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(fs::File::create(path)?);
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    let mut block = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        out.write_all(&block[..n])?;
        left -= n;
    }
    out.flush()?;
    Ok(())
}

/// One row of the table.
struct Row {
    scenario: String,
    nodes: usize,
    all_ready: Duration,
    origin_peak: usize,
    origin_bytes: u64,
    mirror_peak: Option<usize>,
    lease_requests: usize,
    /// Connections the proxies could not follow: the peaks are lower bounds then.
    unframed: usize,
}

/// What a scenario varies.
struct Scenario<'a> {
    name: String,
    slots: u32,
    /// The pull-through cache's proxy, named in each node's `hosts.toml`.
    mirror: Option<&'a CutProxy>,
}

struct Bench {
    work: PathBuf,
    nodes: usize,
    jitter: String,
    origin: CutProxy,
    api: FakeLeaseApi,
}

impl Bench {
    /// Writes node `i`'s config (and `hosts.toml`), under `root`.
    fn node_config(&self, root: &Path, i: usize, scenario: &Scenario) -> Result<PathBuf> {
        let node = root.join(format!("node-{i}"));
        fs::create_dir_all(&node)?;
        let origin = self.origin.host();
        let mut registries = format!("registries:\n  insecure: [\"{origin}\"]\n");
        if let Some(mirror) = scenario.mirror {
            // containerd's layout, as a node would have it for Spegel, Dragonfly or a cache.
            let hosts = node.join("certs.d").join(&origin);
            fs::create_dir_all(&hosts)?;
            fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"http://{origin}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    mirror.host()
                ),
            )?;
            registries.push_str(&format!("  hostsDir: {}\n", node.join("certs.d").display()));
        }
        let config = node.join("config.yaml");
        fs::write(
            &config,
            format!(
                "artifactsDir: {}\nstateDir: {}\n{registries}fleet:\n  maxConcurrentPulls: {}\n  pullJitter: {}\nruntimeClasses:\n  - name: kata-fleet\n    artifacts:\n      url: {origin}/{REPO_TAG}\n",
                node.join("artifacts").display(),
                node.join("state").display(),
                scenario.slots,
                self.jitter,
            ),
        )?;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;
        Ok(config)
    }

    fn run(&self, scenario: &Scenario) -> Result<Row> {
        let root = self.work.join("nodes");
        let _ = fs::remove_dir_all(&root);
        let configs: Vec<PathBuf> = (0..self.nodes)
            .map(|i| self.node_config(&root, i, scenario))
            .collect::<Result<_>>()?;
        self.api.clear();
        let (asked_before, served_before) = (self.api.requests(), self.origin.served());
        self.origin.reset_peak();
        let unframed_before = self.origin.unframed_connections()
            + scenario.mirror.map_or(0, CutProxy::unframed_connections);
        if let Some(mirror) = scenario.mirror {
            mirror.reset_peak();
        }
        // Earlier scenarios' writes are on disk before the clock starts: the first installs'
        // syncfs must not pay for them.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let started = Instant::now();
        let mut children: Vec<(usize, Child)> = configs
            .iter()
            .enumerate()
            .map(|(i, config)| -> Result<(usize, Child)> {
                let log = fs::File::create(root.join(format!("node-{i}/pull.log")))?;
                let child = Command::new(KNM)
                    .args(["pull", "--config"])
                    .arg(config)
                    .env("RUST_LOG", "info")
                    .env("NODE_NAME", format!("node-{i}"))
                    .env("POD_NAMESPACE", "kata-nri-manager")
                    .env(TEST_API_ENV, self.api.url())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("spawning pull")?;
                Ok((i, child))
            })
            .collect::<Result<_>>()?;
        let deadline = started + Duration::from_secs(1800);
        while !children.is_empty() {
            let mut running = Vec::new();
            for (i, mut child) in children {
                match child.try_wait()? {
                    Some(status) if status.success() => {}
                    Some(status) => {
                        let log = fs::read_to_string(root.join(format!("node-{i}/pull.log")))
                            .unwrap_or_default();
                        bail!("{}: node-{i} failed ({status}):\n{log}", scenario.name);
                    }
                    None => running.push((i, child)),
                }
            }
            children = running;
            if Instant::now() > deadline {
                bail!(
                    "{}: {} nodes not ready after 30 min",
                    scenario.name,
                    children.len()
                );
            }
            // The proxies and the Lease API run on the runtime's own worker thread.
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_ready = started.elapsed();
        let row = Row {
            scenario: scenario.name.clone(),
            nodes: self.nodes,
            all_ready,
            origin_peak: self.origin.peak_blob_downloads(),
            origin_bytes: self.origin.served() - served_before,
            mirror_peak: scenario.mirror.map(CutProxy::peak_blob_downloads),
            lease_requests: self.api.requests() - asked_before,
            unframed: self.origin.unframed_connections()
                + scenario.mirror.map_or(0, CutProxy::unframed_connections)
                - unframed_before,
        };
        let _ = fs::remove_dir_all(&root);
        Ok(row)
    }
}

fn main() -> Result<()> {
    let deps = match Deps::from_env() {
        Ok(deps) => deps,
        Err(reason) => {
            eprintln!("SKIPPED: fleet bench: {reason}");
            return Ok(());
        }
    };
    let nodes: usize = env_or("KNM_FLEET_NODES", 50);
    let mib: usize = env_or("KNM_FLEET_MIB", 16);
    let slots: u32 = env_or("KNM_FLEET_SLOTS", 5);
    let jitter: String = env_or("KNM_FLEET_JITTER", "2s".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let work = tempfile::Builder::new()
        .prefix("knm-bench-fleet-")
        .tempdir()?;

    // The artifact: shaped like kata's (a kernel, an image, a configuration).
    let origin_registry = Registry::start(&deps, RegistryOptions::plain())?;
    let src = work.path().join("src");
    fs::create_dir_all(&src)?;
    let kernel = (mib << 20) / 8;
    noise_file(&src.join("vmlinux.container"), kernel, 1)?;
    noise_file(&src.join("kata-containers.img"), (mib << 20) - kernel, 2)?;
    fs::write(src.join("configuration-qemu.toml"), KATA_CONFIG)?;
    origin_registry.oras(
        &src,
        &[
            "push",
            &format!("{}/{REPO_TAG}", origin_registry.host()),
            "--annotation",
            "org.opencontainers.image.created=2024-01-01T00:00:00Z",
            "vmlinux.container",
            "kata-containers.img",
            "configuration-qemu.toml",
        ],
    )?;
    let upstream = format!("127.0.0.1:{}", origin_registry.port()).parse()?;
    let bench = Bench {
        work: work.path().to_owned(),
        nodes,
        jitter: jitter.clone(),
        origin: runtime.block_on(CutProxy::start(upstream))?,
        api: runtime.block_on(FakeLeaseApi::start())?,
    };

    let mut rows = Vec::new();
    for with_slots in [0, slots] {
        let name = match with_slots {
            0 => "origin, no slots".to_owned(),
            k => format!("origin, {k} pull slots"),
        };
        eprintln!("fleet bench: {name} ({nodes} nodes)");
        rows.push(bench.run(&Scenario {
            name,
            slots: with_slots,
            mirror: None,
        })?);
    }
    for with_slots in [0, slots] {
        // A cold cache for each row: what a rollout of a new artifact meets.
        let mirror_registry = Registry::start(
            &deps,
            RegistryOptions {
                proxy_remote: Some(format!("http://{}", bench.origin.host())),
                ..RegistryOptions::plain()
            },
        )?;
        let upstream = format!("127.0.0.1:{}", mirror_registry.port()).parse()?;
        let mirror = runtime.block_on(CutProxy::start(upstream))?;
        let name = match with_slots {
            0 => "pull-through mirror, no slots".to_owned(),
            k => format!("pull-through mirror, {k} pull slots"),
        };
        eprintln!("fleet bench: {name} ({nodes} nodes)");
        rows.push(bench.run(&Scenario {
            name,
            slots: with_slots,
            mirror: Some(&mirror),
        })?);
    }

    let mib_of = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    println!();
    println!(
        "fleet: {nodes} nodes pull one {mib} MiB artifact (3 layers, fetched in parallel) at once; origin = docker-registry behind a counting proxy; pullJitter {jitter}"
    );
    println!(
        "| {:<36} | {:>5} | {:>17} | {:>24} | {:>22} | {:>24} | {:>18} |",
        "scenario",
        "nodes",
        "time to all-ready",
        "peak blob GETs at origin",
        "bytes served by origin",
        "peak blob GETs at mirror",
        "Lease API requests"
    );
    println!(
        "|{:-<38}|{:-<7}|{:-<19}|{:-<26}|{:-<24}|{:-<26}|{:-<20}|",
        "", "", "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<36} | {:>5} | {:>15.1} s | {:>24} | {:>18.1} MiB | {:>24} | {:>18} |",
            row.scenario,
            row.nodes,
            row.all_ready.as_secs_f64(),
            row.origin_peak,
            mib_of(row.origin_bytes),
            row.mirror_peak
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            row.lease_requests,
        );
    }
    for row in rows.iter().filter(|r| r.unframed > 0) {
        println!(
            "{}: {} connections not followed by the proxies (answers without a length): its peaks are lower bounds",
            row.scenario, row.unframed
        );
    }
    Ok(())
}
