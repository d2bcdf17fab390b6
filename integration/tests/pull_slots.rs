//! Fleet-wide pull slots end to end (issue 21, part 2): two `kata-nri-manager pull` processes,
//! two "nodes" with their own `artifactsDir` and `NODE_NAME`, against one registry behind a
//! counting proxy and one fake Lease API server (the `KATA_NRI_MANAGER_TEST_KUBE_API` seam).
//! With `fleet.maxConcurrentPulls: 1` their downloads never overlap; without it they do; an
//! up-to-date pull asks the API nothing. Needs `--features kube`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kata_nri_integration::lease_api::TEST_API_ENV;
use kata_nri_integration::{CutProxy, FakeLeaseApi, Registry, RegistryOptions, e2e_guard};

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");
/// One file, so a node downloads one blob at a time and the proxy's count is the nodes'.
const IMAGE_BYTES: usize = 4 << 20;
/// Where the proxy stalls each download, so overlap is seen rather than raced.
const HOLD_AFTER: u64 = 1 << 20;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

struct Fleet {
    dir: tempfile::TempDir,
    proxy: CutProxy,
    api: FakeLeaseApi,
}

impl Fleet {
    /// `node`'s config: its own artifactsDir and stateDir, the fleet's slots.
    fn config(&self, node: &str, max_concurrent_pulls: u32) -> PathBuf {
        let root = self.dir.path().join(node);
        fs::create_dir_all(&root).expect("node dir");
        let path = root.join(format!("config-{max_concurrent_pulls}.yaml"));
        fs::write(
            &path,
            format!(
                "artifactsDir: {}\nstateDir: {}\nregistries:\n  insecure: [\"{proxy}\"]\nfleet:\n  maxConcurrentPulls: {max_concurrent_pulls}\n  pullJitter: 0s\nruntimeClasses:\n  - name: kata-fleet\n    artifacts:\n      url: {proxy}/kata/fleet:1\n",
                root.join("artifacts").display(),
                root.join("state").display(),
                proxy = self.proxy.host(),
            ),
        )
        .expect("config");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("mode");
        path
    }

    fn pull(&self, node: &str, config: &Path) -> Child {
        let log = fs::File::create(self.dir.path().join(format!("{node}.log"))).expect("log");
        Command::new(KNM)
            .args(["pull", "--output", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NODE_NAME", node)
            .env("POD_NAMESPACE", "kata-nri-manager")
            .env(TEST_API_ENV, self.api.url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pull")
    }

    fn log(&self, node: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    async fn finish(&self, node: &str, mut child: Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "{node}: {status}\n{}", self.log(node));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} did not finish\n{}",
                self.log(node)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn fleet(registry: &Registry) -> Fleet {
    let upstream = format!("127.0.0.1:{}", registry.port())
        .parse()
        .expect("addr");
    Fleet {
        dir: tempfile::Builder::new()
            .prefix("knm-pull-slots-")
            .tempdir()
            .expect("tempdir"),
        proxy: CutProxy::start(upstream).await.expect("proxy"),
        api: FakeLeaseApi::start().await.expect("lease api"),
    }
}

async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_pull_slot_two_nodes_never_download_at_once() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    registry
        .push_files("kata/fleet:1", &[("kata.img", &noise(IMAGE_BYTES, 1))])
        .expect("push");
    let fleet = fleet(&registry).await;
    let (a_config, b_config) = (fleet.config("node-a", 1), fleet.config("node-b", 1));

    fleet.proxy.hold_after(HOLD_AFTER);
    let a = fleet.pull("node-a", &a_config);
    let b = fleet.pull("node-b", &b_config);
    until("a download to start", Duration::from_secs(30), || {
        fleet.proxy.held() >= 1
    })
    .await;
    // Longer than a waiting node's retry (2–4 s): it has asked again and been refused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fleet.proxy.held(), 1, "the second node downloads too");
    assert_eq!(fleet.proxy.peak_blob_downloads(), 1);
    let holders = fleet.api.holders();
    let holder = holders
        .get("kata-nri-manager-pull-0")
        .cloned()
        .flatten()
        .expect("a node holds the one pull slot");
    assert!(holder == "node-a" || holder == "node-b", "{holders:?}");
    fleet.proxy.release();
    fleet.finish("node-a", a).await;
    fleet.finish("node-b", b).await;
    assert_eq!(
        fleet.proxy.peak_blob_downloads(),
        1,
        "downloads overlapped\n{}\n{}",
        fleet.log("node-a"),
        fleet.log("node-b")
    );
    assert_eq!(
        fleet.api.holders().get("kata-nri-manager-pull-0"),
        Some(&None),
        "the slot is given back when the download ends"
    );
    for node in ["node-a", "node-b"] {
        let installed = fleet
            .dir
            .path()
            .join(node)
            .join("artifacts/kata-fleet/kata.img");
        assert_eq!(
            fs::metadata(&installed).expect("installed").len(),
            IMAGE_BYTES as u64
        );
        assert!(fleet.log(node).contains("pull slot taken"), "{node}");
    }

    // Up to date: one manifest request, no slot asked for.
    let asked = fleet.api.requests();
    let again = fleet.pull("node-a", &a_config);
    fleet.finish("node-a", again).await;
    assert_eq!(
        fleet.api.requests(),
        asked,
        "an up-to-date check took a slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pull_slots_two_nodes_download_at_once() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    registry
        .push_files("kata/fleet:1", &[("kata.img", &noise(IMAGE_BYTES, 2))])
        .expect("push");
    let fleet = fleet(&registry).await;
    let (a_config, b_config) = (fleet.config("node-a", 0), fleet.config("node-b", 0));
    fleet.proxy.hold_after(HOLD_AFTER);
    let a = fleet.pull("node-a", &a_config);
    let b = fleet.pull("node-b", &b_config);
    // The control of the test above: its proxy does see two downloads when they overlap.
    until("both downloads to start", Duration::from_secs(30), || {
        fleet.proxy.held() >= 2
    })
    .await;
    assert_eq!(fleet.proxy.peak_blob_downloads(), 2);
    fleet.proxy.release();
    fleet.finish("node-a", a).await;
    fleet.finish("node-b", b).await;
    assert_eq!(fleet.api.requests(), 0, "no slots: the API is never asked");
}
