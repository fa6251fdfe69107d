//! The cache's blob store: `<root>/.blobs/<sha256>`, every file of a format 2 version once, hard
//! linked into each version directory that holds it (a copy where links fail), so versions that
//! share a file do not hold it twice. A blob whose link count is 1 is held by no version, and
//! `prune` removes it. `verify` hashes each version's files, so a byte changed in a shared
//! inode shows in every version holding it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::Cache;
use crate::names::{ModelName, Sha256Hex};

impl Cache {
    /// `<root>/.blobs`.
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root().join(".blobs")
    }

    /// `<root>/.blobs/<sha256>`.
    pub(crate) fn blob_path(&self, sha: &Sha256Hex) -> PathBuf {
        self.blobs_dir().join(sha.as_str())
    }

    /// Removes the blobs no version directory links any more (link count 1); returns the bytes
    /// freed. Blocking.
    pub(crate) fn remove_unused_blobs(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.blobs_dir()) else { return 0 };
        let mut freed = 0;
        for e in entries.flatten() {
            if let Ok(meta) = e.metadata()
                && meta.is_file()
                && meta.nlink() == 1
                && fs::remove_file(e.path()).is_ok()
            {
                freed += meta.len();
            }
        }
        freed
    }
}

/// What this machine already has of a model: the files of its installed versions by sha256,
/// and, for those of format 2, where each chunk of them is.
#[derive(Debug, Default)]
pub(crate) struct LocalSources {
    by_file: HashMap<Sha256Hex, Vec<PathBuf>>,
    by_chunk: HashMap<[u8; 32], (PathBuf, u64)>,
}

impl LocalSources {
    /// Reads the manifest copies of the model's installed versions (no file is read yet).
    pub(crate) fn gather(cache: &Cache, model: &ModelName) -> Self {
        let mut out = Self::default();
        let Ok(entries) = fs::read_dir(cache.versions_dir()) else { return out };
        let own = format!("{model}@");
        for e in entries.flatten() {
            let dir = e.path();
            let named = e.file_name().to_str().is_some_and(|n| n.starts_with(&own) && !n.contains('.'));
            if !named || !cache.is_complete(&dir) {
                continue;
            }
            let Some(manifest) = cache.read_manifest_copy(&dir, model) else { continue };
            for f in &manifest.files {
                let path = dir.join(&f.path);
                out.by_file.entry(f.sha256.clone()).or_default().push(path.clone());
                let mut at = 0u64;
                for (sha, len) in &f.chunks {
                    out.by_chunk.entry(super::super::ops::pieces::digest_bytes(sha)).or_insert((path.clone(), at));
                    at += u64::from(*len);
                }
            }
        }
        out
    }

    /// Where a file of sha256 `sha` may be found whole: the blob store first, then installed
    /// versions. Each must still be hashed before it is used.
    pub(crate) fn whole(&self, cache: &Cache, sha: &Sha256Hex) -> Vec<PathBuf> {
        let blob = cache.blob_path(sha);
        let mut out: Vec<PathBuf> = blob.is_file().then_some(blob).into_iter().collect();
        out.extend(self.by_file.get(sha).into_iter().flatten().cloned());
        out
    }

    /// A local file and offset holding the chunk `digest` (to be checked when read).
    pub(crate) fn chunk(&self, digest: &[u8; 32]) -> Option<&(PathBuf, u64)> {
        self.by_chunk.get(digest)
    }
}

/// Enters a verified file into the blob store (a hard link; nothing when the store has it or
/// links are not possible there).
pub(crate) fn keep(cache: &Cache, path: &Path, sha: &Sha256Hex) {
    let blob = cache.blob_path(sha);
    if blob.exists() {
        return;
    }
    let _ = fs::create_dir_all(cache.blobs_dir());
    let _ = fs::hard_link(path, &blob);
}

/// Puts the verified file `source` (of sha256 `sha`) at `target`: the blob store gets it first
/// (by a link), and `target` becomes a link of the blob, or a copy where links fail. False when
/// neither worked.
pub(crate) fn link_or_copy(cache: &Cache, source: &Path, sha: &Sha256Hex, target: &Path) -> bool {
    let blob = cache.blob_path(sha);
    if source != blob {
        keep(cache, source, sha);
    }
    let from = if blob.is_file() { blob } else { source.to_path_buf() };
    fs::hard_link(&from, target).is_ok() || fs::copy(&from, target).is_ok()
}
