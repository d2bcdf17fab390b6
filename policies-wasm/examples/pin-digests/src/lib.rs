//! `pin-digests`: pin tags to manifest digests, so a moved tag cannot change what is pulled.
//!
//! Settings: `{"pins": {"nvcr.io/nvidia/kata:1.0": "sha256:…"}, "denyUnpinned": true}`. A
//! source whose reference is a key of `pins` gets that digest; a source that already carries a
//! digest is kept as it is. With `denyUnpinned`, a source left without a digest is a denial.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use kata_policy_sdk::{Node, Policy, PolicySettings, Request, Source, SourceDecision, reference};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    #[serde(default)]
    pub deny_unpinned: bool,
}

impl PolicySettings for Settings {
    fn check(&self) -> Result<(), String> {
        for (key, digest) in &self.pins {
            if reference::split(key).1.is_none() {
                return Err(format!("settings: pins: {key:?} has no tag to pin"));
            }
            if !is_sha256(digest) {
                return Err(format!(
                    "settings: pins: {key:?}: {digest:?} is not sha256: and 64 lowercase hex digits"
                ));
            }
        }
        Ok(())
    }
}

fn is_sha256(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The sources with their pins, or the first source that stays unpinned when that is denied.
pub fn pin(settings: &Settings, current: Vec<Source>) -> Result<Vec<Source>, String> {
    current
        .into_iter()
        .map(|mut source| {
            if source.digest.is_none() {
                source.digest = settings.pins.get(&source.reference).cloned();
            }
            if source.digest.is_none() && settings.deny_unpinned {
                return Err(format!("{} has no pinned digest", source.reference));
            }
            Ok(source)
        })
        .collect()
}

struct PinDigests;

impl Policy for PinDigests {
    type Settings = Settings;

    fn select_source(
        settings: &Settings,
        _request: Request,
        _node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        match pin(settings, current) {
            Ok(sources) => SourceDecision::Pull(sources),
            Err(e) => SourceDecision::Deny(e),
        }
    }
}

kata_policy_sdk::no_std_runtime!();
kata_policy_sdk::export!(PinDigests);

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn settings(deny_unpinned: bool) -> Settings {
        Settings {
            pins: [("nvcr.io/kata:1".to_owned(), DIGEST.to_owned())].into(),
            deny_unpinned,
        }
    }

    #[test]
    fn pins_known_tags_and_keeps_existing_digests() {
        let existing = Source {
            reference: "quay.io/x:2".into(),
            digest: Some("sha256:ff".into()),
        };
        let out = pin(
            &settings(true),
            vec![Source::new("nvcr.io/kata:1"), existing.clone()],
        )
        .expect("pinned");
        assert_eq!(out[0].digest.as_deref(), Some(DIGEST));
        assert_eq!(out[1], existing);
    }

    #[test]
    fn unpinned_sources_pass_or_deny_as_configured() {
        let out = pin(&settings(false), vec![Source::new("nvcr.io/kata:2")]).expect("passes");
        assert_eq!(out[0].digest, None);
        let err = pin(&settings(true), vec![Source::new("nvcr.io/kata:2")]).expect_err("denied");
        assert_eq!(err, "nvcr.io/kata:2 has no pinned digest");
    }

    #[test]
    fn refuses_bad_pins() {
        let ok = format!(r#"{{"pins":{{"nvcr.io/kata:1":"{DIGEST}"}}}}"#);
        assert!(Settings::parse(&ok).is_ok());
        let no_tag = format!(r#"{{"pins":{{"nvcr.io/kata":"{DIGEST}"}}}}"#);
        assert!(
            Settings::parse(&no_tag)
                .expect_err("no tag")
                .contains("no tag")
        );
        let bad = r#"{"pins":{"nvcr.io/kata:1":"sha256:abc"}}"#;
        assert!(
            Settings::parse(bad)
                .expect_err("digest")
                .contains("not sha256")
        );
    }
}
