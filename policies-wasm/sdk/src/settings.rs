//! Reading a policy's settings: the JSON text of its `policies.settings` entry.

use alloc::format;
use alloc::string::String;

use serde::de::DeserializeOwned;

/// Parses `settings` into `T`, with a message an operator can act on. Use
/// `#[serde(deny_unknown_fields)]` on `T` so a misspelt key is refused at load.
pub fn parse<T: DeserializeOwned>(settings: &str) -> Result<T, String> {
    serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))
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
