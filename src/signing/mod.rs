//! Signatures: who may publish a model, on top of the sha256 chain that proves a download equals
//! the bucket. Versions carry OMS signatures ([`oms`]); tag moves carry signed claims. Trust comes
//! only from this machine ([`Trust`]: config, environment, flags), never from the bucket.

pub mod keys;
pub mod oms;

use crate::error::{Error, Result};
pub use keys::{PrivateKey, PublicKey, keygen, pub_path};

/// Environment variable: trusted public keys (PEM text, or paths separated by `:` or newlines).
pub const ENV_TRUSTED_KEYS: &str = "CROWECODE_TRUSTED_KEYS";
/// Environment variable: `1` refuses what no trusted key signed.
pub const ENV_REQUIRE_SIGNATURE: &str = "CROWECODE_REQUIRE_SIGNATURE";
/// Environment variable: the signing key (a path, several separated by `:`, or PEM text).
pub const ENV_SIGNING_KEY: &str = "CROWECODE_SIGNING_KEY";

/// The signature policy of this machine, and the keys it signs with.
#[derive(Debug, Default)]
pub struct Trust {
    /// Keys whose signatures are accepted.
    pub keys: Vec<PublicKey>,
    /// Refuse versions and tags no trusted key signed.
    pub require: bool,
    /// Keys to sign uploads and tag moves with (all of them: a rotation signs with old and new).
    pub signers: Vec<PrivateKey>,
    /// The scope signed tag moves are bound to here: claims of another scope are refused.
    pub scope: String,
}

/// Where the policy's parts were given.
#[derive(Clone, Debug, Default)]
pub struct TrustSources {
    /// `trusted_keys` entries from the config.
    pub config_keys: Vec<String>,
    /// `require_signature` from the config.
    pub config_require: bool,
    /// `--require-signature`.
    pub require_flag: bool,
    /// `--sign-key` values.
    pub sign_keys: Vec<String>,
    /// The config's signing scope (see [`crate::config::CloudConfig::signing_scope`]).
    pub scope: String,
}

impl Trust {
    /// The policy from the config's entries, the environment and the flags.
    pub fn resolve(sources: &TrustSources, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut keys: Vec<PublicKey> = Vec::new();
        let mut add = |entry: &str, origin: &str| -> Result<()> {
            for key in parse_trusted(entry, origin)? {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            Ok(())
        };
        for entry in &sources.config_keys {
            add(entry, "in the config's trusted_keys")?;
        }
        if let Some(v) = env(ENV_TRUSTED_KEYS) {
            add(&v, &format!("in {ENV_TRUSTED_KEYS}"))?;
        }
        let env_require = match env(ENV_REQUIRE_SIGNATURE).as_deref().map(str::trim) {
            None => false,
            Some(v) if ["", "0", "false", "no", "off"].iter().any(|f| v.eq_ignore_ascii_case(f)) => false,
            Some(v) if ["1", "true", "yes", "on"].iter().any(|t| v.eq_ignore_ascii_case(t)) => true,
            Some(other) => {
                return Err(Error::usage(
                    format!("{ENV_REQUIRE_SIGNATURE}={other:?} is neither 1 (true, yes) nor 0 (false, no)"),
                    "set it to 1 to refuse unsigned models, or unset it",
                ));
            }
        };
        let require = sources.config_require || sources.require_flag || env_require;
        if require && keys.is_empty() {
            return Err(Error::config(
                "require_signature",
                "signatures are required but no trusted key is configured, so nothing could be accepted",
                format!(
                    "set {ENV_TRUSTED_KEYS} (or the config's trusted_keys) to the publisher's public key (PATH.pub from `crowecode-cloud keygen`)"
                ),
            ));
        }
        let mut signers = Vec::new();
        let (entries, origin) = if sources.sign_keys.is_empty() {
            (env(ENV_SIGNING_KEY).map(|v| split_sources(&v)).unwrap_or_default(), ENV_SIGNING_KEY)
        } else {
            (sources.sign_keys.clone(), "--sign-key")
        };
        for entry in entries {
            let key = PrivateKey::load(&entry, origin)?;
            if !signers.iter().any(|k: &PrivateKey| k.public() == key.public()) {
                signers.push(key);
            }
        }
        Ok(Self { keys, require, signers, scope: sources.scope.clone() })
    }

    /// Whether anything is to be checked (trusted keys are configured).
    pub fn checks(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The signers, borrowed.
    pub fn signer_refs(&self) -> Vec<&PrivateKey> {
        self.signers.iter().collect()
    }
}

/// Splits a list of keys: PEM text is one entry (it may hold several keys), anything else is
/// paths separated by `:` or newlines.
fn split_sources(value: &str) -> Vec<String> {
    if value.contains("-----BEGIN") {
        return vec![value.to_string()];
    }
    value.split([':', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The public keys an entry names: PEM text (one or more `PUBLIC KEY` blocks), or paths.
fn parse_trusted(entry: &str, origin: &str) -> Result<Vec<PublicKey>> {
    let mut out = Vec::new();
    for source in split_sources(entry) {
        let (text, label) = if source.contains("-----BEGIN") {
            (source.clone(), format!("PEM {origin}"))
        } else {
            let text = std::fs::read_to_string(&source).map_err(|e| {
                Error::usage(
                    format!("cannot read the trusted key {source} ({origin}): {e}"),
                    "give the path of a PEM public key (PATH.pub from `crowecode-cloud keygen`), or the PEM text itself",
                )
            })?;
            (text, source.clone())
        };
        if text.contains("PRIVATE KEY-----") {
            return Err(Error::usage(
                format!("the trusted key {label} is a private key"),
                "trust the public key (PATH.pub from `crowecode-cloud keygen`); keep the private key only where models are signed",
            ));
        }
        let blocks = pem_blocks(&text);
        if blocks.is_empty() {
            return Err(Error::usage(
                format!("{label}: no PEM public key (BEGIN PUBLIC KEY) in it"),
                "give the PATH.pub file `crowecode-cloud keygen` wrote",
            ));
        }
        for block in blocks {
            out.push(PublicKey::from_pem(&block, &label)?);
        }
    }
    Ok(out)
}

/// The `-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----` blocks of `text`.
fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        out.push(format!("{}\n", &rest[start..start + len + END.len()]));
        rest = &rest[start + len + END.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_keys_come_as_pem_text_or_paths_and_never_as_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(&dir.path().join("a"), false).unwrap();
        let b = keygen(&dir.path().join("b"), false).unwrap();
        let pa = dir.path().join("a.pub").display().to_string();
        let pb = dir.path().join("b.pub").display().to_string();
        let env = |paths: String| move |k: &str| (k == ENV_TRUSTED_KEYS).then(|| paths.clone());
        let t = Trust::resolve(&TrustSources::default(), &env(format!("{pa}:{pb}"))).unwrap();
        assert_eq!(t.keys, vec![a.clone(), b.clone()]);
        let both = format!("{}{}", a.pem(), b.pem());
        let t = Trust::resolve(&TrustSources::default(), &env(both)).unwrap();
        assert_eq!(t.keys, vec![a, b]);
        let private = dir.path().join("a").display().to_string();
        let err = Trust::resolve(&TrustSources::default(), &env(private)).unwrap_err();
        assert!(err.to_string().contains("is a private key"), "{err}");
        let required = TrustSources { require_flag: true, ..Default::default() };
        assert_eq!(Trust::resolve(&required, &|_| None).unwrap_err().exit_code(), 3);
    }
}
