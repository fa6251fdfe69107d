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
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::provider::{ProviderErrorKind, PutMode};
use crate::reference::{MIN_PREFIX, Reference, TagName, Target, VersionId};
use crate::signing::oms::{Envelope, TagClaim};

/// The largest tag object read: a tag is its version and its moves (the newest `MAX_MOVES`).
const MAX_TAG_BYTES: usize = 1 << 20;
/// Moves a tag object keeps (the oldest go first): every download reads the tag, so it stays
/// small (about 25 KiB at most); a rollback goes back at most this many moves.
const MAX_MOVES: usize = 100;

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
async fn read_tag_for_move(
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

/// What a tag move must find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Wherever it points when read; a move by someone else between that read and the write is
    /// a conflict.
    Any,
    /// The tag points here now (`None`: the tag does not exist yet). Anything else is a conflict.
    Current(Option<VersionId>),
    /// A rollback from this version: as `Current`, and the move is recorded as a rollback.
    Rollback(VersionId),
}

/// What a tag move did.
#[derive(Clone, Debug, Serialize)]
pub struct Moved {
    pub tag: TagName,
    pub from: Option<VersionId>,
    pub to: VersionId,
    /// False when the tag already pointed there.
    pub changed: bool,
}

/// Points `tag` of `model` at `to` by compare-and-swap: it moves only if it still points where
/// `expect` says, and of two concurrent moves exactly one wins; the other gets a conflict (exit 8)
/// naming who moved it. Refused on storage that ignores conditional writes. A move that lands on
/// a version a concurrent `prune --remote` deletes is undone and reported (see [`survives`]).
pub(crate) async fn move_tag(
    s: &Session,
    model: &ModelName,
    tag: &TagName,
    to: &VersionId,
    expect: Expect,
) -> Result<Moved> {
    super::probe::require_conditional_writes(s).await?;
    // Without a condition, a move by someone else between the read and the write is no reason
    // to fail: read again and move from there (a few times; then it is reported).
    const TRIES: u32 = 8;
    let mut tries = if expect == Expect::Any { TRIES } else { 1 };
    // Where the tag must point now (`Some(None)`: it must not exist), if anywhere.
    let expected: Option<Option<&VersionId>> = match &expect {
        Expect::Any => None,
        Expect::Current(v) => Some(v.as_ref()),
        Expect::Rollback(v) => Some(Some(v)),
    };
    loop {
        tries -= 1;
        let current = read_tag_for_move(s, model, tag).await?;
        let now = current.as_ref().map(|(r, _)| r.version.clone());
        if let Some(expected) = expected
            && now.as_ref() != expected
        {
            return Err(conflict(model, tag, current.as_ref().map(|(r, _)| r), expected));
        }
        if now.as_ref() == Some(to) && !needs_signing(s, current.as_ref().map(|(r, _)| r)) {
            return Ok(Moved { tag: tag.clone(), from: now, to: to.clone(), changed: false });
        }
        match write_move(s, model, tag, to, current, "", matches!(expect, Expect::Rollback(_))).await {
            Ok(()) => {}
            Err(Error::Conflict { .. }) if tries > 0 => {
                // Others are moving it too: step aside a random moment, so one of us wins.
                tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(5..60))).await;
                continue;
            }
            // Unconditional: no expectation was broken, the tag just never held still.
            Err(Error::Conflict { .. }) if expect == Expect::Any => {
                return Err(Error::Conflict {
                    message: format!(
                        "{model}:{tag} was moved by others {TRIES} times while this move was being made; nothing was changed"
                    ),
                    hint: Some(format!(
                        "see `crowecode-cloud history {model}:{tag}`: something keeps moving it; run the command again once it holds still"
                    )),
                });
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = survives(s, model, to).await {
            undo(s, model, tag, to, now.as_ref()).await;
            return Err(e);
        }
        return Ok(Moved { tag: tag.clone(), from: now, to: to.clone(), changed: true });
    }
}

/// Whether a tag already at its target is to be written again: it is signed by none of the
/// signing keys given, or its claim is not bound to this bucket's scope (re-signing it).
fn needs_signing(s: &Session, record: Option<&TagRecord>) -> bool {
    let signers = s.trust.signer_refs();
    if signers.is_empty() {
        return false;
    }
    let Some(envelope) = record.and_then(|r| r.signature.as_ref()) else { return true };
    let keys: Vec<_> = signers.iter().map(|k| k.public().clone()).collect();
    match TagClaim::verify(envelope, &keys) {
        Ok((claim, _)) => claim.scope.as_deref() != Some(s.trust.scope.as_str()),
        Err(_) => true,
    }
}

/// The next move number: above every earlier one and at least this machine's clock in
/// milliseconds, so a tag deleted and created again never starts below a number machines have
/// verified (a signed claim of the old history cannot outrank the new one).
fn next_seq(previous: u64) -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (previous + 1).max(millis)
}

/// Writes one move of `tag` to `to` over `current` (compare-and-swap on its ETag, or create-only).
async fn write_move(
    s: &Session,
    model: &ModelName,
    tag: &TagName,
    to: &VersionId,
    current: Option<(TagRecord, Option<String>)>,
    note: &str,
    rollback: bool,
) -> Result<()> {
    let key = s.layout.tag_key(model, tag);
    let now = current.as_ref().map(|(r, _)| r.version.clone());
    let signers = s.trust.signer_refs();
    let signed_by = signers.iter().map(|k| k.public().short_id().to_string()).collect();
    let mv = TagMove {
        from: now.clone(),
        to: to.clone(),
        at: now_rfc3339(),
        by: format!("{}{note}", mover()),
        signed_by,
        rollback,
    };
    let (mut record, mode) = match current {
        Some((mut record, etag)) => {
            record.version = to.clone();
            record.seq = next_seq(record.seq.max(record.moves.len() as u64));
            record.moves.push(mv);
            if record.moves.len() > MAX_MOVES {
                let excess = record.moves.len() - MAX_MOVES;
                record.moves.drain(..excess);
            }
            let mode = etag.map(PutMode::IfMatch).ok_or_else(|| Error::Conflict {
                message: format!("{model}:{tag}: the storage gave no ETag for the tag, so it cannot be moved safely"),
                hint: Some(super::probe::UNSAFE_HINT.into()),
            })?;
            (record, mode)
        }
        None => (
            TagRecord {
                format: 1,
                model: model.clone(),
                tag: tag.clone(),
                version: to.clone(),
                moves: vec![mv],
                seq: next_seq(0),
                signature: None,
            },
            PutMode::Create,
        ),
    };
    record.signature = (!signers.is_empty()).then(|| {
        TagClaim {
            model: model.clone(),
            tag: tag.clone(),
            version: to.clone(),
            seq: record.seq,
            signed_at: now_rfc3339(),
            scope: Some(s.trust.scope.clone()),
        }
        .sign(&signers)
    });
    let mut bytes = serde_json::to_vec_pretty(&record).expect("tag serialises");
    bytes.push(b'\n');
    match s.provider.put(&key, bytes.into(), mode).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == ProviderErrorKind::Precondition => {
            let winner = read_tag(s, model, tag).await.ok().flatten();
            Err(conflict(model, tag, winner.as_ref(), now.as_ref()))
        }
        Err(e) => Err(Error::from_provider(format!("writing {key}"), e)),
    }
}

/// How long a `prune --remote` may take from its last read of a model's tags to the end of a
/// delete it decided on that read (it stops and reads them again before that), and so how long a
/// tag move that finds a sweep running waits before it checks that its version survived.
/// `CROWECODE_SWEEP_WINDOW_MS` shortens it for tests.
pub(crate) fn sweep_window() -> std::time::Duration {
    let ms = std::env::var("CROWECODE_SWEEP_WINDOW_MS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(20_000);
    std::time::Duration::from_millis(ms.clamp(50, 600_000))
}

/// Checks, after a tag was written, that the version it names and its archive are still in the
/// bucket. A concurrent `prune --remote` announces its sweep with `pruning.json` before its last
/// read of the tags and removes it after its last delete, and never deletes later than
/// [`sweep_window`] after that read: so when the marker is there, waiting a little longer than
/// the window lets every delete decided before this tag was written land first, and then a missing
/// version is seen here. The argument is written out in ARCHITECTURE.md ("Pruning against tag moves").
pub(crate) async fn survives(s: &Session, model: &ModelName, version: &VersionId) -> Result<()> {
    let marker = s.layout.pruning_key(model);
    match s.provider.head(&marker).await {
        Ok(_) => {
            let window = sweep_window();
            let wait = window + window / 4 + std::time::Duration::from_millis(500);
            s.reporter.report(crate::progress::Event::Info {
                model: model.as_str(),
                message: format!(
                    "a `prune --remote` or `delete --all` is deleting in {model}: waiting {} to be sure {} survives it",
                    humantime::format_duration(std::time::Duration::from_secs(wait.as_secs().max(1))),
                    version.short()
                ),
            });
            tokio::time::sleep(wait).await;
        }
        Err(e) if e.kind == ProviderErrorKind::NotFound => {}
        Err(e) => return Err(Error::from_provider(format!("reading {marker}"), e)),
    }
    let gone = |what: String| Error::Conflict {
        message: format!(
            "{model}@{}: {what} by a `prune --remote` or `delete --all` running at the same time; the tag was put back",
            version.short()
        ),
        hint: Some(format!(
            "see `crowecode-cloud history {model}`; upload the model again, or tag a version that is still there"
        )),
    };
    let Some(found) = by_id(s, model, version).await? else {
        return Err(gone("the version was deleted".into()));
    };
    let archive = s.layout.archive_key(&found.manifest);
    match s.provider.head(&archive).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == ProviderErrorKind::NotFound => Err(gone("its archive was deleted".into())),
        Err(e) => Err(Error::from_provider(format!("reading {archive}"), e)),
    }
}

/// Puts a tag back where it was before a move whose version did not survive (best effort: a
/// move by someone else since then wins).
async fn undo(s: &Session, model: &ModelName, tag: &TagName, moved_to: &VersionId, before: Option<&VersionId>) {
    let Ok(Some((record, etag))) = read_tag_for_move(s, model, tag).await else { return };
    if &record.version != moved_to {
        return;
    }
    // The version it pointed at may be gone too (a `delete --all` removes every version): then
    // the tag goes, rather than naming something missing.
    let before = match before {
        Some(b) if matches!(by_id(s, model, b).await, Ok(Some(_))) => Some(b),
        _ => None,
    };
    match before {
        Some(before) => {
            let _ = write_move(s, model, tag, before, Some((record, etag)), " (undone: its version was pruned)", true)
                .await;
        }
        None => {
            let _ = s.provider.delete(&s.layout.tag_key(model, tag)).await;
        }
    }
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
            Ok(_) => return Ok(()),
            Err(e) if e.kind == ProviderErrorKind::Precondition => continue,
            Err(e) => return Err(Error::from_provider(format!("writing {key}"), e)),
        }
    }
    Ok(())
}

pub(crate) fn conflict(
    model: &ModelName,
    tag: &TagName,
    now: Option<&TagRecord>,
    expected: Option<&VersionId>,
) -> Error {
    let wanted = expected.map_or_else(|| "not to exist yet".to_string(), |v| format!("to point at {}", v.short()));
    let message = match now {
        Some(record) if Some(&record.version) == expected => {
            let by = record.moves.last().map(|m| format!(" by {} at {}", m.by, m.at)).unwrap_or_default();
            format!(
                "{model}:{tag} was moved{by} while this move was being made (it points at {} now); nothing was changed",
                record.version.short()
            )
        }
        Some(record) => {
            let by = record.moves.last().map(|m| format!(" (moved by {} at {})", m.by, m.at)).unwrap_or_default();
            format!(
                "{model}:{tag} points at {}{by}, not as expected {wanted}; nothing was changed",
                record.version.short()
            )
        }
        None => format!("{model}:{tag} does not exist, expected {wanted}; nothing was changed"),
    };
    Error::Conflict {
        message,
        hint: Some(format!(
            "see `crowecode-cloud history {model}:{tag}`; run the command again if it should still move (it compares with where the tag is now)"
        )),
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Who is moving a tag: the CI job when there is one, else `user@host`.
fn mover() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(repo), Some(run)) = (env("GITHUB_REPOSITORY"), env("GITHUB_RUN_ID")) {
        return format!("github:{repo}#{run}");
    }
    if let (Some(project), Some(job)) = (env("CI_PROJECT_PATH"), env("CI_JOB_ID")) {
        return format!("gitlab:{project}#{job}");
    }
    let user = env("USER").or_else(|| env("LOGNAME")).unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}
