//! Amazon S3 and S3-compatible stores, on `aws-sdk-s3`.
//!
//! Credentials come only from the standard AWS chain (environment, profiles, SSO,
//! credential_process, web identity/IRSA, ECS, EKS Pod Identity, IMDSv2). With an `endpoint`
//! (MinIO, R2, Ceph, test servers) requests use path-style addressing and send checksums only
//! when the operation requires them: several S3-compatible servers store the SDK's default
//! aws-chunked framing as object bytes. Retries are the retry layer's job, so the SDK's own are
//! off and every provider retries the same way.

use std::fmt;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, ServerSideEncryption,
};
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;
use futures::stream;

use super::error_chain;
use super::{
    ByteStream, GetRange, ObjectMeta, PResult, PartTag, PendingUpload, Provider, ProviderError, ProviderErrorKind,
    PutMode,
};
use crate::config::CloudConfig;
use crate::error::{Error, Result};

/// A streamed request body of a known length, for the SDK.
struct SizedBody {
    /// In a mutex only to be `Sync`, as the SDK's bodies are; polled through `get_mut`.
    stream: std::sync::Mutex<ByteStream>,
    left: u64,
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        let stream = self.stream.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        match stream.as_mut().poll_next(cx) {
            std::task::Poll::Ready(Some(Ok(bytes))) => {
                self.left = self.left.saturating_sub(bytes.len() as u64);
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes))))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(Box::new(e)))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The sha256 of a streamed body, for a signed payload.
async fn stream_sha256(body: &super::StreamBody) -> PResult<String> {
    use futures::StreamExt as _;
    use sha2::Digest as _;
    let mut stream = body.read();
    let (mut h, mut n) = (sha2::Sha256::new(), 0u64);
    while let Some(item) = stream.next().await {
        let item = item?;
        n += item.len() as u64;
        h.update(&item);
    }
    body.check_len(n)?;
    Ok(hex::encode(h.finalize()))
}

/// Signs a request with a payload digest computed beforehand (a streamed body is otherwise sent
/// as `UNSIGNED-PAYLOAD`).
#[derive(Debug)]
struct PrecomputedPayload(String);

impl aws_sdk_s3::config::Intercept for PrecomputedPayload {
    fn name(&self) -> &'static str {
        "PrecomputedPayload"
    }

    fn modify_before_signing(
        &self,
        _context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state().store_put(aws_runtime::auth::PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// An S3 bucket.
pub struct S3Provider {
    client: Client,
    bucket: String,
    region: String,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    sdk_config: aws_config::SdkConfig,
    /// Whether part bodies are hashed into the SigV4 signature: only over plain HTTP. Over TLS
    /// the transport already protects them (and on AWS the default CRC32 checksum is checked by
    /// S3), so one sha256 pass over every uploaded byte is saved.
    sign_payload: bool,
}

impl fmt::Debug for S3Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials: only where the bucket is.
        f.debug_struct("S3Provider").field("bucket", &self.bucket).field("region", &self.region).finish_non_exhaustive()
    }
}

impl S3Provider {
    /// A `PutObject` of `body` under `mode` (`If-None-Match: *` for create-only, `If-Match`).
    fn put_request(
        &self,
        key: &str,
        body: SdkStream,
        mode: PutMode,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .body(body);
        match mode {
            PutMode::Overwrite => req,
            PutMode::Create => req.if_none_match("*"),
            PutMode::IfMatch(etag) => req.if_match(etag),
        }
    }

    /// Builds a client for the bucket `cfg` names.
    pub async fn new(cfg: &CloudConfig) -> Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(profile) = &cfg.aws_profile {
            // That profile's credentials only: the environment's (the other side of a copy)
            // would come first in the default chain.
            let credentials =
                aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(profile).build();
            loader = loader.profile_name(profile).credentials_provider(credentials);
        }
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk_config = loader.load().await;
        let region = match (sdk_config.region(), &cfg.endpoint) {
            (Some(r), _) => r.to_string(),
            // S3-compatible stores mostly ignore the region, but SigV4 needs one.
            (None, Some(_)) => "us-east-1".to_string(),
            (None, None) => {
                return Err(Error::config(
                    "s3",
                    "no AWS region configured",
                    "pass --region (e.g. us-west-2) to setup, or set AWS_REGION",
                ));
            }
        };
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
            .region(Region::new(region.clone()))
            .retry_config(RetryConfig::disabled());
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder
                .endpoint_url(endpoint)
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let sse = cfg.sse.as_deref().map(ServerSideEncryption::from);
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            region,
            sse,
            kms_key_id: cfg.kms_key_id.clone(),
            sdk_config,
            sign_payload: cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
        })
    }
}

/// Decodes a key from a listing made with `encoding-type=url` (`+` is a space, `%XX` a byte, as
/// botocore decodes it); `None` when it is not valid encoding or not UTF-8.
fn url_decode(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = key.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

const NOT_S3_HINT: &str = "this endpoint does not speak S3 (a captive portal, a web server or a wrong URL?): check --endpoint and any proxy in between";

/// A successful PUT carries an ETag; an answer without one came from something that is not S3
/// (a portal answering 200 to everything) and stored nothing.
fn require_etag(op: &str, key: &str, etag: Option<&str>) -> PResult<String> {
    etag.map(str::to_string).ok_or_else(|| {
        ProviderError::new(
            ProviderErrorKind::Other,
            format!("{op} {key}: the answer has no ETag, so nothing was stored"),
        )
        .with_hint(NOT_S3_HINT)
    })
}

/// Maps an SDK failure to a provider error: kind from the service code and HTTP status, a
/// message naming the operation and the code, a hint for credential problems.
fn map_err<E>(op: &str, target: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("").to_string();
            let msg = ctx.err().message().unwrap_or("").to_string();
            let kind = match (code.as_str(), status) {
                ("NoSuchBucket", _) => ProviderErrorKind::BucketNotFound,
                ("NoSuchKey" | "NotFound" | "NoSuchUpload", _) | ("", Some(404)) => ProviderErrorKind::NotFound,
                (
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"
                    | "AuthorizationHeaderMalformed",
                    _,
                ) => ProviderErrorKind::Unauthenticated,
                ("AccessDenied" | "AllAccessDisabled" | "AccountProblem", _) | (_, Some(403)) => {
                    ProviderErrorKind::PermissionDenied
                }
                ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412)) => {
                    ProviderErrorKind::Precondition
                }
                ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded", _)
                | (_, Some(429 | 503)) => ProviderErrorKind::RateLimited,
                (_, Some(s)) if s >= 500 => ProviderErrorKind::Transport,
                ("RequestTimeout", _) => ProviderErrorKind::Transport,
                _ => ProviderErrorKind::Other,
            };
            let shown = if code.is_empty() {
                status.map_or_else(|| "error".to_string(), |s| format!("HTTP {s}"))
            } else {
                code.clone()
            };
            let detail = if msg.is_empty() { String::new() } else { format!(": {msg}") };
            let mut e = ProviderError::new(kind, format!("{op} {target}: {shown}{detail}"));
            e.hint = match kind {
                ProviderErrorKind::Unauthenticated => Some(
                    "AWS rejected the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE (and `aws sso login`), or the pod's IAM role; `crowecode-cloud status` shows which source is used".into(),
                ),
                ProviderErrorKind::PermissionDenied => Some(format!(
                    "the credentials lack permission for s3:{op} on this bucket; downloads need s3:GetObject and s3:ListBucket, uploads also s3:PutObject and s3:AbortMultipartUpload"
                )),
                ProviderErrorKind::BucketNotFound => {
                    Some("check the bucket name and region, or create it with `crowecode-cloud setup --create-bucket ...`".into())
                }
                _ if code.is_empty() && status.is_some_and(|s| (200..300).contains(&s)) => Some(NOT_S3_HINT.into()),
                _ if matches!(status, Some(301 | 307 | 400)) && (code.is_empty() || code == "PermanentRedirect") => Some(
                    "S3 answers like this when the bucket is in another region: check --region (or the endpoint)".into(),
                ),
                _ => None,
            };
            if code.is_empty() && status.is_some_and(|s| (200..300).contains(&s)) {
                e.message = format!(
                    "{op} {target}: the endpoint answered HTTP {} with a body that is not an S3 answer",
                    status.unwrap_or(200)
                );
            }
            e.with_source(err)
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            ProviderError::new(ProviderErrorKind::Transport, format!("{op} {target}: {}", error_chain(&err)))
                .with_source(err)
        }
        SdkError::DispatchFailure(d) => {
            let text = error_chain(&err);
            if d.is_user() || text.contains("credentials") || text.contains("Credentials") {
                ProviderError::new(ProviderErrorKind::Unauthenticated, format!("{op} {target}: no usable AWS credentials ({text})"))
                    .with_hint("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run where an IAM role is available (IRSA, ECS, EC2)")
                    .with_source(err)
            } else {
                ProviderError::new(ProviderErrorKind::Transport, format!("{op} {target}: cannot reach S3 ({text})"))
                    .with_hint(
                        "check the endpoint, proxy and network; the command retries with backoff before giving up",
                    )
                    .with_source(err)
            }
        }
        _ => {
            let text = error_chain(&err);
            let kind = if text.contains("credentials") {
                ProviderErrorKind::Unauthenticated
            } else {
                ProviderErrorKind::Other
            };
            let mut e = ProviderError::new(kind, format!("{op} {target}: {text}"));
            if kind == ProviderErrorKind::Unauthenticated {
                e.hint = Some(
                    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run where an IAM role is available"
                        .into(),
                );
            }
            e.with_source(err)
        }
    }
}

fn body_stream(body: SdkStream, key: String) -> ByteStream {
    Box::pin(stream::try_unfold((body, key), |(mut body, key)| async move {
        match body.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some((bytes, (body, key)))),
            Some(Err(e)) => {
                Err(ProviderError::new(ProviderErrorKind::Transport, format!("GET {key}: {}", error_chain(&e)))
                    .with_source(e))
            }
        }
    }))
}

/// Parses the start of `bytes START-END/TOTAL`.
fn content_range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

#[async_trait]
impl Provider for S3Provider {
    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err("HeadObject", key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(str::to_string),
            last_modified: out.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        })
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        // `encoding-type=url`: a key with a character XML 1.0 cannot carry (a control character)
        // would otherwise make the whole listing unparseable.
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("ListObjectsV2", &self.bucket, e))?;
            // A server that ignores the request answers with plain keys, and says so by omission.
            let encoded = page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let key = if encoded {
                    match url_decode(key) {
                        Some(k) => k,
                        None => {
                            tracing::warn!("skipping a listed key that is not valid URL encoding: {key:?}");
                            continue;
                        }
                    }
                } else {
                    key.to_string()
                };
                out.push(ObjectMeta {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                    last_modified: o.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        let header = range.http_header();
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(header.clone())
            .send()
            .await
            .map_err(|e| map_err("GetObject", key, e))?;
        // Some servers answer a ranged GET with 200 and a correct Content-Range (rclone does);
        // that is fine. A server that ignored the range entirely is not.
        let start = match &range {
            GetRange::All => 0,
            GetRange::From(s) => *s,
            GetRange::Bounded(r) => r.start,
        };
        if start > 0 {
            match out.content_range().and_then(content_range_start) {
                Some(s) if s == start => {}
                other => {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Other,
                        format!("GetObject {key}: asked for bytes from {start}, the server answered from {other:?}"),
                    )
                    .with_hint("the S3-compatible server does not support ranged reads"));
                }
            }
        }
        Ok(body_stream(out.body, key.to_string()))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        let out = self.put_request(key, SdkStream::from(data), mode).send().await;
        require_etag("PutObject", key, out.map_err(|e| map_err("PutObject", key, e))?.e_tag()).map(Some)
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        // Over plain HTTP the payload is signed, as a part's is: its sha256 comes from a first read
        // of the body (hashing only, no copy held), before the second read sends it. Over TLS the
        // transport protects it, and on AWS the SDK's CRC32 trailer lets S3 check it.
        let payload_sha256 = match self.sign_payload {
            true => Some(stream_sha256(&body).await?),
            false => None,
        };
        let sdk_body =
            SdkStream::from_body_1_x(SizedBody { stream: std::sync::Mutex::new(body.open()), left: body.len() });
        let req = self.put_request(key, sdk_body, mode).content_length(body.len() as i64);
        let sent = match payload_sha256 {
            Some(sha) => req.customize().interceptor(PrecomputedPayload(sha)).send().await,
            None => req.send().await,
        };
        let out = sent.map_err(|e| map_err("PutObject", key, e))?;
        require_etag("PutObject", key, out.e_tag()).map(Some)
    }

    async fn copy_within_service(&self, source: &super::CopySource, key: &str) -> PResult<bool> {
        // `x-amz-copy-source` is `bucket/key`, the key URL-encoded (but for its slashes).
        let source = format!("{}/{}", source.bucket, super::percent_encode(&source.key).replace("%2F", "/"));
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(source)
            .content_type("application/octet-stream")
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| map_err("CopyObject", key, e))?;
        Ok(true)
    }

    async fn create_multipart(&self, key: &str, _part_size: u64) -> PResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| map_err("CreateMultipartUpload", key, e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            ProviderError::new(
                ProviderErrorKind::Other,
                format!("CreateMultipartUpload {key}: no upload id in the answer"),
            )
        })
    }

    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .body(SdkStream::from(data));
        let sent =
            if self.sign_payload { req.send().await } else { req.customize().disable_payload_signing().send().await };
        let out = sent.map_err(|e| map_err("UploadPart", key, e))?;
        let tag = out.e_tag().ok_or_else(|| {
            ProviderError::new(ProviderErrorKind::Other, format!("UploadPart {key} #{number}: no ETag in the answer"))
        })?;
        Ok(PartTag { number, tag: tag.to_string() })
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()> {
        let parts: Vec<CompletedPart> = parts
            .into_iter()
            .map(|p| CompletedPart::builder().part_number(p.number as i32).e_tag(p.tag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| map_err("CompleteMultipartUpload", key, e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> PResult<()> {
        match self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_err("AbortMultipartUpload", key, e);
                if e.kind == ProviderErrorKind::NotFound { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn list_pending_uploads(&self, prefix: &str) -> PResult<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| map_err("ListMultipartUploads", &self.bucket, e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(PendingUpload {
                        key: key.to_string(),
                        upload_id: id.to_string(),
                        initiated: u.initiated().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_err("DeleteObject", key, e);
                if e.kind == ProviderErrorKind::NotFound { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn check_bucket(&self) -> PResult<()> {
        // A one-key listing rather than HeadBucket: HEAD answers carry no error code, so a wrong
        // secret and a missing permission would look alike. Listing is what reads need anyway.
        let request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .encoding_type(aws_sdk_s3::types::EncodingType::Url);
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut e = map_err("ListObjectsV2", &self.bucket, e);
                if e.kind == ProviderErrorKind::BucketNotFound || (e.kind == ProviderErrorKind::NotFound) {
                    e.kind = ProviderErrorKind::BucketNotFound;
                    e.message = format!("bucket {} does not exist (region {})", self.bucket, self.region);
                }
                Err(e)
            }
        }
    }

    async fn create_bucket(&self) -> PResult<bool> {
        if self.check_bucket().await.is_ok() {
            return Ok(false);
        }
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("").to_string();
                if code == "BucketAlreadyOwnedByYou" {
                    Ok(false)
                } else {
                    Err(map_err("CreateBucket", &self.bucket, e))
                }
            }
        }
    }

    async fn data_url(&self, key: &str, valid_for: std::time::Duration) -> PResult<Option<super::DataUrl>> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(valid_for)
            .map_err(|e| ProviderError::new(ProviderErrorKind::Other, format!("cannot presign {key}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| map_err("presign GET", key, e))?;
        Ok(Some(super::DataUrl {
            url: request.uri().to_string(),
            headers: request.headers().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            // Dragonfly filters these by default; a cache keyed without the query needs none.
            volatile_params: Vec::new(),
        }))
    }

    async fn credential_source(&self) -> String {
        use aws_credential_types::provider::ProvideCredentials as _;
        let Some(provider) = self.sdk_config.credentials_provider() else {
            return "none (no credential chain)".into();
        };
        match provider.provide_credentials().await {
            Ok(creds) => {
                // The provider name is only exposed through Debug, which redacts the secret.
                let debug = format!("{creds:?}");
                let name =
                    debug.split("provider_name: \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("unknown");
                let friendly = match name {
                    "EnvironmentVariable" => "environment variables (AWS_ACCESS_KEY_ID)".to_string(),
                    "ProfileFile" => {
                        format!("profile {}", std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()))
                    }
                    "WebIdentityToken" => "web identity token (IRSA / OIDC)".to_string(),
                    "ECSContainer" | "EcsContainer" => "container credentials (ECS / EKS Pod Identity)".to_string(),
                    "IMDSv2" | "Ec2InstanceMetadata" => "instance metadata (EC2 role)".to_string(),
                    other => other.to_string(),
                };
                format!("{friendly}, access key {}", mask(creds.access_key_id()))
            }
            Err(e) => format!("none found ({})", error_chain(&e)),
        }
    }
}

/// `AKIA…WXYZ`: enough to tell keys apart, not enough to use one.
fn mask(key: &str) -> String {
    if key.len() <= 8 {
        return "****".into();
    }
    format!("{}…{}", &key[..4], &key[key.len() - 4..])
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
