//! Small, allocation-light views of OCI references (`host[:port]/path[:tag][@digest]`). The host
//! parses every returned reference strictly; these helpers only need to find the parts.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;

/// The registry host a reference names, by docker's rule: the first component is a host only
/// if it has a `.` or a `:`, or is `localhost`; otherwise the reference is on `docker.io`.
pub fn registry(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `reference` with its registry `from` replaced by `to`; `None` when it is on another registry.
/// `from` may carry a path (`nvcr.io/nvidia`), matched on component boundaries.
pub fn rewrite_prefix(reference: &str, from: &str, to: &str) -> Option<String> {
    let from = from.trim_end_matches('/');
    let to = to.trim_end_matches('/');
    let named = if registry(reference) == "docker.io" && !reference.starts_with("docker.io/") {
        // `ubuntu` and `kata/x` are on docker.io: spell the host so the prefix can match.
        let path = if reference.contains('/') {
            reference.to_owned()
        } else {
            format!("library/{reference}")
        };
        format!("docker.io/{path}")
    } else {
        reference.to_owned()
    };
    let rest = named.strip_prefix(from)?;
    if rest.starts_with(['/', ':', '@']) || rest.is_empty() {
        Some(format!("{to}{rest}"))
    } else {
        None
    }
}

/// The parts of a reference after its name: `(name, tag, digest)`.
pub fn split(reference: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&rest[..colon], Some(&rest[colon + 1..]), digest)
        }
        None => (rest, None, digest),
    }
}

/// The reference with its tag replaced (digest dropped: it named the old tag's manifest).
pub fn with_tag(reference: &str, tag: &str) -> String {
    let (name, _, _) = split(reference);
    format!("{name}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;

    #[test]
    fn finds_the_registry_like_docker() {
        assert_eq!(registry("nvcr.io/nvidia/x:1"), "nvcr.io");
        assert_eq!(registry("127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(registry("localhost/x"), "localhost");
        assert_eq!(registry("kata/x"), "docker.io");
        assert_eq!(registry("ubuntu"), "docker.io");
    }

    #[test]
    fn rewrites_on_component_boundaries() {
        assert_eq!(
            rewrite_prefix("nvcr.io/nvidia/x:1", "nvcr.io", "mirror.local:5000").as_deref(),
            Some("mirror.local:5000/nvidia/x:1")
        );
        assert_eq!(
            rewrite_prefix("nvcr.io/nvidia/x:1", "nvcr.io/nvidia", "m.local/nv").as_deref(),
            Some("m.local/nv/x:1")
        );
        assert_eq!(rewrite_prefix("nvcr.io.evil/x", "nvcr.io", "m"), None);
        assert_eq!(
            rewrite_prefix("nvcr.io/nvidia-evil/x", "nvcr.io/nvidia", "m"),
            None
        );
        assert_eq!(
            rewrite_prefix("ubuntu:22.04", "docker.io", "m.local").as_deref(),
            Some("m.local/library/ubuntu:22.04")
        );
    }

    #[test]
    fn splits_name_tag_and_digest() {
        assert_eq!(
            split("h:5000/a/b:t@sha256:x"),
            ("h:5000/a/b", Some("t"), Some("sha256:x"))
        );
        assert_eq!(split("h:5000/a/b"), ("h:5000/a/b", None, None));
        assert_eq!(with_tag("h/a:1@sha256:x", "1-nvidia"), "h/a:1-nvidia");
    }
}
