//! Google Cloud Storage, on `gcloud-storage` (JSON API).
//!
//! Credentials: `GOOGLE_APPLICATION_CREDENTIALS` (a service account or an external account for
//! workload identity federation), application default credentials, or the metadata server (GKE
//! workload identity, GCE). An emulator endpoint (config `endpoint`, or `STORAGE_EMULATOR_HOST`)
//! is used anonymously. Uploads are resumable sessions fed chunk by chunk in order (every chunk but
//! the last a multiple of 256 KiB), finalised by declaring the total size.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::buckets::insert::{BucketCreationConfig, InsertBucketParam, InsertBucketRequest};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::rewrite::RewriteObjectRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, ResumableUploadClient, UploadStatus};

use super::error_chain;
use super::{
    ByteStream, GetRange, Limits, ObjectMeta, PResult, PartTag, Provider, ProviderError, ProviderErrorKind, PutMode,
};
use crate::config::CloudConfig;
use crate::error::{Error, Result};

/// GCS requires every chunk but the last to be a multiple of this.
const CHUNK_ALIGN: u64 = 256 << 10;

struct Session {
    client: ResumableUploadClient,
    part_size: u64,
    next: u32,
}

/// A GCS bucket.
pub struct GcsProvider {
    client: Client,
    bucket: String,
    project: Option<String>,
    kms_key: Option<String>,
    credentials: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// The emulator's endpoint, when used anonymously: its media URLs need no signature.
    anonymous_endpoint: Option<String>,
}

impl fmt::Debug for GcsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsProvider")
            .field("bucket", &self.bucket)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

fn auth_error(message: String) -> Error {
    Error::Access {
        message,
        hint: Some(
            "GOOGLE_APPLICATION_CREDENTIALS must name a service-account or external-account JSON key file; or run `gcloud auth application-default login`; on GKE bind a workload identity".into(),
        ),
        source: None,
    }
}

impl GcsProvider {
    /// Builds a client for the bucket `cfg` names.
    pub async fn new(cfg: &CloudConfig) -> Result<Self> {
        let emulator =
            cfg.endpoint.clone().or_else(|| std::env::var("STORAGE_EMULATOR_HOST").ok().filter(|s| !s.is_empty()));
        let anonymous_endpoint = emulator
            .as_ref()
            .map(|e| if e.starts_with("http") { e.clone() } else { format!("http://{e}") })
            .map(|e| e.trim_end_matches('/').to_string());
        let (config, credentials) = match emulator {
            Some(endpoint) => {
                let endpoint = if endpoint.starts_with("http") { endpoint } else { format!("http://{endpoint}") };
                let config = ClientConfig {
                    storage_endpoint: endpoint.trim_end_matches('/').to_string(),
                    ..ClientConfig::default()
                }
                .anonymous();
                (config, "anonymous (emulator endpoint)".to_string())
            }
            None => {
                let source = describe_google_credentials()?;
                let config = ClientConfig::default()
                    .with_auth()
                    .await
                    .map_err(|e| auth_error(format!("cannot load Google credentials ({source}): {e}")))?;
                (config, source)
            }
        };
        let project = cfg.project.clone().or_else(|| config.project_id.clone());
        Ok(Self {
            client: Client::new(config),
            bucket: cfg.bucket.clone(),
            project,
            kms_key: cfg.kms_key.clone(),
            credentials,
            sessions: Mutex::new(HashMap::new()),
            anonymous_endpoint,
        })
    }

    /// One object written in a multipart (metadata + media) insert: preconditions hold for it
    /// everywhere, also on emulators that ignore them on plain media uploads.
    async fn insert(&self, key: &str, data: impl Into<reqwest::Body>, mode: &PutMode) -> PResult<Object> {
        let req = self.upload_request(mode)?;
        let object = Object {
            name: key.to_string(),
            content_type: Some("application/octet-stream".into()),
            ..Default::default()
        };
        self.client
            .upload_object(&req, data, &UploadType::Multipart(Box::new(object)))
            .await
            .map_err(|e| bucket_level(map_err("objects.insert", key, e)))
    }

    fn upload_request(&self, mode: &PutMode) -> PResult<UploadObjectRequest> {
        let if_generation_match = match mode {
            PutMode::Overwrite => None,
            PutMode::Create => Some(0),
            PutMode::IfMatch(generation) => Some(generation.parse::<i64>().map_err(|_| {
                ProviderError::new(ProviderErrorKind::Precondition, format!("not a GCS generation: {generation}"))
            })?),
        };
        Ok(UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match,
            kms_key_name: self.kms_key.clone(),
            ..Default::default()
        })
    }
}

/// Names the credential source the default chain will use, and checks a key file named by
/// `GOOGLE_APPLICATION_CREDENTIALS` before any network use, so a broken file fails fast and clearly.
fn describe_google_credentials() -> Result<String> {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        let shown = std::path::Path::new(&path).display().to_string();
        let text = std::fs::read(&path).map_err(|e| {
            auth_error(format!("GOOGLE_APPLICATION_CREDENTIALS={shown}: cannot read the key file: {e}"))
        })?;
        let kind = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .ok_or_else(|| {
                auth_error(format!(
                    "GOOGLE_APPLICATION_CREDENTIALS={shown}: not a Google credentials JSON file (no \"type\")"
                ))
            })?;
        let what = match kind.as_str() {
            "service_account" => "service account key",
            "external_account" => "external account (workload identity federation)",
            "authorized_user" => "user credentials",
            other => {
                return Err(auth_error(format!(
                    "GOOGLE_APPLICATION_CREDENTIALS={shown}: unsupported credential type {other:?}"
                )));
            }
        };
        return Ok(format!("{what} from GOOGLE_APPLICATION_CREDENTIALS ({shown})"));
    }
    let adc = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".config/gcloud/application_default_credentials.json"));
    if adc.is_some_and(|p| p.is_file()) {
        return Ok("application default credentials (gcloud auth application-default login)".into());
    }
    Ok("metadata server (GKE workload identity or the VM's service account)".into())
}

/// A 404 on a call that names no existing object (a listing, an insert, starting an upload)
/// can only mean that the bucket is missing.
fn bucket_level(mut e: ProviderError) -> ProviderError {
    if e.kind == ProviderErrorKind::NotFound {
        e.kind = ProviderErrorKind::BucketNotFound;
        e.hint = Some("check the bucket name, or create it with `crowecode-cloud setup --create-bucket ...`".into());
    }
    e
}

fn map_err(op: &str, target: &str, err: GcsError) -> ProviderError {
    match &err {
        GcsError::Response(r) => {
            let reason = r.errors.first().map(|e| e.reason.as_str()).unwrap_or("");
            let kind = match r.code {
                401 => ProviderErrorKind::Unauthenticated,
                403 => ProviderErrorKind::PermissionDenied,
                404 if reason == "notFound" && r.message.to_ascii_lowercase().contains("bucket") => ProviderErrorKind::BucketNotFound,
                404 => ProviderErrorKind::NotFound,
                409 | 412 => ProviderErrorKind::Precondition,
                408 | 429 => ProviderErrorKind::RateLimited,
                500..=599 => ProviderErrorKind::Transport,
                _ => ProviderErrorKind::Other,
            };
            let mut e = ProviderError::new(kind, format!("{op} {target}: HTTP {} {}", r.code, r.message));
            e.hint = match kind {
                ProviderErrorKind::Unauthenticated => Some("Google rejected the credentials; `crowecode-cloud status` shows which source is used".into()),
                ProviderErrorKind::PermissionDenied => Some(format!(
                    "the account lacks a storage permission for {op} ({}); downloads need storage.objects.get and storage.objects.list, uploads also storage.objects.create and storage.objects.delete",
                    r.message
                )),
                _ => None,
            };
            e.with_source(err)
        }
        GcsError::HttpClient(e) if e.status().is_some() => {
            // Streamed downloads report an error status without parsing the body.
            let code = e.status().map_or(0, |s| s.as_u16());
            let kind = match code {
                401 => ProviderErrorKind::Unauthenticated,
                403 => ProviderErrorKind::PermissionDenied,
                404 => ProviderErrorKind::NotFound,
                409 | 412 => ProviderErrorKind::Precondition,
                408 | 429 => ProviderErrorKind::RateLimited,
                500..=599 => ProviderErrorKind::Transport,
                _ => ProviderErrorKind::Other,
            };
            ProviderError::new(kind, format!("{op} {target}: HTTP {code}")).with_source(err)
        }
        GcsError::HttpClient(_) | GcsError::HttpMiddleware(_) | GcsError::RawResponse(..) => {
            ProviderError::new(ProviderErrorKind::Transport, format!("{op} {target}: {}", error_chain(&err)))
                .with_hint("check the network path to storage.googleapis.com (or the endpoint); the command retries before giving up")
                .with_source(err)
        }
        GcsError::TokenSource(_) => ProviderError::new(ProviderErrorKind::Unauthenticated, format!("{op} {target}: {}", error_chain(&err)))
            .with_hint("no usable Google credentials: set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or run with a workload identity")
            .with_source(err),
        GcsError::InvalidRangeHeader(_) => ProviderError::new(ProviderErrorKind::Other, format!("{op} {target}: {err}")).with_source(err),
    }
}

fn meta(o: &Object) -> ObjectMeta {
    ObjectMeta {
        key: o.name.clone(),
        size: o.size.max(0) as u64,
        // The generation is what conditional writes compare (ifGenerationMatch).
        etag: Some(o.generation.to_string()),
        last_modified: o.updated.map(std::time::SystemTime::from),
    }
}

#[async_trait]
impl Provider for GcsProvider {
    fn describe(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    fn limits(&self) -> Limits {
        Limits {
            min_part_size: CHUNK_ALIGN,
            max_part_size: 5 << 30,
            max_parts: 10_000,
            part_alignment: CHUNK_ALIGN,
            concurrent_parts: false,
            max_reads_in_flight: None,
        }
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        let req = GetObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() };
        self.client.get_object(&req).await.map(|o| meta(&o)).map_err(|e| map_err("objects.get", key, e))
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut page_token = None;
        loop {
            let req = ListObjectsRequest {
                bucket: self.bucket.clone(),
                prefix: Some(prefix.to_string()),
                page_token,
                ..Default::default()
            };
            let page = self
                .client
                .list_objects(&req)
                .await
                .map_err(|e| bucket_level(map_err("objects.list", &self.bucket, e)))?;
            out.extend(page.items.unwrap_or_default().iter().map(meta));
            page_token = page.next_page_token.filter(|t| !t.is_empty());
            if page_token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        let req = GetObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() };
        let range = match range {
            GetRange::All => Range::default(),
            GetRange::From(s) => Range(Some(s), None),
            GetRange::Bounded(r) => Range(Some(r.start), Some(r.end.saturating_sub(1))),
        };
        match self.client.download_streamed_object(&req, &range).await {
            Ok(stream) => {
                let key = key.to_string();
                Ok(stream.map_err(move |e| map_err("objects.get", &key, e)).boxed())
            }
            Err(e) => {
                let e = map_err("objects.get", key, e);
                // A 404 says nothing of whether the object or the whole bucket is missing.
                if e.kind == ProviderErrorKind::NotFound
                    && let Err(b) = self.check_bucket().await
                    && b.kind == ProviderErrorKind::BucketNotFound
                {
                    return Err(b);
                }
                Err(e)
            }
        }
    }

    async fn copy_within_service(&self, source: &super::CopySource, key: &str) -> PResult<bool> {
        // objects.rewrite: done in one call within a location and storage class, else in
        // several, each going on from the token the last returned.
        let mut req = RewriteObjectRequest {
            destination_bucket: self.bucket.clone(),
            destination_object: key.to_string(),
            source_bucket: source.bucket.clone(),
            source_object: source.key.clone(),
            destination_kms_key_name: self.kms_key.clone(),
            ..Default::default()
        };
        for _ in 0..10_000 {
            let out = self.client.rewrite_object(&req).await.map_err(|e| map_err("objects.rewrite", key, e))?;
            if out.done {
                return Ok(true);
            }
            req.rewrite_token = out.rewrite_token;
        }
        Err(ProviderError::new(ProviderErrorKind::Other, format!("objects.rewrite {key}: not done after 10000 calls")))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        let o = self.insert(key, data, &mode).await?;
        Ok(Some(o.generation.to_string()))
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        // The media part is sent as it is read (chunked): a body that fails midway never sends
        // the closing boundary, so no object is made of part of it.
        let o = self.insert(key, reqwest::Body::wrap_stream(body.open()), &mode).await?;
        if u64::try_from(o.size).ok() != Some(body.len()) {
            return Err(ProviderError::new(
                ProviderErrorKind::Other,
                format!("objects.insert {key}: {} bytes stored of a body of {}", o.size, body.len()),
            ));
        }
        Ok(Some(o.generation.to_string()))
    }

    async fn create_multipart(&self, key: &str, part_size: u64) -> PResult<String> {
        if !part_size.is_multiple_of(CHUNK_ALIGN) {
            return Err(ProviderError::new(
                ProviderErrorKind::Other,
                format!("GCS chunks must be multiples of 256 KiB, not {part_size}"),
            ));
        }
        let req = self.upload_request(&PutMode::Overwrite)?;
        let mut media = Media::new(key.to_string());
        media.content_type = "application/octet-stream".into();
        let client = self
            .client
            .prepare_resumable_upload(&req, &UploadType::Simple(media))
            .await
            .map_err(|e| bucket_level(map_err("resumable upload", key, e)))?;
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.sessions.lock().expect("sessions lock").insert(id.clone(), Session { client, part_size, next: 1 });
        Ok(id)
    }

    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        let (client, part_size) = {
            let sessions = self.sessions.lock().expect("sessions lock");
            let s = sessions
                .get(upload_id)
                .ok_or_else(|| ProviderError::new(ProviderErrorKind::NotFound, "no such resumable upload"))?;
            if s.next != number {
                // A resumable session takes bytes strictly in order.
                return Err(ProviderError::new(
                    ProviderErrorKind::Other,
                    format!("GCS chunk {number} sent out of order (expected {})", s.next),
                ));
            }
            (s.client.clone(), s.part_size)
        };
        let first = u64::from(number - 1) * part_size;
        let len = data.len() as u64;
        if len == 0 || len > part_size {
            return Err(ProviderError::new(
                ProviderErrorKind::Other,
                format!("chunk {number} of {len} bytes does not fit the {part_size}-byte parts"),
            ));
        }
        let size = ChunkSize::new(first, first + len - 1, None);
        client.upload_multiple_chunk(data, &size).await.map_err(|e| map_err("resumable upload", key, e))?;
        if let Some(s) = self.sessions.lock().expect("sessions lock").get_mut(upload_id) {
            s.next = number + 1;
        }
        Ok(PartTag { number, tag: len.to_string() })
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<PartTag>) -> PResult<()> {
        let client = {
            let sessions = self.sessions.lock().expect("sessions lock");
            sessions
                .get(upload_id)
                .map(|s| s.client.clone())
                .ok_or_else(|| ProviderError::new(ProviderErrorKind::NotFound, "no such resumable upload"))?
        };
        let total: u64 = parts.iter().map(|p| p.tag.parse::<u64>().unwrap_or(0)).sum();
        // Declaring the total size finalises the object.
        match client.status(Some(total)).await.map_err(|e| map_err("resumable upload", key, e))? {
            UploadStatus::Ok(o) if o.size.max(0) as u64 == total => {
                self.sessions.lock().expect("sessions lock").remove(upload_id);
                Ok(())
            }
            UploadStatus::Ok(o) => Err(ProviderError::new(
                ProviderErrorKind::Other,
                format!("{key}: finalised with {} bytes, expected {total}", o.size),
            )),
            _ => Err(ProviderError::new(ProviderErrorKind::Transport, format!("{key}: the upload did not finalise"))),
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> PResult<()> {
        let session = self.sessions.lock().expect("sessions lock").remove(upload_id);
        match session {
            Some(s) => s
                .client
                .cancel()
                .await
                .map_err(|e| map_err("cancel upload", key, e))
                .or_else(|e| if e.is_not_found() || e.kind == ProviderErrorKind::Other { Ok(()) } else { Err(e) }),
            None => Ok(()),
        }
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        let req = DeleteObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() };
        match self.client.delete_object(&req).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = map_err("objects.delete", key, e);
                if e.kind == ProviderErrorKind::NotFound { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn check_bucket(&self) -> PResult<()> {
        let req = GetBucketRequest { bucket: self.bucket.clone(), ..Default::default() };
        match self.client.get_bucket(&req).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut e = map_err("buckets.get", &self.bucket, e);
                if e.kind == ProviderErrorKind::NotFound {
                    e.kind = ProviderErrorKind::BucketNotFound;
                    e.message = format!("bucket {} does not exist", self.bucket);
                }
                Err(e)
            }
        }
    }

    async fn create_bucket(&self) -> PResult<bool> {
        if self.check_bucket().await.is_ok() {
            return Ok(false);
        }
        let project = self.project.clone().ok_or_else(|| {
            ProviderError::new(ProviderErrorKind::Other, "creating a GCS bucket needs a project")
                .with_hint("pass --project ID to setup")
        })?;
        let req = InsertBucketRequest {
            name: self.bucket.clone(),
            param: InsertBucketParam { project, ..Default::default() },
            bucket: BucketCreationConfig::default(),
        };
        match self.client.insert_bucket(&req).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = map_err("buckets.insert", &self.bucket, e);
                if e.kind == ProviderErrorKind::Precondition { Ok(false) } else { Err(e) }
            }
        }
    }

    async fn data_url(&self, key: &str, valid_for: std::time::Duration) -> PResult<Option<super::DataUrl>> {
        let enc = crate::provider::percent_encode;
        if let Some(endpoint) = &self.anonymous_endpoint {
            return Ok(Some(super::DataUrl {
                url: format!("{endpoint}/download/storage/v1/b/{}/o/{}?alt=media", enc(&self.bucket), enc(key)),
                headers: Vec::new(),
                volatile_params: Vec::new(),
            }));
        }
        let opts = gcloud_storage::sign::SignedURLOptions { expires: valid_for, ..Default::default() };
        match self.client.signed_url(&self.bucket, key, None, None, opts).await {
            Ok(url) => Ok(Some(super::DataUrl { url, headers: Vec::new(), volatile_params: Vec::new() })),
            // A credential that cannot sign (workload identity without signBlob, user credentials).
            Err(e) => {
                tracing::debug!("cannot make a V4 signed URL for {key}: {e}");
                Ok(None)
            }
        }
    }

    async fn credential_source(&self) -> String {
        self.credentials.clone()
    }
}
