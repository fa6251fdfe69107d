//! Upload: plan → deterministic tar → (compress) → sha256 → parts of N bytes → K in flight →
//! complete. The archive is produced on a blocking thread and handed over a bounded channel, so
//! at most K parts (plus one being filled and one queued) are in memory.

use std::io::{self, Read as _, Write};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::{Progress, RateLimiter, TransferOptions, choose_part_size};
use crate::archive::{ArchivePlan, Compression, TarStream};
use crate::error::{Error, Result};
use crate::names::Sha256Hex;
use crate::progress::Direction;
use crate::provider::{PartTag, Provider, PutMode};

/// What an upload produced.
#[derive(Debug)]
pub struct UploadedArchive {
    /// The plan, as archived.
    pub plan: ArchivePlan,
    /// Each entry's sha256 (`None` for directories), in plan order.
    pub file_hashes: Vec<Option<Sha256Hex>>,
    /// Digest of the archive object's bytes.
    pub sha256: Sha256Hex,
    /// Size of the archive object.
    pub size: u64,
    /// Parts uploaded (1 for a single PUT).
    pub parts: u32,
    /// The part size and parts in flight chosen, and why.
    pub tuning: super::tuning::Tuning,
}

/// Part buffers, reused: a part's buffer comes back when the last `Bytes` of it is dropped (the
/// part is uploaded, or the upload stopped). At most `max` exist, so an upload holds the parts in
/// flight plus the one being filled, however fast the model is read; and it touches fresh memory
/// only for those (a new 16 MiB buffer for every part cost a page fault per 4 KiB, a third of a
/// 1 GiB upload's CPU time).
#[derive(Clone)]
struct PartPool(Arc<(Mutex<PoolState>, Condvar)>);

struct PoolState {
    free: Vec<Vec<u8>>,
    created: usize,
    max: usize,
}

impl PartPool {
    fn new(max: usize) -> Self {
        Self(Arc::new((Mutex::new(PoolState { free: Vec::new(), created: 0, max: max.max(1) }), Condvar::new())))
    }

    /// A buffer of `size` bytes; waits for one to come back when `max` are in use.
    fn take(&self, size: usize) -> Vec<u8> {
        let (lock, returned) = &*self.0;
        let Ok(mut state) = lock.lock() else { return vec![0u8; size] };
        loop {
            if let Some(b) = state.free.pop() {
                return b;
            }
            if state.created < state.max {
                state.created += 1;
                return vec![0u8; size];
            }
            state = match returned.wait(state) {
                Ok(s) => s,
                Err(_) => return vec![0u8; size],
            };
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let (lock, returned) = &*self.0;
        if let Ok(mut state) = lock.lock() {
            state.free.push(buf);
        }
        returned.notify_one();
    }
}

/// The filled prefix of a pooled buffer, as the owner of a `Bytes`.
struct PooledPart {
    buf: Vec<u8>,
    len: usize,
    pool: PartPool,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// Largest read from a file at once: the bytes are still in the CPU cache when both hashes
/// (the file's and the archive's) go over them.
const READ_SLICE: usize = 1 << 20;

/// Cuts the archive into parts and sends them, hashing on the way.
struct PartSink {
    tx: mpsc::Sender<Bytes>,
    part_size: usize,
    pool: PartPool,
    /// The part being filled (taken from the pool when the first byte arrives) and its length.
    buf: Option<Vec<u8>>,
    len: usize,
    hasher: Sha256,
    size: u64,
    parts: u32,
}

impl PartSink {
    fn new(tx: mpsc::Sender<Bytes>, part_size: usize, buffers: usize) -> Self {
        let pool = PartPool::new(buffers);
        Self { tx, part_size, pool, buf: None, len: 0, hasher: Sha256::new(), size: 0, parts: 0 }
    }

    fn send(&mut self) -> io::Result<()> {
        let Some(buf) = self.buf.take() else { return Ok(()) };
        let part = PooledPart { buf, len: std::mem::take(&mut self.len), pool: self.pool.clone() };
        self.parts += 1;
        self.tx.blocking_send(Bytes::from_owner(part)).map_err(|_| io::Error::other("upload stopped"))
    }

    /// The unfilled rest of the current part (at most `max` bytes).
    fn spare(&mut self, max: usize) -> &mut [u8] {
        let (pool, size) = (&self.pool, self.part_size);
        let buf = self.buf.get_or_insert_with(|| pool.take(size));
        let end = (self.len + max).min(size);
        &mut buf[self.len..end]
    }

    /// Accounts for `n` bytes just put into `spare`; sends the part once it is full.
    fn filled(&mut self, n: usize) -> io::Result<()> {
        if let Some(buf) = &self.buf {
            self.hasher.update(&buf[self.len..self.len + n]);
        }
        self.len += n;
        self.size += n as u64;
        if self.len == self.part_size { self.send() } else { Ok(()) }
    }

    /// Reads the archive straight into the part buffers: no copy besides the kernel's.
    fn read_from(&mut self, tar: &mut TarStream) -> io::Result<()> {
        loop {
            let n = tar.read(self.spare(READ_SLICE))?;
            if n == 0 {
                return Ok(());
            }
            self.filled(n)?;
        }
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let spare = self.spare(data.len());
        let n = spare.len();
        spare.copy_from_slice(&data[..n]);
        self.filled(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies the whole archive into `w` through one buffer; returns how many bytes it had.
fn pump(tar: &mut TarStream, w: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_SLICE];
    let mut size = 0u64;
    loop {
        let n = tar.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        w.write_all(&buf[..n])?;
        size += n as u64;
    }
}

struct Produced {
    stream: TarStream,
    sha256: Sha256Hex,
    size: u64,
}

fn produce(
    plan: ArchivePlan,
    compression: Compression,
    part_size: usize,
    buffers: usize,
    tx: mpsc::Sender<Bytes>,
) -> io::Result<Produced> {
    let mut sink = PartSink::new(tx, part_size, buffers);
    let mut tar = TarStream::new(plan);
    match compression {
        Compression::None => sink.read_from(&mut tar)?,
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(&mut sink, 3)?;
            pump(&mut tar, &mut enc)?;
            enc.finish()?;
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(&mut sink, flate2::Compression::new(6));
            pump(&mut tar, &mut enc)?;
            enc.finish()?;
        }
    }
    if sink.len > 0 {
        sink.send()?;
    }
    let sha256 = Sha256Hex::from_digest(&sink.hasher.finalize());
    Ok(Produced { stream: tar, sha256, size: sink.size })
}

/// Uploads the archive of `plan` to `key`. On any failure the multipart upload is aborted and
/// nothing is left visible at `key`.
pub async fn upload_archive(
    provider: Arc<dyn Provider>,
    key: &str,
    plan: ArchivePlan,
    compression: Compression,
    opts: &TransferOptions,
    progress: &Progress,
) -> Result<UploadedArchive> {
    let limits = provider.limits();
    let part_size = choose_part_size(opts.part_size, plan.tar_size, &limits);
    let (concurrency, why) = super::tuning::upload_concurrency(opts, part_size);
    let concurrency = if limits.concurrent_parts { concurrency.max(1) } else { 1 };
    tracing::info!("uploading {key}: {why}");
    let tuning = super::tuning::Tuning {
        part_size,
        start: concurrency,
        limit: concurrency,
        reached: concurrency,
        memory_budget: super::tuning::memory_budget(opts),
        memory_source: super::tuning::memory_source(opts),
        peak_held: None,
        why,
    };
    let limiter = RateLimiter::new(opts.limit_rate);
    let limiter = limiter.as_ref();
    let estimate = plan.tar_size;
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    // The parts in flight and the one being filled.
    let buffers = concurrency + 1;
    let producer = tokio::task::spawn_blocking(move || produce(plan, compression, part_size as usize, buffers, tx));
    let produced = |r: std::result::Result<io::Result<Produced>, tokio::task::JoinError>| -> Result<Produced> {
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(Error::Io { context: "cannot read the model to upload".into(), source: e }),
            Err(e) => Err(Error::other(format!("archive task failed: {e}"), None)),
        }
    };
    progress.started(Direction::Upload, estimate);

    let Some(first) = rx.recv().await else {
        return Err(produced(producer.await).err().unwrap_or_else(|| Error::other("archive stream ended empty", None)));
    };
    let Some(second) = rx.recv().await else {
        // A single part: one PUT, once the archive is known to be complete.
        let p = produced(producer.await)?;
        let len = first.len() as u64;
        if let Some(l) = limiter {
            l.take(len).await;
        }
        provider
            .put(key, first, PutMode::Overwrite)
            .await
            .map_err(|e| Error::from_provider(format!("uploading {key}"), e))?;
        progress.advanced(len);
        let (plan, file_hashes) = p.stream.finish();
        return Ok(UploadedArchive { plan, file_hashes, sha256: p.sha256, size: p.size, parts: 1, tuning });
    };

    let upload_id = provider
        .create_multipart(key, part_size)
        .await
        .map_err(|e| Error::from_provider(format!("starting the upload of {key}"), e))?;
    // If this future is dropped midway (the process is interrupted), the upload is queued for
    // abortion instead of lingering in the bucket.
    let mut guard = super::UploadGuard {
        provider: provider.clone(),
        key: key.to_string(),
        upload_id: upload_id.clone(),
        armed: true,
    };
    let rest = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let max_parts = limits.max_parts;
    let uploaded: std::result::Result<Vec<PartTag>, Error> = stream::iter([first, second])
        .chain(rest)
        .enumerate()
        .map(|(i, data)| {
            let provider = provider.clone();
            let upload_id = upload_id.clone();
            async move {
                let number = u32::try_from(i + 1).ok().filter(|n| *n <= max_parts).ok_or_else(|| {
                    Error::other(
                        format!("the archive needs more than {max_parts} parts"),
                        Some("raise --part-size".into()),
                    )
                })?;
                let len = data.len() as u64;
                if let Some(l) = limiter {
                    l.take(len).await;
                }
                let tag = provider
                    .put_part(key, &upload_id, number, data)
                    .await
                    .map_err(|e| Error::from_provider(format!("uploading part {number} of {key}"), e))?;
                progress.advanced(len);
                Ok(tag)
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await;
    // Whatever happened, the producer has stopped or will stop now that the receiver is gone.
    let produced = produced(producer.await);
    let result = match (uploaded, produced) {
        (Ok(mut tags), Ok(p)) => {
            tags.sort_by_key(|t| t.number);
            let parts = tags.len() as u32;
            match provider.complete_multipart(key, &upload_id, tags).await {
                Ok(()) => {
                    guard.armed = false;
                    let (plan, file_hashes) = p.stream.finish();
                    return Ok(UploadedArchive { plan, file_hashes, sha256: p.sha256, size: p.size, parts, tuning });
                }
                Err(e) => Err(Error::from_provider(format!("completing the upload of {key}"), e)),
            }
        }
        // A read failure explains a stopped upload better than the upload's own error.
        (_, Err(e)) | (Err(e), _) => Err(e),
    };
    if let Err(e) = provider.abort_multipart(key, &upload_id).await {
        tracing::warn!(key, error = %e, "could not abort the multipart upload; `crowecode-cloud status` lists it");
    }
    guard.armed = false;
    result
}

/// The archive of `plan` (uncompressed) as an upload would make it, hashed without sending it
/// anywhere: what a model made on this machine needs to be installed like a download. Blocking.
pub fn hash_archive(plan: ArchivePlan) -> io::Result<UploadedArchive> {
    let mut tar = TarStream::new(plan);
    let mut hasher = Sha256::new();
    let size = pump(&mut tar, &mut hasher)?;
    let (plan, file_hashes) = tar.finish();
    Ok(UploadedArchive {
        plan,
        file_hashes,
        sha256: Sha256Hex::from_digest(&hasher.finalize()),
        size,
        parts: 0,
        tuning: super::tuning::Tuning::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_part_pool_never_holds_more_than_its_maximum_and_reuses_buffers() {
        let pool = PartPool::new(2);
        let a = PooledPart { buf: pool.take(8), len: 8, pool: pool.clone() };
        let b = Bytes::from_owner(PooledPart { buf: pool.take(8), len: 3, pool: pool.clone() });
        assert_eq!(b.len(), 3);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let pool = pool.clone();
            std::thread::spawn(move || tx.send(pool.take(8).len()).unwrap())
        };
        // Both buffers are out: a third waits.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(b);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 8);
        waiting.join().unwrap();
        drop(a);
        let state = pool.0.0.lock().unwrap();
        assert_eq!((state.created, state.free.len()), (2, 1), "the third buffer was a returned one");
    }

    #[test]
    fn parts_are_cut_at_the_part_size_and_hashed_whole() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut sink = PartSink::new(tx, 4, 2);
        let data: Vec<u8> = (0u8..10).collect();
        let reader = std::thread::spawn(move || {
            let mut parts = Vec::new();
            while let Some(p) = rx.blocking_recv() {
                parts.push(p.to_vec());
            }
            parts
        });
        sink.write_all(&data[..3]).unwrap();
        sink.write_all(&data[3..]).unwrap();
        if sink.len > 0 {
            sink.send().unwrap();
        }
        let digest = Sha256Hex::from_digest(&sink.hasher.clone().finalize());
        drop(sink);
        let parts = reader.join().unwrap();
        assert_eq!(parts, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(digest, Sha256Hex::from_digest(&Sha256::digest(&data)));
    }
}
