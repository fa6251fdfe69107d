//! The cache's two per-model locks (`flock`, released by the kernel when a process dies):
//! `<Model>.lock`, held by whoever installs or removes versions of the model (one download per
//! machine), and `<Model>.use`, held shared while a ready version is handed out and exclusively
//! while one is removed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::Cache;
use crate::error::{Error, Result};
use crate::names::ModelName;

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
        let path = self.root.join(".locks").join(format!("{model}.{ext}"));
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

    /// The model's use lock, exclusively: no reader is handing out one of its versions.
    pub(super) fn lock_use_exclusive(&self, model: &ModelName) -> Result<ModelLock> {
        let (path, file) = self.use_lock_file(model)?;
        file.lock().map_err(|e| Error::io("cannot lock", &path, e))?;
        Ok(ModelLock { model: model.clone(), _file: file })
    }
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
