//! The local model store.
//!
//! ```text
//! <root>/CACHEDIR.TAG
//! <root>/models/<Model>                          symlink, swapped atomically, to a version dir
//! <root>/models/.versions/<Model>@<sha12>/       a complete, verified model (never modified)
//! <root>/models/.versions/<Model>@<sha12>.manifest.json
//! <root>/.staging/<Model>@<rand>/                extraction in progress (same filesystem)
//! <root>/.locks/<Model>.lock                     flock: one download (or prune) of a model per machine
//! <root>/.locks/<Model>.use                      flock: shared while a version is handed out, exclusive while one is removed
//! ```
//!
//! **A version directory appears only by `rename` after verification, and the ready link only by
//! `rename` of a new link over the old one**, so no reader ever sees a half-written model.
//!
//! **A version is removed only under both of the model's locks**: the download lock (so no
//! download is installing or resuming it) and the use lock, exclusively. A reader that hands out
//! a ready version ([`Cache::use_ready`]) holds the use lock shared while it checks the link and
//! the manifest copy, so it sees the version whole or not at all; it never waits for a download.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::{ModelName, Sha256Hex};

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by crowecode-cloud.\n# For information about cache directory tags see https://bford.info/cachedir/\n";

/// A model version present in the cache.
#[derive(Clone, Debug, Serialize)]
pub struct CachedVersion {
    pub model: ModelName,
    /// The version directory (immutable; safe to hand to a server).
    pub path: PathBuf,
    /// The archive sha256 this version came from, when its manifest copy is present.
    pub sha256: Option<Sha256Hex>,
    /// Whether `models/<Model>` points at it.
    pub current: bool,
    /// Sum of file sizes per its manifest.
    pub size: Option<u64>,
    /// Number of files per its manifest.
    pub files: Option<usize>,
}

/// How an installed version compares with its manifest.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub model: ModelName,
    pub path: PathBuf,
    /// Whether every file matches and nothing is missing or extra.
    pub ok: bool,
    pub files_checked: usize,
    /// In the manifest, not on disk.
    pub missing: Vec<String>,
    /// On disk with another size, sha256 or mode than the manifest says.
    pub changed: Vec<String>,
    /// On disk, not in the manifest.
    pub extra: Vec<String>,
}

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

/// What `prune` did in the cache.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneOutcome {
    /// Versions and selections removed (or, with `dry_run`, that would be).
    pub removed: Vec<Pruned>,
    /// Models left alone because a download of them was in progress.
    pub skipped: Vec<ModelName>,
}

/// What `prune` should do in the cache.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Only these models (all when empty).
    pub models: Vec<ModelName>,
    /// Versions to keep per model, the current one first (at least 1).
    pub keep: usize,
    /// Evict whole models, least recently used first, until the cache is at most this big.
    pub max_size: Option<u64>,
    /// Report without deleting.
    pub dry_run: bool,
}

/// An exclusive per-model lock; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct ModelLock {
    _file: File,
}

/// The cache rooted at one directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Default root: `$CROWECODE_HOME`, else `$XDG_CACHE_HOME/crowecode`, else `~/.cache/crowecode`,
    /// made absolute. With none of them set (`docker run --user N`, cron, systemd units) there is
    /// no sensible place, and writing gigabytes under the working directory would be a surprise:
    /// a usage error asks for `CROWECODE_HOME`.
    pub fn default_root(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
        let root = if let Some(h) = env("CROWECODE_HOME").filter(|s| !s.is_empty()) {
            PathBuf::from(h)
        } else if let Some(x) = env("XDG_CACHE_HOME").filter(|s| !s.is_empty()) {
            PathBuf::from(x).join("crowecode")
        } else if let Some(home) = env("HOME").filter(|s| !s.is_empty()) {
            PathBuf::from(home).join(".cache").join("crowecode")
        } else {
            return Err(Error::usage(
                "no place for the model cache: none of CROWECODE_HOME, XDG_CACHE_HOME and HOME is set",
                "set CROWECODE_HOME to a directory on a local disk (or pass --cache-dir DIR)",
            ));
        };
        std::path::absolute(&root).map_err(|e| Error::io("cannot resolve", &root, e))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a selective download (`--only`) of a version is kept: apart from the full versions,
    /// so a partial model is never taken for the model. `key` tells selections apart.
    pub fn selection_path(&self, model: &ModelName, sha: &Sha256Hex, key: &str) -> PathBuf {
        self.models_dir().join(".partial").join(format!("{model}@{}-{key}", sha.short()))
    }

    /// `<root>/models`, where ready models are.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    fn versions_dir(&self) -> PathBuf {
        self.models_dir().join(".versions")
    }

    pub(crate) fn staging_root(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// Creates the directory layout and the `CACHEDIR.TAG`.
    pub fn ensure_layout(&self) -> Result<()> {
        for dir in [self.versions_dir(), self.staging_root(), self.root.join(".locks")] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create cache directory", &dir, e))?;
        }
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fs::write(&tag, CACHEDIR_TAG).map_err(|e| Error::io("cannot write", &tag, e))?;
        }
        Ok(())
    }

    /// A warning when the cache is on a network filesystem, where the per-model file lock may not
    /// be honoured between machines (NFS without a lock manager, SMB): then two hosts sharing the
    /// cache could download the same model at once. `None` on local filesystems.
    pub fn lock_warning(&self) -> Option<String> {
        let fs = network_filesystem(&self.root)?;
        Some(format!(
            "the cache {} is on {fs}: file locks may not be reliable there, so one download per model is not guaranteed across machines; put CROWECODE_HOME on a local disk (one cache per host)",
            self.root.display()
        ))
    }

    /// `models/<Model>`: the stable path that always points at the newest ready version.
    pub fn link_path(&self, model: &ModelName) -> PathBuf {
        self.models_dir().join(model.as_str())
    }

    /// The directory of one version.
    pub fn version_path(&self, model: &ModelName, sha: &Sha256Hex) -> PathBuf {
        self.versions_dir().join(format!("{model}@{}", sha.short()))
    }

    fn manifest_copy_path(&self, version_dir: &Path) -> PathBuf {
        let mut name = version_dir.file_name().unwrap_or_default().to_os_string();
        name.push(".manifest.json");
        version_dir.with_file_name(name)
    }

    /// The manifest a cached version was installed from.
    pub fn read_manifest_copy(&self, version_dir: &Path, model: &ModelName) -> Option<Manifest> {
        let path = self.manifest_copy_path(version_dir);
        let bytes = fs::read(&path).ok()?;
        Manifest::parse(&bytes, model, &path.display().to_string()).ok()
    }

    /// Whether a version directory is complete: its manifest copy is written before the directory
    /// is renamed into place, and removed before it, so a version without one is never used.
    pub fn is_complete(&self, version_dir: &Path) -> bool {
        version_dir.is_dir() && self.manifest_copy_path(version_dir).is_file()
    }

    /// The version `models/<Model>` points at, if any.
    pub fn current(&self, model: &ModelName) -> Result<Option<PathBuf>> {
        let link = self.link_path(model);
        match fs::read_link(&link) {
            Ok(target) => {
                let abs = self.models_dir().join(target);
                Ok(abs.is_dir().then_some(abs))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(not_ours(&link)),
            Err(e) => Err(Error::io("cannot read", &link, e)),
        }
    }

    fn lock_file(&self, model: &ModelName) -> Result<(PathBuf, File)> {
        let path = self.root.join(".locks").join(format!("{model}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock file", &path, e))?;
        Ok((path, file))
    }

    /// Takes the model's lock, calling `on_wait` first if another process holds it. Blocking.
    pub fn lock(&self, model: &ModelName, on_wait: impl FnOnce()) -> Result<ModelLock> {
        let (path, file) = self.lock_file(model)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|e| Error::io("cannot lock", &path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::Io {
                    context: format!("cannot lock {} (file locks may not work on this filesystem)", path.display()),
                    source: e,
                });
            }
        }
        Ok(ModelLock { _file: file })
    }

    /// The model's lock if nobody holds it now; `None` if a download is using the model.
    pub fn try_lock(&self, model: &ModelName) -> Result<Option<ModelLock>> {
        let (path, file) = self.lock_file(model)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ModelLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &path, e)),
        }
    }

    fn use_lock_file(&self, model: &ModelName) -> Result<(PathBuf, File)> {
        let path = self.root.join(".locks").join(format!("{model}.use"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock file", &path, e))?;
        Ok((path, file))
    }

    /// The version `models/<Model>` points at, if it is complete (its manifest copy is there),
    /// marked as just used; with `expected`, only if it is that version. Holds the model's use
    /// lock shared while it looks, so a concurrent `prune` cannot be halfway through removing
    /// what it returns. Blocking, but it waits only for a prune, never for a download.
    pub fn use_ready(&self, model: &ModelName, expected: Option<&Path>) -> Result<Option<PathBuf>> {
        if !self.root.join(".locks").is_dir() {
            // A cache that was never set up holds no versions.
            return Ok(None);
        }
        let (path, file) = self.use_lock_file(model)?;
        file.lock_shared().map_err(|e| Error::io("cannot lock", &path, e))?;
        let Some(current) = self.current(model)? else {
            return Ok(None);
        };
        if expected.is_some_and(|e| e != current) || !self.is_complete(&current) {
            return Ok(None);
        }
        self.touch(&current);
        Ok(Some(current))
    }

    /// The model's use lock, exclusively: no reader is handing out one of its versions.
    fn lock_use_exclusive(&self, model: &ModelName) -> Result<ModelLock> {
        let (path, file) = self.use_lock_file(model)?;
        file.lock().map_err(|e| Error::io("cannot lock", &path, e))?;
        Ok(ModelLock { _file: file })
    }

    /// Records that a version was just used (for `prune --max-size`); best effort.
    pub fn touch(&self, version_dir: &Path) {
        if let Ok(f) = File::options().write(true).open(self.manifest_copy_path(version_dir)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    fn last_used(&self, version_dir: &Path) -> std::time::SystemTime {
        fs::metadata(self.manifest_copy_path(version_dir)).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH)
    }

    /// Removes cached versions that are not current (beyond `keep` per model), selections of
    /// old versions, then whole models, least recently used first, while the cache is larger
    /// than `max_size`. A model whose lock is held (a download in progress) is left alone.
    /// Blocking.
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
        for (model, mut versions) in by_model {
            let Some(lock) = self.try_lock(&model)? else {
                tracing::info!(%model, "in use by a download; not pruned");
                skipped.push(model.clone());
                continue;
            };
            // Readers hold this only while they check a version: a short wait at most.
            let use_lock = self.lock_use_exclusive(&model)?;
            versions.sort_by_key(|v| (!v.current, std::cmp::Reverse(self.last_used(&v.path))));
            for (i, v) in versions.into_iter().enumerate() {
                let bytes = tree_size(&v.path);
                if i < opts.keep.max(1) {
                    kept.push((model.clone(), v.path, bytes));
                    continue;
                }
                if !opts.dry_run {
                    self.remove_version(&v.path)?;
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
                    if !opts.dry_run {
                        remove_tree(&entry.path())?;
                    }
                    out.push(Pruned { model: model.clone(), path: entry.path(), bytes, reason: "old selection" });
                }
            }
            locks.push((model, lock, use_lock));
        }
        if let Some(max) = opts.max_size {
            let mut total: u64 = kept.iter().map(|k| k.2).sum();
            // Least recently used models first; a model goes whole (link, then its versions).
            let mut models: Vec<ModelName> = kept.iter().map(|k| k.0.clone()).collect();
            models.dedup();
            models.sort_by_key(|m| kept.iter().filter(|k| &k.0 == m).map(|k| self.last_used(&k.1)).max());
            for model in models {
                if total <= max {
                    break;
                }
                if !opts.dry_run {
                    remove_file_if_present(&self.link_path(&model))?;
                }
                for (_, path, bytes) in kept.iter().filter(|k| k.0 == model) {
                    if !opts.dry_run {
                        self.remove_version(path)?;
                    }
                    total = total.saturating_sub(*bytes);
                    out.push(Pruned {
                        model: model.clone(),
                        path: path.clone(),
                        bytes: *bytes,
                        reason: "over --max-size",
                    });
                }
            }
        }
        drop(locks);
        Ok(PruneOutcome { removed: out, skipped })
    }

    fn remove_version(&self, version_dir: &Path) -> Result<()> {
        // The manifest copy first: a version without it is treated as incomplete, never used.
        remove_file_if_present(&self.manifest_copy_path(version_dir))?;
        // Then the directory leaves its path whole (a rename into staging), so anyone holding
        // that path sees the complete version or nothing, never a half-deleted one. A prune
        // killed here leaves `<Model>@removing-…`, which the next download's cleanup removes.
        let name = version_dir.file_name().unwrap_or_default().to_string_lossy();
        let model = name.split_once('@').map_or(name.as_ref(), |(m, _)| m);
        let _ = fs::create_dir_all(self.staging_root());
        let trash = self.staging_root().join(format!("{model}@removing-{:016x}", fastrand::u64(..)));
        match fs::rename(version_dir, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(_) => remove_tree(version_dir),
        }
    }

    /// Removes staging leftovers of `model` from runs that died. Call with the lock held.
    pub fn clean_staging(&self, model: &ModelName, lock: &ModelLock) -> Result<usize> {
        self.clean_staging_except(model, lock, None)
    }

    /// [`Cache::clean_staging`], sparing `keep` (a staging directory being resumed) and its marker.
    pub fn clean_staging_except(&self, model: &ModelName, _lock: &ModelLock, keep: Option<&Path>) -> Result<usize> {
        let mut removed = 0;
        let prefix = format!("{model}@");
        let Ok(rd) = fs::read_dir(self.staging_root()) else {
            return Ok(0);
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let spared = keep.is_some_and(|k| path == k || path == resume_marker(k));
            if spared || !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&path)?;
                removed += 1;
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        let link_tmp = format!(".{model}.link.");
        if let Ok(rd) = fs::read_dir(self.models_dir()) {
            for entry in rd.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&link_tmp) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }

    /// A fresh, empty staging directory for `model`.
    pub fn new_staging(&self, model: &ModelName, _lock: &ModelLock) -> Result<PathBuf> {
        let dir = self.staging_root().join(format!("{model}@{:016x}", fastrand::u64(..)));
        fs::create_dir(&dir).map_err(|e| Error::io("cannot create staging directory", &dir, e))?;
        Ok(dir)
    }

    /// Moves a verified staging directory into place as the version of `manifest`, then points
    /// `models/<Model>` at it. Returns the version directory.
    pub fn install(&self, staging: &Path, manifest: &Manifest, lock: &ModelLock) -> Result<PathBuf> {
        let version = self.version_path(&manifest.model, &manifest.archive_sha256);
        let copy = self.manifest_copy_path(&version);
        let tmp = copy.with_extension("json.tmp");
        fs::write(&tmp, manifest.to_bytes()).map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, &copy).map_err(|e| Error::io("cannot write", &copy, e))?;
        if version.is_dir() {
            // The same version is already complete (an earlier run); keep it.
            remove_tree(staging)?;
        } else {
            fs::rename(staging, &version).map_err(|e| Error::io("cannot move the verified model into", &version, e))?;
        }
        self.point_to(&manifest.model, &version, lock)?;
        Ok(version)
    }

    /// Atomically points `models/<Model>` at an existing version directory.
    pub fn point_to(&self, model: &ModelName, version: &Path, _lock: &ModelLock) -> Result<()> {
        let link = self.link_path(model);
        if link.exists() && !link.is_symlink() {
            return Err(not_ours(&link));
        }
        let name = version.file_name().expect("version dir has a name");
        let target = Path::new(".versions").join(name);
        let tmp = self.models_dir().join(format!(".{model}.link.{:016x}", fastrand::u64(..)));
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io("cannot create link", &tmp, e))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("cannot update", &link, e)
        })
    }

    /// Every version in the cache, newest-pointed first per model.
    pub fn list(&self) -> Result<Vec<CachedVersion>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.versions_dir()) else {
            return Ok(out);
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() {
                continue;
            }
            let Some((model, _)) = name.split_once('@') else {
                continue;
            };
            let Ok(model) = ModelName::new(model) else {
                continue;
            };
            let current = self.current(&model).ok().flatten().is_some_and(|c| c == entry.path());
            let manifest = self.read_manifest_copy(&entry.path(), &model);
            out.push(CachedVersion {
                model,
                path: entry.path(),
                sha256: manifest.as_ref().map(|m| m.archive_sha256.clone()),
                current,
                size: manifest.as_ref().map(|m| m.total_size),
                files: manifest.as_ref().map(|m| m.files.len()),
            });
        }
        out.sort_by(|a, b| a.model.cmp(&b.model).then(b.current.cmp(&a.current)).then(a.path.cmp(&b.path)));
        Ok(out)
    }

    /// Re-hashes the current version of `model` against the manifest it was installed from.
    /// Blocking; reads every byte of the model.
    pub fn verify(&self, model: &ModelName) -> Result<VerifyReport> {
        use std::collections::BTreeSet;
        use std::os::unix::fs::PermissionsExt as _;

        let Some(path) = self.current(model)? else {
            return Err(Error::ModelNotFound {
                model: model.to_string(),
                location: format!("the cache {}", self.root.display()),
            });
        };
        let manifest = self.read_manifest_copy(&path, model).ok_or_else(|| {
            Error::integrity(
                path.display().to_string(),
                "the manifest this version was installed from is missing or unreadable",
                None,
                None,
            )
        })?;
        let mut missing = Vec::new();
        let mut changed = Vec::new();
        for f in &manifest.files {
            let p = path.join(&f.path);
            match fs::symlink_metadata(&p) {
                Err(_) => missing.push(f.path.clone()),
                Ok(m)
                    if !m.is_file()
                        || m.len() != f.size
                        || !crate::archive::mode_matches(m.permissions().mode(), f.mode) =>
                {
                    changed.push(f.path.clone());
                }
                Ok(_) => match crate::archive::sha256_file(&p) {
                    Ok((sha, _)) if sha == f.sha256 => {}
                    Ok(_) => changed.push(f.path.clone()),
                    Err(e) => return Err(Error::io("cannot read", &p, e)),
                },
            }
        }
        let known: BTreeSet<&str> = manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(manifest.dirs.iter().map(|d| d.path.as_str()))
            .collect();
        let mut extra = Vec::new();
        for entry in walkdir::WalkDir::new(&path).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::other(format!("cannot walk {}: {e}", path.display()), None))?;
            let rel = entry.path().strip_prefix(&path).expect("under the version dir").to_string_lossy().into_owned();
            let parent_of_known = entry.file_type().is_dir() && known.iter().any(|k| k.starts_with(&format!("{rel}/")));
            if !known.contains(rel.as_str()) && !parent_of_known {
                extra.push(rel);
            }
        }
        let ok = missing.is_empty() && changed.is_empty() && extra.is_empty();
        Ok(VerifyReport {
            model: model.clone(),
            path,
            ok,
            files_checked: manifest.files.len(),
            missing,
            changed,
            extra,
        })
    }

    /// Total bytes of regular files under the root.
    pub fn disk_usage(&self) -> u64 {
        tree_size(&self.root)
    }
}

/// Removes a file (or link); one already gone is fine.
fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("cannot remove", path, e)),
        _ => Ok(()),
    }
}

/// `<staging>.resume`: beside (never inside) a staging directory, the archive sha256 it is for.
pub(crate) fn resume_marker(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_os_string();
    name.push(".resume");
    PathBuf::from(name)
}

/// The kind of network filesystem `path` (or its nearest existing ancestor) is on, if any.
fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt as _;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    fs_type_name(st.f_type as i64)
}

/// Names the network filesystems among `statfs` magic numbers.
fn fs_type_name(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x517B => Some("SMB"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x6573_5546 => Some("a FUSE filesystem"),
        0x00C3_6400 => Some("CephFS"),
        0x0BD0_0BD0 => Some("Lustre"),
        0x4750_4653 => Some("GPFS"),
        _ => None,
    }
}

/// Bytes of the files under `path`.
fn tree_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn not_ours(link: &Path) -> Error {
    Error::other(
        format!("{} exists and is not a link managed by crowecode-cloud", link.display()),
        Some("move it away, or use another --cache-dir".into()),
    )
}

/// Removes a tree even where read-only directories would block it.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(path).map_err(|e| Error::io("cannot remove", path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_named_and_local_ones_are_not() {
        assert_eq!(fs_type_name(0x6969), Some("NFS"));
        assert_eq!(fs_type_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(fs_type_name(0xEF53), None, "ext4");
        assert_eq!(fs_type_name(0x0102_1994), None, "tmpfs");
        assert_eq!(fs_type_name(0x5846_5342), None, "xfs");
        // This test's temp dir is local: no warning.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Cache::new(dir.path().join("not-yet")).lock_warning(), None);
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache.ensure_layout().unwrap();
        let m = ModelName::new("Alpha").unwrap();
        let held = cache.lock(&m, || panic!("first lock must not wait")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = cache.clone();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            let waited = std::cell::Cell::new(false);
            let _l = c2.lock(&m2, || waited.set(true)).unwrap();
            tx.send(waited.get()).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "second lock must wait");
        drop(held);
        assert!(rx.recv().unwrap(), "second lock reported waiting");
        t.join().unwrap();
        assert!(dir.path().join("CACHEDIR.TAG").exists());
    }

    #[test]
    fn a_real_directory_in_place_of_the_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache.ensure_layout().unwrap();
        let m = ModelName::new("Alpha").unwrap();
        fs::create_dir_all(cache.link_path(&m)).unwrap();
        let lock = cache.lock(&m, || {}).unwrap();
        let v = dir.path().join("models/.versions/Alpha@000000000000");
        fs::create_dir_all(&v).unwrap();
        assert!(cache.point_to(&m, &v, &lock).unwrap_err().to_string().contains("not a link managed"));
    }
}
