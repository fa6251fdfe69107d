//! Storage backends: one small async trait, thin adapters behind it, and the retry layer that
//! wraps any of them.
//!
//! **Providers only move bytes.** They know nothing of models, manifests, part sizes, retries or
//! checksums; everything that decides is above them and so behaves the same on every cloud.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::config::{CloudConfig, ProviderKind};
use crate::error::{Error, Result};

#[cfg(feature = "azure")]
pub mod azure;
pub mod dataplane;
#[cfg(feature = "gcs")]
pub mod gcs;
pub mod local;
mod retry;
#[cfg(feature = "s3")]
pub mod s3;

pub use retry::{RetryPolicy, Retrying};

pub use crate::error::{ProviderError, ProviderErrorKind};

/// An error and its causes on one line (for provider messages built from SDK errors).
#[cfg_attr(not(any(feature = "s3", feature = "gcs", feature = "azure")), allow(dead_code))]
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    crate::redact::text(&out)
}

/// Shorthand for provider results.
pub type PResult<T> = std::result::Result<T, ProviderError>;

/// A stream of an object's bytes, in order.
pub type ByteStream = BoxStream<'static, PResult<Bytes>>;

/// What `list` and `head` return about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key, prefix included.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// An opaque version tag for conditional writes; never used for integrity.
    pub etag: Option<String>,
    /// When it was last written, when the backend says.
    pub last_modified: Option<SystemTime>,
}

/// Which bytes of an object to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetRange {
    /// The whole object.
    All,
    /// `start..end`, end exclusive.
    Bounded(Range<u64>),
    /// From an offset to the end.
    From(u64),
}

impl GetRange {
    /// The same range with the first `n` bytes already received.
    pub fn advance(&self, n: u64) -> GetRange {
        match self {
            Self::All => Self::From(n),
            Self::From(s) => Self::From(s + n),
            Self::Bounded(r) => Self::Bounded(r.start + n..r.end),
        }
    }

    /// The HTTP `Range` header value, if one is needed.
    pub fn http_header(&self) -> Option<String> {
        match self {
            Self::All => None,
            Self::From(s) => Some(format!("bytes={s}-")),
            Self::Bounded(r) => Some(format!("bytes={}-{}", r.start, r.end.saturating_sub(1))),
        }
    }
}

/// How a small object is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Only if nothing is there yet (`If-None-Match: *`).
    Create,
    /// Only if the current object still has this ETag (`If-Match`).
    IfMatch(String),
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartTag {
    /// 1-based part number.
    pub number: u32,
    /// The backend's receipt for the part (ETag, block id).
    pub tag: String,
}

/// An unfinished multipart upload found in the bucket.
#[derive(Clone, Debug)]
pub struct PendingUpload {
    /// The key it would create.
    pub key: String,
    /// The backend's id for it.
    pub upload_id: String,
    /// When it started, when the backend says.
    pub initiated: Option<SystemTime>,
}

/// Limits the transfer engine must respect.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Smallest part except the last.
    pub min_part_size: u64,
    /// Largest part.
    pub max_part_size: u64,
    /// Most parts in one upload.
    pub max_parts: u32,
    /// Every part but the last must be a multiple of this.
    pub part_alignment: u64,
    /// Whether parts may be uploaded concurrently (and so out of order).
    pub concurrent_parts: bool,
    /// The most ranged reads worth keeping in flight (`None`: as many as the tuning finds useful).
    /// A local disk gains nothing from more than a few.
    pub max_reads_in_flight: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_part_size: 5 << 20,
            max_part_size: 5 << 30,
            max_parts: 10_000,
            part_alignment: 1,
            concurrent_parts: true,
            max_reads_in_flight: None,
        }
    }
}

/// A bucket on some storage service. Keys are full object keys (the caller adds the prefix).
///
/// Object safe, used as `Arc<dyn Provider>`; conveniences are in [`ProviderExt`].
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// `s3://bucket`, `gs://bucket`, a directory: for messages.
    fn describe(&self) -> String;

    /// Part-size and ordering limits for multipart uploads.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Copies `source` (an object of the same service) to `key` in this bucket, inside the
    /// service: no byte passes through this machine. S3 `CopyObject` and Azure `Put Blob From
    /// URL` take objects of at most 5 GiB (5000 MiB), GCS `rewrite` any. `Ok(false)` where this
    /// provider has no such copy, or the source cannot be named to it (the caller then copies
    /// through the machine).
    async fn copy_within_service(&self, _source: &CopySource, _key: &str) -> PResult<bool> {
        Ok(false)
    }

    /// Size and version of one object.
    async fn head(&self, key: &str) -> PResult<ObjectMeta>;

    /// Every object whose key starts with `prefix`, all pages, sorted by key.
    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>>;

    /// A byte range of an object as a stream.
    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream>;

    /// Writes a small object in one request; returns its new ETag when the backend gives one.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>>;

    /// Writes an object in one request whose body is read as it is sent, so that what it holds in
    /// memory is an item of the body's stream, not the object. The object exists only once the
    /// request got every byte: a stream that fails midway fails the request, and nothing is
    /// written. The default gathers the body in memory and calls [`Provider::put`].
    async fn put_stream(&self, key: &str, body: StreamBody, mode: PutMode) -> PResult<Option<String>> {
        let data = body.gather().await?;
        self.put(key, data, mode).await
    }

    /// Starts a multipart upload whose parts are all `part_size` bytes except the last, which
    /// may be shorter (the engine always cuts parts that way); returns its id.
    async fn create_multipart(&self, key: &str, part_size: u64) -> PResult<String>;

    /// Uploads part `number` (1-based).
    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag>;

    /// Makes the object visible from its parts, in part-number order.
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()>;

    /// Discards an unfinished multipart upload.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> PResult<()>;

    /// Unfinished multipart uploads under `prefix` (where the backend can list them).
    async fn list_pending_uploads(&self, _prefix: &str) -> PResult<Vec<PendingUpload>> {
        Ok(Vec::new())
    }

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> PResult<()>;

    /// Checks that the bucket exists and answers.
    async fn check_bucket(&self) -> PResult<()>;

    /// Creates the bucket; `Ok(false)` when it already existed.
    async fn create_bucket(&self) -> PResult<bool>;

    /// Where credentials come from (`environment`, `profile default`, `web identity`, `none`):
    /// a name, never a secret.
    async fn credential_source(&self) -> String;

    /// A URL that reads `key` with plain ranged GETs and no per-request signature over the
    /// `Range` header (a presigned URL, a SAS URL, or a URL with a bearer header), valid for at
    /// least `valid_for`, so that an HTTP cache, a CDN or a P2P proxy can serve and share the
    /// reads. `None` when this backend or its credential cannot make one (reads then go direct).
    async fn data_url(&self, _key: &str, _valid_for: std::time::Duration) -> PResult<Option<DataUrl>> {
        Ok(None)
    }
}

/// The body of [`Provider::put_stream`]: its exact length, and how to read it from its start
/// (once per attempt: a retry reads it again). Its source may mark it spoiled (a file that
/// changed since its digests were taken): a request that failed then is not retried, and the
/// reason is [`StreamBody::spoiled`].
#[derive(Clone)]
pub struct StreamBody {
    len: u64,
    open: Arc<dyn Fn(bool) -> ByteStream + Send + Sync>,
    spoiled: Arc<std::sync::OnceLock<String>>,
}

impl StreamBody {
    /// A body of `len` bytes read by `open`, which sets `spoiled` before it fails a stream for
    /// good. `open(true)` reads bytes that go on the wire (paced by a rate limit, if any);
    /// `open(false)` bytes only hashed.
    pub fn new(
        len: u64,
        spoiled: Arc<std::sync::OnceLock<String>>,
        open: impl Fn(bool) -> ByteStream + Send + Sync + 'static,
    ) -> Self {
        Self { len, open: Arc::new(open), spoiled }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body from its first byte, to send.
    pub fn open(&self) -> ByteStream {
        (self.open)(true)
    }

    /// The body from its first byte, to hash (not sent: not paced).
    pub fn read(&self) -> ByteStream {
        (self.open)(false)
    }

    /// Why the body cannot be read as it was meant to be, once its source said so.
    pub fn spoiled(&self) -> Option<&str> {
        self.spoiled.get().map(String::as_str)
    }

    /// The whole body in memory, checked against its length.
    pub async fn gather(&self) -> PResult<Bytes> {
        let mut stream = self.open();
        let mut buf = BytesMut::with_capacity(self.len as usize);
        while let Some(item) = stream.next().await {
            buf.extend_from_slice(&item?);
        }
        self.check_len(buf.len() as u64)?;
        Ok(buf.freeze())
    }

    /// An error unless `n`, the bytes a stream of the body gave, is its length.
    pub fn check_len(&self, n: u64) -> PResult<()> {
        if n == self.len {
            return Ok(());
        }
        Err(ProviderError::new(ProviderErrorKind::Other, format!("a body of {} bytes gave {n}", self.len)))
    }
}

impl fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamBody").field("len", &self.len).finish_non_exhaustive()
    }
}

/// An object another bucket of the same service copies inside the service.
#[derive(Clone)]
pub struct CopySource {
    /// Its bucket (container) and full key.
    pub bucket: String,
    pub key: String,
    /// A URL the service itself can read it at (Azure: with a SAS); never printed.
    pub url: Option<String>,
}

impl fmt::Debug for CopySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopySource").field("bucket", &self.bucket).field("key", &self.key).finish_non_exhaustive()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for URL paths and queries).
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A URL that reads one object by plain HTTP (see [`Provider::data_url`]).
#[derive(Clone)]
pub struct DataUrl {
    /// Absolute URL; its query may hold a signature (never printed).
    pub url: String,
    /// Headers to send with every request (a bearer token; never printed).
    pub headers: Vec<(String, String)>,
    /// Query parameters that differ between machines and over time (signatures, expiries): a
    /// shared cache must leave them out of its key (sent to Dragonfly as
    /// `X-Dragonfly-Filtered-Query-Params`).
    pub volatile_params: Vec<String>,
}

impl fmt::Debug for DataUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.url.split('?').next().unwrap_or("");
        f.debug_struct("DataUrl").field("url", &path).finish_non_exhaustive()
    }
}

/// Conveniences on top of [`Provider`].
#[async_trait]
pub trait ProviderExt: Provider {
    /// Reads a whole (small) object into memory.
    async fn get_bytes(&self, key: &str) -> PResult<Bytes> {
        let mut stream = self.get(key, GetRange::All).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl<P: Provider + ?Sized> ProviderExt for P {}

/// Builds the provider a configuration names, wrapped in the retry layer.
pub async fn from_config(cfg: &CloudConfig, policy: RetryPolicy) -> Result<Arc<dyn Provider>> {
    let inner: Arc<dyn Provider> = match cfg.provider {
        ProviderKind::Local => Arc::new(local::LocalProvider::new(&cfg.bucket)),
        #[cfg(feature = "s3")]
        ProviderKind::S3 => Arc::new(s3::S3Provider::new(cfg).await?),
        #[cfg(feature = "gcs")]
        ProviderKind::Gcs => Arc::new(gcs::GcsProvider::new(cfg).await?),
        #[cfg(feature = "azure")]
        ProviderKind::Azure => Arc::new(azure::AzureProvider::new(cfg).await?),
        // Unreachable when every provider is built in.
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::config(
                "provider",
                format!("provider {other} is not available in this build"),
                format!("`crowecode-cloud --version` lists the providers built in; rebuild with `--features {other}`"),
            ));
        }
    };
    Ok(Arc::new(Retrying::new(inner, policy)))
}
