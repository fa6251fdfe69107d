//! Small validated newtypes: model names and sha256 digests.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A model name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
///
/// Validated before any I/O, so a name can never walk out of the bucket prefix or the cache
/// directory (`/`, `..`, spaces and NUL are all refused).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ModelName(String);

impl ModelName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Checks `name` against the model naming rule.
    pub fn new(name: &str) -> Result<Self, Error> {
        let problem = if name.is_empty() {
            Some("it is empty".to_string())
        } else if name.len() > Self::MAX_LEN {
            Some(format!("it is {} bytes long (at most {})", name.len(), Self::MAX_LEN))
        } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
            Some("it must start with a letter or a digit".to_string())
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .map(|c| format!("it contains {c:?}"))
        };
        match problem {
            None => Ok(Self(name.to_string())),
            Some(problem) => Err(Error::usage(
                format!("invalid model name {name:?}: {problem}"),
                "model names use letters, digits, '.', '_' and '-', start with a letter or digit, and are at most 128 bytes",
            )),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A sha256 digest as 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Wraps a finished digest.
    pub fn from_digest(bytes: &[u8]) -> Self {
        Self(hex::encode(bytes))
    }

    /// Parses 64 hex characters (either case; stored lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(s.to_ascii_lowercase()))
    }

    /// The full digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, used in cache directory names and short listings.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256Hex::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a sha256 hex digest")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_model_names() {
        for ok in ["Alpha", "llama-3.1-8B", "a", "0_x", &"a".repeat(128)] {
            assert!(ModelName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_could_escape_a_directory() {
        for bad in ["", "../x", "a/b", "..", ".hidden", "-flag", "a b", "a\0b", "é", &"a".repeat(129)] {
            let err = ModelName::new(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn sha_parse_normalises_case_and_rejects_garbage() {
        let upper = "AB".repeat(32);
        assert_eq!(Sha256Hex::parse(&upper).unwrap().as_str(), "ab".repeat(32));
        assert!(Sha256Hex::parse("abc").is_none());
        assert!(Sha256Hex::parse(&"zz".repeat(32)).is_none());
        assert_eq!(Sha256Hex::parse(&"0".repeat(64)).unwrap().short(), "000000000000");
    }
}
