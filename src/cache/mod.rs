//! The local model store: its layout, the versions in it and the link to the current one. The
//! install protocol is in [`install`], the locks in [`lock`], removal in [`prune`], re-hashing in
//! [`verify`].
//!
//! ```text
//! <root>/CACHEDIR.TAG
//! <root>/models/<Model>                          symlink, swapped atomically, to a version dir
//! <root>/models/.versions/<Model>@<id12>/        a complete, verified model (never modified)
//! <root>/models/.versions/<Model>@<id12>.manifest.json
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
use crate::reference::{TagName, Target, VersionId};

pub(crate) mod blobs;
mod install;
mod lock;
mod prune;
mod verify;

pub use install::{Acquired, Resume, Staging};
pub use lock::{Hold, Holder, ModelLock};
pub use prune::{Held, PruneOptions, PruneOutcome, Pruned};
pub use verify::VerifyReport;

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
    /// `name` is the short version id.
    pub fn selection_path(&self, model: &ModelName, name: &str, key: &str) -> PathBuf {
        self.models_dir().join(".partial").join(format!("{model}@{name}-{key}"))
    }

    /// `<root>/models`, where ready models are.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    pub(crate) fn versions_dir(&self) -> PathBuf {
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

    /// The directory of one version: `.versions/<Model>@<name>`, `name` being the short version
    /// id (see [`Cache::version_name`]), or the archive digest's for what has no version id (a
    /// fallback's model).
    pub fn version_path(&self, model: &ModelName, name: &str) -> PathBuf {
        self.versions_dir().join(format!("{model}@{name}"))
    }

    /// The directory name of the version `id`: its short id, so that the printed path names
    /// what `download MODEL@<short>` fetches and two versions of one tree keep apart. A cache of
    /// an earlier release named it by the archive digest: such a directory recorded as holding
    /// `id` is used where it is (it may be in use).
    pub fn version_name(&self, model: &ModelName, id: &VersionId, archive: &Sha256Hex) -> String {
        let earlier = self.version_path(model, archive.short());
        if !self.version_path(model, id.short()).exists()
            && self.is_complete(&earlier)
            && self.version_of(&earlier).as_ref() == Some(id)
        {
            return archive.short().to_string();
        }
        id.short().to_string()
    }

    pub(crate) fn manifest_copy_path(&self, version_dir: &Path) -> PathBuf {
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

    /// Records which version (manifest digest) a version directory holds: `<dir>.version`.
    pub fn record_version(&self, version_dir: &Path, id: &VersionId) -> Result<()> {
        let path = sidecar(version_dir, ".version");
        fs::write(&path, format!("{}\n", id.hex())).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// The version id a version directory was recorded with.
    pub fn version_of(&self, version_dir: &Path) -> Option<VersionId> {
        VersionId::parse(fs::read_to_string(sidecar(version_dir, ".version")).ok()?.trim())
    }

    /// The complete version directory of `model` holding the version `target` names (a whole
    /// id or a prefix), found with no request to the bucket.
    pub fn find_version(&self, model: &ModelName, target: &Target) -> Option<PathBuf> {
        let prefix = format!("{model}@");
        let rd = fs::read_dir(self.versions_dir()).ok()?;
        let mut found = Vec::new();
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || !path.is_dir() {
                continue;
            }
            let Some(id) = self.version_of(&path) else { continue };
            let hit = match target {
                Target::Version(v) => &id == v,
                Target::Prefix(p) => id.hex().starts_with(p.as_str()),
                Target::Tag(_) => false,
            };
            if hit && self.is_complete(&path) {
                found.push(path);
            }
        }
        (found.len() == 1).then(|| found.remove(0))
    }

    /// Remembers that `tag` of `model` resolved to `id` here (for `download --offline`, and so
    /// `prune` keeps it): `models/.refs/<Model>/<tag>`.
    pub fn set_ref(&self, model: &ModelName, tag: &TagName, id: &VersionId) -> Result<()> {
        let dir = self.models_dir().join(".refs").join(model.as_str());
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        let path = dir.join(tag.as_str());
        let tmp = dir.join(format!(".{tag}.{:016x}", fastrand::u64(..)));
        fs::write(&tmp, format!("{}\n", id.hex())).map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// The highest signed move of `tag` of `model` verified on this machine (0: none): a signed
    /// tag found at a lower one is a replay. `models/.refs/<Model>/.seq-<tag>`.
    pub fn signed_seq(&self, model: &ModelName, tag: &TagName) -> u64 {
        let path = self.models_dir().join(".refs").join(model.as_str()).join(format!(".seq-{tag}"));
        fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// Records a verified signed move of `tag` (never lowering what is recorded).
    pub fn set_signed_seq(&self, model: &ModelName, tag: &TagName, seq: u64) -> Result<()> {
        if seq <= self.signed_seq(model, tag) {
            return Ok(());
        }
        let dir = self.models_dir().join(".refs").join(model.as_str());
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        let path = dir.join(format!(".seq-{tag}"));
        let tmp = dir.join(format!(".seq-{tag}.{:016x}", fastrand::u64(..)));
        fs::write(&tmp, format!("{seq}\n")).map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// The signature installed beside a version directory: `<dir>.sig`.
    pub fn signature_path(&self, version_dir: &Path) -> PathBuf {
        sidecar(version_dir, ".sig")
    }

    /// What `tag` of `model` last resolved to on this machine.
    pub fn get_ref(&self, model: &ModelName, tag: &TagName) -> Option<VersionId> {
        let path = self.models_dir().join(".refs").join(model.as_str()).join(tag.as_str());
        VersionId::parse(fs::read_to_string(path).ok()?.trim())
    }

    /// Every version id some tag of `model` last resolved to here.
    pub fn refs(&self, model: &ModelName) -> Vec<VersionId> {
        let dir = self.models_dir().join(".refs").join(model.as_str());
        let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
        rd.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| VersionId::parse(fs::read_to_string(e.path()).ok()?.trim()))
            .collect()
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

    /// Records that a version was just used (for `prune --max-size`); best effort.
    pub fn touch(&self, version_dir: &Path) {
        if let Ok(f) = File::options().write(true).open(self.manifest_copy_path(version_dir)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    pub(crate) fn last_used(&self, version_dir: &Path) -> std::time::SystemTime {
        fs::metadata(self.manifest_copy_path(version_dir)).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH)
    }

    pub(crate) fn remove_version(&self, version_dir: &Path) -> Result<()> {
        // The manifest copy first: a version without it is treated as incomplete, never used.
        remove_file_if_present(&self.manifest_copy_path(version_dir))?;
        let _ = fs::remove_file(sidecar(version_dir, ".version"));
        let _ = fs::remove_file(sidecar(version_dir, ".sig"));
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

    /// Atomically points `models/<Model>` at an existing version directory (with the model's
    /// download lock held).
    pub(crate) fn point_to(&self, model: &ModelName, version: &Path) -> Result<()> {
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
                sha256: manifest.as_ref().map(Manifest::content_digest),
                current,
                size: manifest.as_ref().map(|m| m.total_size),
                files: manifest.as_ref().map(|m| m.files.len()),
            });
        }
        out.sort_by(|a, b| a.model.cmp(&b.model).then(b.current.cmp(&a.current)).then(a.path.cmp(&b.path)));
        Ok(out)
    }

    /// Fails, before a byte is fetched, when the cache's filesystem has less room than `needed`
    /// bytes: a 60 GB model should not fill the disk to find that out. Unknown free space passes.
    pub fn check_room(&self, needed: u64) -> Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = self.staging_root();
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return Ok(()) };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Ok(());
        }
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
        if free >= needed {
            return Ok(());
        }
        Err(Error::Io {
            context: format!(
                "the cache {} has {} MiB free and this model needs {} MiB",
                self.root.display(),
                free >> 20,
                needed.div_ceil(1 << 20)
            ),
            source: io::Error::from(io::ErrorKind::StorageFull),
        })
    }

    /// Total bytes of regular files under the root.
    pub fn disk_usage(&self) -> u64 {
        tree_size(&self.root)
    }
}

/// `<dir><suffix>`: a file beside a version directory (`.manifest.json`, `.version`).
pub(crate) fn sidecar(version_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = version_dir.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a file (or link); one already gone is fine.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("cannot remove", path, e)),
        _ => Ok(()),
    }
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
pub(crate) fn tree_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn not_ours(link: &Path) -> Error {
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
    fn a_real_directory_in_place_of_the_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache.ensure_layout().unwrap();
        let m = ModelName::new("Alpha").unwrap();
        fs::create_dir_all(cache.link_path(&m)).unwrap();
        let _lock = cache.lock(&m, || {}).unwrap();
        let v = dir.path().join("models/.versions/Alpha@000000000000");
        fs::create_dir_all(&v).unwrap();
        assert!(cache.point_to(&m, &v).unwrap_err().to_string().contains("not a link managed"));
    }
}
