//! Reading a policy's settings: the JSON text of its `policies.settings` entry.

use alloc::format;
use alloc::string::String;

use serde::de::DeserializeOwned;

/// Parses `settings` into `T`, with a message an operator can act on. Use
/// `#[serde(deny_unknown_fields)]` on `T` so a misspelt key is refused at load.
pub fn parse<T: DeserializeOwned>(settings: &str) -> Result<T, String> {
    serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))
}

/// A policy's settings type: read from the JSON text with [`parse`], then [`check`]ed for what
/// the type itself cannot say (formats, references, ranges). [`Policy`](crate::Policy) reads its
/// settings this way unless it overrides `parse_settings`.
///
/// [`check`]: PolicySettings::check
pub trait PolicySettings: DeserializeOwned {
    /// What serde cannot check; an error refuses the policy at load and denies a decision.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Parses and checks `text`.
    fn parse(text: &str) -> Result<Self, String> {
        let settings: Self = parse(text)?;
        settings.check()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        from: String,
    }

    #[test]
    fn names_the_problem() {
        assert_eq!(
            parse::<Settings>(r#"{"from":"a"}"#),
            Ok(Settings { from: "a".into() })
        );
        let err = parse::<Settings>(r#"{"form":"a"}"#).expect_err("unknown key");
        assert!(err.starts_with("settings: unknown field `form`"), "{err}");
        let err = parse::<Settings>("{}").expect_err("missing key");
        assert!(err.contains("missing field `from`"), "{err}");
    }
}
