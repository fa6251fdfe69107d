//! `prune`: free space in the cache (versions that are not current, least recently used models
//! over a size limit) and, with `--remote`, old archives in the bucket that no manifest references.

use serde::Serialize;

use super::Context;
use crate::cache::{Cache, PruneOptions, Pruned};
use crate::error::{Error, Result};
use crate::manager::RemotePruned;
use crate::names::ModelName;

/// What to prune.
#[derive(Clone, Debug)]
pub struct Options {
    pub models: Vec<String>,
    pub keep: usize,
    pub max_size: Option<u64>,
    pub remote: bool,
    /// With `remote`: copy the live chunks of mostly dead packs into new ones.
    pub repack: bool,
    pub min_age: std::time::Duration,
    /// Remote deletions happen only with this; the cache is pruned unless `dry_run`.
    pub yes: bool,
    pub dry_run: bool,
}

/// What was (or would be) removed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Nothing was deleted: `--dry-run`, or `--remote` without `--yes`.
    pub dry_run: bool,
    pub local: Vec<Pruned>,
    pub remote: Vec<RemotePruned>,
    /// With `--remote`: version objects no tag keeps.
    pub remote_versions: Vec<RemotePruned>,
    /// With `--remote`: unfinished multipart uploads older than `--min-age` (aborted with `--yes`).
    pub unfinished_uploads: Vec<String>,
    /// With `--remote`: packs (bucket format 2) no stored version names, and the space of the
    /// packs kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs: Option<crate::ops::pieces_gc::PackReport>,
    /// With `--repack`: what was (or would be) repacked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repack: Option<crate::ops::repack::RepackReport>,
    /// Models left alone because they were being downloaded.
    pub skipped: Vec<ModelName>,
    /// Cached versions left alone because a process holds them in use (`run`, Python's `use`),
    /// with who holds them.
    pub held: Vec<crate::cache::Held>,
    /// With `--max-size`: the bytes the cache still takes when that is over the limit (versions
    /// in use or being downloaded could not go); the command then exits 8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_max_size: Option<u64>,
    /// With `--remote`: models left alone because their manifest could not be read.
    pub unreadable: Vec<ModelName>,
    /// Bytes really freed (0 on a dry run).
    pub freed_bytes: u64,
    /// Bytes the listed items take: what was freed, or would be without `--dry-run` / with `--yes`.
    pub would_free_bytes: u64,
}

/// Prunes the cache, or with `remote` the bucket.
pub async fn run(ctx: &Context, opts: &Options) -> Result<Report> {
    let models = opts.models.iter().map(|m| ModelName::new(m)).collect::<Result<Vec<_>>>()?;
    if opts.remote {
        let manager = ctx.manager().await?;
        let apply = opts.yes && !opts.dry_run;
        let out = match manager.prune_remote(&models, opts.keep, opts.min_age, apply, opts.repack).await {
            Ok(r) => r,
            Err(e) => return Err(manager.explain(e).await),
        };
        let would_free_bytes = out.archives.iter().chain(&out.versions).map(|r| r.bytes).sum::<u64>()
            + out.packs.deleted.iter().map(|p| p.bytes).sum::<u64>();
        return Ok(Report {
            dry_run: !apply,
            local: Vec::new(),
            remote: out.archives,
            remote_versions: out.versions,
            unfinished_uploads: out.unfinished_uploads,
            packs: Some(out.packs),
            repack: out.repack,
            skipped: Vec::new(),
            held: Vec::new(),
            over_max_size: None,
            unreadable: out.skipped,
            freed_bytes: if apply { would_free_bytes } else { 0 },
            would_free_bytes,
        });
    }
    let cache = Cache::new(&ctx.cache_root);
    let popts = PruneOptions { models, keep: opts.keep, max_size: opts.max_size, dry_run: opts.dry_run };
    let out = tokio::task::spawn_blocking(move || cache.prune(&popts))
        .await
        .map_err(|e| Error::other(format!("prune task failed: {e}"), None))??;
    let would_free_bytes = out.removed.iter().map(|p| p.bytes).sum();
    Ok(Report {
        dry_run: opts.dry_run,
        local: out.removed,
        remote: Vec::new(),
        remote_versions: Vec::new(),
        unfinished_uploads: Vec::new(),
        packs: None,
        repack: None,
        skipped: out.skipped,
        held: out.held,
        over_max_size: out.over_max_size,
        unreadable: Vec::new(),
        freed_bytes: if opts.dry_run { 0 } else { would_free_bytes },
        would_free_bytes,
    })
}
