//! References to a model's versions, one syntax everywhere (CLI, library, fallback config):
//! `Alpha` (= `Alpha:latest`), `Alpha:prod` (a tag), `Alpha@sha256:<64 hex>` or `Alpha@<hex>` with
//! a unique prefix of at least 12 hex digits (a version, pinned by its manifest's digest).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::ModelName;

/// The tag a bare model name means.
pub const LATEST: &str = "latest";
/// The fewest hex digits a version prefix may have.
pub const MIN_PREFIX: usize = 12;

/// A version's id: the sha256 of its manifest's bytes, so it fixes every byte of the version.
/// Written `sha256:<64 hex>` (in JSON too); read with or without `sha256:`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(String);

impl Serialize for VersionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VersionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a sha256 version id")))
    }
}

impl VersionId {
    /// The id of a manifest with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)))
    }

    /// 64 hex digits (any case), with or without `sha256:`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(hex.to_ascii_lowercase()))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        &self.0[..MIN_PREFIX]
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({})", self.short())
    }
}

/// A tag name: the same rules as model names (letters, digits, `.`, `_`, `-`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagName(String);

impl TagName {
    /// Validates a tag name.
    pub fn new(name: &str) -> Result<Self> {
        ModelName::new(name).map_err(|_| {
            Error::usage(
                format!("invalid tag name {name:?}"),
                "tag names use letters, digits, '.', '_' and '-', start with a letter or digit, and are at most 128 bytes",
            )
        })?;
        Ok(Self(name.to_string()))
    }

    /// `latest`.
    pub fn latest() -> Self {
        Self(LATEST.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `latest`.
    pub fn is_latest(&self) -> bool {
        self.0 == LATEST
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagName({})", self.0)
    }
}

/// What a reference names within its model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A tag, resolved through the bucket (or this machine's last resolution, offline).
    Tag(TagName),
    /// A whole version id.
    Version(VersionId),
    /// A prefix of a version id (12 to 63 hex digits), resolved by listing the versions.
    Prefix(String),
}

/// A model and which of its versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub model: ModelName,
    pub target: Target,
}

impl Reference {
    /// Parses `Alpha`, `Alpha:TAG`, `Alpha@sha256:HEX` or `Alpha@HEX`.
    pub fn parse(text: &str) -> Result<Self> {
        let (model, target) = if let Some((m, v)) = text.split_once('@') {
            (m, Some(parse_version(text, v)?))
        } else if let Some((m, t)) = text.split_once(':') {
            (m, Some(Target::Tag(TagName::new(t)?)))
        } else {
            (text, None)
        };
        let model = ModelName::new(model)?;
        Ok(Self { model, target: target.unwrap_or(Target::Tag(TagName::latest())) })
    }

    /// The reference to a whole version.
    pub fn pinned(model: &ModelName, version: &VersionId) -> Self {
        Self { model: model.clone(), target: Target::Version(version.clone()) }
    }

    /// The tag this reference goes through, if it is one.
    pub fn tag(&self) -> Option<&TagName> {
        match &self.target {
            Target::Tag(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is the model's `latest` (what a bare name means).
    pub fn is_latest(&self) -> bool {
        self.tag().is_some_and(TagName::is_latest)
    }
}

fn parse_version(whole: &str, v: &str) -> Result<Target> {
    if let Some(id) = VersionId::parse(v) {
        return Ok(Target::Version(id));
    }
    let hex = v.strip_prefix("sha256:").unwrap_or(v);
    if (MIN_PREFIX..64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Target::Prefix(hex.to_ascii_lowercase()));
    }
    Err(Error::usage(
        format!("invalid version in {whole:?}"),
        format!(
            "a version is `@sha256:` and 64 hex digits, or a unique prefix of at least {MIN_PREFIX} hex digits (`crowecode-cloud resolve MODEL` prints one)"
        ),
    ))
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(t) if t.is_latest() => write!(f, "{}", self.model),
            Target::Tag(t) => write!(f, "{}:{t}", self.model),
            Target::Version(v) => write!(f, "{}@{v}", self.model),
            Target::Prefix(p) => write!(f, "{}@{p}", self.model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_prints_back() {
        let hex = "ab".repeat(32);
        for (text, printed) in [
            ("Alpha".to_string(), "Alpha".to_string()),
            ("Alpha:latest".to_string(), "Alpha".to_string()),
            ("Alpha:prod".to_string(), "Alpha:prod".to_string()),
            (format!("Alpha@sha256:{hex}"), format!("Alpha@sha256:{hex}")),
            (format!("Alpha@{}", hex.to_uppercase()), format!("Alpha@sha256:{hex}")),
            ("Alpha@abababababab".to_string(), "Alpha@abababababab".to_string()),
        ] {
            assert_eq!(Reference::parse(&text).unwrap().to_string(), printed, "{text}");
        }
        assert!(Reference::parse("Alpha").unwrap().is_latest());
        assert_eq!(Reference::parse("Alpha:v1.2").unwrap().tag().unwrap().as_str(), "v1.2");
    }

    #[test]
    fn malformed_references_are_usage_errors() {
        for bad in
            ["Alpha@abc", "Alpha@", "Alpha:", "Alpha:bad!", "bad!:x", "Alpha@zzzzzzzzzzzzzz", "@abababababab", ":prod"]
        {
            let err = Reference::parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn version_ids_are_manifest_digests() {
        let id = VersionId::of(b"{}");
        assert_eq!(id.hex(), "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!(VersionId::parse(&id.to_string()), Some(id.clone()));
        assert_eq!(id.short().len(), 12);
    }
}
