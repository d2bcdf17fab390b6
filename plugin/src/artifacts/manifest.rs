//! The parts of OCI manifests and indexes an artifact pull needs, and how each layer is
//! installed: as a file named by its title (what `oras push` makes) or unpacked (tar layers).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What we ask registries for (the `Accept` header).
pub const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The file name of a layer, as `oras push` writes it.
pub const TITLE: &str = "org.opencontainers.image.title";
/// Set by `oras push` on a directory pushed as a tar+gzip layer: unpack it under its title.
pub const ORAS_UNPACK: &str = "io.deis.oras.content.unpack";

/// A content descriptor (manifest entry or layer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// A parsed manifest body.
#[derive(Debug, Clone)]
pub enum Parsed {
    Image {
        layers: Vec<Descriptor>,
        annotations: std::collections::BTreeMap<String, String>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

/// Parses a manifest or index; a body without `mediaType` is told apart by its fields.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    match (
        document.media_type.as_deref(),
        document.layers,
        document.manifests,
    ) {
        (Some(OCI_INDEX | DOCKER_LIST) | None, None, Some(manifests)) => {
            Ok(Parsed::Index { manifests })
        }
        (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, Some(layers), None) => Ok(Parsed::Image {
            layers,
            annotations: document.annotations.unwrap_or_default(),
        }),
        (Some(other), _, _) => Err(format!("unsupported manifest media type {other}")),
        (None, _, _) => Err("manifest has neither `layers` nor `manifests`".into()),
    }
}

/// The node's platform as OCI spells it (GOOS/GOARCH).
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// The index entry for `os`/`arch`; `Err` lists what the index offers.
pub fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    os: &str,
    arch: &str,
) -> Result<&'a Descriptor, String> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .ok_or_else(|| {
            let offered: Vec<String> = manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            if offered.is_empty() {
                "no platforms".into()
            } else {
                offered.join(", ")
            }
        })
}

/// Compression of a tar layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How one layer is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// Written as one file at this relative path (the layer's title).
    File(String),
    /// A tar archive unpacked under this relative directory ("" for the top).
    Tar {
        into: String,
        compression: Compression,
    },
}

/// A layer checked and ready to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub kind: LayerKind,
}

impl Layer {
    /// The name operators see: the title, else the digest.
    pub fn name(&self) -> String {
        match &self.kind {
            LayerKind::File(title) => title.clone(),
            LayerKind::Tar { into, .. } if !into.is_empty() => into.clone(),
            LayerKind::Tar { .. } => self.digest.to_string(),
        }
    }

    /// The name of a layer in an error about its content: always with its digest, so the
    /// operator can find the very blob that was refused.
    pub fn label(&self) -> String {
        match &self.kind {
            LayerKind::Tar { into, .. } if into.is_empty() => self.digest.to_string(),
            _ => format!("{} ({})", self.name(), self.digest),
        }
    }
}

fn tar_compression(media_type: &str) -> Option<Compression> {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.v1."))
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."))
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.foreign."))?;
    match base {
        "tar" | "diff.tar" => Some(Compression::None),
        "tar+gzip" | "diff.tar.gzip" => Some(Compression::Gzip),
        "tar+zstd" | "diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Decides how each layer is installed, following `oras pull`: a titled layer is a file (even
/// with oras's default media type, which says `tar`), unless oras marked it as a directory to
/// unpack; an untitled tar layer (a container image layer) is unpacked at the top.
pub fn classify(descriptor: &Descriptor) -> Result<Layer, String> {
    let digest: Digest = descriptor
        .digest
        .parse()
        .map_err(|e| format!("layer digest: {e}"))?;
    let size = u64::try_from(descriptor.size)
        .map_err(|_| format!("layer {digest} has a negative size {}", descriptor.size))?;
    let title = descriptor.annotations.get(TITLE).cloned();
    let unpack = descriptor
        .annotations
        .get(ORAS_UNPACK)
        .is_some_and(|v| v == "true");
    let compression = tar_compression(&descriptor.media_type);
    let kind = match (title, compression) {
        (Some(title), Some(compression)) if unpack => LayerKind::Tar {
            into: title,
            compression,
        },
        (Some(title), _) => LayerKind::File(title),
        (None, Some(compression)) => LayerKind::Tar {
            into: String::new(),
            compression,
        },
        (None, None) => {
            return Err(format!(
                "layer {digest} ({}) has no {TITLE} annotation and is not a tar layer",
                descriptor.media_type
            ));
        }
    };
    Ok(Layer {
        digest,
        size,
        media_type: descriptor.media_type.clone(),
        kind,
    })
}

/// The sum of the layers' sizes, or `None` on overflow (a hostile manifest).
pub fn total_size(layers: &[Layer]) -> Option<u64> {
    layers
        .iter()
        .try_fold(0u64, |sum, l| sum.checked_add(l.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn descriptor(media_type: &str, title: Option<&str>) -> Descriptor {
        let mut annotations = BTreeMap::new();
        if let Some(t) = title {
            annotations.insert(TITLE.to_owned(), t.to_owned());
        }
        Descriptor {
            media_type: media_type.into(),
            digest: D.into(),
            size: 3,
            annotations,
            platform: None,
        }
    }

    #[test]
    fn titled_layers_are_files_even_with_orass_tar_default() {
        let layer = classify(&descriptor(
            "application/vnd.oci.image.layer.v1.tar",
            Some("vmlinux"),
        ))
        .expect("layer");
        assert_eq!(layer.kind, LayerKind::File("vmlinux".into()));
        let layer = classify(&descriptor("application/x-kata-kernel", Some("k"))).expect("layer");
        assert_eq!(layer.kind, LayerKind::File("k".into()));
    }

    #[test]
    fn untitled_tar_layers_unpack_at_the_top() {
        for (media_type, compression) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            let layer = classify(&descriptor(media_type, None)).expect("layer");
            assert_eq!(
                layer.kind,
                LayerKind::Tar {
                    into: String::new(),
                    compression
                }
            );
        }
        let mut dir = descriptor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some("bundle"),
        );
        dir.annotations.insert(ORAS_UNPACK.into(), "true".into());
        assert_eq!(
            classify(&dir).expect("layer").kind,
            LayerKind::Tar {
                into: "bundle".into(),
                compression: Compression::Gzip
            }
        );
    }

    #[test]
    fn refuses_unnamed_blobs_and_negative_sizes() {
        assert!(classify(&descriptor("application/octet-stream", None)).is_err());
        let mut negative = descriptor("application/octet-stream", Some("x"));
        negative.size = -1;
        assert!(
            classify(&negative)
                .expect_err("negative")
                .contains("negative size")
        );
    }

    #[test]
    fn sums_sizes_without_overflow() {
        let mut layer = classify(&descriptor("a/b", Some("x"))).expect("layer");
        layer.size = u64::MAX;
        assert_eq!(total_size(&[layer.clone(), layer]), None);
    }

    #[test]
    fn picks_the_node_platform() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
          "manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,
             "platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,
             "platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Parsed::Index { manifests } = parse(index).expect("index") else {
            panic!("not an index")
        };
        assert_eq!(
            pick_platform(&manifests, "linux", "amd64")
                .expect("amd64")
                .digest,
            "sha256:bb"
        );
        assert_eq!(
            pick_platform(&manifests, "linux", "s390x").expect_err("none"),
            "linux/arm64/v8, linux/amd64"
        );
        assert_eq!(node_platform().0, "linux");
    }
}
