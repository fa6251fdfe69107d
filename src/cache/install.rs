//! The install protocol. Holding the model's lock, a version is either ready, or it gets a
//! staging area: the one a crashed run left (its verified files kept) or a fresh one. The staging
//! area commits (the verified tree moves in by `rename`, then the link is swapped) or, dropped,
//! removes itself. Operations call this; they never assemble its steps.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::{Cache, ModelLock, remove_tree};
use crate::archive::{self, Compression};
use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest};
use crate::names::ModelName;

/// What [`Cache::begin`] found.
#[derive(Debug)]
pub enum Acquired {
    /// The version is installed and `models/<Model>` points at it.
    Ready(PathBuf),
    /// The version is to be fetched into this staging area.
    Staging(Staging),
}

/// What a crashed download of the same version left that this one keeps.
#[derive(Clone, Debug)]
pub struct Resume {
    /// Index into the manifest's expected entries of the first entry still to extract.
    pub start_index: usize,
    /// Where that entry's headers begin in the archive.
    pub start_offset: u64,
    pub kept_files: usize,
    pub kept_bytes: u64,
}

/// A staging directory of one model, with the model's lock. Removed (with its resume marker)
/// when dropped uncommitted: an error, or a dropped future (an interrupted process).
#[derive(Debug)]
pub struct Staging {
    cache: Cache,
    dir: PathBuf,
    resume: Option<Resume>,
    committed: bool,
    /// Replace an installed copy of the version on commit (`download --force`).
    replace: bool,
    // Released last, after the directory is gone or in place.
    _lock: ModelLock,
}

impl Cache {
    /// The install protocol for the version `manifest` describes, holding `lock`, into the
    /// directory `name` (see [`Cache::version_name`]): `Ready` when
    /// that version is installed (pointing the link back at it if the link had moved on), else a
    /// staging area, resumable when a crashed run of this version left verified files (then the
    /// rest of that directory is cleared). Leftovers of other runs are removed. Blocking: it
    /// hashes the files it keeps.
    pub fn begin(&self, lock: ModelLock, manifest: &Manifest, name: &str, link: bool) -> Result<Acquired> {
        let model = lock.model().clone();
        if model != manifest.model {
            return Err(Error::other(format!("the lock is for {model}, the manifest for {}", manifest.model), None));
        }
        self.ensure_layout()?;
        let version = self.version_path(&model, name);
        // Whoever held the lock before may have installed exactly this version.
        let linked = self.current(&model)?.as_deref() == Some(version.as_path());
        if (linked || !link) && self.is_complete(&version) {
            return Ok(Acquired::Ready(version));
        }
        let resumable = find_resumable(self, &model, manifest)?;
        let removed = self.clean_staging_except(&model, resumable.as_ref().map(|(dir, _)| dir.as_path()))?;
        if removed > 0 {
            tracing::info!(%model, removed, "removed leftovers of an interrupted download");
        }
        if resumable.is_none() && self.is_complete(&version) {
            // Installed before, and the link moved on since: point back at it.
            self.point_to(&model, &version)?;
            return Ok(Acquired::Ready(version));
        }
        let (dir, resume) = match resumable {
            Some((dir, resume)) => (dir, Some(resume)),
            None => {
                let dir = self.new_staging(&model)?;
                if manifest.compression == Compression::None {
                    // Lets a run after a crash find and keep what this one completes.
                    let marker = resume_marker(&dir);
                    if let Err(e) = fs::write(&marker, manifest.content_digest().as_str()) {
                        let _ = remove_tree(&dir);
                        return Err(Error::io("cannot write", &marker, e));
                    }
                }
                (dir, None)
            }
        };
        Ok(Acquired::Staging(Staging {
            cache: self.clone(),
            dir,
            resume,
            committed: false,
            replace: false,
            _lock: lock,
        }))
    }

    /// A fresh, empty staging area for the model of `lock` (a fallback's `{dest}`, a selection).
    pub fn begin_empty(&self, lock: ModelLock) -> Result<Staging> {
        self.ensure_layout()?;
        let dir = self.new_staging(lock.model())?;
        Ok(Staging { cache: self.clone(), dir, resume: None, committed: false, replace: false, _lock: lock })
    }

    /// A fresh staging area for the version `manifest` describes whose commit replaces an
    /// installed copy of it (`download --force`, after `verify` found the copy changed).
    pub fn begin_replacing(&self, lock: ModelLock, manifest: &Manifest) -> Result<Staging> {
        if *lock.model() != manifest.model {
            return Err(Error::other(
                format!("the lock is for {}, the manifest for {}", lock.model(), manifest.model),
                None,
            ));
        }
        self.clean_staging_except(lock.model(), None)?;
        let mut staging = self.begin_empty(lock)?;
        staging.replace = true;
        Ok(staging)
    }

    /// Removes what killed runs of the model of `lock` left in staging (and half-made links).
    pub fn clean_leftovers(&self, lock: &ModelLock) -> Result<usize> {
        self.clean_staging_except(lock.model(), None)
    }

    /// Removes staging leftovers of `model`, sparing `keep` (a directory being resumed) and its
    /// marker. Only with the model's lock held.
    fn clean_staging_except(&self, model: &ModelName, keep: Option<&Path>) -> Result<usize> {
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

    fn new_staging(&self, model: &ModelName) -> Result<PathBuf> {
        let dir = self.staging_root().join(format!("{model}@{:016x}", fastrand::u64(..)));
        fs::create_dir(&dir).map_err(|e| Error::io("cannot create staging directory", &dir, e))?;
        Ok(dir)
    }
}

impl Staging {
    /// The directory to fill.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What a crashed run left that is kept, when this staging area resumes one.
    pub fn resume(&self) -> Option<&Resume> {
        self.resume.as_ref()
    }

    /// Moves the verified tree into place as the version `manifest` describes, in the directory
    /// `name` (its manifest copy first), then, with `link`, points `models/<Model>` at it (a download of `latest`; a
    /// pinned or tagged version leaves the link alone). Returns the version directory.
    pub fn commit(mut self, manifest: &Manifest, name: &str, link: bool) -> Result<PathBuf> {
        let cache = &self.cache;
        let version = cache.version_path(&manifest.model, name);
        let copy = cache.manifest_copy_path(&version);
        let tmp = copy.with_extension("json.tmp");
        fs::write(&tmp, manifest.to_bytes()).map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, &copy).map_err(|e| Error::io("cannot write", &copy, e))?;
        if version.is_dir() && self.replace {
            // Swapped with readers held off, so none sees the version path missing: the old
            // copy leaves by one rename, the verified one arrives by another.
            let _readers = cache.lock_use_exclusive(&manifest.model)?;
            let old = cache.staging_root().join(format!("{}@replaced-{:016x}", manifest.model, fastrand::u64(..)));
            fs::rename(&version, &old).map_err(|e| Error::io("cannot move aside", &version, e))?;
            fs::rename(&self.dir, &version)
                .map_err(|e| Error::io("cannot move the verified model into", &version, e))?;
            self.committed = true;
            let _ = remove_tree(&old);
        } else if version.is_dir() {
            // The same version is already complete (an earlier run); keep it. Dropping removes
            // this directory.
        } else {
            fs::rename(&self.dir, &version)
                .map_err(|e| Error::io("cannot move the verified model into", &version, e))?;
            self.committed = true;
        }
        if link {
            cache.point_to(&manifest.model, &version)?;
        }
        Ok(version)
    }

    /// Moves the verified files to `dest` (a selection of files, never a version).
    pub fn commit_to(mut self, dest: &Path) -> Result<PathBuf> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
        }
        fs::rename(&self.dir, dest).map_err(|e| Error::io("cannot move the verified files into", dest, e))?;
        self.committed = true;
        Ok(dest.to_path_buf())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && self.dir.exists() {
            let _ = remove_tree(&self.dir);
        }
        let _ = fs::remove_file(resume_marker(&self.dir));
    }
}

/// `<staging>.resume`: beside (never inside) a staging directory, the archive sha256 it is for.
fn resume_marker(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_os_string();
    name.push(".resume");
    PathBuf::from(name)
}

/// Finds a leftover staging directory of `manifest`'s version (uncompressed archives only) and
/// keeps its leading run of complete files whose sha256 matches the manifest; everything else
/// in it is removed, directories the manifest does not list included. Blocking: it hashes the
/// files it keeps.
fn find_resumable(cache: &Cache, model: &ModelName, manifest: &Manifest) -> Result<Option<(PathBuf, Resume)>> {
    let pieces = manifest.is_pieces();
    if !pieces && (manifest.compression != Compression::None || manifest.files.iter().any(|f| f.offset.is_none())) {
        return Ok(None);
    }
    let Ok(rd) = fs::read_dir(cache.staging_root()) else {
        return Ok(None);
    };
    let prefix = format!("{model}@");
    let staging = rd.flatten().map(|e| e.path()).find(|p| {
        p.is_dir()
            && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            && fs::read_to_string(resume_marker(p)).is_ok_and(|s| s.trim() == manifest.content_digest().as_str())
    });
    let Some(staging) = staging else {
        return Ok(None);
    };
    if pieces {
        return Ok(resumable_pieces(&staging, manifest)?.map(|r| (staging, r)));
    }
    let files: HashMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let expected = manifest.expected_entries();
    let (mut start_index, mut start_offset, mut kept_bytes) = (0usize, 0u64, 0u64);
    let mut kept: HashSet<PathBuf> = HashSet::new();
    for (i, e) in expected.iter().enumerate() {
        let Some(f) = files.get(e.path.as_str()) else { continue };
        let path = staging.join(&f.path);
        let complete = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == f.size)
            && archive::sha256_file(&path).is_ok_and(|(h, _)| h == f.sha256);
        if !complete {
            break;
        }
        kept.insert(path);
        kept_bytes += f.size;
        start_index = i + 1;
        start_offset = f.offset.unwrap_or(0) + f.size.div_ceil(512) * 512;
    }
    if kept.is_empty() {
        return Ok(None);
    }
    // Anything else (a half-written file, files after it) goes; so do directories the manifest
    // does not list (nothing may be installed that it does not describe).
    let dirs: HashSet<PathBuf> = manifest
        .dirs
        .iter()
        .map(|d| staging.join(&d.path))
        .chain(
            manifest
                .files
                .iter()
                .flat_map(|f| staging.join(&f.path).ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>()),
        )
        .collect();
    for entry in walkdir::WalkDir::new(&staging).min_depth(1).contents_first(true).into_iter().flatten() {
        let path = entry.path();
        if entry.file_type().is_dir() {
            if !dirs.contains(path) {
                remove_tree(path)?;
            }
        } else if !kept.contains(path) {
            fs::remove_file(path).map_err(|e| Error::io("cannot remove", path, e))?;
        }
    }
    let resume = Resume { start_index, start_offset, kept_files: kept.len(), kept_bytes };
    Ok(Some((staging, resume)))
}

/// A crashed format 2 download's staging directory: its files of the right size stay (the
/// download checks each of their chunks against its digest in place and fetches only the rest);
/// anything the manifest does not list goes.
fn resumable_pieces(staging: &Path, manifest: &Manifest) -> Result<Option<Resume>> {
    let sizes: HashMap<PathBuf, u64> = manifest.files.iter().map(|f| (staging.join(&f.path), f.size)).collect();
    let dirs: HashSet<PathBuf> = manifest
        .dirs
        .iter()
        .map(|d| staging.join(&d.path))
        .chain(sizes.keys().flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>()))
        .collect();
    let mut kept = 0;
    for entry in walkdir::WalkDir::new(staging).min_depth(1).contents_first(true).into_iter().flatten() {
        let path = entry.path();
        if entry.file_type().is_dir() {
            if !dirs.contains(path) {
                remove_tree(path)?;
            }
        } else if entry.file_type().is_file() && entry.metadata().is_ok_and(|m| Some(&m.len()) == sizes.get(path)) {
            kept += 1;
        } else {
            fs::remove_file(path).map_err(|e| Error::io("cannot remove", path, e))?;
        }
    }
    Ok((kept > 0).then_some(Resume { start_index: 0, start_offset: 0, kept_files: kept, kept_bytes: 0 }))
}
