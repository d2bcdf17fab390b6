//! Who is starting the sandbox, read from the bundle's OCI config (the gate's working directory
//! is the bundle): containerd's CRI puts the pod's namespace and name in its annotations.

use std::path::Path;

/// CRI annotations containerd sets on a sandbox's OCI spec.
const NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
const NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";

/// Largest config.json we read; a sandbox spec is a few KiB.
const MAX_CONFIG: u64 = 4 << 20;

/// (namespace, name) of the pod whose bundle is `bundle`, when its config.json says.
pub fn read(bundle: &Path) -> (Option<String>, Option<String>) {
    let Ok(file) = std::fs::File::open(bundle.join("config.json")) else {
        return (None, None);
    };
    let mut text = String::new();
    if std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_CONFIG), &mut text).is_err()
    {
        return (None, None);
    }
    let Ok(spec) = serde_json::from_str::<serde_json::Value>(&text) else {
        return (None, None);
    };
    let get = |key: &str| spec["annotations"][key].as_str().map(str::to_owned);
    (get(NAMESPACE_ANNOTATION), get(NAME_ANNOTATION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cri_annotations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-namespace":"team-a","io.kubernetes.cri.sandbox-name":"gpu-job"}}"#,
        )
        .unwrap();
        assert_eq!(
            read(dir.path()),
            (Some("team-a".into()), Some("gpu-job".into()))
        );
    }

    #[test]
    fn no_bundle_means_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), (None, None));
        std::fs::write(dir.path().join("config.json"), "not json").unwrap();
        assert_eq!(read(dir.path()), (None, None));
    }
}
