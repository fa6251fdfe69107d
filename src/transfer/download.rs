//! Download: K concurrent ranged GETs of the archive, handed chunk by chunk to a reorder buffer
//! of bounded bytes ([`Reorder`]) and written in order, on a blocking thread, to sha256 →
//! decompressor → extractor. Interrupted ranges resume from the last byte received (in the
//! provider's retry layer).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::tuning::{self, Tuning};
use super::{Progress, RateLimiter, TransferOptions};
use crate::archive::{Compression, ExtractError, Extractor};
use crate::error::{Error, Result};
use crate::names::Sha256Hex;
use crate::progress::Direction;
use crate::provider::{GetRange, Provider, ProviderError, ProviderErrorKind};

enum Sink {
    Plain(Extractor),
    Zstd(Box<zstd::stream::write::Decoder<'static, Extractor>>),
    Gzip(Box<flate2::write::GzDecoder<Extractor>>),
}

impl Sink {
    fn new(extractor: Extractor, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::Plain(extractor),
            Compression::Zstd => Self::Zstd(Box::new(zstd::stream::write::Decoder::new(extractor)?)),
            Compression::Gzip => Self::Gzip(Box::new(flate2::write::GzDecoder::new(extractor))),
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(x) => x.write_all(data),
            Self::Zstd(d) => d.write_all(data),
            Self::Gzip(d) => d.write_all(data),
        }
    }

    fn finish(self) -> io::Result<Extractor> {
        match self {
            Self::Plain(x) => Ok(x),
            Self::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
            Self::Gzip(d) => d.finish(),
        }
    }
}

/// Why the consuming side stopped.
enum ConsumeError {
    /// The producer went away without `End`: its own error explains why.
    Aborted,
    Extract(ExtractError),
}

fn consume(
    received: Arc<Reorder>,
    extractor: Extractor,
    compression: Compression,
) -> std::result::Result<Sha256Hex, ConsumeError> {
    let result = write_in_order(&received, extractor, compression);
    if result.is_err() {
        // Receivers waiting for room must not wait for a writer that has gone.
        received.stop();
    }
    result
}

fn write_in_order(
    received: &Reorder,
    extractor: Extractor,
    compression: Compression,
) -> std::result::Result<Sha256Hex, ConsumeError> {
    let mut sink = Sink::new(extractor, compression).map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
    let mut hasher = Sha256::new();
    while let Some(chunks) = received.next_in_order().map_err(|Stopped| ConsumeError::Aborted)? {
        let mut written = 0;
        for b in &chunks {
            hasher.update(b);
            sink.write_all(b).map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
            written += b.len() as u64;
        }
        drop(chunks);
        received.written(written);
    }
    let extractor = sink.finish().map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
    extractor.finish().map_err(ConsumeError::Extract)?;
    Ok(Sha256Hex::from_digest(&hasher.finalize()))
}

/// The bytes received and not yet written, held in order for the sequential writer within a byte
/// budget. Ranges are received concurrently and each chunk is handed over as it arrives, so a
/// range never needs to sit whole in memory: the range the writer is on streams straight
/// through, and the ranges after it keep what they received until the writer gets to them. When
/// those fill the budget, their receivers stop reading (TCP holds the rest at the server) until
/// the writer frees room; the range the writer is on is never held back, so the budget cannot
/// deadlock the download. Memory is the budget plus at most one range, however many requests are
/// in flight.
struct Reorder {
    state: Mutex<ReorderState>,
    /// Wakes the writer: a chunk arrived, a range ended, or the download stopped.
    arrived: Condvar,
    /// Wakes receivers waiting for room: the writer wrote, moved on, or stopped.
    room: Notify,
    ranges: usize,
}

struct ReorderState {
    /// The range the writer is on.
    head: usize,
    /// From `head` on: each range's chunks not yet taken by the writer, and whether it ended.
    pending: VecDeque<(Vec<Bytes>, bool)>,
    /// Bytes received and not yet written.
    held: u64,
    /// Bytes written.
    written: u64,
    /// How long the writer waited for bytes.
    writer_waited: std::time::Duration,
    /// The most `held` reached.
    peak: u64,
    /// The most `held` may be (except for the range the writer is on).
    budget: u64,
    stopped: bool,
}

/// The download stopped (the writer failed, or another range did).
struct Stopped;

impl Reorder {
    fn new(budget: u64, ranges: usize) -> Self {
        let state = ReorderState {
            head: 0,
            pending: VecDeque::new(),
            held: 0,
            written: 0,
            writer_waited: std::time::Duration::ZERO,
            peak: 0,
            budget,
            stopped: false,
        };
        Self { state: Mutex::new(state), arrived: Condvar::new(), room: Notify::new(), ranges }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReorderState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(state: &mut ReorderState, range: usize) -> &mut (Vec<Bytes>, bool) {
        let i = range - state.head;
        while state.pending.len() <= i {
            state.pending.push_back((Vec::new(), false));
        }
        &mut state.pending[i]
    }

    /// Hands over a chunk of `range`, waiting for room unless the writer is on that range.
    async fn push(&self, range: usize, chunk: Bytes) -> std::result::Result<(), Stopped> {
        let len = chunk.len() as u64;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.stopped {
                    return Err(Stopped);
                }
                if range == state.head || state.held + len <= state.budget {
                    state.held += len;
                    state.peak = state.peak.max(state.held);
                    Self::slot(&mut state, range).0.push(chunk);
                    drop(state);
                    self.arrived.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// `range` has received all its bytes.
    fn ended(&self, range: usize) {
        let mut state = self.lock();
        Self::slot(&mut state, range).1 = true;
        drop(state);
        self.arrived.notify_one();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.arrived.notify_all();
        self.room.notify_waiters();
    }

    /// The writer's next chunks, in archive order; `Ok(None)` once every range is written,
    /// `Err` when the download stopped.
    fn next_in_order(&self) -> std::result::Result<Option<Vec<Bytes>>, Stopped> {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return Err(Stopped);
            }
            if state.head == self.ranges {
                return Ok(None);
            }
            match state.pending.front_mut() {
                Some((chunks, _)) if !chunks.is_empty() => return Ok(Some(std::mem::take(chunks))),
                Some((_, true)) => {
                    state.pending.pop_front();
                    state.head += 1;
                    // A receiver waiting for room may now be the range the writer is on.
                    self.room.notify_waiters();
                    continue;
                }
                _ => {}
            }
            let since = std::time::Instant::now();
            state = self.arrived.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            state.writer_waited += since.elapsed();
        }
    }

    /// The writer wrote `bytes` it took: their room is free.
    fn written(&self, bytes: u64) {
        let mut state = self.lock();
        state.held -= bytes;
        state.written += bytes;
        drop(state);
        self.room.notify_waiters();
    }

    fn set_budget(&self, budget: u64) {
        let mut state = self.lock();
        if state.budget != budget {
            state.budget = budget;
            drop(state);
            self.room.notify_waiters();
        }
    }

    /// Bytes written so far, and how long the writer waited for bytes.
    fn written_total(&self) -> (u64, std::time::Duration) {
        let state = self.lock();
        (state.written, state.writer_waited)
    }

    fn peak(&self) -> u64 {
        self.lock().peak
    }
}

/// Chunks smaller than this are copied into blocks of [`BLOCK`] bytes before they are held. A
/// slow connection delivers many small chunks, each a slice of one of the HTTP client's read
/// buffers, which it fills only in part: held as they are, they keep those buffers alive, and a
/// download's memory grew to 2.5 times the bytes it held.
const SMALL_CHUNK: usize = 256 << 10;
const BLOCK: usize = 1 << 20;

/// Why a range's receiver stopped.
enum RangeError {
    Network(ProviderError),
    /// The download stopped elsewhere; that error explains why.
    Stopped,
}

/// Receives range number `index` (`start..end` of `key`) into `received`.
#[allow(clippy::too_many_arguments)]
async fn receive(
    provider: Arc<dyn Provider>,
    key: Arc<str>,
    index: usize,
    (start, end): (u64, u64),
    progress: Progress,
    limiter: Option<Arc<RateLimiter>>,
    received: Arc<Reorder>,
    _in_flight: OwnedSemaphorePermit,
) -> std::result::Result<(), RangeError> {
    let len = end - start;
    let mut stream = provider.get(&key, GetRange::Bounded(start..end)).await.map_err(RangeError::Network)?;
    let mut got = 0u64;
    // Small chunks are gathered into blocks before they are handed over (see `SMALL_CHUNK`).
    let mut block = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(RangeError::Network)?;
        if let Some(l) = &limiter {
            l.take(chunk.len() as u64).await;
        }
        progress.advanced(chunk.len() as u64);
        got += chunk.len() as u64;
        if got > len {
            break;
        }
        if !block.is_empty() && block.len() + chunk.len() > BLOCK {
            let full = std::mem::take(&mut block).freeze();
            received.push(index, full).await.map_err(|Stopped| RangeError::Stopped)?;
        }
        if chunk.len() >= SMALL_CHUNK && block.is_empty() {
            received.push(index, chunk).await.map_err(|Stopped| RangeError::Stopped)?;
        } else {
            if block.capacity() == 0 {
                block.reserve(BLOCK);
            }
            block.extend_from_slice(&chunk);
        }
    }
    if !block.is_empty() {
        received.push(index, block.freeze()).await.map_err(|Stopped| RangeError::Stopped)?;
    }
    if got != len {
        return Err(RangeError::Network(ProviderError::new(
            ProviderErrorKind::Other,
            format!("GET {key} bytes {start}-{end}: received {got} bytes, expected {len}"),
        )));
    }
    received.ended(index);
    Ok(())
}

/// Turns an extraction failure into the error users see.
pub(crate) fn extract_error(key: &str, e: ExtractError) -> Error {
    match e {
        ExtractError::Io { path, source } => Error::io("cannot write", &path, source),
        ExtractError::FileHash { path, expected, computed } => Error::integrity(
            format!("{key} ({path})"),
            "file sha256 differs from the manifest",
            Some(expected.to_string()),
            Some(computed.to_string()),
        ),
        other => Error::integrity(key, other.to_string(), None, None),
    }
}

/// Downloads the archive at `key` (`size` bytes) from byte `start` into `extractor`; returns
/// the sha256 of the bytes fetched, which for `start == 0` is the archive's and is compared with
/// the manifest before anything becomes visible. A non-zero `start` is an entry boundary of an
/// uncompressed archive (a resumed extraction).
#[allow(clippy::too_many_arguments)]
pub async fn download_archive(
    provider: Arc<dyn Provider>,
    key: &str,
    start: u64,
    size: u64,
    compression: Compression,
    extractor: Extractor,
    opts: &TransferOptions,
    progress: &Progress,
) -> Result<(Sha256Hex, Tuning)> {
    let mut plan = tuning::download_plan(opts, size - start, provider.limits().max_reads_in_flight);
    let part = plan.part_size;
    tracing::info!("downloading {key}: {}", plan.why);
    // A finer tail only when the range size is ours to choose: `--part-size` is kept as given.
    let tail = if opts.part_size.is_some() { 0 } else { plan.start };
    let ranges = tuning::ranges(start, size, part, tail);
    let held = |in_flight| tuning::held_budget(plan.memory_budget, part, in_flight);
    let received = Arc::new(Reorder::new(held(plan.start), ranges.len()));
    let consumer = {
        let received = received.clone();
        tokio::task::spawn_blocking(move || consume(received, extractor, compression))
    };
    progress.started(Direction::Download, size - start);

    let limiter = RateLimiter::new(opts.limit_rate).map(Arc::new);
    let key_arc: Arc<str> = Arc::from(key);
    // Requests in flight: a range holds a permit until its last byte is received. Ranges start in
    // archive order, so the one the writer waits for is always among the first in flight.
    let in_flight = Arc::new(Semaphore::new(plan.start.max(1)));
    let mut grower = tuning::Grower::new(in_flight.clone(), &plan, key);
    let mut receivers = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut counted = (0, std::time::Duration::ZERO);
    let mut network: Option<ProviderError> = None;
    loop {
        tokio::select! {
            biased;
            Some(joined) = receivers.join_next() => match joined {
                Ok(Ok(())) => {
                    // Throughput is what the writer wrote: bytes that only filled the buffer would
                    // make every step look like a gain when the writer is the bottleneck.
                    let (written, waited) = received.written_total();
                    grower.delivered(written - counted.0, waited - counted.1);
                    counted = (written, waited);
                    received.set_budget(held(grower.current()));
                }
                Ok(Err(RangeError::Stopped)) => break, // the writer failed; its error says why
                Ok(Err(RangeError::Network(e))) => {
                    network = Some(e);
                    break;
                }
                Err(e) => {
                    network = Some(ProviderError::new(ProviderErrorKind::Other, format!("a range's task failed: {e}")));
                    break;
                }
            },
            permit = in_flight.clone().acquire_owned(), if next < ranges.len() => {
                let Ok(permit) = permit else { break };
                receivers.spawn(receive(
                    provider.clone(),
                    key_arc.clone(),
                    next,
                    ranges[next],
                    progress.clone(),
                    limiter.clone(),
                    received.clone(),
                    permit,
                ));
                next += 1;
            },
            else => break,
        }
    }
    if network.is_some() {
        received.stop();
    }
    receivers.abort_all();
    plan.reached = grower.reached();
    plan.peak_held = Some(received.peak());
    if let Some(outcome) = grower.outcome() {
        plan.why = format!("{}; {outcome}", plan.why);
    }
    let consumed = consumer.await.map_err(|e| Error::other(format!("extraction task failed: {e}"), None))?;
    match (consumed, network) {
        (Err(ConsumeError::Extract(e)), _) => Err(extract_error(key, e)),
        (_, Some(e)) => Err(Error::from_provider(format!("downloading {key}"), e)),
        (Ok(sha), None) => Ok((sha, plan)),
        (Err(ConsumeError::Aborted), None) => Err(Error::other(format!("download of {key} stopped"), None)),
    }
}

/// One file to fetch by its byte range in the archive.
#[derive(Clone, Debug)]
pub struct FileRange {
    /// Where its bytes start in the archive.
    pub offset: u64,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// Where to write it (its parent directory exists).
    pub dest: std::path::PathBuf,
    pub mode: u32,
    /// The path inside the model, for messages.
    pub path: String,
}

/// Fetches each file's range of the archive at `key` (several at once), hashing it on the way
/// and refusing any file whose sha256 differs from the manifest's.
pub async fn download_files(
    provider: Arc<dyn Provider>,
    key: &str,
    files: Vec<FileRange>,
    opts: &TransferOptions,
    progress: &Progress,
) -> Result<()> {
    let total = files.iter().map(|f| f.size).sum();
    progress.started(Direction::Download, total);
    let limiter = RateLimiter::new(opts.limit_rate);
    let limiter = limiter.as_ref();
    let provider = provider.as_ref();
    stream::iter(files)
        .map(|f| async move {
            use std::os::unix::fs::PermissionsExt as _;
            use tokio::io::AsyncWriteExt as _;
            let mut out = tokio::fs::File::create(&f.dest).await.map_err(|e| Error::io("cannot write", &f.dest, e))?;
            let mut hasher = Sha256::new();
            if f.size > 0 {
                let mut s = provider
                    .get(key, GetRange::Bounded(f.offset..f.offset + f.size))
                    .await
                    .map_err(|e| Error::from_provider(format!("downloading {} from {key}", f.path), e))?;
                let mut got = 0u64;
                while let Some(chunk) = s.next().await {
                    let chunk =
                        chunk.map_err(|e| Error::from_provider(format!("downloading {} from {key}", f.path), e))?;
                    if let Some(l) = limiter {
                        l.take(chunk.len() as u64).await;
                    }
                    got += chunk.len() as u64;
                    hasher.update(&chunk);
                    out.write_all(&chunk).await.map_err(|e| Error::io("cannot write", &f.dest, e))?;
                    progress.advanced(chunk.len() as u64);
                }
                if got != f.size {
                    return Err(Error::integrity(
                        format!("{key} ({})", f.path),
                        format!("received {got} bytes, expected {}", f.size),
                        None,
                        None,
                    ));
                }
            }
            out.flush().await.map_err(|e| Error::io("cannot write", &f.dest, e))?;
            let computed = Sha256Hex::from_digest(&hasher.finalize());
            if computed != f.sha256 {
                return Err(Error::integrity(
                    format!("{key} ({})", f.path),
                    "file sha256 differs from the manifest",
                    Some(f.sha256.to_string()),
                    Some(computed.to_string()),
                ));
            }
            tokio::fs::set_permissions(
                &f.dest,
                std::fs::Permissions::from_mode(crate::archive::installed_mode(f.mode)),
            )
            .await
            .map_err(|e| Error::io("cannot set permissions of", &f.dest, e))?;
            Ok(())
        })
        .buffer_unordered(opts.concurrency.unwrap_or(tuning::START).max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many ranges arriving out of order, chunk by chunk, into a budget smaller than two ranges:
    /// the writer gets every byte in order, nothing deadlocks, and no more than the budget plus
    /// the range being written is ever held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ranges_arrive_in_any_order_and_stay_within_the_budget() {
        const RANGES: usize = 40;
        const CHUNKS: usize = 8;
        const CHUNK: usize = 1000;
        let budget = (CHUNK * CHUNKS * 3 / 2) as u64;
        let received = Arc::new(Reorder::new(budget, RANGES));
        let writer = {
            let received = received.clone();
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                while let Some(chunks) = received.next_in_order().map_err(|Stopped| "stopped")? {
                    let n: usize = chunks.iter().map(Bytes::len).sum();
                    chunks.iter().for_each(|c| out.extend_from_slice(c));
                    // A slow disk: the receivers must wait for room.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    received.written(n as u64);
                }
                Ok::<_, &str>(out)
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        // Later ranges first, so that the budget fills before the writer's range arrives.
        for range in (0..RANGES).rev() {
            let received = received.clone();
            tasks.spawn(async move {
                for c in 0..CHUNKS {
                    tokio::time::sleep(std::time::Duration::from_micros(fastrand::u64(0..300))).await;
                    let byte = (range * CHUNKS + c) as u8;
                    if received.push(range, Bytes::from(vec![byte; CHUNK])).await.is_err() {
                        return;
                    }
                }
                received.ended(range);
            });
        }
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), writer).await.expect("no deadlock");
        let out = out.unwrap().unwrap();
        let want: Vec<u8> = (0..RANGES * CHUNKS).flat_map(|i| vec![i as u8; CHUNK]).collect();
        assert!(out == want, "the writer got the bytes in archive order");
        let range_bytes = (CHUNK * CHUNKS) as u64;
        assert!(received.peak() <= budget + range_bytes, "held {} > {budget} + one range", received.peak());
        assert!(received.peak() >= budget / 2, "the test must fill the budget: held {}", received.peak());
        while tasks.join_next().await.is_some() {}
    }

    /// When the writer fails, receivers waiting for room are released instead of waiting forever.
    #[tokio::test]
    async fn a_stopped_download_releases_the_waiting_receivers() {
        let received = Arc::new(Reorder::new(10, 3));
        received.push(2, Bytes::from_static(&[0; 10])).await.ok().unwrap();
        let waiting = {
            let received = received.clone();
            tokio::spawn(async move { received.push(1, Bytes::from_static(&[0; 10])).await.is_err() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "range 1 waits for room");
        received.stop();
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap());
        assert!(received.next_in_order().is_err());
    }
}
