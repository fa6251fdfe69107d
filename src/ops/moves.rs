//! Moving tags: compare-and-swap on the tag object, signed claims, and the check that a moved-to
//! version survives a `prune --remote` or `delete --all` running at the same time (the argument is
//! in ARCHITECTURE.md, "Pruning against tag moves").

use serde::Serialize;

use super::Session;
use super::versions::{MAX_MOVES, TagMove, TagRecord, by_id, now_rfc3339, read_tag, read_tag_for_move};
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::provider::{ProviderErrorKind, PutMode};
use crate::reference::{TagName, VersionId};
use crate::signing::oms::TagClaim;

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
    if sweep_running(s, &s.layout.sweep_markers(model)).await? {
        wait_out_sweep(
            s,
            model.as_str(),
            format!("a `prune --remote` or `delete --all` is deleting in {model}"),
            version.short(),
        )
        .await;
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
    match missing_part(s, model, version).await? {
        Some(what) => Err(gone(what.into())),
        None => Ok(()),
    }
}

/// What of `version` is no longer in the bucket: `None` when the version object and its archive
/// both are; otherwise which is gone. A failed read is an error, never taken for "gone".
pub(crate) async fn missing_part(s: &Session, model: &ModelName, version: &VersionId) -> Result<Option<&'static str>> {
    let Some(found) = by_id(s, model, version).await? else {
        return Ok(Some("the version was deleted"));
    };
    // Format 2: the packs are kept by the version itself (a pack sweep's roots are the stored
    // versions' locations); the locations go with the version.
    let (archive, gone) = if found.manifest.is_pieces() {
        (s.layout.locations_key(model, version), "its locations were deleted")
    } else {
        (s.layout.archive_key(&found.manifest), "its archive was deleted")
    };
    match s.provider.head(&archive).await {
        Ok(_) => Ok(None),
        Err(e) if e.kind == ProviderErrorKind::NotFound => Ok(Some(gone)),
        Err(e) => Err(Error::from_provider(format!("reading {archive}"), e)),
    }
}

/// Whether a sweep's marker starting with `markers` is up (any: each sweep raises its own).
pub(crate) async fn sweep_running(s: &Session, markers: &str) -> Result<bool> {
    let found = s.provider.list(markers).await.map_err(|e| Error::from_provider(format!("listing {markers}*"), e))?;
    Ok(found.iter().any(|o| o.key.ends_with(".json") && !o.key[markers.len()..].contains('/')))
}

/// Waits a little longer than the sweep window, so that every delete a running sweep decided
/// before the caller's write lands first; says so (`what` is running, `subject` is what must
/// survive it).
pub(crate) async fn wait_out_sweep(s: &Session, label: &str, what: String, subject: &str) {
    let window = sweep_window();
    let wait = window + window / 4 + std::time::Duration::from_millis(500);
    s.reporter.report(crate::progress::Event::Info {
        model: label,
        message: format!(
            "{what}: waiting {} to be sure {subject} survives it",
            humantime::format_duration(std::time::Duration::from_secs(wait.as_secs().max(1)))
        ),
    });
    tokio::time::sleep(wait).await;
}

/// Raises the marker `key` of a sweep (`by` says which command) and returns the store's time of
/// its write (the sweep's clock for ages). Writers that find it wait out the window before
/// checking that what they wrote survived; the sweep removes it after its last delete and
/// writes it again whenever it reads its roots again ([`refresh_sweep_marker`]).
pub(crate) async fn raise_sweep_marker(s: &Session, key: &str, by: &str) -> Result<std::time::SystemTime> {
    refresh_sweep_marker(s, key, by).await?;
    let meta = s.provider.head(key).await.map_err(|e| Error::from_provider(format!("reading {key}"), e))?;
    Ok(meta.last_modified.unwrap_or_else(std::time::SystemTime::now))
}

/// Writes the marker `key` again: a marker not written for [`STALE_MARKER`] belongs to a sweep
/// that was killed, and the next sweep removes it ([`remove_stale_markers`]).
pub(crate) async fn refresh_sweep_marker(s: &Session, key: &str, by: &str) -> Result<()> {
    let body = format!("{{\"since\": \"{}\", \"by\": \"{by}\"}}\n", now_rfc3339());
    s.provider
        .put(key, bytes::Bytes::from(body), PutMode::Overwrite)
        .await
        .map_err(|e| Error::from_provider(format!("writing {key}"), e))?;
    Ok(())
}

/// How long a marker may go unwritten before it is taken for a killed sweep's: a live sweep
/// writes it at every read of its roots, at least every half window.
pub(crate) const STALE_MARKER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the markers starting with `markers` that were last written more than
/// [`STALE_MARKER`] before `now` (the store's clock): killed sweeps', which would otherwise make
/// every writer wait.
pub(crate) async fn remove_stale_markers(s: &Session, markers: &str, now: std::time::SystemTime) -> Result<()> {
    let found = s.provider.list(markers).await.map_err(|e| Error::from_provider(format!("listing {markers}*"), e))?;
    for o in found {
        let stale = o.last_modified.is_some_and(|t| t + STALE_MARKER < now);
        if stale && o.key.ends_with(".json") && !o.key[markers.len()..].contains('/') {
            s.delete_key(&o.key).await?;
        }
    }
    Ok(())
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
