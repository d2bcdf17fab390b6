//! Sizes written as Kubernetes quantities (`8Gi`, `500Mi`, `1G`), or a plain count of bytes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn mebibytes(n: u64) -> Self {
        Self(n << 20)
    }

    pub const fn gibibytes(n: u64) -> Self {
        Self(n << 30)
    }
}

/// Why text is not a size; displays as the message an operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size (use e.g. 8Gi, 500Mi)")]
pub struct ByteSizeError(String);

/// Binary suffixes first so that `Display` prefers them: operators write `8Gi`, not `8589934592`.
const SUFFIXES: [(&str, u64); 12] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ByteSizeError(text.to_owned());
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error());
        }
        let number: u64 = text[..digits].parse().map_err(|_| error())?;
        let suffix = &text[digits..];
        let multiplier = if suffix.is_empty() {
            1
        } else {
            SUFFIXES
                .iter()
                .find(|(name, _)| *name == suffix)
                .map(|(_, m)| *m)
                .ok_or_else(error)?
        };
        number.checked_mul(multiplier).map(Self).ok_or_else(error)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = SUFFIXES
            .iter()
            .find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m));
        match exact {
            Some((name, m)) => write!(f, "{}{name}", self.0 / m),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 8Gi or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes_and_plain_bytes() {
        let cases = [
            ("8Gi", 8 << 30),
            ("500Mi", 500 << 20),
            ("64Mi", 64 << 20),
            ("1Ki", 1024),
            ("1G", 1_000_000_000),
            ("3k", 3000),
            ("4096", 4096),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                text.parse::<ByteSize>().expect(text).bytes(),
                bytes,
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_unknown_suffixes_fractions_and_overflow() {
        for bad in ["8Gx", "", "Gi", "1.5Gi", "8 Gi", "-1", "8gi", "8K", "100Ei"] {
            let err = bad.parse::<ByteSize>().expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not a size (use e.g. 8Gi, 500Mi)")
            );
        }
    }

    #[test]
    fn displays_the_largest_exact_unit() {
        assert_eq!(ByteSize::gibibytes(8).to_string(), "8Gi");
        assert_eq!(ByteSize::mebibytes(1536).to_string(), "1536Mi");
        assert_eq!(ByteSize::from_bytes(2_000_000).to_string(), "2M");
        assert_eq!(ByteSize::from_bytes(1023).to_string(), "1023");
        assert_eq!(ByteSize::from_bytes(0).to_string(), "0");
    }

    #[test]
    fn deserializes_from_text_or_number() {
        let from_text: ByteSize = serde_yaml::from_str("8Gi").expect("text");
        let from_number: ByteSize = serde_yaml::from_str("1024").expect("number");
        assert_eq!(from_text, ByteSize::gibibytes(8));
        assert_eq!(from_number, ByteSize::from_bytes(1024));
    }
}
