//! `config check` as an operator meets it: the exact lines it prints for the mistakes a schema
//! cannot name (a whole ConfigMap object, the two files swapped, an oversized file) and for a
//! config that loads but probably does not mean what it says.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn check(args: &[&Path], operator: bool) -> Output {
    let mut command = std::process::Command::new(KNM);
    command.args(["config", "check", "--config"]).arg(args[0]);
    if let Some(node) = args.get(1) {
        command.arg("--node-config").arg(node);
    }
    if operator {
        command.arg("--operator");
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_whole_configmap_object_says_how_to_extract_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: knm-config, namespace: kata-nri-manager}\ndata:\n  config.yaml: |\n    runtimeClasses: []\n",
        0o644,
    );
    let output = check(&[&file], true);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output)
            .lines()
            .find(|l| l.contains("ConfigMap"))
            .unwrap_or_default(),
        format!(
            "error: {}: this is a Kubernetes ConfigMap object, not a kata-nri-manager config: pass the config itself, the value of its data key \"config.yaml\" (kubectl get configmap knm-config -o jsonpath='{{.data.config\\.yaml}}' > config.yaml)",
            file.display()
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn swapped_files_are_named_as_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let operator = write(
        dir.path(),
        "operator.yaml",
        "runtimeClasses:\n- {name: kata-qemu, artifacts: {url: nvcr.io/kata/qemu:3.2}}\n",
        0o600,
    );
    let node = write(
        dir.path(),
        "node.yaml",
        "artifactsDir: /opt/knm\ncontainerd: {configPath: /etc/containerd/config.toml}\n",
        0o600,
    );
    let output = check(&[&node, &operator], false);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "{}: this looks like a node file (node-local keys, no artifacts.url) while {} names the artifacts: did you swap --config and --node-config?",
            node.display(),
            operator.display()
        )),
        "{text}"
    );
}

#[test]
fn warnings_for_what_loads_but_is_probably_not_meant() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "operator.yaml",
        "runtimeClasses:\n\
         - name: kata-qemu\n  \
           nodeSelector: {kata-nri-manager.io/kata-qemu: \"true\"}\n  \
           artifacts: {url: nvcr.io/kata/qemu}\n",
        0o644,
    );
    let output = check(&[&file], true);
    assert!(output.status.success(), "{}", stderr(&output));
    let warnings: Vec<String> = stderr(&output)
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .map(str::to_owned)
        .collect();
    let at = file.display();
    assert_eq!(
        warnings,
        [
            format!(
                "warning: {at}: runtimeClasses[0].artifacts.url: nvcr.io/kata/qemu has no tag or digest: `latest` is implied, which moves whenever anyone pushes; name a tag or pin a digest"
            ),
            format!(
                "warning: {at}: runtimeClasses[0].nodeSelector: kata-nri-manager.io/kata-qemu is the label the daemon sets where it serves the class: the RuntimeClass always selects kata-nri-manager.io/kata-qemu: servable, whatever this says; drop the entry"
            ),
        ]
    );
    let empty = write(dir.path(), "empty.yaml", "", 0o644);
    let output = check(&[&empty], true);
    assert!(output.status.success());
    assert!(
        stderr(&output).contains(&format!(
            "warning: {}: runtimeClasses: no runtime classes: the daemon serves none",
            empty.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_operator_file_is_checked_without_its_owner_and_refuses_node_local_keys() {
    let dir = tempfile::tempdir().unwrap();
    // Writable by anyone: as an operator file that does not matter.
    let file = write(
        dir.path(),
        "operator.yaml",
        "artifactsDir: /opt/x\nruntimeClasses:\n- {name: k, artifacts: {url: nvcr.io/x:1}}\n",
        0o666,
    );
    let output = check(&[&file], true);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("artifactsDir: node-local key"), "{text}");
    assert!(!text.contains("writable"), "no ownership check: {text}");
    let fine = write(
        dir.path(),
        "fine.yaml",
        "runtimeClasses:\n- {name: k, artifacts: {url: nvcr.io/x:1}}\n",
        0o666,
    );
    let output = check(&[&fine], true);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default(),
        format!("{}: ok (1 runtime class: k)", fine.display())
    );
}

#[test]
fn an_oversized_file_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("runtimeClasses: []\n{}\n", "#".repeat(2 * 1024 * 1024));
    let file = write(dir.path(), "big.yaml", &big, 0o644);
    let output = check(&[&file], true);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("a config is at most 1048576 bytes (1 MiB, a ConfigMap's limit)"),
        "{}",
        stderr(&output)
    );
}
