//! Restart method `systemd` against a fake systemd on a private D-Bus bus: `configure` reads the
//! unit's `KillMode` and, when it spares the shims, restarts the unit with `RestartUnit` — which
//! the fake turns into a real restart of the harness's containerd — and waits for `JobRemoved`.
//! `KillMode=control-group`, a missing unit or an unreachable bus stop `configure` before it
//! writes anything; a unit that fails to start is rolled back to the previous config.

use std::path::{Path, PathBuf};
use std::process::Output;

use kata_nri_integration::config::{RestartIn, write_runc_class_configs};
use kata_nri_integration::{
    Containerd, ContainerdOptions, Deps, FakeSystemd, FakeUnit, PodSandboxState, PodSpec,
    PrivateBus, Version, e2e_guard,
};

const CLASS: &str = "knm-runc";
const UNIT: &str = "containerd.service";

/// Operator and node config for containerd at `address` with config file `config`, restarted
/// through systemd's `UNIT`.
fn configs(dir: &Path, address: &Path, config: &Path) -> (PathBuf, PathBuf) {
    write_runc_class_configs(
        dir,
        CLASS,
        address,
        config,
        RestartIn::Operator(&format!("{{method: systemd, unit: {UNIT}, timeout: 30s}}")),
    )
    .unwrap()
}

/// containerd's socket and config file.
async fn paths(fake: &FakeSystemd) -> (PathBuf, PathBuf) {
    let cd = fake.containerd().await;
    (cd.address().to_path_buf(), cd.layout().config.clone())
}

/// Runs `kata-nri-manager configure` for containerd at `address` with config file `config`,
/// with the system bus at `bus_address`. Holds no lock on containerd: the fake's restart needs
/// it while configure waits.
async fn configure(
    deps: &Deps,
    dir: &Path,
    (address, config): &(PathBuf, PathBuf),
    bus_address: &str,
    version: Version,
) -> Output {
    let (operator, node) = configs(dir, address, config);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
        .arg("configure")
        .arg("--config")
        .arg(operator)
        .arg("--node-config")
        .arg(node)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--containerd-binary")
        .arg(deps.containerd_bin(version))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// containerd, a private bus and a fake systemd serving `unit` for that containerd.
async fn fake_node(
    deps: &Deps,
    unit: FakeUnit,
    version: Version,
) -> Option<(PrivateBus, FakeSystemd)> {
    let bus = PrivateBus::require().await?;
    let cd = Containerd::start(deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    let fake = FakeSystemd::start(&bus, unit, cd)
        .await
        .expect("the fake systemd serves");
    Some((bus, fake))
}

#[tokio::test]
async fn kill_mode_process_restarts_through_dbus_and_the_class_serves_2_1() {
    restarts_through_dbus_and_the_class_serves(Version::V2_1).await;
}

#[tokio::test]
async fn kill_mode_process_restarts_through_dbus_and_the_class_serves_1_7() {
    restarts_through_dbus_and_the_class_serves(Version::V1_7).await;
}

async fn restarts_through_dbus_and_the_class_serves(version: Version) {
    let deps = e2e_guard!();
    let Some((bus, fake)) = fake_node(&deps, FakeUnit::new(UNIT, "process"), version).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (before, original) = {
        let cd = fake.containerd().await;
        let mut cri = cd.cri().await.unwrap();
        let before = cri
            .run_pod(&PodSpec::new("before").handler("runc"))
            .await
            .expect("pod before the restart");
        (
            before,
            std::fs::read_to_string(&cd.layout().config).unwrap(),
        )
    };

    let output = configure(
        &deps,
        dir.path(),
        &paths(&fake).await,
        bus.address(),
        version,
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("containerd restarted and serving"),
        "{}",
        text(&output)
    );
    assert_eq!(fake.restarts(), 1, "one RestartUnit");

    let cd = fake.containerd().await;
    let config = std::fs::read_to_string(&cd.layout().config).unwrap();
    assert!(config.contains(CLASS) && config != original, "{config}");
    let mut cri = cd.cri().await.unwrap();
    cd.expect_serves(&mut cri, CLASS, "after")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        cri.pod_state(&before).await.unwrap(),
        PodSandboxState::SandboxReady,
        "the pod from before the restart is still running"
    );
}

/// Runs `configure` against a node whose restart must not happen, and checks that nothing was
/// written and nothing restarted; returns configure's stderr.
async fn refused_before_writing(unit: FakeUnit, bus_address: Option<&str>) -> Option<String> {
    let deps = e2e_guard!(None);
    let (bus, fake) = fake_node(&deps, unit, Version::V2_1).await?;
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(&fake).await;
    let original = std::fs::read(&paths.1).unwrap();
    let output = configure(
        &deps,
        dir.path(),
        &paths,
        bus_address.unwrap_or(bus.address()),
        Version::V2_1,
    )
    .await;
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(
        std::fs::read(&paths.1).unwrap(),
        original,
        "the config is unchanged byte for byte"
    );
    assert!(!dir.path().join("state/containerd-ownership.json").exists());
    assert_eq!(fake.restarts(), 0, "nothing was restarted");
    Some(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn kill_mode_control_group_is_refused_before_anything_is_written() {
    let Some(stderr) = refused_before_writing(FakeUnit::new(UNIT, "control-group"), None).await
    else {
        return;
    };
    assert!(stderr.contains("KillMode=control-group"), "{stderr}");
    assert!(stderr.contains("every pod"), "{stderr}");
    assert!(stderr.contains("KillMode=process"), "{stderr}");
}

#[tokio::test]
async fn a_missing_unit_is_a_clear_error_and_nothing_is_written() {
    let Some(stderr) =
        refused_before_writing(FakeUnit::new("other.service", "process"), None).await
    else {
        return;
    };
    assert!(
        stderr.contains(&format!("systemd has no unit {UNIT}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_bus_is_a_clear_error_and_nothing_is_written() {
    let nowhere = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}", nowhere.path().join("bus").display());
    let Some(stderr) = refused_before_writing(FakeUnit::new(UNIT, "process"), Some(&address)).await
    else {
        return;
    };
    assert!(
        stderr.contains("cannot reach the D-Bus system bus") && stderr.contains(&address),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_unit_that_fails_to_start_is_rolled_back_and_restarted() {
    let deps = e2e_guard!();
    let Some((bus, fake)) = fake_node(&deps, FakeUnit::new(UNIT, "mixed"), Version::V2_1).await
    else {
        return;
    };
    // The restart onto the new config fails (containerd stays down, the job ends "failed");
    // the restart onto the restored config works.
    fake.fail_next_restarts(1);
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(&fake).await;
    let original = std::fs::read(&paths.1).unwrap();
    let output = configure(&deps, dir.path(), &paths, bus.address(), Version::V2_1).await;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("restarting {UNIT} ended with result \"failed\"")),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("previous containerd config was restored"),
        "{}",
        text(&output)
    );
    assert_eq!(
        fake.restarts(),
        2,
        "the failed restart, then the one onto the old config"
    );
    assert_eq!(std::fs::read(&paths.1).unwrap(), original);

    let cd = fake.containerd().await;
    let mut cri = cd.cri().await.unwrap();
    let status = cri.status().await.unwrap();
    assert!(
        !status.runtime_handlers.iter().any(|h| h == CLASS),
        "{:?}",
        status.runtime_handlers
    );
    let err = cri
        .run_pod(&PodSpec::new("after").handler(CLASS))
        .await
        .expect_err("the class is not served after the rollback");
    assert!(format!("{err:#}").contains("no runtime for"), "{err:#}");
}
