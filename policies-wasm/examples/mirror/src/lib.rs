//! `mirror`: pull from a local mirror instead of the upstream registry.
//!
//! Settings: `{"from": "nvcr.io", "to": "registry.local:5000", "fallback": false}`. Every
//! source under `from` (a registry, optionally with a path) is rewritten to `to`, keeping the
//! rest of the reference and its digest. With `fallback: true` the upstream source stays in the
//! list after the mirror, so a pull falls back to it when the mirror fails.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use kata_policy_sdk::{Node, Policy, PolicySettings, Request, Source, SourceDecision, reference};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub fallback: bool,
}

impl PolicySettings for Settings {
    fn check(&self) -> Result<(), String> {
        for (key, value) in [("from", &self.from), ("to", &self.to)] {
            if value.is_empty() || value.contains("://") || value.contains(char::is_whitespace) {
                return Err(format!(
                    "settings: {key} {value:?} must be a registry host[:port][/path], without a scheme"
                ));
            }
        }
        Ok(())
    }
}

/// The sources with mirrored ones first in place of (or, with fallback, before) their upstream.
pub fn mirror(settings: &Settings, current: Vec<Source>) -> Vec<Source> {
    let mut out = Vec::with_capacity(current.len() * 2);
    for source in current {
        match reference::rewrite_prefix(&source.reference, &settings.from, &settings.to) {
            Some(mirrored) => {
                out.push(Source {
                    reference: mirrored,
                    digest: source.digest.clone(),
                });
                if settings.fallback {
                    out.push(source);
                }
            }
            None => out.push(source),
        }
    }
    out
}

struct Mirror;

impl Policy for Mirror {
    type Settings = Settings;

    fn select_source(
        settings: &Settings,
        _request: Request,
        _node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        SourceDecision::Pull(mirror(settings, current))
    }
}

kata_policy_sdk::no_std_runtime!();
kata_policy_sdk::export!(Mirror);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(fallback: bool) -> Settings {
        Settings {
            from: "nvcr.io".into(),
            to: "registry.local:5000".into(),
            fallback,
        }
    }

    #[test]
    fn rewrites_sources_under_from_and_keeps_others() {
        let current = vec![
            Source {
                reference: "nvcr.io/nvidia/kata:1".into(),
                digest: Some("sha256:ab".into()),
            },
            Source::new("quay.io/kata/x:2"),
        ];
        let out = mirror(&settings(false), current);
        let refs: Vec<_> = out.iter().map(|s| s.reference.as_str()).collect();
        assert_eq!(
            refs,
            ["registry.local:5000/nvidia/kata:1", "quay.io/kata/x:2"]
        );
        assert_eq!(out[0].digest.as_deref(), Some("sha256:ab"));
    }

    #[test]
    fn fallback_keeps_upstream_after_the_mirror() {
        let out = mirror(&settings(true), vec![Source::new("nvcr.io/a:1")]);
        let refs: Vec<_> = out.iter().map(|s| s.reference.as_str()).collect();
        assert_eq!(refs, ["registry.local:5000/a:1", "nvcr.io/a:1"]);
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(Settings::parse(r#"{"from":"nvcr.io","to":"m:5000"}"#).is_ok());
        let err = Settings::parse(r#"{"from":"https://nvcr.io","to":"m"}"#).expect_err("scheme");
        assert!(err.contains("without a scheme"), "{err}");
        assert!(Settings::parse(r#"{"from":"nvcr.io"}"#).is_err());
        assert!(Settings::parse(r#"{"from":"a","to":"b","extra":1}"#).is_err());
    }
}
