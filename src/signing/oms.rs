//! The OpenSSF Model Signing (OMS) v1.0 format, key method: a Sigstore bundle (v0.3) holding a
//! DSSE envelope over an in-toto statement that lists every file's sha256. No network: the
//! bundle names its key only by a hint, and carries no transparency-log entry.
//!
//! ```text
//! bundle   {mediaType, verificationMaterial: {publicKey: {hint}, tlogEntries: []}, dsseEnvelope}
//! envelope {payload: base64(statement), payloadType: application/vnd.in-toto+json, signatures: [{sig, keyid}]}
//! sig      ECDSA-P256-SHA256(PAE(payloadType, payload)), DER
//! statement {_type, subject: [{name: MODEL, digest: {sha256: ROOT}}], predicateType, predicate:
//!            {serialization: {method: files, hash_type: sha256, ...}, resources: [{name, algorithm, digest}],
//!             crowecode: {model, version, signed_at}}}
//! ```
//!
//! ROOT is the sha256 of the resources' raw digests, in name order. OMS verifiers ignore
//! predicate fields they do not know; this tool's own field, `crowecode`, binds the signature to
//! one version of one model, which the OMS fields alone do not (a reference verifier compares
//! files only, so a signed Beta copied over Alpha, or an old Alpha, would pass it).
//!
//! Tags use the same envelope (DSSE) over a claim of their own; see [`TagClaim`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::keys::{PrivateKey, PublicKey};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::reference::{TagName, VersionId};

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// The payload type of a signed tag move.
pub const TAG_PAYLOAD_TYPE: &str = "application/vnd.crowecode.tag.v1+json";
/// The largest signature object read.
pub const MAX_SIGNATURE_BYTES: usize = 64 << 20;
/// Paths at the top of a model that OMS tools leave out of a signature by default (and ignore
/// when verifying): they are not signed by OMS, only through this tool's version binding.
pub const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// A Sigstore bundle as OMS writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub media_type: String,
    pub verification_material: VerificationMaterial,
    pub dsse_envelope: Envelope,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<KeyHint>,
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyHint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 of the payload.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Base64 of the DER signature.
    pub sig: String,
    #[serde(default)]
    pub keyid: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// An envelope over `payload` signed by each of `keys`.
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&PrivateKey]) -> Self {
        let message = pae(payload_type, payload);
        let signatures = keys
            .iter()
            .map(|k| EnvelopeSignature { sig: B64.encode(k.sign(&message)), keyid: k.public().id().to_string() })
            .collect();
        Self { payload: B64.encode(payload), payload_type: payload_type.to_string(), signatures }
    }

    /// The payload, and the first of `keys` that signed it (any of the envelope's signatures
    /// counts; key ids are hints only and decide nothing).
    pub fn verify<'k>(&self, payload_type: &str, keys: &'k [PublicKey]) -> Result<(Vec<u8>, &'k PublicKey), String> {
        if self.payload_type != payload_type {
            return Err(format!("the envelope holds {:?}, not {payload_type}", self.payload_type));
        }
        let payload = B64.decode(&self.payload).map_err(|_| "the envelope's payload is not base64".to_string())?;
        let message = pae(payload_type, &payload);
        for sig in &self.signatures {
            let Ok(der) = B64.decode(&sig.sig) else { continue };
            if let Some(key) = keys.iter().find(|k| k.verifies(&message, &der)) {
                return Ok((payload, key));
            }
        }
        let ids: Vec<String> =
            self.signatures.iter().filter(|s| !s.keyid.is_empty()).map(|s| short(&s.keyid)).collect();
        Err(if self.signatures.is_empty() {
            "the envelope has no signature".into()
        } else if ids.is_empty() {
            "signed by no trusted key".into()
        } else {
            format!("signed by no trusted key (signed by {})", ids.join(", "))
        })
    }

    /// Key ids the envelope names (hints, unverified).
    pub fn key_hints(&self) -> Vec<String> {
        self.signatures.iter().filter(|s| !s.keyid.is_empty()).map(|s| short(&s.keyid)).collect()
    }
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}

/// This tool's binding of a signature to one version of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub model: String,
    pub version: String,
    /// RFC 3339 UTC.
    pub signed_at: String,
}

/// What an OMS statement claims.
#[derive(Clone, Debug)]
pub struct Statement {
    /// The subject's name (the model directory's name when signed by OMS tools).
    pub name: String,
    /// File path → sha256 hex.
    pub resources: BTreeMap<String, String>,
    /// Paths the signer left out.
    pub ignore_paths: Vec<String>,
    pub binding: Option<Binding>,
}

/// The files of `manifest` an OMS signature covers: all but the top-level git paths.
pub fn signed_files(manifest: &Manifest, ignore: &[String]) -> BTreeMap<String, String> {
    manifest
        .files
        .iter()
        .filter(|f| !is_ignored(&f.path, ignore))
        .map(|f| (f.path.clone(), f.sha256.to_string()))
        .collect()
}

/// Whether `path` is `p` or lies under `p/` for one of `ignore` (or of the git paths).
pub fn is_ignored(path: &str, ignore: &[String]) -> bool {
    let under = |p: &str| {
        let p = p.trim_end_matches('/');
        !p.is_empty() && (path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
    };
    GIT_PATHS.iter().any(|p| under(p)) || ignore.iter().any(|p| under(p))
}

/// The in-toto statement for `version` of `model`.
pub fn statement(model: &ModelName, version: &VersionId, manifest: &Manifest, signed_at: &str) -> Vec<u8> {
    let files = signed_files(manifest, &[]);
    let mut root = Sha256::new();
    let resources: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, digest)| {
            root.update(hex::decode(digest).unwrap_or_default());
            serde_json::json!({"name": name, "algorithm": "sha256", "digest": digest})
        })
        .collect();
    let value = serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model.as_str(), "digest": {"sha256": hex::encode(root.finalize())}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": false,
                "ignore_paths": GIT_PATHS,
            },
            "resources": resources,
            "crowecode": Binding { model: model.to_string(), version: version.to_string(), signed_at: signed_at.to_string() },
        },
    });
    serde_json::to_vec_pretty(&value).expect("a statement serialises")
}

impl Bundle {
    /// An OMS bundle for `version` of `model`, signed by `key`.
    pub fn sign(
        key: &PrivateKey,
        model: &ModelName,
        version: &VersionId,
        manifest: &Manifest,
        signed_at: &str,
    ) -> Self {
        let payload = statement(model, version, manifest, signed_at);
        Self {
            media_type: BUNDLE_MEDIA_TYPE.to_string(),
            verification_material: VerificationMaterial {
                public_key: Some(KeyHint { hint: Some(key.public().id().to_string()) }),
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Envelope::sign(IN_TOTO_PAYLOAD_TYPE, &payload, &[key]),
        }
    }

    /// Parses a bundle (format only; nothing is verified).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_SIGNATURE_BYTES {
            return Err(format!("a signature of {} bytes is larger than any this tool reads", bytes.len()));
        }
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| format!("not an OMS signature (Sigstore bundle): {e}"))?;
        if bundle.media_type != BUNDLE_MEDIA_TYPE {
            return Err(format!("a Sigstore bundle of type {:?}, not {BUNDLE_MEDIA_TYPE}", bundle.media_type));
        }
        Ok(bundle)
    }

    /// Bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a bundle serialises");
        v.push(b'\n');
        v
    }

    /// The key hint, if any (unverified).
    pub fn hint(&self) -> Option<&str> {
        self.verification_material.public_key.as_ref()?.hint.as_deref()
    }

    /// The statement, without checking who signed it (what `upload --signature` compares
    /// with the tree before anything is uploaded).
    pub fn statement_unverified(&self) -> Result<Statement, String> {
        let payload = B64.decode(&self.dsse_envelope.payload).map_err(|_| "the payload is not base64".to_string())?;
        parse_statement(&payload)
    }

    /// The statement and the trusted key that signed it.
    pub fn verify<'k>(&self, keys: &'k [PublicKey]) -> Result<(Statement, &'k PublicKey), String> {
        let (payload, key) = self.dsse_envelope.verify(IN_TOTO_PAYLOAD_TYPE, keys)?;
        Ok((parse_statement(&payload)?, key))
    }
}

fn parse_statement(payload: &[u8]) -> Result<Statement, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "_type")]
        kind: String,
        subject: Vec<Subject>,
        #[serde(rename = "predicateType")]
        predicate_type: String,
        predicate: Predicate,
    }
    #[derive(Deserialize)]
    struct Subject {
        name: String,
        digest: BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Predicate {
        serialization: Serialization,
        resources: Vec<Resource>,
        #[serde(default)]
        crowecode: Option<Binding>,
    }
    #[derive(Deserialize)]
    struct Serialization {
        method: String,
        hash_type: String,
        #[serde(default)]
        ignore_paths: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Resource {
        name: String,
        algorithm: String,
        digest: String,
    }
    let raw: Raw = serde_json::from_slice(payload).map_err(|e| format!("the signed statement is unreadable: {e}"))?;
    if raw.kind != STATEMENT_TYPE || raw.predicate_type != PREDICATE_TYPE {
        return Err(format!(
            "the signed statement is {} / {}, not an OMS v1.0 model signature",
            raw.kind, raw.predicate_type
        ));
    }
    let [subject] = raw.subject.as_slice() else {
        return Err(format!("the signed statement names {} subjects, not one", raw.subject.len()));
    };
    let (method, hash) = (&raw.predicate.serialization.method, &raw.predicate.serialization.hash_type);
    if method != "files" || hash != "sha256" {
        return Err(format!(
            "the signature hashes {method} with {hash}; this tool checks whole files with sha256 (sign with the `files` method)"
        ));
    }
    let mut root = Sha256::new();
    let mut resources = BTreeMap::new();
    for r in &raw.predicate.resources {
        let bytes = hex::decode(&r.digest).ok().filter(|b| b.len() == 32 && r.algorithm == "sha256");
        let Some(bytes) = bytes else {
            return Err(format!("the signature's digest of {} is not a sha256", r.name));
        };
        root.update(&bytes);
        if resources.insert(r.name.clone(), r.digest.to_ascii_lowercase()).is_some() {
            return Err(format!("the signature lists {} twice", r.name));
        }
    }
    if subject.digest.get("sha256").map(|d| d.to_ascii_lowercase()) != Some(hex::encode(root.finalize())) {
        return Err("the signed statement is inconsistent: its files do not hash to its subject".into());
    }
    Ok(Statement {
        name: subject.name.clone(),
        resources,
        ignore_paths: raw.predicate.serialization.ignore_paths,
        binding: raw.predicate.crowecode,
    })
}

impl Statement {
    /// Whether this statement is about `version` of `model` and its files: the reason when not.
    /// A statement with this tool's binding must name the model and the version; one without it
    /// (made by another OMS signer) must name the model as its subject, and then its files alone
    /// decide.
    pub fn check(&self, model: &ModelName, version: &VersionId, manifest: &Manifest) -> Result<(), String> {
        match &self.binding {
            Some(b) if b.model != model.as_str() => return Err(format!("it was signed for model {}", b.model)),
            Some(b) if VersionId::parse(&b.version).as_ref() != Some(version) => {
                return Err(format!("it was signed for another version of {model} ({})", b.version));
            }
            Some(_) => {}
            None if self.name != model.as_str() => return Err(format!("it was signed for model {}", self.name)),
            None => {}
        }
        // Only the git paths may be left unsigned; whatever else a signer chose to ignore is not
        // covered, so a version holding such files is refused.
        self.check_files(&signed_files(manifest, &[]))
    }

    /// Whether the files (path → sha256) are exactly the signed ones.
    pub fn check_files(&self, files: &BTreeMap<String, String>) -> Result<(), String> {
        if let Some((path, _)) = files.iter().find(|(p, d)| self.resources.get(*p) != Some(d)) {
            return Err(match self.resources.contains_key(path) {
                true => format!("{path} differs from what was signed"),
                false => format!("{path} is not covered by the signature"),
            });
        }
        if let Some(path) = self.resources.keys().find(|p| !files.contains_key(*p)) {
            return Err(format!("the signed file {path} is missing"));
        }
        Ok(())
    }
}

/// What a signed tag move claims: this tag of this model points at this version, as of the
/// move numbered `seq` (which only grows, so a replayed older move can be told apart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagClaim {
    pub model: ModelName,
    pub tag: TagName,
    pub version: VersionId,
    pub seq: u64,
    /// RFC 3339 UTC.
    pub signed_at: String,
    /// Where the move was made (the bucket's signing scope): a claim copied to another bucket or
    /// prefix is refused there. Claims made before scopes existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl TagClaim {
    /// An envelope over the claim, signed by each of `keys`.
    pub fn sign(&self, keys: &[&PrivateKey]) -> Envelope {
        Envelope::sign(TAG_PAYLOAD_TYPE, &serde_json::to_vec(self).expect("a claim serialises"), keys)
    }

    /// The claim in `envelope` and the trusted key that signed it.
    pub fn verify<'k>(envelope: &Envelope, keys: &'k [PublicKey]) -> Result<(Self, &'k PublicKey), String> {
        let (payload, key) = envelope.verify(TAG_PAYLOAD_TYPE, keys)?;
        let claim = serde_json::from_slice(&payload).map_err(|e| format!("the signed tag claim is unreadable: {e}"))?;
        Ok((claim, key))
    }
}
