//! A directory used as a bucket, with cloud semantics: objects appear atomically (temp file +
//! rename), multipart parts are staged and joined on complete, conditional writes are honoured.
//!
//! Used for the demo, for tests that need no server, and for shared filesystems (NFS, EFS).

use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream;

use super::{
    ByteStream, GetRange, Limits, ObjectMeta, PResult, PartTag, PendingUpload, Provider, ProviderError,
    ProviderErrorKind, PutMode,
};

/// Names under the root that hold our own bookkeeping, never objects.
const TMP_DIR: &str = ".crowecode-tmp";
const PARTS_DIR: &str = ".crowecode-multipart";
const LOCK_FILE: &str = ".crowecode-lock";
const READ_CHUNK: usize = 32 << 20;
/// Ranged reads in flight on a local bucket.
const LOCAL_READS: usize = 4;

/// A bucket that is a directory.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
}

impl LocalProvider {
    /// A provider over `root` (which must exist for anything but `create_bucket`).
    pub fn new(root: impl AsRef<Path>) -> Self {
        Self { root: root.as_ref().to_path_buf() }
    }

    fn object_path(&self, key: &str) -> PResult<PathBuf> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.starts_with(".crowecode-"));
        if !ok {
            return Err(ProviderError::new(ProviderErrorKind::Other, format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn ensure_root(&self) -> PResult<()> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ProviderError::new(
                ProviderErrorKind::BucketNotFound,
                format!("{} is not a directory", self.root.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ProviderError::new(
                ProviderErrorKind::BucketNotFound,
                format!("bucket directory {} does not exist", self.root.display()),
            )
            .with_hint(format!(
                "create it with `mkdir -p {}` or `crowecode-cloud setup --create-bucket ...`",
                self.root.display()
            ))),
            Err(e) => Err(io_err(e, &self.root)),
        }
    }

    fn tmp_path(&self) -> PResult<PathBuf> {
        let dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&dir).map_err(|e| io_err(e, &dir))?;
        Ok(dir.join(format!("{}-{:016x}", std::process::id(), fastrand::u64(..))))
    }

    /// Moves a finished temp file to `key`, honouring `mode`.
    fn publish(&self, tmp: &Path, key: &str, mode: &PutMode) -> PResult<Option<String>> {
        let dest = self.object_path(key)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(e, parent))?;
        }
        // Conditional writes take a bucket-wide lock, so check-then-rename is atomic among our writers.
        let _guard = match mode {
            PutMode::Overwrite => None,
            _ => {
                let lock = File::create(self.root.join(LOCK_FILE)).map_err(|e| io_err(e, &self.root))?;
                lock.lock().map_err(|e| io_err(e, &self.root))?;
                Some(lock)
            }
        };
        let current = match fs::metadata(&dest) {
            Ok(m) => Some(etag_of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e, &dest)),
        };
        let refused = match (mode, &current) {
            (PutMode::Create, Some(_)) => Some("the object already exists"),
            (PutMode::IfMatch(_), None) => Some("the object no longer exists"),
            (PutMode::IfMatch(want), Some(have)) if want != have => Some("the object changed since it was read"),
            _ => None,
        };
        if let Some(why) = refused {
            let _ = fs::remove_file(tmp);
            return Err(ProviderError::new(
                ProviderErrorKind::Precondition,
                format!("conditional write of {key} refused: {why}"),
            ));
        }
        rename_into(tmp, &dest)?;
        let meta = fs::metadata(&dest).map_err(|e| io_err(e, &dest))?;
        Ok(Some(etag_of(&meta)))
    }

    fn parts_dir(&self, upload_id: &str) -> PResult<PathBuf> {
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ProviderError::new(ProviderErrorKind::Other, format!("invalid upload id {upload_id:?}")));
        }
        Ok(self.root.join(PARTS_DIR).join(upload_id))
    }
}

fn read_part_size(dir: &Path) -> PResult<u64> {
    match fs::read_to_string(dir.join("part_size")) {
        Ok(s) => {
            s.trim().parse().map_err(|_| ProviderError::new(ProviderErrorKind::Other, "corrupt multipart upload state"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ProviderError::new(ProviderErrorKind::NotFound, "no such multipart upload"))
        }
        Err(e) => Err(io_err(e, dir)),
    }
}

fn etag_of(m: &fs::Metadata) -> String {
    format!("{:x}-{:x}-{:x}.{:x}", m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

fn io_err(e: io::Error, path: &Path) -> ProviderError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ProviderErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ProviderErrorKind::PermissionDenied,
        _ => ProviderErrorKind::Other,
    };
    ProviderError::new(kind, format!("{}: {e}", path.display())).with_source(e)
}

fn meta_for(key: String, m: &fs::Metadata) -> ObjectMeta {
    ObjectMeta { key, size: m.len(), etag: Some(etag_of(m)), last_modified: m.modified().ok() }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> PResult<T> + Send + 'static) -> PResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::new(ProviderErrorKind::Other, format!("local storage task failed: {e}")))?
}

#[async_trait]
impl Provider for LocalProvider {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn limits(&self) -> Limits {
        // No minimum part size: files of any size concatenate. Reads come from a disk (or the
        // page cache) at the writer's pace: more than a few in flight only hold memory.
        Limits { min_part_size: 1, max_reads_in_flight: Some(LOCAL_READS), ..Limits::default() }
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            this.ensure_root()?;
            let path = this.object_path(&key)?;
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(meta_for(key, &m)),
                Ok(_) => Err(ProviderError::new(ProviderErrorKind::NotFound, format!("{key} not found"))),
                Err(e) => Err(io_err(e, &path)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            this.ensure_root()?;
            // Walk from the deepest directory the prefix names completely, then filter by string.
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let start = if dir_part.is_empty() { this.root.clone() } else { this.root.join(dir_part) };
            let mut out = Vec::new();
            if !start.is_dir() {
                return Ok(out);
            }
            // Only directories that can hold a key with the prefix are walked (listing
            // `_pieces/pruning` must not walk every pack's directory).
            let could_hold = |e: &walkdir::DirEntry| {
                if e.depth() == 0 || !e.file_type().is_dir() {
                    return true;
                }
                let Some(rel) = e.path().strip_prefix(&this.root).ok().and_then(|r| r.to_str()) else { return false };
                let dir = format!("{rel}/");
                prefix.starts_with(&dir) || dir.starts_with(&prefix)
            };
            for entry in walkdir::WalkDir::new(&start).sort_by_file_name().into_iter().filter_entry(could_hold) {
                let entry = match entry {
                    Ok(entry) => entry,
                    // Removed by a concurrent delete while it was walked: not there.
                    Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                    Err(e) => {
                        return Err(ProviderError::new(
                            ProviderErrorKind::Other,
                            format!("listing {}: {e}", start.display()),
                        ));
                    }
                };
                if !entry.file_type().is_file() {
                    continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&this.root) else {
                    continue;
                };
                let Some(key) = rel.to_str().map(str::to_string) else {
                    continue;
                };
                if key.starts_with(&prefix) && !key.split('/').any(|s| s.starts_with(".crowecode-")) {
                    let m = match entry.metadata() {
                        Ok(m) => m,
                        Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                        Err(e) => return Err(ProviderError::new(ProviderErrorKind::Other, e.to_string())),
                    };
                    out.push(meta_for(key, &m));
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        let this = self.clone();
        let key_owned = key.to_string();
        let (file, start, end) = blocking(move || {
            this.ensure_root()?;
            let path = this.object_path(&key_owned)?;
            let mut f = File::open(&path).map_err(|e| io_err(e, &path))?;
            let len = f.metadata().map_err(|e| io_err(e, &path))?.len();
            let (start, end) = match range {
                GetRange::All => (0, len),
                GetRange::From(s) => (s, len),
                GetRange::Bounded(r) => (r.start, r.end.min(len)),
            };
            if start > len || (start == len && len > 0 && start >= end) {
                return Err(ProviderError::new(
                    ProviderErrorKind::Other,
                    format!("range start {start} beyond the end of {key_owned} ({len} bytes)"),
                ));
            }
            f.seek(SeekFrom::Start(start)).map_err(|e| io_err(e, &path))?;
            Ok((f, start, end))
        })
        .await?;
        let s = stream::try_unfold((Some(file), end - start), |(file, remaining)| async move {
            let Some(mut f) = file else { return Ok(None) };
            if remaining == 0 {
                return Ok(None);
            }
            let want = remaining.min(READ_CHUNK as u64) as usize;
            let (f, buf) = blocking(move || {
                let mut buf = BytesMut::zeroed(want);
                f.read_exact(&mut buf).map_err(|e| {
                    ProviderError::new(ProviderErrorKind::Transport, format!("reading local object: {e}"))
                })?;
                Ok((f, buf.freeze()))
            })
            .await?;
            Ok(Some((buf, (Some(f), remaining - want as u64))))
        });
        Ok(Box::pin(s))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            this.ensure_root()?;
            let tmp = this.tmp_path()?;
            let mut f = File::create(&tmp).map_err(|e| io_err(e, &tmp))?;
            f.write_all(&data).map_err(|e| io_err(e, &tmp))?;
            drop(f);
            this.publish(&tmp, &key, &mode)
        })
        .await
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        use futures::StreamExt as _;
        let (this, name) = (self.clone(), key.to_string());
        let (tmp, file) = blocking(move || {
            this.ensure_root()?;
            this.object_path(&name)?;
            let tmp = this.tmp_path()?;
            let file = File::create(&tmp).map_err(|e| io_err(e, &tmp))?;
            Ok((tmp, std::sync::Arc::new(file)))
        })
        .await?;
        // Written as the items come; published only once every byte is there.
        let written = async {
            let mut stream = body.open();
            let mut at = 0u64;
            while let Some(item) = stream.next().await {
                let item = item?;
                let (file, path, len) = (file.clone(), tmp.clone(), item.len() as u64);
                blocking(move || file.write_all_at(&item, at).map_err(|e| io_err(e, &path))).await?;
                at += len;
            }
            body.check_len(at)
        }
        .await;
        drop(file);
        let this = self.clone();
        let key = key.to_string();
        blocking(move || match written {
            Ok(()) => this.publish(&tmp, &key, &mode),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        })
        .await
    }

    async fn create_multipart(&self, key: &str, part_size: u64) -> PResult<String> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            this.ensure_root()?;
            this.object_path(&key)?;
            if part_size == 0 {
                return Err(ProviderError::new(ProviderErrorKind::Other, "part size must be positive"));
            }
            let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let dir = this.parts_dir(&id)?;
            fs::create_dir_all(&dir).map_err(|e| io_err(e, &dir))?;
            fs::write(dir.join("key"), key.as_bytes()).map_err(|e| io_err(e, &dir))?;
            fs::write(dir.join("part_size"), part_size.to_string()).map_err(|e| io_err(e, &dir))?;
            File::create(dir.join("data")).map_err(|e| io_err(e, &dir))?;
            Ok(id)
        })
        .await
    }

    async fn put_part(&self, _key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        // Parts are written in place, at (number - 1) × part size of one data file, so that
        // completing the upload is a rename rather than a copy of the whole object.
        let dir = self.parts_dir(upload_id)?;
        blocking(move || {
            let part_size = read_part_size(&dir)?;
            if number == 0 || data.len() as u64 > part_size {
                return Err(ProviderError::new(
                    ProviderErrorKind::Other,
                    format!("part {number} of {} bytes exceeds the part size {part_size}", data.len()),
                ));
            }
            let path = dir.join("data");
            let f = File::options().write(true).open(&path).map_err(|e| io_err(e, &path))?;
            f.write_all_at(&data, u64::from(number - 1) * part_size).map_err(|e| io_err(e, &path))?;
            // The receipt records the part's length; complete checks the parts tile the object.
            fs::write(dir.join(format!("part-{number:05}")), data.len().to_string()).map_err(|e| io_err(e, &dir))?;
            Ok(PartTag { number, tag: format!("{number}-{}", data.len()) })
        })
        .await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()> {
        let dir = self.parts_dir(upload_id)?;
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            let part_size = read_part_size(&dir)?;
            let mut total = 0u64;
            for (i, part) in parts.iter().enumerate() {
                let stored = fs::read_to_string(dir.join(format!("part-{:05}", part.number)))
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let last = i + 1 == parts.len();
                let fits = stored.is_some_and(|len| len == part_size || (last && len <= part_size));
                if part.number as usize != i + 1
                    || !fits
                    || part.tag != format!("{}-{}", part.number, stored.unwrap_or(0))
                {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Other,
                        format!("part list does not tile the object at part {}", part.number),
                    ));
                }
                total += stored.unwrap_or(0);
            }
            let data = dir.join("data");
            let f = File::options().write(true).open(&data).map_err(|e| io_err(e, &data))?;
            f.set_len(total).map_err(|e| io_err(e, &data))?;
            drop(f);
            this.publish(&data, &key, &PutMode::Overwrite)?;
            let _ = fs::remove_dir_all(&dir);
            Ok(())
        })
        .await
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> PResult<()> {
        let dir = self.parts_dir(upload_id)?;
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, &dir)),
        })
        .await
    }

    async fn list_pending_uploads(&self, prefix: &str) -> PResult<Vec<PendingUpload>> {
        let dir = self.root.join(PARTS_DIR);
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let Ok(rd) = fs::read_dir(&dir) else {
                return Ok(out);
            };
            for entry in rd.flatten() {
                let Ok(key) = fs::read_to_string(entry.path().join("key")) else {
                    continue;
                };
                if key.starts_with(&prefix) {
                    let initiated = entry.metadata().ok().and_then(|m| m.modified().ok());
                    out.push(PendingUpload {
                        key,
                        upload_id: entry.file_name().to_string_lossy().into_owned(),
                        initiated,
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        let path = self.object_path(key)?;
        let root = self.root.clone();
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(e, &path)),
            }
            // Like a bucket, no empty "directories" are left behind.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    async fn check_bucket(&self) -> PResult<()> {
        let this = self.clone();
        blocking(move || this.ensure_root()).await
    }

    async fn create_bucket(&self) -> PResult<bool> {
        let root = self.root.clone();
        blocking(move || {
            if root.is_dir() {
                return Ok(false);
            }
            fs::create_dir_all(&root).map_err(|e| io_err(e, &root))?;
            Ok(true)
        })
        .await
    }

    async fn credential_source(&self) -> String {
        "none needed (local directory)".into()
    }
}

/// Moves a finished temporary file to its object path. A delete elsewhere in that "directory"
/// removes the directory once it is empty (a bucket has none), possibly between its creation and
/// this rename: then it is made again.
fn rename_into(tmp: &Path, dest: &Path) -> PResult<()> {
    let mut tries = 0;
    loop {
        match fs::rename(tmp, dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 && tmp.exists() => {
                tries += 1;
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(e, parent))?;
                }
            }
            Err(e) => return Err(io_err(e, dest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_lands_when_its_directory_was_removed_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp-object");
        fs::write(&tmp, b"x").unwrap();
        // As a concurrent delete leaves it: the object's directory is gone.
        let dest = dir.path().join("m/d/object");
        rename_into(&tmp, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"x");
        // A missing temporary file is still an error, not a loop.
        assert!(rename_into(&tmp, &dest).is_err());
    }
}
