//! OCI references (`nvcr.io/nvidia/x:tag@sha256:…`) after the grammar of
//! distribution/reference, with Docker Hub's normalisation (`ubuntu` is
//! `docker.io/library/ubuntu`), and the registry prefixes of `registries.allowed`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry a reference without a host names.
pub const DOCKER_HUB: &str = "docker.io";
/// distribution/reference's limit on `host/path`.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A content digest. Only sha256 is accepted: it is what registries serve and what our store is
/// keyed by, and one algorithm means one spelling of each digest to compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a digest (want sha256: followed by 64 lowercase hex digits)")]
pub struct DigestError(String);

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError(text.to_owned()))?;
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex.len() == 64 && hex.bytes().all(lower_hex) {
            Ok(Self(text.to_owned()))
        } else {
            Err(DigestError(text.to_owned()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed OCI reference. Keeps the text as written for messages and for writing back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    written: String,
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl OciReference {
    /// The host (and port) to contact: `nvcr.io`, `127.0.0.1:5000`, `docker.io` when none is written.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The path inside the registry, `library/` added for Docker Hub's official images.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The text as the operator wrote it.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// `registry/repository[:tag][@digest]`, with `latest` when neither a tag nor a digest is written
    /// (as docker and containerd do), so two spellings of one image compare equal.
    pub fn normalized(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        match (&self.tag, &self.digest) {
            (Some(tag), _) => {
                out.push(':');
                out.push_str(tag);
            }
            (None, None) => out.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_str());
        }
        out
    }

    /// `registry/repository`, the part `registries.allowed` prefixes are matched against.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Why text is not a reference; displays as the message an operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a valid OCI reference ({why})")]
pub struct ReferenceError {
    text: String,
    why: String,
}

impl FromStr for OciReference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_reference(text).map_err(|why| ReferenceError {
            text: text.to_owned(),
            why,
        })
    }
}

fn parse_reference(text: &str) -> Result<OciReference, String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!("drop the {scheme}:// scheme: write host/path:tag"));
    }
    let (name_and_tag, digest) = match text.split_once('@') {
        Some((name, digest)) => (
            name,
            Some(digest.parse::<Digest>().map_err(|e| e.to_string())?),
        ),
        None => (text, None),
    };
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            let tag = &name_and_tag[colon + 1..];
            check_tag(tag)?;
            (&name_and_tag[..colon], Some(tag.to_owned()))
        }
        None => (name_and_tag, None),
    };
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} characters"));
    }
    let (registry, path) = split_registry(name);
    if let Some(registry) = registry {
        check_host(registry)?;
    }
    check_path(path)?;
    let repository = match registry {
        None if !path.contains('/') => format!("library/{path}"),
        _ => path.to_owned(),
    };
    Ok(OciReference {
        written: text.to_owned(),
        registry: registry.unwrap_or(DOCKER_HUB).to_owned(),
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component names a registry only if it looks like a host
/// (a dot, a port, `localhost`, or capitals, which a repository path cannot have).
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    match bytes.next() {
        None => Err("the tag after ':' is empty".into()),
        Some(first) if !word(first) => Err(format!(
            "tag {tag:?} must start with a letter, digit or '_'"
        )),
        Some(_) if tag.len() > MAX_TAG_LEN => Err(format!(
            "tag {tag:?} is longer than {MAX_TAG_LEN} characters"
        )),
        Some(_) if !bytes.all(|b| word(b) || b == b'.' || b == b'-') => Err(format!(
            "tag {tag:?} may only contain letters, digits, '_', '.' and '-'"
        )),
        Some(_) => Ok(()),
    }
}

/// `host[:port]`: DNS name, IPv4 address, or `[IPv6]`.
pub(super) fn check_host(host_port: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (ipv6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {host_port:?} has an unclosed '['"))?;
        if ipv6.is_empty()
            || !ipv6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("registry {host_port:?} has a bad IPv6 address"));
        }
        let port =
            match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("registry {host_port:?}: expected ':port' after ']'")
                })?),
            };
        (None, port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(host_port), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5)
    {
        return Err(format!("registry {host_port:?} has a bad port {port:?}"));
    }
    if let Some(host) = host {
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !host.split('.').all(component_ok) {
            return Err(format!(
                "registry host {host:?} is not a host name or address"
            ));
        }
    }
    Ok(())
}

/// Path components: lowercase letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "path component {component:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(*first) || !alnum(*last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Serialize for OciReference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for OciReference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An entry of `registries.allowed`: a registry host, optionally with a path inside it
/// (`nvcr.io`, `nvcr.io/nvidia`, `127.0.0.1:5000`). Unlike a reference, the first component is
/// always the host, so `docker.io/library` must be written out.
pub(super) fn check_registry_prefix(text: &str) -> Result<(), String> {
    let (host, path) = match text.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (text, None),
    };
    check_host(host)
        .map_err(|why| format!("{text:?} is not a registry or registry/path ({why})"))?;
    if let Some(path) = path {
        check_path(path)
            .map_err(|why| format!("{text:?} is not a registry or registry/path ({why})"))?;
    }
    Ok(())
}

/// Whether `reference` is `prefix` or inside it, on component boundaries: `nvcr.io/nvidia` covers
/// `nvcr.io/nvidia/x` but not `nvcr.io/nvidia-evil/x`.
pub fn is_under(reference: &OciReference, prefix: &str) -> bool {
    let name = reference.name();
    let prefix = prefix.trim_end_matches('/');
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> OciReference {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_registry_path_tag_and_digest() {
        let r = reference(&format!(
            "nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-525@sha256:{HEX}"
        ));
        assert_eq!(r.registry(), "nvcr.io");
        assert_eq!(r.repository(), "nvidia/cloud-native/kata-gpu-artifacts");
        assert_eq!(r.tag(), Some("ubuntu22.04-525"));
        assert_eq!(r.digest().map(Digest::hex), Some(HEX));
    }

    #[test]
    fn normalises_docker_hub_names() {
        assert_eq!(
            reference("ubuntu").normalized(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(reference("ubuntu:22.04").name(), "docker.io/library/ubuntu");
        assert_eq!(
            reference("kata/artifacts").name(),
            "docker.io/kata/artifacts"
        );
        assert_eq!(reference("nvcr.io/x").name(), "nvcr.io/x");
        assert_eq!(reference("localhost/x").registry(), "localhost");
        assert_eq!(
            reference("127.0.0.1:5000/kata/qemu:v1").registry(),
            "127.0.0.1:5000"
        );
        assert_eq!(reference("[::1]:5000/kata").registry(), "[::1]:5000");
        assert_eq!(reference("Registry/x").registry(), "Registry");
        assert_eq!(
            reference(&format!("nvcr.io/x@sha256:{HEX}")).normalized(),
            format!("nvcr.io/x@sha256:{HEX}")
        );
    }

    #[test]
    fn accepts_separators_of_the_grammar() {
        for ok in [
            "a/b.c",
            "a/b_c",
            "a/b__c",
            "a/b---c",
            "r.io/a/b/c/d",
            "r.io:1/x:T_a.g-1",
        ] {
            reference(ok);
        }
    }

    #[test]
    fn refuses_malformed_references_with_the_reason() {
        let cases = [
            ("nvcr.io/x:", "the tag after ':' is empty"),
            ("", "it is empty"),
            ("https://nvcr.io/x", "drop the https:// scheme"),
            ("nvcr.io/X", "path component \"X\""),
            ("nvcr.io/a..b", "path component \"a..b\""),
            ("nvcr.io/a/", "path component \"\""),
            ("nvcr.io/x:-tag", "must start with"),
            ("nvcr.io:port/x", "bad port"),
            ("bad_host.io/x", "not a host name"),
            ("nvcr.io/x@sha256:abc", "is not a digest"),
            ("nvcr.io/x@sha512:abc", "is not a digest"),
        ];
        for (text, why) in cases {
            let err = text.parse::<OciReference>().expect_err(text).to_string();
            assert!(
                err.starts_with(&format!("{text:?} is not a valid OCI reference (")),
                "{err}"
            );
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn digests_must_be_sha256_lowercase_hex() {
        assert!(format!("sha256:{HEX}").parse::<Digest>().is_ok());
        for bad in [
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}", &HEX[1..]),
            format!("sha512:{HEX}"),
            HEX.to_owned(),
        ] {
            let err = bad.parse::<Digest>().expect_err(&bad);
            assert!(err.to_string().contains("64 lowercase hex"), "{err}");
        }
    }

    #[test]
    fn prefixes_match_on_component_boundaries() {
        let r = reference("nvcr.io/nvidia/kata:1");
        assert!(is_under(&r, "nvcr.io"));
        assert!(is_under(&r, "nvcr.io/nvidia"));
        assert!(is_under(&r, "nvcr.io/nvidia/kata"));
        assert!(!is_under(&r, "nvcr.io/nvid"));
        assert!(!is_under(&r, "nvcr.i"));
        assert!(!is_under(&r, "stg.nvcr.io"));
        assert!(is_under(&reference("ubuntu"), "docker.io/library"));
    }

    #[test]
    fn registry_prefixes_are_checked() {
        for ok in [
            "nvcr.io",
            "nvcr.io/nvidia",
            "127.0.0.1:5000",
            "docker.io/library",
        ] {
            assert!(check_registry_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["https://nvcr.io", "nvcr.io/Nvidia", "", "nvcr.io:x"] {
            assert!(check_registry_prefix(bad).is_err(), "{bad}");
        }
    }
}
