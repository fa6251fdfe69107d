//! `prune --remote`, reference-based: versions no tag keeps (beyond the newest few and the young
//! ones), the archives no kept version references, and unfinished multipart uploads; a list
//! unless applied.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use super::{Session, versions};
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
}

/// `prune --remote` over `models` (empty: every model): per model see [`prune_model`]; also
/// unfinished multipart uploads under the prefix older than `min_age` (a killed upload's parts,
/// billed until aborted). Deletes and aborts when `apply`. A model whose manifest cannot be read
/// is skipped with a warning, the others pruned.
pub(crate) async fn run(
    s: &Session,
    models: &[ModelName],
    keep: usize,
    min_age: std::time::Duration,
    apply: bool,
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
        match prune_model(s, &model, keep, cutoff, apply, &mut out).await {
            Ok(()) => {}
            Err(e @ (Error::Integrity { .. } | Error::Other { .. })) if models.is_empty() => {
                s.reporter
                    .report(Event::Warning { message: format!("{model}: skipped, its manifest cannot be read ({e})") });
                out.skipped.push(model);
            }
            Err(e) => return Err(e),
        }
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
            s.provider
                .abort_multipart(&p.key, &p.upload_id)
                .await
                .map_err(|e| Error::from_provider(format!("aborting the upload of {}", p.key), e))?;
        }
        out.unfinished_uploads.push(p.key);
    }
    Ok(out)
}

/// One model, reference-based: it keeps every version a tag points at, each tag's previous
/// version (so a rollback works), the `keep` newest versions, and every version younger than the
/// cutoff; then the archives no kept version references (none younger than the cutoff: an upload
/// in progress has an archive and no version yet).
async fn prune_model(
    s: &Session,
    model: &ModelName,
    keep: usize,
    cutoff: SystemTime,
    apply: bool,
    out: &mut RemotePruneOutcome,
) -> Result<()> {
    let Some(latest) = versions::resolve(s, &Reference::parse(model.as_str())?).await? else {
        return Ok(());
    };
    let tags = versions::list_tags(s, model).await?;
    let mut found = Vec::new();
    for id in versions::list_versions(s, model).await? {
        if let Some(f) = versions::by_id(s, model, &id).await? {
            found.push(f);
        }
    }
    if !found.iter().any(|f| f.version == latest.version) {
        found.push(latest.clone());
    }
    // Newest first: by creation time (whole seconds), then by when `latest` moved to it.
    let moved_at = |v: &VersionId| {
        tags.iter().filter(|t| t.tag.is_latest()).flat_map(|t| t.moves.iter().rposition(|m| &m.to == v)).max()
    };
    found.sort_by(|a, b| {
        b.manifest.created_at.cmp(&a.manifest.created_at).then_with(|| moved_at(&b.version).cmp(&moved_at(&a.version)))
    });
    let mut kept: HashSet<VersionId> = tags.iter().map(|t| t.version.clone()).collect();
    kept.extend(tags.iter().filter_map(|t| t.previous().cloned()));
    kept.insert(latest.version.clone());
    kept.extend(found.iter().take(keep).map(|f| f.version.clone()));
    let young = |created: &str| humantime::parse_rfc3339_weak(created).map_or(true, |t| t > cutoff);
    kept.extend(found.iter().filter(|f| young(&f.manifest.created_at)).map(|f| f.version.clone()));
    let mut referenced: HashSet<String> = HashSet::new();
    for f in &found {
        if kept.contains(&f.version) {
            referenced.insert(s.layout.archive_key(&f.manifest));
        } else {
            let key = s.layout.version_key(model, &f.version);
            if apply {
                s.provider.delete(&key).await.map_err(|e| Error::from_provider(format!("deleting {key}"), e))?;
                // Its signatures go with it (after it: a version is never left looking unsigned).
                for (id, _) in super::signatures::list(s, model, &f.version).await? {
                    let sig = s.layout.signature_key(model, &f.version, &id);
                    s.provider.delete(&sig).await.map_err(|e| Error::from_provider(format!("deleting {sig}"), e))?;
                }
            }
            out.versions.push(RemotePruned { model: model.clone(), key, bytes: f.bytes.len() as u64 });
        }
    }
    let prefix = s.layout.archives_prefix(model);
    let archives = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    for o in archives {
        if referenced.contains(&o.key) || o.last_modified.is_none_or(|t| t > cutoff) {
            continue;
        }
        if apply {
            s.provider.delete(&o.key).await.map_err(|e| Error::from_provider(format!("deleting {}", o.key), e))?;
        }
        out.archives.push(RemotePruned { model: model.clone(), key: o.key, bytes: o.size });
    }
    Ok(())
}
