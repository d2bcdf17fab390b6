//! Credentials as a type that cannot be printed: `Debug` and `Display` say `<redacted>`, so a
//! password never reaches a log line, an error message or a `{:?}` of a struct holding it.

use std::fmt;

/// A secret string (a password, a token). Read it with [`Secret::expose`], only where it is
/// handed to the registry client.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(
            format!("{secret} {secret:?} {secret:#?}"),
            "<redacted> <redacted> <redacted>"
        );
        assert_eq!(secret.expose(), "hunter2");
    }
}
