//! The provider-agnostic transfer engine: parallel multipart upload of a streamed archive, parallel
//! ranged download reassembled in order into hasher → decompressor → extractor. Memory stays
//! bounded by `concurrency × part_size` whatever the model's size.

use std::sync::{Arc, Mutex};

use crate::progress::{Direction, Event, Reporter};
use crate::provider::{Limits, Provider};

mod download;
pub mod memory;
pub mod tuning;
mod upload;

pub use download::{FileRange, download_archive, download_files};
pub use upload::{UploadedArchive, hash_archive, upload_archive};

/// Default part size: 8 MiB (grown for archives that would need more parts than the backend
/// allows).
pub const DEFAULT_PART_SIZE: u64 = tuning::AUTO_PART_SIZE;

/// Tuning for one transfer (see [`tuning`] for what is chosen without them).
#[derive(Clone, Debug, Default)]
pub struct TransferOptions {
    /// Part size; `None` for the default (grown for very large archives).
    pub part_size: Option<u64>,
    /// Requests in flight; `None`: chosen (and for downloads grown while throughput grows).
    pub concurrency: Option<usize>,
    /// Average bytes per second over the whole transfer, when limited.
    pub limit_rate: Option<u64>,
    /// Memory for ranges or parts in flight; `None` for [`tuning::DEFAULT_MAX_MEMORY`].
    pub max_memory: Option<u64>,
}

/// Holds a transfer to an average rate: each call reserves the next `n / rate` seconds of a
/// virtual clock and waits until its slot has passed, so even the first part (or a model of a
/// single part) takes `n / rate`. Idle time earns no credit, so there are no bursts.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    bytes_per_sec: f64,
    next: Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub(crate) fn new(limit: Option<u64>) -> Option<Self> {
        let rate = limit.filter(|r| *r > 0)?;
        Some(Self { bytes_per_sec: rate as f64, next: Mutex::new(tokio::time::Instant::now()) })
    }

    /// Waits until `n` more bytes fit under the rate.
    pub(crate) async fn take(&self, n: u64) {
        let wait_until = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next
        };
        tokio::time::sleep_until(wait_until).await;
    }
}

/// The part size to use for an archive of about `total` bytes: the request (or the default),
/// raised to the backend's minimum, grown so the upload needs at most the backend's part count
/// (with 1% slack for compression overhead), aligned, and capped at the backend's maximum.
pub fn choose_part_size(requested: Option<u64>, total: u64, limits: &Limits) -> u64 {
    let mut size = requested.unwrap_or(DEFAULT_PART_SIZE).max(limits.min_part_size).max(1);
    let needed = (total + total / 100 + 1).div_ceil(u64::from(limits.max_parts.max(1)));
    if size < needed {
        size = needed.div_ceil(1 << 20) * (1 << 20);
    }
    let align = limits.part_alignment.max(1);
    size = size.div_ceil(align) * align;
    size.min(limits.max_part_size.max(align))
}

/// Multipart uploads whose task was dropped (an interrupted process) before it could complete or
/// abort them. [`abort_abandoned`] aborts them; the CLI calls it before it exits on a signal.
static ABANDONED: Mutex<Vec<Abandoned>> = Mutex::new(Vec::new());

/// A multipart upload left behind: the bucket, its key and its upload id.
type Abandoned = (Arc<dyn Provider>, String, String);

/// Queues a started multipart upload for abortion if it is dropped while still armed.
pub(crate) struct UploadGuard {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) key: String,
    pub(crate) upload_id: String,
    pub(crate) armed: bool,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if self.armed {
            let entry = (self.provider.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.upload_id));
            ABANDONED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(entry);
        }
    }
}

/// Aborts the multipart uploads of interrupted transfers; returns how many were aborted.
pub async fn abort_abandoned() -> usize {
    let pending = std::mem::take(&mut *ABANDONED.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let mut aborted = 0;
    for (provider, key, upload_id) in pending {
        match provider.abort_multipart(&key, &upload_id).await {
            Ok(()) => aborted += 1,
            Err(e) => {
                tracing::warn!(key, error = %e, "could not abort an interrupted upload; `crowecode-cloud status` lists it")
            }
        }
    }
    aborted
}

/// Reports the progress of one model's transfer to a [`Reporter`].
#[derive(Clone)]
pub struct Progress {
    reporter: Arc<dyn Reporter>,
    model: String,
}

impl Progress {
    pub fn new(reporter: Arc<dyn Reporter>, model: &str) -> Self {
        Self { reporter, model: model.to_string() }
    }

    pub fn started(&self, direction: Direction, total: u64) {
        self.reporter.report(Event::Started { model: &self.model, direction, total });
    }

    pub fn advanced(&self, bytes: u64) {
        self.reporter.report(Event::Advanced { model: &self.model, bytes });
    }

    pub fn finished(&self) {
        self.reporter.report(Event::Finished { model: &self.model });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_respects_limits() {
        let s3 = Limits::default();
        assert_eq!(choose_part_size(None, 1 << 30, &s3), DEFAULT_PART_SIZE);
        assert_eq!(choose_part_size(Some(1 << 20), 1 << 30, &s3), 5 << 20, "raised to the 5 MiB minimum");
        // 1 TiB at 16 MiB would need 65,536 parts: grown so that 10,000 suffice.
        let big = choose_part_size(None, 1 << 40, &s3);
        assert!((1u64 << 40).div_ceil(big) <= 10_000, "{big}");
        let gcs = Limits { part_alignment: 256 << 10, min_part_size: 256 << 10, ..Limits::default() };
        assert_eq!(choose_part_size(Some(1_000_000), 10 << 20, &gcs) % (256 << 10), 0);
    }
}
