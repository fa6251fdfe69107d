//! Signatures in the bucket, and the policy that decides what may become visible:
//!
//! ```text
//! <prefix><Model>/versions/<hex>.<key id 16>.sig   an OMS signature of the version, one per key
//! <prefix><Model>/tags/<tag>.json                  carries the signed claim of its last move
//! ```
//!
//! A version passes when one of its signatures verifies with a trusted key and its statement is
//! about this model, this version and exactly these files; a tag passes when its last move was
//! signed by a trusted key, for this model, tag, version and move number, and that number is
//! not lower than one this machine verified before. With `require_signature` anything else is
//! refused (exit 6) before a byte is fetched; with trusted keys but no requirement it is a warning.

use bytes::Bytes;
use serde::Serialize;

use super::Session;
use super::versions::{Found, TagRecord, now_rfc3339};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::progress::Event;
use crate::provider::PutMode;
use crate::reference::{Reference, VersionId};
use crate::signing::oms::{Bundle, TagClaim};

/// A signature a trusted key made over a version.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The bundle, as stored.
    pub bytes: Bytes,
    /// The key that signed it (short id and where it is configured).
    pub key: String,
    /// Whether it names the version (this tool's signatures do): it then covers every digest
    /// of the manifest, the chunks' included. A publisher's `model_signing` signature covers
    /// the files' digests only.
    pub bound: bool,
}

/// Who signed a version, as the bucket says (verified against the trusted keys when any are
/// configured).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Signers {
    /// Short key ids of every signature stored for the version.
    pub keys: Vec<String>,
    /// Of those, the ones whose signature verifies with a trusted key (empty when no key is trusted).
    pub trusted: Vec<String>,
}

/// Writes an OMS signature of `version` by each signing key (one object per key; signing again
/// with the same key replaces its signature). Returns the short key ids.
pub(crate) async fn sign_version(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    manifest: &Manifest,
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for key in &s.trust.signers {
        let bundle = Bundle::sign(key, model, version, manifest, &now_rfc3339());
        let object = s.layout.signature_key(model, version, key.public().short_id());
        s.provider
            .put(&object, Bytes::from(bundle.to_bytes()), PutMode::Overwrite)
            .await
            .map_err(|e| Error::from_provider(format!("writing {object}"), e))?;
        ids.push(key.public().short_id().to_string());
    }
    Ok(ids)
}

/// Stores a signature made elsewhere for `version` (named by its key hint, or by its digest).
pub(crate) async fn put_signature(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    bundle: &[u8],
) -> Result<String> {
    let parsed = Bundle::parse(bundle).map_err(|what| Error::usage(what, "give an OMS signature file (model.sig)"))?;
    let id: String = match parsed.hint() {
        Some(hint) if hint.len() >= 16 && hint.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hint[..16].to_ascii_lowercase()
        }
        _ => hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(bundle)[..8]),
    };
    let object = s.layout.signature_key(model, version, &id);
    s.provider
        .put(&object, Bytes::copy_from_slice(bundle), PutMode::Overwrite)
        .await
        .map_err(|e| Error::from_provider(format!("writing {object}"), e))?;
    Ok(id)
}

/// The signatures stored for `version`: (short key id, bytes).
pub(crate) async fn list(s: &Session, model: &ModelName, version: &VersionId) -> Result<Vec<(String, Bytes)>> {
    Ok(list_all(s, model, version).await?.0)
}

/// The signatures stored for `version`, and the ids of those too large to read.
async fn list_all(s: &Session, model: &ModelName, version: &VersionId) -> Result<(Vec<(String, Bytes)>, Vec<String>)> {
    let prefix = s.layout.signatures_prefix(model, version);
    let objects = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    let (mut out, mut too_large) = (Vec::new(), Vec::new());
    for o in objects {
        let Some(id) = o.key.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".sig")) else { continue };
        if o.size > crate::signing::oms::MAX_SIGNATURE_BYTES as u64 {
            too_large.push(id.to_string());
            continue;
        }
        if let Some(bytes) = s.get_small(&o.key).await? {
            out.push((id.to_string(), bytes));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, too_large))
}

/// Who signed `version`, for `list`, `history` and `status`.
pub(crate) async fn signers(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    manifest: &Manifest,
) -> Result<Signers> {
    let mut out = Signers::default();
    for (id, bytes) in list(s, model, version).await? {
        if s.trust.checks()
            && let Ok(bundle) = Bundle::parse(&bytes)
            && let Ok((statement, key)) = bundle.verify(&s.trust.keys)
            && statement.check(model, version, manifest).is_ok()
        {
            out.trusted.push(key.short_id().to_string());
        }
        out.keys.push(id);
    }
    Ok(out)
}

/// Applies the policy to a version found for a reference, and to the tag it was found through:
/// `Some` when a trusted key signed it; `None` when nothing is checked (no trusted key) or the
/// check failed without `require_signature` (then with a warning). With `require_signature` a
/// failure is an error (exit 6), raised before anything is fetched.
pub(crate) async fn check(s: &Session, found: &Found) -> Result<Option<Accepted>> {
    if !s.trust.checks() {
        return Ok(None);
    }
    let model = &found.manifest.model;
    if let Some(tag) = &found.tag {
        let subject = format!("{model}:{tag}");
        if let Err(what) = check_tag(s, found.tag_record.as_ref(), &found.version) {
            let v = found.version.short();
            let hint = format!(
                "nothing was installed; the tag was moved without a trusted key: download a pinned, signed version ({model}@sha256:…), or, if {model}@{v} is genuine, `crowecode-cloud sign {model}@{v} --sign-key KEY` and `crowecode-cloud tag {model}@{v} {tag} --sign-key KEY`"
            );
            refuse_or_warn(s, subject, what, hint)?;
        }
    }
    let subject = Reference::pinned(model, &found.version).to_string();
    match check_version(s, model, &found.version, &found.manifest).await? {
        Ok(accepted) => Ok(Some(accepted)),
        Err(what) => {
            let hint = format!(
                "nothing was installed and the previous version is untouched; only versions signed by a key in trusted_keys ({}) are accepted: if this one is genuine, sign it with `crowecode-cloud sign {subject} --sign-key KEY`",
                crate::signing::ENV_TRUSTED_KEYS
            );
            refuse_or_warn(s, subject, what, hint)?;
            Ok(None)
        }
    }
}

fn refuse_or_warn(s: &Session, subject: String, what: String, hint: String) -> Result<()> {
    if s.trust.require {
        return Err(Error::Signature { subject, what, hint });
    }
    s.reporter.report(Event::Warning {
        message: format!("{subject}: {what} (installed anyway: signatures are not required)"),
    });
    Ok(())
}

/// The first signature of `version` a trusted key made over exactly this version, or why none.
async fn check_version(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    manifest: &Manifest,
) -> Result<std::result::Result<Accepted, String>> {
    let (stored, too_large) = list_all(s, model, version).await?;
    let mut reasons: Vec<String> = too_large
        .iter()
        .map(|id| {
            format!(
                "signature {id} is larger than {} MiB (a signature object too large), so it was not read",
                crate::signing::oms::MAX_SIGNATURE_BYTES >> 20
            )
        })
        .collect();
    if stored.is_empty() && reasons.is_empty() {
        return Ok(Err("it is not signed".into()));
    }
    for (id, bytes) in stored {
        let outcome = Bundle::parse(&bytes).and_then(|bundle| {
            let (statement, key) = bundle.verify(&s.trust.keys)?;
            statement.check(model, version, manifest).map(|()| (key.label(), statement.binding.is_some()))
        });
        match outcome {
            Ok((key, bound)) => return Ok(Ok(Accepted { bytes, key, bound })),
            Err(why) => reasons.push(if why.starts_with("signed by") { why } else { format!("signature {id}: {why}") }),
        }
    }
    reasons.dedup();
    Ok(Err(reasons.join("; ")))
}

/// Whether the tag's last move was signed by a trusted key for `version`, and is not older than
/// one this machine verified; records it when it passes.
fn check_tag(s: &Session, record: Option<&TagRecord>, version: &VersionId) -> std::result::Result<(), String> {
    let Some(record) = record else {
        return Err("the tag is not signed (a bucket of an earlier release: it has no tag object)".into());
    };
    let Some(envelope) = &record.signature else {
        return Err("the tag's last move is not signed".into());
    };
    let (claim, _) = TagClaim::verify(envelope, &s.trust.keys)?;
    if claim.model != record.model || claim.tag != record.tag || &claim.version != version || claim.seq != record.seq {
        return Err(format!(
            "the signed move says {}:{} → {} (move {}), but the tag says {} (move {}): it was edited by hand",
            claim.model,
            claim.tag,
            claim.version.short(),
            claim.seq,
            version.short(),
            record.seq
        ));
    }
    match &claim.scope {
        Some(scope) if scope == &s.trust.scope => {}
        Some(scope) => {
            return Err(format!(
                "the signed move was made for {scope}, not for this bucket ({}): it was copied from another bucket or prefix",
                s.trust.scope
            ));
        }
        None => {
            return Err(
                "the signed move names no bucket (a claim of an earlier release): move the tag again with --sign-key to bind it here"
                    .into(),
            );
        }
    }
    let seen = s.cache.signed_seq(&record.model, &record.tag);
    if claim.seq < seen {
        return Err(format!(
            "the tag is back at move {} but this machine verified move {seen}: an older signed move was replayed",
            claim.seq
        ));
    }
    let _ = s.cache.set_signed_seq(&record.model, &record.tag, claim.seq);
    Ok(())
}

/// Checks an installed version's signature (`<dir>.sig`) against the trusted keys (for cached
/// and offline use, and `verify`): the reason when it does not pass.
pub(crate) fn check_installed(
    trust: &crate::signing::Trust,
    model: &ModelName,
    version: Option<&VersionId>,
    manifest: &Manifest,
    signature: Option<&[u8]>,
) -> std::result::Result<String, String> {
    let Some(version) = version else { return Err("the installed copy does not record its version".into()) };
    let Some(bytes) = signature else { return Err("no signature was installed with it".into()) };
    let bundle = Bundle::parse(bytes)?;
    let (statement, key) = bundle.verify(&trust.keys)?;
    statement.check(model, version, manifest)?;
    Ok(key.label())
}
