//! The retry layer: wraps any provider, retries calls that failed with a temporary error (with
//! exponential backoff and jitter), and resumes interrupted or stalled reads from the last byte
//! received. Written once, so every backend behaves the same.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, stream};

use super::{
    ByteStream, GetRange, Limits, ObjectMeta, PResult, PartTag, PendingUpload, Provider, ProviderError,
    ProviderErrorKind, PutMode,
};

/// How hard to try before giving up.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call (and per stretch of a read without progress), the first included.
    pub max_attempts: u32,
    /// First backoff; doubles each time.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// A read that yields no bytes for this long is abandoned and resumed.
    pub stall_timeout: Duration,
    /// A request (other than reading a body) that takes longer than this is retried.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// The largest number of seconds a timing variable takes: one day.
const MAX_ENV_SECONDS: f64 = 86_400.0;

impl RetryPolicy {
    /// The defaults, adjusted by `CROWECODE_MAX_ATTEMPTS`, `CROWECODE_STALL_TIMEOUT` and
    /// `CROWECODE_REQUEST_TIMEOUT` (seconds, fractions allowed) when set.
    ///
    /// A value that is not a positive number (or is too large: more than a day, more than 1000
    /// attempts) is a usage error naming the variable, as for `CROWECODE_CONCURRENCY`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> crate::Result<Self> {
        let mut p = Self::default();
        let secs = |name: &str| -> crate::Result<Option<Duration>> {
            let Some(v) = env(name).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s <= MAX_ENV_SECONDS => Ok(Some(Duration::from_secs_f64(s))),
                _ => Err(crate::Error::usage(
                    format!("{name}={v:?} is not a number of seconds between 0 and {MAX_ENV_SECONDS}"),
                    format!("set {name} to a value like 30 or 0.5, or unset it for the default"),
                )),
            }
        };
        if let Some(v) = env("CROWECODE_MAX_ATTEMPTS").filter(|v| !v.trim().is_empty()) {
            p.max_attempts = v.trim().parse::<u32>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                crate::Error::usage(
                    format!("CROWECODE_MAX_ATTEMPTS={v:?} is not a whole number from 1 to 1000"),
                    "set it to a value like 8, or unset it for the default",
                )
            })?;
        }
        if let Some(d) = secs("CROWECODE_STALL_TIMEOUT")? {
            p.stall_timeout = d;
        }
        if let Some(d) = secs("CROWECODE_REQUEST_TIMEOUT")? {
            p.request_timeout = d;
        }
        if let Some(d) = secs("CROWECODE_RETRY_BACKOFF")? {
            p.initial_backoff = d;
        }
        Ok(p)
    }

    /// For a health check (`status`): a short request timeout and few attempts, unless the
    /// environment chose otherwise, so an endpoint that never answers is reported in seconds.
    #[must_use]
    pub fn for_health_check(mut self, env: &dyn Fn(&str) -> Option<String>) -> Self {
        if env("CROWECODE_REQUEST_TIMEOUT").is_none() {
            self.request_timeout = Duration::from_secs(10);
        }
        if env("CROWECODE_MAX_ATTEMPTS").is_none() {
            self.max_attempts = 2;
        }
        self
    }

    /// Backoff before attempt `attempt + 1` (1-based `attempt`), with ±25% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_backoff);
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

/// A provider wrapped with retries.
pub struct Retrying {
    inner: Arc<dyn Provider>,
    policy: RetryPolicy,
}

impl fmt::Debug for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying").field("inner", &self.inner).field("policy", &self.policy).finish()
    }
}

impl Retrying {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Provider>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> PResult<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = PResult<T>> + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(self.policy.request_timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(ProviderError::new(
                    ProviderErrorKind::Transport,
                    format!("{what}: no answer within {}s", self.policy.request_timeout.as_secs_f64()),
                )),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.temporary && attempt < self.policy.max_attempts => {
                    let wait = self.policy.backoff(attempt);
                    tracing::warn!(
                        "retrying ({attempt}/{}) in {:.1}s: {e}",
                        self.policy.max_attempts,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(mut e) => {
                    e.attempts = attempt;
                    return Err(e);
                }
            }
        }
    }
}

struct ReadState {
    inner: Arc<dyn Provider>,
    policy: RetryPolicy,
    key: String,
    range: GetRange,
    received: u64,
    failures: u32,
    stream: Option<ByteStream>,
}

impl ReadState {
    fn expected_len(&self) -> Option<u64> {
        match &self.range {
            GetRange::Bounded(r) => Some(r.end - r.start),
            _ => None,
        }
    }

    /// Records a temporary failure; errors out once the attempts are used up.
    async fn failed(&mut self, err: ProviderError) -> PResult<()> {
        self.failures += 1;
        self.stream = None;
        if !err.temporary || self.failures >= self.policy.max_attempts {
            let mut err = err;
            err.attempts = self.failures;
            return Err(err);
        }
        let wait = self.policy.backoff(self.failures);
        tracing::debug!(key = %self.key, received = self.received, ?wait, error = %err, "read interrupted; resuming");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn next_chunk(mut self) -> PResult<Option<(Bytes, Self)>> {
        loop {
            if self.expected_len() == Some(self.received) {
                return Ok(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                let range = self.range.advance(self.received);
                match tokio::time::timeout(self.policy.request_timeout, self.inner.get(&self.key, range)).await {
                    Ok(Ok(s)) => self.stream = Some(s),
                    Ok(Err(e)) => self.failed(e).await?,
                    Err(_) => {
                        self.failed(ProviderError::new(
                            ProviderErrorKind::Transport,
                            format!("GET {}: no answer", self.key),
                        ))
                        .await?
                    }
                }
                continue;
            };
            match tokio::time::timeout(self.policy.stall_timeout, stream.next()).await {
                Ok(Some(Ok(bytes))) => {
                    let bytes = match self.expected_len() {
                        // A server that sends more than asked is cut to the range.
                        Some(len) if self.received + bytes.len() as u64 > len => {
                            bytes.slice(..(len - self.received) as usize)
                        }
                        _ => bytes,
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    self.received += bytes.len() as u64;
                    self.failures = 0;
                    return Ok(Some((bytes, self)));
                }
                Ok(None) => match self.expected_len() {
                    Some(len) if self.received < len => {
                        let msg = format!("GET {}: connection closed after {} of {len} bytes", self.key, self.received);
                        self.failed(ProviderError::new(ProviderErrorKind::Transport, msg)).await?;
                    }
                    _ => return Ok(None),
                },
                Ok(Some(Err(e))) => self.failed(e).await?,
                Err(_) => {
                    let msg =
                        format!("GET {}: no data for {}s (stalled)", self.key, self.policy.stall_timeout.as_secs_f64());
                    self.failed(ProviderError::new(ProviderErrorKind::Transport, msg)).await?;
                }
            }
        }
    }
}

#[async_trait]
impl Provider for Retrying {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        self.call("HEAD", || self.inner.head(key)).await
    }

    async fn copy_within_service(&self, source: &super::CopySource, key: &str) -> PResult<bool> {
        self.call("COPY", || self.inner.copy_within_service(source, key)).await
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        self.call("LIST", || self.inner.list(prefix)).await
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        let first = self.call("GET", || self.inner.get(key, range.clone())).await?;
        let state = ReadState {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            key: key.to_string(),
            range,
            received: 0,
            failures: 0,
            stream: Some(first),
        };
        Ok(Box::pin(stream::try_unfold(state, ReadState::next_chunk)))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        self.call("PUT", || self.inner.put(key, data.clone(), mode.clone())).await
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        self.call("PUT", || async {
            match self.inner.put_stream(key, body.clone(), mode.clone()).await {
                // A body its source spoiled reads no better a second time.
                Err(mut e) if body.spoiled().is_some() => {
                    e.temporary = false;
                    Err(e)
                }
                other => other,
            }
        })
        .await
    }

    async fn create_multipart(&self, key: &str, part_size: u64) -> PResult<String> {
        self.call("CreateMultipartUpload", || self.inner.create_multipart(key, part_size)).await
    }

    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        self.call("UploadPart", || self.inner.put_part(key, upload_id, number, data.clone())).await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()> {
        self.call("CompleteMultipartUpload", || self.inner.complete_multipart(key, upload_id, parts.clone())).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> PResult<()> {
        self.call("AbortMultipartUpload", || self.inner.abort_multipart(key, upload_id)).await
    }

    async fn data_url(&self, key: &str, valid_for: std::time::Duration) -> PResult<Option<super::DataUrl>> {
        self.call("presign", || self.inner.data_url(key, valid_for)).await
    }

    async fn list_pending_uploads(&self, prefix: &str) -> PResult<Vec<PendingUpload>> {
        self.call("ListMultipartUploads", || self.inner.list_pending_uploads(prefix)).await
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        self.call("DELETE", || self.inner.delete(key)).await
    }

    async fn check_bucket(&self) -> PResult<()> {
        self.call("checking the bucket", || self.inner.check_bucket()).await
    }

    async fn create_bucket(&self) -> PResult<bool> {
        self.call("CreateBucket", || self.inner.create_bucket()).await
    }

    async fn credential_source(&self) -> String {
        self.inner.credential_source().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::StreamExt as _;

    use super::*;

    /// Serves `data`, but the first `failures` reads break (or stall) after `cut` bytes.
    #[derive(Debug)]
    struct Flaky {
        data: Bytes,
        cut: usize,
        failures: AtomicU32,
        stall: bool,
        ranges: Mutex<Vec<GetRange>>,
    }

    fn nope<T>() -> PResult<T> {
        Err(ProviderError::new(ProviderErrorKind::Unsupported, "not in this test"))
    }

    #[async_trait]
    impl Provider for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        async fn head(&self, _: &str) -> PResult<ObjectMeta> {
            nope()
        }
        async fn list(&self, _: &str) -> PResult<Vec<ObjectMeta>> {
            nope()
        }
        async fn get(&self, _: &str, range: GetRange) -> PResult<ByteStream> {
            self.ranges.lock().unwrap().push(range.clone());
            let (start, end) = match range {
                GetRange::All => (0, self.data.len()),
                GetRange::From(s) => (s as usize, self.data.len()),
                GetRange::Bounded(r) => (r.start as usize, r.end as usize),
            };
            let body = self.data.slice(start..end);
            let broken = self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if !broken {
                return Ok(Box::pin(stream::iter([Ok(body)])));
            }
            let first = body.slice(..self.cut.min(body.len()));
            let tail: ByteStream = if self.stall {
                Box::pin(stream::pending())
            } else {
                Box::pin(stream::iter([Err(ProviderError::new(ProviderErrorKind::Transport, "connection reset"))]))
            };
            Ok(Box::pin(stream::iter([Ok(first)]).chain(tail)))
        }
        async fn put(&self, _: &str, _: Bytes, _: PutMode) -> PResult<Option<String>> {
            nope()
        }
        async fn create_multipart(&self, _: &str, _: u64) -> PResult<String> {
            nope()
        }
        async fn put_part(&self, _: &str, _: &str, _: u32, _: Bytes) -> PResult<PartTag> {
            nope()
        }
        async fn complete_multipart(&self, _: &str, _: &str, _: Vec<PartTag>) -> PResult<()> {
            nope()
        }
        async fn abort_multipart(&self, _: &str, _: &str) -> PResult<()> {
            nope()
        }
        async fn delete(&self, _: &str) -> PResult<()> {
            nope()
        }
        async fn check_bucket(&self) -> PResult<()> {
            nope()
        }
        async fn create_bucket(&self) -> PResult<bool> {
            nope()
        }
        async fn credential_source(&self) -> String {
            "none".into()
        }
    }

    fn flaky(failures: u32, stall: bool) -> Arc<Flaky> {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        Arc::new(Flaky {
            data: data.into(),
            cut: 1000,
            failures: AtomicU32::new(failures),
            stall,
            ranges: Mutex::new(Vec::new()),
        })
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            stall_timeout: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
        }
    }

    async fn read_all(p: &Retrying, range: GetRange) -> PResult<Vec<u8>> {
        let mut s = p.get("k", range).await?;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_broken_read_resumes_from_the_last_byte_received() {
        let inner = flaky(3, false);
        let p = Retrying::new(inner.clone(), fast(5));
        let got = read_all(&p, GetRange::Bounded(500..9500)).await.unwrap();
        assert_eq!(got, &inner.data[500..9500]);
        let ranges = inner.ranges.lock().unwrap().clone();
        assert_eq!(
            ranges,
            [500..9500, 1500..9500, 2500..9500, 3500..9500].map(GetRange::Bounded),
            "each retry asks only for what is missing"
        );
    }

    #[tokio::test]
    async fn a_stalled_read_is_abandoned_and_resumed() {
        let inner = flaky(1, true);
        let p = Retrying::new(inner.clone(), fast(3));
        let got = read_all(&p, GetRange::All).await.unwrap();
        assert_eq!(got, inner.data);
        assert_eq!(inner.ranges.lock().unwrap()[1], GetRange::From(1000));
    }

    #[tokio::test]
    async fn reads_give_up_after_the_attempts_without_progress() {
        let inner = Arc::new(Flaky { cut: 0, ..Arc::into_inner(flaky(100, false)).unwrap() });
        let p = Retrying::new(inner.clone(), fast(4));
        let err = read_all(&p, GetRange::Bounded(0..100)).await.unwrap_err();
        assert!(err.temporary);
        assert_eq!(err.attempts, 4);
        assert_eq!(inner.ranges.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let p = Retrying::new(flaky(0, false), fast(5));
        let err = p.head("k").await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Unsupported);
        assert_eq!(err.attempts, 1);
    }
}
