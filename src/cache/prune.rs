//! `prune` in the cache: versions that are not current, selections of old versions, and whole
//! models over a size limit, least recently used first. A version is removed only under both of
//! its model's locks, and leaves its path whole (see [`Cache::remove_version`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Cache, CachedVersion, Holder, remove_file_if_present, remove_tree, tree_size};
use crate::error::Result;
use crate::names::ModelName;

/// A cached version that `prune` removed, or would remove with `--dry-run`.
#[derive(Clone, Debug, Serialize)]
pub struct Pruned {
    pub model: ModelName,
    pub path: PathBuf,
    /// Bytes on disk it took.
    pub bytes: u64,
    /// `not current`, `over --max-size` or `old selection`.
    pub reason: &'static str,
}

/// A version `prune` would have removed but left alone, because a process holds it in use
/// (`run`, Python's `use`).
#[derive(Clone, Debug, Serialize)]
pub struct Held {
    pub model: ModelName,
    pub path: PathBuf,
    pub bytes: u64,
    /// Why it would have gone: `not current`, `over --max-size` or `old selection`.
    pub reason: &'static str,
    /// Who holds it, as the kernel reports (empty where `/proc/locks` cannot be read).
    pub holders: Vec<Holder>,
}

/// What `prune` did in the cache.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneOutcome {
    /// Versions and selections removed (or, with `dry_run`, that would be).
    pub removed: Vec<Pruned>,
    /// Models left alone because a download of them was in progress.
    pub skipped: Vec<ModelName>,
    /// Versions left alone because they are in use.
    pub held: Vec<Held>,
    /// With `max_size`: the bytes the cache still takes when that is more than `max_size`
    /// (versions in use, or models being downloaded, could not go).
    pub over_max_size: Option<u64>,
}

/// What `prune` should do in the cache.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Only these models (all when empty).
    pub models: Vec<ModelName>,
    /// Versions to keep per model, the current one first (at least 1); versions a tag resolved
    /// to on this machine are kept too.
    pub keep: usize,
    /// Evict whole models, least recently used first, until the cache is at most this big.
    pub max_size: Option<u64>,
    /// Report without deleting.
    pub dry_run: bool,
}

impl Cache {
    /// Removes cached versions that are not current (beyond `keep` per model), selections of
    /// old versions, then whole models, least recently used first, while the cache is larger
    /// than `max_size`. A model whose lock is held (a download in progress) is left alone, and
    /// so is a version held in use ([`Cache::hold`]). Blocking.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneOutcome> {
        use std::collections::BTreeMap;
        let wanted = |m: &ModelName| opts.models.is_empty() || opts.models.contains(m);
        let mut by_model: BTreeMap<ModelName, Vec<CachedVersion>> = BTreeMap::new();
        for v in self.list()?.into_iter().filter(|v| wanted(&v.model)) {
            by_model.entry(v.model.clone()).or_default().push(v);
        }
        let mut out = Vec::new();
        let mut kept: Vec<(ModelName, PathBuf, u64)> = Vec::new();
        let mut locks = Vec::new();
        let mut skipped = Vec::new();
        let mut held = Vec::new();
        for (model, mut versions) in by_model {
            let Some(lock) = self.try_lock(&model)? else {
                tracing::info!(%model, "in use by a download; not pruned");
                skipped.push(model.clone());
                continue;
            };
            // Readers hold this only while they check a version: a short wait at most.
            let use_lock = self.lock_use_exclusive(&model)?;
            // What tags resolved to here is kept like the current version (a pinned deploy
            // serves it); --max-size may still evict the whole model.
            let referenced = self.refs(&model);
            let tagged = |v: &CachedVersion| self.version_of(&v.path).is_some_and(|id| referenced.contains(&id));
            versions.sort_by_key(|v| (!(v.current || tagged(v)), std::cmp::Reverse(self.last_used(&v.path))));
            let protected = versions.iter().filter(|v| v.current || tagged(v)).count();
            for (i, v) in versions.into_iter().enumerate() {
                let bytes = tree_size(&v.path);
                if i < opts.keep.max(1).max(protected) {
                    kept.push((model.clone(), v.path, bytes));
                    continue;
                }
                if let Some(holders) = self.remove_unless_held(&v.path, opts.dry_run, |p| self.remove_version(p))? {
                    let reason = "not current";
                    held.push(Held { model: model.clone(), path: v.path.clone(), bytes, reason, holders });
                    kept.push((model.clone(), v.path, bytes));
                    continue;
                }
                out.push(Pruned { model: model.clone(), path: v.path, bytes, reason: "not current" });
            }
            // Selections (`download --only`) of versions no longer current.
            let current_tag =
                self.current(&model)?.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            if let Ok(rd) = fs::read_dir(self.models_dir().join(".partial")) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with(&format!("{model}@"))
                        || current_tag.as_ref().is_some_and(|t| name.starts_with(&format!("{t}-")))
                    {
                        continue;
                    }
                    let bytes = tree_size(&entry.path());
                    if let Some(holders) = self.remove_unless_held(&entry.path(), opts.dry_run, remove_tree)? {
                        let reason = "old selection";
                        held.push(Held { model: model.clone(), path: entry.path(), bytes, reason, holders });
                        continue;
                    }
                    out.push(Pruned { model: model.clone(), path: entry.path(), bytes, reason: "old selection" });
                }
            }
            locks.push((model, lock, use_lock));
        }
        let mut over_max_size = None;
        if let Some(max) = opts.max_size {
            let mut total: u64 = kept.iter().map(|k| k.2).sum();
            // Least recently used models first; a model goes whole (link, then its versions),
            // but for the versions held in use (and the link, when it names one of them).
            let mut models: Vec<ModelName> = kept.iter().map(|k| k.0.clone()).collect();
            models.dedup();
            models.sort_by_key(|m| kept.iter().filter(|k| &k.0 == m).map(|k| self.last_used(&k.1)).max());
            for model in models {
                if total <= max {
                    break;
                }
                let mut free = Vec::new();
                for (_, path, bytes) in kept.iter().filter(|k| k.0 == model) {
                    match self.claim_unheld(path)? {
                        Ok(guard) => free.push((path, *bytes, guard)),
                        Err(holders) => {
                            if !held.iter().any(|h| &h.path == path) {
                                let reason = "over --max-size";
                                held.push(Held {
                                    model: model.clone(),
                                    path: path.clone(),
                                    bytes: *bytes,
                                    reason,
                                    holders,
                                });
                            }
                        }
                    }
                }
                let current = self.current(&model)?;
                if !opts.dry_run && current.as_ref().is_none_or(|c| free.iter().any(|f| f.0 == c)) {
                    remove_file_if_present(&self.link_path(&model))?;
                }
                for (path, bytes, _guard) in free {
                    if !opts.dry_run {
                        self.remove_version(path)?;
                        self.forget_hold(path);
                    }
                    total = total.saturating_sub(bytes);
                    out.push(Pruned { model: model.clone(), path: path.clone(), bytes, reason: "over --max-size" });
                }
            }
            if total > max {
                over_max_size = Some(total);
            }
        }
        if !opts.dry_run {
            // Files of format 2 versions that no version directory links any more.
            self.remove_unused_blobs();
        }
        drop(locks);
        Ok(PruneOutcome { removed: out, skipped, held, over_max_size })
    }

    /// Removes `path` with `remove` (nothing with `dry_run`) unless a process holds it in use;
    /// then `Some(holders)`, and it stays.
    fn remove_unless_held(
        &self,
        path: &Path,
        dry_run: bool,
        remove: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Option<Vec<Holder>>> {
        let _guard = match self.claim_unheld(path)? {
            Ok(guard) => guard,
            Err(holders) => return Ok(Some(holders)),
        };
        if !dry_run {
            remove(path)?;
            self.forget_hold(path);
        }
        Ok(None)
    }
}
