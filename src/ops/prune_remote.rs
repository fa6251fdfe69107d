//! `prune --remote`, reference-based: versions no tag keeps (beyond the newest few and the young
//! ones), the archives no kept version references, and unfinished multipart uploads; a list
//! unless applied.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::Session;
use super::versions::{self, TagRecord};
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::progress::Event;
use crate::reference::{Reference, VersionId};

/// An unreferenced archive that `prune --remote` deleted (or would delete).
#[derive(Clone, Debug, Serialize)]
pub struct RemotePruned {
    pub model: ModelName,
    pub key: String,
    pub bytes: u64,
}

/// What `prune --remote` found (and, when applied, removed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemotePruneOutcome {
    /// Archives no kept version references.
    pub archives: Vec<RemotePruned>,
    /// Versions no tag keeps, beyond the newest few and the young ones.
    pub versions: Vec<RemotePruned>,
    /// Keys of unfinished multipart uploads older than the minimum age.
    pub unfinished_uploads: Vec<String>,
    /// Models skipped because their manifest could not be read.
    pub skipped: Vec<ModelName>,
    /// Packs (bucket format 2): those no stored version names, and the space of the rest.
    pub packs: super::pieces_gc::PackReport,
    /// With `--repack`: packs at least half dead whose live chunks were copied into new packs.
    pub repack: Option<super::repack::RepackReport>,
}

/// `prune --remote` over `models` (empty: every model): per model see [`prune_model`]; also
/// unfinished multipart uploads under the prefix older than `min_age` (a killed upload's parts,
/// billed until aborted). Deletes and aborts when `apply`. A model whose manifest cannot be read
/// is skipped with a warning, the others pruned.
pub(crate) async fn run(
    s: &Session,
    models: &[ModelName],
    keep: usize,
    min_age: Duration,
    apply: bool,
    repack: bool,
) -> Result<RemotePruneOutcome> {
    let names: Vec<ModelName> = if models.is_empty() {
        let objects = s
            .provider
            .list(s.layout.prefix())
            .await
            .map_err(|e| Error::from_provider(format!("listing {}", s.config.location()), e))?;
        objects.iter().filter_map(|o| s.layout.model_of_manifest_key(&o.key)).collect()
    } else {
        models.to_vec()
    };
    let cutoff = SystemTime::now().checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = RemotePruneOutcome::default();
    for model in names {
        match prune_model(s, &model, keep, min_age, apply, &mut out).await {
            Ok(()) => {}
            Err(e @ (Error::Integrity { .. } | Error::Other { .. })) if models.is_empty() => {
                s.reporter
                    .report(Event::Warning { message: format!("{model}: skipped, its manifest cannot be read ({e})") });
                out.skipped.push(model);
            }
            Err(e) => return Err(e),
        }
    }
    // After the versions: the packs only the pruned versions named go now.
    // A dry run counts the versions it would delete as deleted.
    let doomed: HashSet<String> = out.versions.iter().map(|v| v.key.clone()).collect();
    out.packs = super::pieces_gc::sweep(s, min_age, apply, &doomed).await?;
    if repack {
        out.repack = Some(super::repack::run(s, apply).await?);
    }
    let pending = s
        .provider
        .list_pending_uploads(s.layout.prefix())
        .await
        .map_err(|e| Error::from_provider(format!("listing unfinished uploads in {}", s.config.location()), e))?;
    for p in pending {
        let wanted = models.is_empty() || models.iter().any(|m| p.key.starts_with(&s.layout.archives_prefix(m)));
        // An upload without a start time is treated as young: it may be running now.
        if !wanted || p.initiated.is_none_or(|t| t > cutoff) {
            continue;
        }
        if apply {
            s.abort_upload(&p).await?;
        }
        out.unfinished_uploads.push(p.key);
    }
    Ok(out)
}

/// One model, reference-based: it keeps every version a tag points at, each tag's previous
/// version (so a rollback works), the version `manifest.json` names (what earlier releases read),
/// the `keep` newest versions, and every version the store has held for less than `min_age`;
/// then the archives no remaining version references (none younger than `min_age`: an upload in
/// progress has an archive and no version yet). Ages come from the store's clock, never from the
/// time an uploader wrote into a manifest.
///
/// Applied, the sweep is safe against concurrent tag moves (ARCHITECTURE.md, "Pruning against tag
/// moves"): `pruning.json` is written first, every delete happens within the sweep window of a
/// fresh read of the tags that shows the version unreferenced, and the marker goes last.
async fn prune_model(
    s: &Session,
    model: &ModelName,
    keep: usize,
    min_age: Duration,
    apply: bool,
    out: &mut RemotePruneOutcome,
) -> Result<()> {
    if versions::resolve(s, &Reference::parse(model.as_str())?).await?.is_none() {
        return Ok(());
    }
    let marker = s.layout.new_sweep_marker(model);
    // The store's clock: the marker's write time (a dry run writes nothing and uses this machine's).
    let now = if apply {
        let now = versions::raise_sweep_marker(s, &marker, "prune --remote").await?;
        versions::remove_stale_markers(s, &s.layout.sweep_markers(model), now).await?;
        now
    } else {
        SystemTime::now()
    };
    let cutoff = now.checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let result = sweep(s, model, keep, cutoff, apply.then_some(marker.as_str()), out).await;
    if apply {
        // Last: a tag move that still finds it waits out the window, which is harmless.
        let _ = s.provider.delete(&marker).await;
    }
    result
}

/// The versions and archives a sweep keeps in any case: what the tags (and their previous
/// versions) and `manifest.json` name, read now.
async fn roots(
    s: &Session,
    model: &ModelName,
) -> Result<(HashSet<VersionId>, Vec<TagRecord>, Option<versions::Found>)> {
    let tags = versions::list_tags(s, model).await?;
    let legacy = versions::legacy(s, model).await?;
    let mut kept: HashSet<VersionId> = tags.iter().map(|t| t.version.clone()).collect();
    kept.extend(tags.iter().filter_map(|t| t.previous().cloned()));
    kept.extend(legacy.as_ref().map(|l| l.version.clone()));
    Ok((kept, tags, legacy))
}

/// The model's version objects with the store's write times; an object whose bytes do not hash
/// to its name is skipped with a warning (and never deleted: it is not a version of ours). A
/// version object is named by the digest of its bytes, so one already read (`known`) is not read
/// again: only the listing is fresh.
async fn stored_versions(
    s: &Session,
    model: &ModelName,
    known: &[(versions::Found, Option<SystemTime>)],
) -> Result<Vec<(versions::Found, Option<SystemTime>)>> {
    let known: HashMap<&VersionId, &versions::Found> = known.iter().map(|(f, _)| (&f.version, f)).collect();
    let prefix = s.layout.versions_prefix(model);
    let objects = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    let mut out = Vec::new();
    for o in objects {
        let Some(id) = o.key.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".json")).and_then(VersionId::parse)
        else {
            continue;
        };
        if let Some(found) = known.get(&id) {
            out.push(((*found).clone(), o.last_modified));
            continue;
        }
        match versions::by_id(s, model, &id).await {
            Ok(Some(found)) => out.push((found, o.last_modified)),
            Ok(None) => {}
            Err(e @ Error::Integrity { .. }) => {
                s.reporter.report(Event::Warning { message: format!("{model}: skipped {}: {e}", o.key) });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn sweep(
    s: &Session,
    model: &ModelName,
    keep: usize,
    cutoff: SystemTime,
    marker: Option<&str>,
    out: &mut RemotePruneOutcome,
) -> Result<()> {
    let apply = marker.is_some();
    let (mut kept, tags, legacy) = roots(s, model).await?;
    if let (Some(legacy), Some(latest)) = (&legacy, tags.iter().find(|t| t.tag.is_latest()))
        && legacy.version != latest.version
    {
        s.reporter.report(Event::Warning {
            message: format!(
                "{model}: manifest.json names {} but latest is {}: an earlier release uploaded; both are kept",
                legacy.version.short(),
                latest.version.short()
            ),
        });
    }
    let mut found = stored_versions(s, model, &[]).await?;
    // Newest first: by when the store received it, then by when `latest` moved to it.
    let moved_at = |v: &VersionId| versions::latest_moved_to(&tags, v);
    found.sort_by(|(a, at), (b, bt)| bt.cmp(at).then_with(|| moved_at(&b.version).cmp(&moved_at(&a.version))));
    kept.extend(found.iter().take(keep).map(|(f, _)| f.version.clone()));
    kept.extend(found.iter().filter(|(_, t)| t.is_none_or(|t| t > cutoff)).map(|(f, _)| f.version.clone()));
    let mut doomed: Vec<&versions::Found> =
        found.iter().map(|(f, _)| f).filter(|f| !kept.contains(&f.version)).collect();
    let window = versions::sweep_window();
    while apply && !doomed.is_empty() {
        // A fresh read of the roots; every delete below ends within the window of it (counted
        // from before the read: a move written during it may not have been seen).
        let read = Instant::now();
        if let Some(marker) = marker {
            versions::refresh_sweep_marker(s, marker, "prune --remote").await?;
        }
        let (roots, _, _) = roots(s, model).await?;
        let mut rest = Vec::new();
        for f in doomed {
            if roots.contains(&f.version) {
                kept.insert(f.version.clone());
                continue;
            }
            if !rest.is_empty() || read.elapsed() > window / 2 {
                rest.push(f);
                continue;
            }
            let key = s.layout.version_key(model, &f.version);
            within(read, window, &key, s.delete_key(&key)).await?;
            if f.manifest.is_pieces() {
                let loc = s.layout.locations_key(model, &f.version);
                within(read, window, &loc, s.delete_key(&loc)).await?;
            }
            // Its signatures go with it (after it: a version is never left looking unsigned).
            for (id, _) in super::signatures::list(s, model, &f.version).await? {
                let sig = s.layout.signature_key(model, &f.version, &id);
                within(read, window, &sig, s.delete_key(&sig)).await?;
            }
            out.versions.push(RemotePruned { model: model.clone(), key, bytes: f.bytes.len() as u64 });
        }
        doomed = rest;
    }
    if !apply {
        for f in doomed {
            let key = s.layout.version_key(model, &f.version);
            out.versions.push(RemotePruned { model: model.clone(), key, bytes: f.bytes.len() as u64 });
        }
    }
    // The archives: referenced by a version still there (read again after the deletes), by
    // `manifest.json`, or young, are kept.
    let prefix = s.layout.archives_prefix(model);
    loop {
        let read = Instant::now();
        if let Some(marker) = marker {
            versions::refresh_sweep_marker(s, marker, "prune --remote").await?;
        }
        let mut referenced: HashSet<String> = HashSet::new();
        if apply {
            let now = stored_versions(s, model, &found).await?;
            referenced.extend(now.iter().map(|(f, _)| s.layout.archive_key(&f.manifest)));
        } else {
            referenced.extend(
                found.iter().filter(|(f, _)| kept.contains(&f.version)).map(|(f, _)| s.layout.archive_key(&f.manifest)),
            );
        }
        referenced.extend(versions::legacy(s, model).await?.map(|l| s.layout.archive_key(&l.manifest)));
        let archives =
            s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
        let mut again = false;
        for o in archives {
            if referenced.contains(&o.key) || o.last_modified.is_none_or(|t| t > cutoff) {
                continue;
            }
            if apply {
                if read.elapsed() > window / 2 {
                    again = true;
                    break;
                }
                within(read, window, &o.key, s.delete_key(&o.key)).await?;
            }
            out.archives.push(RemotePruned { model: model.clone(), key: o.key, bytes: o.size });
        }
        if !again {
            return Ok(());
        }
    }
}

/// A delete that must end within `window` of `since`, or the sweep stops: a later delete could
/// land after a tag move that checked for it had given up waiting.
pub(crate) async fn within(
    since: Instant,
    window: Duration,
    key: &str,
    delete: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let left = window.saturating_sub(since.elapsed());
    match tokio::time::timeout(left, delete).await {
        Ok(done) => done,
        Err(_) => Err(Error::Other {
            message: format!(
                "deleting {key} took longer than the sweep window ({}); stopped so that no delete can land after a concurrent tag move checked for it",
                humantime::format_duration(window)
            ),
            hint: Some("run `crowecode-cloud prune --remote --yes` again when the storage answers faster".into()),
        }),
    }
}
