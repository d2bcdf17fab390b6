//! The name and index a plugin registers under.

use std::fmt;

/// Problems with a plugin's name or index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid plugin index {0:?}: it must be exactly two digits, 00 to 99 (e.g. \"50\")")]
    Index(String),
    #[error(
        "invalid plugin name {0:?}: use only letters, digits and _ . + - (e.g. \"kata-nri-manager\")"
    )]
    Name(String),
    #[error(
        "cannot tell the plugin's name and index from {0:?}: a launched plugin's file name must be NN-name (e.g. 50-kata-nri-manager)"
    )]
    LaunchedName(String),
}

/// A validated plugin name and two-digit index; containerd orders plugins by the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdentity {
    name: String,
    index: String,
}

impl PluginIdentity {
    pub fn new(name: impl Into<String>, index: impl Into<String>) -> Result<Self, IdentityError> {
        let (name, index) = (name.into(), index.into());
        if index.len() != 2 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdentityError::Index(index));
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.+-".contains(c);
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(IdentityError::Name(name));
        }
        Ok(Self { name, index })
    }

    /// Splits a launched plugin's file name, `NN-name`.
    pub fn from_launched_name(full: &str) -> Result<Self, IdentityError> {
        let (index, name) = full
            .split_once('-')
            .ok_or_else(|| IdentityError::LaunchedName(full.to_owned()))?;
        Self::new(name, index)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> &str {
        &self.index
    }
}

impl fmt::Display for PluginIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.index, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_two_digit_indexes_and_plain_names() {
        let id = PluginIdentity::new("kata-nri-manager", "05").unwrap();
        assert_eq!(id.to_string(), "05-kata-nri-manager");
        assert!(PluginIdentity::new("a_b.c+d-e", "99").is_ok());
    }

    #[test]
    fn refuses_bad_indexes() {
        for bad in ["5", "100", "ab", "", "-1", "٣٣"] {
            let err = PluginIdentity::new("x", bad).unwrap_err();
            assert_eq!(err, IdentityError::Index(bad.into()));
            assert!(err.to_string().contains("exactly two digits"));
        }
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "a b", "a/b", "é"] {
            assert_eq!(
                PluginIdentity::new(bad, "10").unwrap_err(),
                IdentityError::Name(bad.into())
            );
        }
    }

    #[test]
    fn splits_launched_names() {
        let id = PluginIdentity::from_launched_name("42-kata-nri-manager").unwrap();
        assert_eq!((id.index(), id.name()), ("42", "kata-nri-manager"));
        assert!(matches!(
            PluginIdentity::from_launched_name("katanri"),
            Err(IdentityError::LaunchedName(_))
        ));
        assert!(matches!(
            PluginIdentity::from_launched_name("4-x"),
            Err(IdentityError::Index(_))
        ));
    }
}
