//! The cache's locks (`flock`, released by the kernel when a process dies): per model,
//! `<Model>.lock`, held by whoever installs or removes versions of the model (one download per
//! machine), and `<Model>.use`, held shared while a ready version is handed out and exclusively
//! while one is removed; per version, `<Model>@<id>.hold`, held shared for as long as a version
//! is in use (`run`, Python's `use`), which `prune` tests before it removes the version.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::Cache;
use crate::error::{Error, Result};
use crate::names::ModelName;

/// A version held in use: `prune` leaves it alone while this lives. A shared `flock` on
/// `.locks/<version dir name>.hold`, so the kernel ends the hold when the process dies, however
/// it dies; the descriptor is close-on-exec, so a child process does not inherit it.
#[derive(Debug)]
pub struct Hold {
    path: PathBuf,
    _file: File,
}

impl Hold {
    /// The version directory held.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A process that holds a version in use, as the kernel reports it (`/proc/locks`).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Some(c) => write!(f, "pid {} ({c})", self.pid),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

/// An exclusive per-model lock; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct ModelLock {
    model: ModelName,
    _file: File,
}

impl ModelLock {
    /// The model this lock is for.
    pub fn model(&self) -> &ModelName {
        &self.model
    }
}

impl Cache {
    fn lock_file(&self, model: &ModelName) -> Result<(PathBuf, File)> {
        self.open_lock(model, "lock")
    }

    fn use_lock_file(&self, model: &ModelName) -> Result<(PathBuf, File)> {
        self.open_lock(model, "use")
    }

    /// `.locks/<Model>.<ext>`, created if missing.
    fn open_lock(&self, model: &ModelName, ext: &str) -> Result<(PathBuf, File)> {
        self.open_lock_named(&format!("{model}.{ext}"))
    }

    /// `.locks/<name>`, created if missing.
    fn open_lock_named(&self, name: &str) -> Result<(PathBuf, File)> {
        let path = self.root.join(".locks").join(name);
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
        Ok(ModelLock { model: model.clone(), _file: file })
    }

    /// The model's lock if nobody holds it now; `None` if a download is using the model.
    pub fn try_lock(&self, model: &ModelName) -> Result<Option<ModelLock>> {
        let (path, file) = self.lock_file(model)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ModelLock { model: model.clone(), _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &path, e)),
        }
    }

    /// The version `models/<Model>` points at, if it is complete (its manifest copy is there),
    /// marked as just used; with `expected`, only if it is that version. Holds the model's use
    /// lock shared while it looks, so a concurrent `prune` cannot be halfway through removing
    /// what it returns. Blocking, but it waits only for a prune, never for a download.
    pub fn use_ready(&self, model: &ModelName, expected: Option<&Path>) -> Result<Option<PathBuf>> {
        self.hand_out(model, || Ok(self.current(model)?.filter(|current| expected.is_none_or(|e| e == current))))
    }

    /// `version_dir` of `model` if it is complete, marked as used; held like [`Cache::use_ready`]
    /// (shared use lock), whatever `models/<Model>` points at (a pinned version).
    pub fn use_version(&self, model: &ModelName, version_dir: &Path) -> Result<Option<PathBuf>> {
        self.hand_out(model, || Ok(Some(version_dir.to_path_buf())))
    }

    /// With the model's use lock shared: the version `pick` names, if it is complete, touched.
    fn hand_out(&self, model: &ModelName, pick: impl FnOnce() -> Result<Option<PathBuf>>) -> Result<Option<PathBuf>> {
        if !self.root.join(".locks").is_dir() {
            // A cache that was never set up holds no versions.
            return Ok(None);
        }
        let (path, file) = self.use_lock_file(model)?;
        file.lock_shared().map_err(|e| Error::io("cannot lock", &path, e))?;
        let Some(version) = pick()?.filter(|v| self.is_complete(v)) else {
            return Ok(None);
        };
        self.touch(&version);
        Ok(Some(version))
    }

    /// Holds `version_dir` of `model` in use if it is complete, marked as used: `prune` will not
    /// remove it while the returned [`Hold`] lives. `None` if it is not (or no longer) complete.
    /// Taken under the model's use lock, shared, so a prune is never halfway through removing
    /// what is held.
    pub fn hold(&self, model: &ModelName, version_dir: &Path) -> Result<Option<Hold>> {
        if !self.root.join(".locks").is_dir() {
            return Ok(None);
        }
        let (path, file) = self.use_lock_file(model)?;
        file.lock_shared().map_err(|e| Error::io("cannot lock", &path, e))?;
        let (hold_path, hold) = self.open_lock_named(&hold_name(version_dir))?;
        // Never waits: only a prune takes it exclusively, and only under the use lock.
        hold.lock_shared().map_err(|e| Error::io("cannot lock", &hold_path, e))?;
        if !self.is_complete(version_dir) {
            return Ok(None);
        }
        self.touch(version_dir);
        Ok(Some(Hold { path: version_dir.to_path_buf(), _file: hold }))
    }

    /// `.locks/<version dir name>.hold`.
    fn hold_path(&self, version_dir: &Path) -> PathBuf {
        self.root.join(".locks").join(hold_name(version_dir))
    }

    /// For a prune, with the model's use lock held exclusively: `Ok(guard)` when nobody holds
    /// `version_dir` (the guard keeps it so until the version is gone), `Err(holders)` when
    /// somebody does.
    pub(super) fn claim_unheld(&self, version_dir: &Path) -> Result<std::result::Result<Option<File>, Vec<Holder>>> {
        let path = self.hold_path(version_dir);
        let file = match File::options().write(true).open(&path) {
            Ok(f) => f,
            // Never held since the cache was made: nobody can take it now (the use lock).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
            Err(e) => return Err(Error::io("cannot open lock file", &path, e)),
        };
        match file.try_lock() {
            Ok(()) => Ok(Ok(Some(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(Err(holders(&path))),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &path, e)),
        }
    }

    /// Removes a removed version's hold file (under the model's use lock, exclusively, and the
    /// hold itself: nobody else has it open).
    pub(super) fn forget_hold(&self, version_dir: &Path) {
        let _ = fs::remove_file(self.hold_path(version_dir));
    }

    /// The model's use lock, exclusively: no reader is handing out one of its versions.
    pub(super) fn lock_use_exclusive(&self, model: &ModelName) -> Result<ModelLock> {
        let (path, file) = self.use_lock_file(model)?;
        file.lock().map_err(|e| Error::io("cannot lock", &path, e))?;
        Ok(ModelLock { model: model.clone(), _file: file })
    }
}

/// `<version dir name>.hold`.
fn hold_name(version_dir: &Path) -> String {
    format!("{}.hold", version_dir.file_name().unwrap_or_default().to_string_lossy())
}

/// The processes holding a `flock` on `path`, from `/proc/locks` (empty where that is not
/// readable: the version is still reported as held).
fn holders(path: &Path) -> Vec<Holder> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = fs::metadata(path) else { return Vec::new() };
    let Ok(locks) = fs::read_to_string("/proc/locks") else { return Vec::new() };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let mut out: Vec<Holder> = Vec::new();
    for line in locks.lines() {
        // `1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF` (`->` marks a waiter).
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") || fields.contains(&"->") {
            continue;
        }
        let (Some(pid), Some(id)) = (fields.get(4), fields.get(5)) else { continue };
        if !id.eq_ignore_ascii_case(&wanted) {
            continue;
        }
        // 0: a process in a PID namespace this one cannot see (another container's).
        let Ok(pid @ 1..) = pid.parse::<u32>() else { continue };
        if out.iter().any(|h| h.pid == pid) {
            continue;
        }
        let command = fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string());
        out.push(Holder { pid, command });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
