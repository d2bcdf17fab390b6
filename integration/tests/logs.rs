//! Log lines as an operator reads them: `pull` follows the config's `log.format` (its
//! `--log-format` flag overrides it), and text lines carry no module path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");

/// A config that loads with one warning (a url without a tag): the one log line `pull` writes
/// before it refuses an unknown class, without touching the network or the disk.
fn config(dir: &Path, log: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "{log}runtimeClasses:\n  - name: kata-qemu\n    artifacts:\n      url: registry.example/kata/artifacts\n"
        ),
    )
    .unwrap();
    // Not group or world writable: a config without a node file must be one only its owner
    // can change.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn pull(config: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(KNM)
        .args(["pull", "--config"])
        .arg(config)
        .args(extra)
        .arg("not-a-class")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn warning(config: &Path) -> String {
    format!(
        "{}: runtimeClasses[0].artifacts.url: registry.example/kata/artifacts has no tag or digest: `latest` is implied, which moves whenever anyone pushes; name a tag or pin a digest",
        config.display()
    )
}

const REFUSED: &str = "error: not-a-class: not a runtime class of the config (known: kata-qemu)";

#[test]
fn pull_logs_json_when_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "log: {format: json}\n");
    let output = pull(&config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let mut line: serde_json::Value = serde_json::from_str(lines[0]).expect(lines[0]);
    let timestamp = line
        .as_object_mut()
        .and_then(|o| o.remove("timestamp"))
        .unwrap_or_default();
    assert!(
        timestamp.as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert_eq!(
        line,
        serde_json::json!({
            "level": "WARN",
            "message": "config",
            "warning": warning(&config),
            "target": "kata_nri_manager::cli::pull",
        })
    );
    assert_eq!(lines[1], REFUSED);
}

#[test]
fn the_flag_overrides_the_config_and_text_has_no_module_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "log: {format: json}\n");
    let output = pull(&config, &["--log-format", "text"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    // `TIME LEVEL message field=value`: the time is the only part that varies.
    let (time, rest) = lines[0].split_once(' ').unwrap_or_default();
    assert!(
        time.len() == "2025-01-02T03:04:05.000006Z".len() && time.ends_with('Z'),
        "{stderr}"
    );
    assert_eq!(rest, format!(" WARN config warning={}", warning(&config)));
    assert_eq!(lines[1], REFUSED);
}

#[test]
fn pull_logs_text_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let output = pull(&config, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].ends_with(&format!("  WARN config warning={}", warning(&config))),
        "{stderr}"
    );
    assert!(!stderr.contains("kata_nri_manager::"), "{stderr}");
}
