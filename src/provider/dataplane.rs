//! The data plane: archive reads, counted, and with a mirror configured sent through it.
//!
//! Manifests, tags, listings and every write go to the bucket directly (the control plane).
//! Ranged reads of archives go to the mirror when there is one: the same request path and query
//! as the bucket's presigned (or SAS) URL, on the mirror's base URL, so an HTTP cache keyed
//! without the query (nginx `slice` + `proxy_cache`), a CDN or Dragonfly can share them between
//! machines. The mirror is not trusted: every byte is still checked against the manifest by the
//! download, and a mirror that errors, stalls, answers the wrong range or ends early costs only
//! the rest of that range, read from the bucket (with a warning naming the mirror).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;

use super::{ByteStream, DataUrl, GetRange, Limits, ObjectMeta, PResult, PartTag, PendingUpload, Provider, PutMode};

/// How long a presigned URL is asked to stay valid (and is reused for: half of it).
const URL_LIFETIME: Duration = Duration::from_secs(3600);

/// Requests and bytes, by where they went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Archive reads answered by the mirror.
    pub mirror_requests: u64,
    pub mirror_bytes: u64,
    /// Archive reads answered by the bucket (all of them without a mirror; fallbacks with one).
    pub bucket_requests: u64,
    pub bucket_bytes: u64,
    /// Other requests to the bucket (manifests, tags, listings, HEADs).
    pub control_requests: u64,
    /// Mirror reads that failed (error, timeout, wrong answer) and were read from the bucket.
    pub mirror_failures: u64,
}

impl Traffic {
    /// Both added up.
    pub fn plus(&self, other: &Traffic) -> Traffic {
        Traffic {
            mirror_requests: self.mirror_requests + other.mirror_requests,
            mirror_bytes: self.mirror_bytes + other.mirror_bytes,
            bucket_requests: self.bucket_requests + other.bucket_requests,
            bucket_bytes: self.bucket_bytes + other.bucket_bytes,
            control_requests: self.control_requests + other.control_requests,
            mirror_failures: self.mirror_failures + other.mirror_failures,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            mirror_requests: self.mirror_requests - earlier.mirror_requests,
            mirror_bytes: self.mirror_bytes - earlier.mirror_bytes,
            bucket_requests: self.bucket_requests - earlier.bucket_requests,
            bucket_bytes: self.bucket_bytes - earlier.bucket_bytes,
            control_requests: self.control_requests - earlier.control_requests,
            mirror_failures: self.mirror_failures - earlier.mirror_failures,
        }
    }
}

#[derive(Default)]
struct Counters {
    mirror_requests: AtomicU64,
    mirror_bytes: AtomicU64,
    bucket_requests: AtomicU64,
    bucket_bytes: AtomicU64,
    control_requests: AtomicU64,
    mirror_failures: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where archive reads go instead of the bucket, and an HTTP client for them (which honours
/// `HTTP(S)_PROXY`/`NO_PROXY`, except for a forward proxy given here).
#[derive(Clone)]
pub struct Mirror {
    base: String,
    /// A forward proxy (dfdaemon): the bucket's URL itself is requested through it, as
    /// `http://`, instead of the bucket's path on `base`.
    forward: bool,
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    client: reqwest::Client,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mirror({})", self.base)
    }
}

impl Mirror {
    /// A mirror at `base` (`http(s)://host[:port][/path]`, validated by the config): a reverse
    /// proxy or CDN that serves the bucket's request paths.
    pub fn new(base: &str) -> Result<Self, String> {
        Self::build(base, false)
    }

    /// A forward HTTP proxy at `url` that archive reads are sent through as plain `http://`
    /// requests for the bucket's own URLs (Dragonfly's dfdaemon, whose `useTLS` rule goes on to
    /// the bucket over TLS; so nothing has to trust the proxy's certificate).
    pub fn forward_proxy(url: &str) -> Result<Self, String> {
        Self::build(url, true)
    }

    fn build(base: &str, forward: bool) -> Result<Self, String> {
        #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
        {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30));
            if forward {
                let proxy = reqwest::Proxy::all(base).map_err(|e| format!("not a proxy URL: {e}"))?;
                builder = builder.proxy(proxy);
            }
            let client = builder.build().map_err(|e| format!("cannot set up the HTTP client for the mirror: {e}"))?;
            Ok(Self { base: base.trim_end_matches('/').to_string(), forward, client })
        }
        #[cfg(not(any(feature = "s3", feature = "gcs", feature = "azure")))]
        {
            let _ = forward;
            Err(format!("mirror {base}: this build has no cloud provider, so there is nothing to mirror"))
        }
    }

    /// What to call it in messages.
    pub fn label(&self) -> &'static str {
        if self.is_forward_proxy() { "data proxy" } else { "mirror" }
    }

    /// Whether archive reads are sent to it as a forward proxy (`data_proxy`).
    pub fn is_forward_proxy(&self) -> bool {
        self.forward
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The mirror's URL for a bucket URL: the bucket's path and query on the mirror's base (or,
    /// through a forward proxy, the bucket's URL as plain `http://`).
    #[cfg_attr(not(any(feature = "s3", feature = "gcs", feature = "azure")), allow(dead_code))]
    fn rebase(&self, url: &str) -> Option<String> {
        let rest = url.split_once("://")?.1;
        if self.forward {
            return Some(format!("http://{rest}"));
        }
        let path_and_query = rest.find('/').map_or("/", |i| &rest[i..]);
        Some(format!("{}{path_and_query}", self.base))
    }

    /// Whether the mirror answers HTTP at all (`Some(status)`, any status), or for a forward
    /// proxy accepts connections (`None`), within a few seconds.
    pub async fn answers(&self) -> Result<Option<u16>, String> {
        if self.forward {
            let authority = self.base.split_once("://").map_or(self.base.as_str(), |(_, r)| r);
            let authority = authority.split('/').next().unwrap_or(authority);
            let connect = tokio::net::TcpStream::connect(authority);
            return match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no connection within 5 s".into()),
            };
        }
        #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
        {
            let resp = self
                .client
                .get(format!("{}/", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| super::error_chain(&e))?;
            Ok(Some(resp.status().as_u16()))
        }
        #[cfg(not(any(feature = "s3", feature = "gcs", feature = "azure")))]
        {
            Err("no HTTP client in this build".into())
        }
    }

    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    async fn get(&self, data: &DataUrl, range: &GetRange) -> Result<ByteStream, String> {
        use futures::TryStreamExt as _;
        let url = self.rebase(&data.url).ok_or("the bucket gave no URL to rebase")?;
        let mut req = self.client.get(url);
        for (k, v) in &data.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(h) = range.http_header() {
            req = req.header("range", h);
        }
        if !data.volatile_params.is_empty() {
            req = req.header("X-Dragonfly-Filtered-Query-Params", data.volatile_params.join(","));
        }
        let resp = req.send().await.map_err(|e| super::error_chain(&e))?;
        let status = resp.status().as_u16();
        let start = match range {
            GetRange::All => None,
            GetRange::Bounded(r) => Some(r.start),
            GetRange::From(s) => Some(*s),
        };
        match (start, status) {
            (None, 200) => {}
            (Some(s), 206) => {
                let content_range = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                let first = content_range.strip_prefix("bytes ").and_then(|r| r.split('-').next());
                if first.and_then(|f| f.parse::<u64>().ok()) != Some(s) {
                    return Err(format!("answered the range with Content-Range {content_range:?}"));
                }
            }
            (_, other) => return Err(format!("answered HTTP {other}")),
        }
        Ok(resp
            .bytes_stream()
            .map_err(|e| super::ProviderError::new(super::ProviderErrorKind::Transport, super::error_chain(&e)))
            .boxed())
    }

    #[cfg(not(any(feature = "s3", feature = "gcs", feature = "azure")))]
    async fn get(&self, _data: &DataUrl, _range: &GetRange) -> Result<ByteStream, String> {
        Err("no HTTP client in this build".into())
    }
}

/// A provider whose archive reads are counted and, with a mirror, go through it.
pub struct DataPlane {
    direct: Arc<dyn Provider>,
    mirror: Option<Mirror>,
    counters: Arc<Counters>,
    urls: Mutex<HashMap<String, (DataUrl, Instant)>>,
    /// Said once per process: the mirror failed, or cannot be used with this credential.
    warned: AtomicBool,
}

impl fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlane").field("direct", &self.direct).field("mirror", &self.mirror).finish()
    }
}

/// Whether a key is an archive or a pack (the data plane: immutable, what a mirror serves best);
/// everything else is the control plane.
fn is_archive(key: &str) -> bool {
    key.contains("/archives/") || key.contains("_pieces/packs/")
}

impl DataPlane {
    /// Counts the reads of `direct` and, with `mirror`, reads archives through it.
    pub fn new(direct: Arc<dyn Provider>, mirror: Option<Mirror>) -> Self {
        Self {
            direct,
            mirror,
            counters: Arc::default(),
            urls: Mutex::new(HashMap::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// The bucket, without the mirror.
    pub fn direct(&self) -> &Arc<dyn Provider> {
        &self.direct
    }

    /// The mirror, if one is configured.
    pub fn mirror(&self) -> Option<&Mirror> {
        self.mirror.as_ref()
    }

    /// The requests and bytes so far.
    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            mirror_requests: get(&c.mirror_requests),
            mirror_bytes: get(&c.mirror_bytes),
            bucket_requests: get(&c.bucket_requests),
            bucket_bytes: get(&c.bucket_bytes),
            control_requests: get(&c.control_requests),
            mirror_failures: get(&c.mirror_failures),
        }
    }

    fn warn_once(&self, message: String) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }

    /// The bucket's plain-HTTP URL for `key`, reused while it is young.
    async fn data_url(&self, key: &str) -> Result<DataUrl, String> {
        if let Some((url, made)) = self.urls.lock().expect("url cache").get(key)
            && made.elapsed() < URL_LIFETIME / 2
        {
            return Ok(url.clone());
        }
        let url = match self.direct.data_url(key, URL_LIFETIME).await {
            Ok(Some(url)) => url,
            Ok(None) => return Err("the bucket's credential cannot make presigned URLs".into()),
            Err(e) => return Err(e.message),
        };
        self.urls.lock().expect("url cache").insert(key.to_string(), (url.clone(), Instant::now()));
        Ok(url)
    }

    async fn direct_get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        Counters::add(&self.counters.bucket_requests, 1);
        let stream = self.direct.get(key, range).await?;
        let counters = self.counters.clone();
        Ok(stream
            .inspect(move |chunk| {
                if let Ok(b) = chunk {
                    Counters::add(&counters.bucket_bytes, b.len() as u64);
                }
            })
            .boxed())
    }
}

/// A read that started on the mirror and goes on from the bucket if the mirror fails.
struct Fallback {
    stream: ByteStream,
    on_mirror: bool,
    got: u64,
    /// The range's length, when bounded: a mirror that ends early is caught here.
    expected: Option<u64>,
    key: String,
    range: GetRange,
    plane: Arc<DataPlaneShared>,
}

/// What a [`Fallback`] needs of its data plane, shared with the stream.
struct DataPlaneShared {
    direct: Arc<dyn Provider>,
    counters: Arc<Counters>,
    mirror: String,
}

impl Fallback {
    async fn fall_back(mut self, why: String) -> Option<(PResult<Bytes>, Self)> {
        tracing::warn!(
            "{}: {why}; reading the rest of {} from the bucket (every byte is still verified)",
            self.plane.mirror,
            self.key
        );
        Counters::add(&self.plane.counters.mirror_failures, 1);
        Counters::add(&self.plane.counters.bucket_requests, 1);
        self.on_mirror = false;
        match self.plane.direct.get(&self.key, self.range.advance(self.got)).await {
            Ok(s) => {
                self.stream = s;
                Box::pin(self.next()).await
            }
            Err(e) => Some((Err(e), self)),
        }
    }

    async fn next(mut self) -> Option<(PResult<Bytes>, Self)> {
        match self.stream.next().await {
            Some(Ok(b)) => {
                let counter =
                    if self.on_mirror { &self.plane.counters.mirror_bytes } else { &self.plane.counters.bucket_bytes };
                Counters::add(counter, b.len() as u64);
                self.got += b.len() as u64;
                Some((Ok(b), self))
            }
            Some(Err(e)) if self.on_mirror => self.fall_back(e.message.clone()).await,
            Some(Err(e)) => Some((Err(e), self)),
            None if self.on_mirror && self.expected.is_some_and(|n| self.got < n) => {
                let why = format!("the answer ended after {} of {} bytes", self.got, self.expected.unwrap_or(0));
                self.fall_back(why).await
            }
            None => None,
        }
    }
}

#[async_trait]
impl Provider for DataPlane {
    fn describe(&self) -> String {
        self.direct.describe()
    }

    fn limits(&self) -> Limits {
        self.direct.limits()
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        Counters::add(&self.counters.control_requests, 1);
        self.direct.head(key).await
    }

    async fn copy_within_service(&self, source: &super::CopySource, key: &str) -> PResult<bool> {
        Counters::add(&self.counters.control_requests, 1);
        self.direct.copy_within_service(source, key).await
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        Counters::add(&self.counters.control_requests, 1);
        self.direct.list(prefix).await
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        if !is_archive(key) {
            Counters::add(&self.counters.control_requests, 1);
            return self.direct.get(key, range).await;
        }
        let Some(mirror) = &self.mirror else { return self.direct_get(key, range).await };
        let started = match self.data_url(key).await {
            Ok(url) => mirror.get(&url, &range).await,
            Err(why) => Err(why),
        };
        match started {
            Ok(stream) => {
                Counters::add(&self.counters.mirror_requests, 1);
                let expected = match &range {
                    GetRange::Bounded(r) => Some(r.end - r.start),
                    _ => None,
                };
                let state = Fallback {
                    stream,
                    on_mirror: true,
                    got: 0,
                    expected,
                    key: key.to_string(),
                    range,
                    plane: Arc::new(DataPlaneShared {
                        direct: self.direct.clone(),
                        counters: self.counters.clone(),
                        mirror: format!("{} {}", mirror.label(), mirror.base),
                    }),
                };
                Ok(futures::stream::unfold(state, Fallback::next).boxed())
            }
            Err(why) => {
                Counters::add(&self.counters.mirror_failures, 1);
                self.warn_once(format!("{} {}: {why}; reading {key} from the bucket", mirror.label(), mirror.base));
                self.direct_get(key, range).await
            }
        }
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        self.direct.put(key, data, mode).await
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        self.direct.put_stream(key, body, mode).await
    }

    async fn create_multipart(&self, key: &str, part_size: u64) -> PResult<String> {
        self.direct.create_multipart(key, part_size).await
    }

    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        self.direct.put_part(key, upload_id, number, data).await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()> {
        self.direct.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> PResult<()> {
        self.direct.abort_multipart(key, upload_id).await
    }

    async fn list_pending_uploads(&self, prefix: &str) -> PResult<Vec<PendingUpload>> {
        self.direct.list_pending_uploads(prefix).await
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        self.direct.delete(key).await
    }

    async fn check_bucket(&self) -> PResult<()> {
        self.direct.check_bucket().await
    }

    async fn create_bucket(&self) -> PResult<bool> {
        self.direct.create_bucket().await
    }

    async fn credential_source(&self) -> String {
        self.direct.credential_source().await
    }

    async fn data_url(&self, key: &str, valid_for: Duration) -> PResult<Option<DataUrl>> {
        self.direct.data_url(key, valid_for).await
    }
}

#[cfg(all(test, any(feature = "s3", feature = "gcs", feature = "azure")))]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_gets_the_buckets_path_and_query_and_a_forward_proxy_its_url_as_http() {
        let url = "https://bucket.s3.us-east-1.amazonaws.com/models/A/archives/x.tar?X-Amz-Signature=ab";
        let mirror = Mirror::new("http://cache.internal:8080/s3/").unwrap();
        assert_eq!(
            mirror.rebase(url).unwrap(),
            "http://cache.internal:8080/s3/models/A/archives/x.tar?X-Amz-Signature=ab"
        );
        let proxy = Mirror::forward_proxy("http://127.0.0.1:4001").unwrap();
        assert_eq!(
            proxy.rebase(url).unwrap(),
            "http://bucket.s3.us-east-1.amazonaws.com/models/A/archives/x.tar?X-Amz-Signature=ab"
        );
        assert!(is_archive("p/A/archives/x.tar") && !is_archive("p/A/versions/x.json"));
        assert!(is_archive("p/_pieces/packs/ab/ab01.pack") && is_archive("_pieces/packs/ab/ab01.pack"));
    }
}
