//! Versions and tags in the bucket, with no server in front of it:
//!
//! ```text
//! <prefix><Model>/versions/<hex>.json   a version: its manifest, named by the sha256 of its bytes; written create-only
//! <prefix><Model>/tags/<tag>.json       a tag: which version, and every move; the only mutable objects, moved by compare-and-swap
//! <prefix><Model>/manifest.json         the manifest of `latest`, as earlier releases read and wrote it
//! ```
//!
//! Resolving a reference checks every hop: a tag names a version id, the version's bytes must
//! hash to it, the manifest names the archive's sha256, which the download checks. So a pinned
//! reference fixes every byte, and only a tag can be changed by someone with write access.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Session;
pub use super::moves::Moved;
pub(crate) use super::moves::{
    Expect, conflict, missing_part, move_tag, raise_sweep_marker, refresh_sweep_marker, remove_stale_markers,
    sweep_running, sweep_window, wait_out_sweep,
};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::provider::{ProviderErrorKind, PutMode};
use crate::reference::{MIN_PREFIX, Reference, TagName, Target, VersionId};
use crate::signing::oms::Envelope;

/// The largest tag object read: a tag is its version and its moves (the newest `MAX_MOVES`).
const MAX_TAG_BYTES: usize = 1 << 20;
/// Moves a tag object keeps (the oldest go first): every download reads the tag, so it stays
/// small (about 25 KiB at most); a rollback goes back at most this many moves.
pub(super) const MAX_MOVES: usize = 100;

/// A version found for a reference.
#[derive(Clone, Debug)]
pub struct Found {
    pub manifest: Manifest,
    pub version: VersionId,
    /// The manifest's bytes, exactly as stored (they hash to `version`).
    pub bytes: Bytes,
    /// The tag it was found through, if any.
    pub tag: Option<TagName>,
    /// That tag's object (none for `latest` of a bucket of an earlier release).
    pub tag_record: Option<TagRecord>,
}

/// One move of a tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMove {
    /// Where it pointed before (none when the tag was created).
    pub from: Option<VersionId>,
    pub to: VersionId,
    /// RFC 3339 UTC.
    pub at: String,
    /// Who moved it: the CI job or `user@host`.
    pub by: String,
    /// The keys that signed the move (short ids, as the mover recorded them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<String>,
    /// A `rollback`: it undoes the last move that was not one, so rollbacks step back in turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// A tag object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub format: u32,
    pub model: ModelName,
    pub tag: TagName,
    pub version: VersionId,
    /// Oldest first.
    #[serde(default)]
    pub moves: Vec<TagMove>,
    /// The number of the last move: it only grows, so a signed claim names exactly one move.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// The signed claim of the last move, when it was moved with a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Envelope>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TagRecord {
    /// Where a `rollback` takes the tag: where it pointed before the last move that no rollback
    /// has undone yet (moves replayed as a stack: a move pushes where it came from, a rollback
    /// pops). So a second rollback goes one release further back, never to the bad one again.
    pub fn previous(&self) -> Option<&VersionId> {
        let mut stack: Vec<Option<&VersionId>> = Vec::new();
        for m in &self.moves {
            if m.rollback {
                stack.pop();
            } else if m.from.as_ref() != Some(&m.to) {
                stack.push(m.from.as_ref());
            }
        }
        stack.last().copied().flatten()
    }
}

/// Where in `latest`'s moves it last moved to `version` (a later move is a larger number): the
/// order of versions made in the same second, whose creation times tie.
pub(crate) fn latest_moved_to(tags: &[TagRecord], version: &VersionId) -> Option<usize> {
    tags.iter().filter(|t| t.tag.is_latest()).flat_map(|t| t.moves.iter().rposition(|m| &m.to == version)).max()
}

/// The version `reference` names, or `None` when the model (or the tag, or a version with that
/// id) is not in the bucket. A version whose bytes do not hash to its id, or a tag naming a
/// version that is missing, is an integrity failure (exit 6).
pub(crate) async fn resolve(s: &Session, reference: &Reference) -> Result<Option<Found>> {
    let model = &reference.model;
    match &reference.target {
        Target::Tag(tag) => match read_tag(s, model, tag).await? {
            Some(record) => {
                let found = by_id(s, model, &record.version).await?.ok_or_else(|| {
                    Error::integrity(
                        s.layout.tag_key(model, tag),
                        format!("the tag names the version {}, which is missing from the bucket", record.version),
                        None,
                        None,
                    )
                })?;
                Ok(Some(Found { tag: Some(tag.clone()), tag_record: Some(record), ..found }))
            }
            // A bucket written before versions existed: its manifest is `latest`.
            None if tag.is_latest() => Ok(legacy(s, model).await?.map(|f| Found { tag: Some(tag.clone()), ..f })),
            None => Ok(None),
        },
        Target::Version(id) => match by_id(s, model, id).await? {
            Some(found) => Ok(Some(found)),
            None => Ok(legacy(s, model).await?.filter(|f| &f.version == id)),
        },
        Target::Prefix(prefix) => {
            let mut ids = list_versions(s, model).await?;
            if let Some(legacy) = legacy(s, model).await?
                && !ids.contains(&legacy.version)
            {
                ids.push(legacy.version);
            }
            ids.retain(|id| id.hex().starts_with(prefix.as_str()));
            if ids.len() > 1 {
                // A stray object (its content is not what its name says) is no version: it
                // does not make a prefix ambiguous.
                let mut valid = Vec::new();
                for id in ids {
                    if by_id_listed(s, model, &id).await?.is_some()
                        || legacy(s, model).await?.is_some_and(|l| l.version == id)
                    {
                        valid.push(id);
                    }
                }
                ids = valid;
            }
            match ids.as_slice() {
                [] => Ok(None),
                [id] => Ok(Some(match by_id(s, model, id).await? {
                    Some(found) => found,
                    None => legacy(s, model).await?.ok_or_else(|| s.not_found(model))?,
                })),
                _ => Err(Error::usage(
                    format!("{model}@{prefix} matches {} versions", ids.len()),
                    format!("give more hex digits (at least {MIN_PREFIX}), or the whole `sha256:` id"),
                )),
            }
        }
    }
}

/// The version stored as `versions/<id>.json`, checked against its id.
pub(crate) async fn by_id(s: &Session, model: &ModelName, id: &VersionId) -> Result<Option<Found>> {
    let key = s.layout.version_key(model, id);
    let Some(bytes) = s.get_small(&key).await? else { return Ok(None) };
    let computed = VersionId::of(&bytes);
    if &computed != id {
        return Err(Error::integrity(
            &key,
            "the version's manifest does not hash to its id (it was changed in the bucket)",
            Some(id.to_string()),
            Some(computed.to_string()),
        ));
    }
    let manifest = Manifest::parse(&bytes, model, &key)?.confined(&s.layout, &key)?;
    Ok(Some(Found { manifest, version: id.clone(), bytes, tag: None, tag_record: None }))
}

/// [`by_id`] for a version found by listing: an object whose content does not hash to its name
/// (a stray or half-copied object) is skipped with a warning, not an error for the whole model.
pub(crate) async fn by_id_listed(s: &Session, model: &ModelName, id: &VersionId) -> Result<Option<Found>> {
    match by_id(s, model, id).await {
        Err(e @ Error::Integrity { .. }) => {
            let message = format!("{model}: skipped {}: {e}", s.layout.version_key(model, id));
            s.reporter.report(crate::progress::Event::Warning { message });
            Ok(None)
        }
        other => other,
    }
}

/// `manifest.json`, as earlier releases wrote it (and as this one keeps it: the alias of
/// `latest`); its id is its digest.
pub(crate) async fn legacy(s: &Session, model: &ModelName) -> Result<Option<Found>> {
    let Some((manifest, bytes)) = s.fetch_manifest_bytes(model).await? else {
        return Ok(None);
    };
    Ok(Some(Found { manifest, version: VersionId::of(&bytes), bytes, tag: None, tag_record: None }))
}

/// The ids of the versions stored under `versions/`, in no particular order.
pub(crate) async fn list_versions(s: &Session, model: &ModelName) -> Result<Vec<VersionId>> {
    let prefix = s.layout.versions_prefix(model);
    let objects = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    Ok(objects
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix)?.strip_suffix(".json").and_then(VersionId::parse))
        .collect())
}

/// The model's tags, by name.
pub(crate) async fn list_tags(s: &Session, model: &ModelName) -> Result<Vec<TagRecord>> {
    let prefix = s.layout.tags_prefix(model);
    let objects = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    let mut out = Vec::new();
    for o in objects {
        let Some(name) = o.key.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".json")) else { continue };
        let Ok(tag) = TagName::new(name) else { continue };
        if let Some(record) = read_tag(s, model, &tag).await? {
            out.push(record);
        }
    }
    out.sort_by(|a, b| a.tag.cmp(&b.tag));
    Ok(out)
}

/// A tag object, if the tag exists (a plain read: what resolving a reference needs).
pub(crate) async fn read_tag(s: &Session, model: &ModelName, tag: &TagName) -> Result<Option<TagRecord>> {
    let key = s.layout.tag_key(model, tag);
    let Some(bytes) = s.get_small(&key).await? else { return Ok(None) };
    parse_tag(&key, &bytes, model, tag).map(Some)
}

/// A tag object and its ETag, for a compare-and-swap: the ETag is read first, so if the tag
/// moves between the two reads the swap fails instead of writing over that move.
pub(super) async fn read_tag_for_move(
    s: &Session,
    model: &ModelName,
    tag: &TagName,
) -> Result<Option<(TagRecord, Option<String>)>> {
    let key = s.layout.tag_key(model, tag);
    let etag = match s.provider.head(&key).await {
        Ok(meta) => meta.etag,
        Err(e) if e.kind == ProviderErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::from_provider(format!("reading {key}"), e)),
    };
    let Some(bytes) = s.get_small(&key).await? else { return Ok(None) };
    Ok(Some((parse_tag(&key, &bytes, model, tag)?, etag)))
}

fn parse_tag(key: &str, bytes: &[u8], model: &ModelName, tag: &TagName) -> Result<TagRecord> {
    let bad = |what: String| Error::integrity(key, what, None, None);
    if bytes.len() > MAX_TAG_BYTES {
        return Err(bad(format!("a tag of {} bytes is larger than any tag this tool writes", bytes.len())));
    }
    let record: TagRecord = serde_json::from_slice(bytes).map_err(|e| bad(format!("unreadable tag: {e}")))?;
    if let Some(m) = record.moves.iter().find(|m| humantime::parse_rfc3339_weak(&m.at).is_err() || m.at.len() > 40) {
        return Err(bad(format!("a move's time {:?} is not an RFC 3339 time", m.at)));
    }
    if &record.model != model || &record.tag != tag || record.format != 1 {
        return Err(bad(format!(
            "the object is tag {}:{} (format {}), not {model}:{tag}",
            record.model, record.tag, record.format
        )));
    }
    Ok(record)
}

/// Removes a tag (compare-and-swap semantics do not apply: removing is idempotent).
pub(crate) async fn remove_tag(s: &Session, model: &ModelName, tag: &TagName) -> Result<bool> {
    let key = s.layout.tag_key(model, tag);
    if read_tag(s, model, tag).await?.is_none() {
        return Ok(false);
    }
    s.provider.delete(&key).await.map_err(|e| Error::from_provider(format!("deleting {key}"), e))?;
    Ok(true)
}

/// Writes `manifest.json` (what earlier releases read) as the manifest of `latest`, until it is:
/// a concurrent upload may move `latest` again meanwhile, and then its manifest is written.
pub(crate) async fn write_alias(s: &Session, model: &ModelName) -> Result<()> {
    let key = s.layout.manifest_key(model);
    for _ in 0..5 {
        let Some(record) = read_tag(s, model, &TagName::latest()).await? else { return Ok(()) };
        let found = by_id(s, model, &record.version).await?.ok_or_else(|| s.not_found(model))?;
        let mode = match s.provider.head(&key).await {
            Ok(meta) => match meta.etag {
                Some(etag) => PutMode::IfMatch(etag),
                None => PutMode::Overwrite,
            },
            Err(e) if e.kind == ProviderErrorKind::NotFound => PutMode::Create,
            Err(e) => return Err(Error::from_provider(format!("reading {key}"), e)),
        };
        if let Ok(Some((_, bytes))) = s.fetch_manifest_bytes(model).await
            && bytes == found.bytes
        {
            return Ok(());
        }
        match s.provider.put(&key, found.bytes.clone(), mode).await {
            Ok(_) => {
                // A `delete --all` may have deleted the version between the read of the tag and
                // this write: like a tag move, the alias is checked after the sweep's window.
                if sweep_running(s, &s.layout.sweep_markers(model)).await? {
                    wait_out_sweep(
                        s,
                        model.as_str(),
                        format!("a `delete --all` is deleting in {model}"),
                        "manifest.json",
                    )
                    .await;
                }
                remove_dangling_alias(s, model).await?;
                return Ok(());
            }
            Err(e) if e.kind == ProviderErrorKind::Precondition => continue,
            Err(e) => return Err(Error::from_provider(format!("writing {key}"), e)),
        }
    }
    Ok(())
}

/// Deletes `manifest.json` when the version it names can no longer be read whole (its archive,
/// or in format 2 its locations, deleted): what readers of 0.1.0 and a bucket without a
/// `latest` tag would otherwise be sent to. Returns whether it did.
pub(crate) async fn remove_dangling_alias(s: &Session, model: &ModelName) -> Result<bool> {
    let Some(found) = legacy(s, model).await.ok().flatten() else { return Ok(false) };
    let part = if found.manifest.is_pieces() {
        s.layout.locations_key(model, &found.version)
    } else {
        s.layout.archive_key(&found.manifest)
    };
    match s.provider.head(&part).await {
        Ok(_) => Ok(false),
        Err(e) if e.kind == ProviderErrorKind::NotFound => {
            s.delete_key(&s.layout.manifest_key(model)).await?;
            Ok(true)
        }
        Err(e) => Err(Error::from_provider(format!("reading {part}"), e)),
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
