//! Download: K concurrent ranged GETs of the archive, reassembled in order, fed on a blocking
//! thread to sha256 → decompressor → extractor. Interrupted ranges resume from the last byte
//! received (in the provider's retry layer).

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::tuning::{self, Tuning};
use super::{Progress, RateLimiter, TransferOptions};
use crate::archive::{Compression, ExtractError, Extractor};
use crate::error::{Error, Result};
use crate::names::Sha256Hex;
use crate::progress::Direction;
use crate::provider::{GetRange, Provider, ProviderError, ProviderErrorKind};

enum Msg {
    /// One range, as the network delivered it (no copy into a range-sized buffer), and its place
    /// among the ranges allowed in memory, given back once it is written.
    Data(Vec<Bytes>, OwnedSemaphorePermit),
    End,
}

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
    mut rx: mpsc::Receiver<Msg>,
    extractor: Extractor,
    compression: Compression,
) -> std::result::Result<Sha256Hex, ConsumeError> {
    let mut sink = Sink::new(extractor, compression).map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
    let mut hasher = Sha256::new();
    loop {
        match rx.blocking_recv() {
            Some(Msg::Data(chunks, _permit)) => {
                for b in chunks {
                    hasher.update(&b);
                    sink.write_all(&b).map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
                }
            }
            Some(Msg::End) => break,
            None => return Err(ConsumeError::Aborted),
        }
    }
    let extractor = sink.finish().map_err(|e| ConsumeError::Extract(ExtractError::from_io(e)))?;
    extractor.finish().map_err(ConsumeError::Extract)?;
    Ok(Sha256Hex::from_digest(&hasher.finalize()))
}

async fn fetch(
    provider: &dyn Provider,
    key: &str,
    start: u64,
    end: u64,
    progress: &Progress,
    limiter: Option<&RateLimiter>,
) -> std::result::Result<Vec<Bytes>, ProviderError> {
    let len = end - start;
    let mut stream = provider.get(key, GetRange::Bounded(start..end)).await?;
    // The chunks are kept as received: copying them into one range-sized buffer cost a memcpy
    // and a page fault per 4 KiB of every range (fresh large allocations come zeroed from the kernel).
    let mut chunks = Vec::new();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(l) = limiter {
            l.take(chunk.len() as u64).await;
        }
        progress.advanced(chunk.len() as u64);
        got += chunk.len() as u64;
        chunks.push(chunk);
    }
    if got != len {
        return Err(ProviderError::new(
            ProviderErrorKind::Other,
            format!("GET {key} bytes {start}-{end}: received {got} bytes, expected {len}"),
        ));
    }
    Ok(chunks)
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
    let mut plan = tuning::download_plan(opts, size - start);
    let part = plan.part_size;
    tracing::info!("downloading {key}: {}", plan.why);
    let (tx, rx) = mpsc::channel::<Msg>(2);
    let consumer = tokio::task::spawn_blocking(move || consume(rx, extractor, compression));
    progress.started(Direction::Download, size - start);

    let limiter = RateLimiter::new(opts.limit_rate);
    let ranges = (0..(size - start).div_ceil(part)).map(|i| (start + i * part, (start + (i + 1) * part).min(size)));
    // A range holds a permit from its first byte until it is written, so that memory stays within
    // `concurrency` ranges even while the disk is slower than the network. Permits go out in
    // order (the semaphore is fair and `buffered` polls in order), so the range the writer waits
    // for is never starved by later ones.
    let in_memory = Arc::new(Semaphore::new(plan.start.max(1)));
    let mut grower = tuning::Grower::new(in_memory.clone(), &plan, key);
    let mut fetches = stream::iter(ranges)
        .map(|(s, e)| {
            let in_memory = in_memory.clone();
            let limiter = limiter.as_ref();
            let provider = provider.as_ref();
            async move {
                let permit = in_memory
                    .acquire_owned()
                    .await
                    .map_err(|_| ProviderError::new(ProviderErrorKind::Other, "download stopped".to_string()))?;
                fetch(provider, key, s, e, progress, limiter).await.map(|chunks| (chunks, permit))
            }
        })
        .buffered(plan.limit.max(1));
    let mut network: Option<ProviderError> = None;
    while let Some(res) = fetches.next().await {
        match res {
            Ok((bytes, permit)) => {
                let len: u64 = bytes.iter().map(|b| b.len() as u64).sum();
                if tx.send(Msg::Data(bytes, permit)).await.is_err() {
                    break; // the consumer failed; its error says why
                }
                grower.delivered(len);
            }
            Err(e) => {
                network = Some(e);
                break;
            }
        }
    }
    drop(fetches);
    plan.reached = grower.reached();
    if let Some(outcome) = grower.outcome() {
        plan.why = format!("{}; {outcome}", plan.why);
    }
    if network.is_none() {
        let _ = tx.send(Msg::End).await;
    }
    drop(tx);
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
