//! Azure Blob Storage, on the official `azure_storage_blob` crate.
//!
//! Credentials, first found wins:
//! 1. `AZURE_STORAGE_CONNECTION_STRING` (account key or SAS inside it; what existing deployments set);
//! 2. `AZURE_STORAGE_KEY` with the account from config `account` or `AZURE_STORAGE_ACCOUNT`;
//! 3. `AZURE_STORAGE_SAS_TOKEN`;
//! 4. Entra ID: workload identity (`AZURE_FEDERATED_TOKEN_FILE`), managed identity
//!    (`IDENTITY_ENDPOINT`/`MSI_ENDPOINT`, else the instance metadata service when `az` is absent),
//!    or the Azure CLI's login.
//!
//! The crate takes only Entra ID tokens and SAS URLs, so account keys are used through
//! [`auth::SharedKeyPolicy`], a per-try pipeline policy that signs each request. Uploads stage
//! blocks (all block ids of a blob have the same length) and commit them with one block list.
//! Azure has no "abort": blocks never committed are discarded by the service after seven days.
//! The crate's own retries are off; the retry layer above retries every provider the same way.

pub mod auth;

use std::fmt;
use std::num::NonZero;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Body, ClientOptions, Etag, NoFormat, RequestContent, RetryOptions, Url};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders as _, BlobClientStartCopyFromUrlResultHeaders as _,
    BlobContainerClientCreateOptions, BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientStageBlockOptions, BlockBlobClientUploadOptions, BlockLookupList, CopyStatus, HttpRange,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use self::auth::{ConnectionString, SharedKey, SharedKeyPolicy};
use super::{
    ByteStream, GetRange, Limits, ObjectMeta, PResult, PartTag, Provider, ProviderError, ProviderErrorKind, PutMode,
};
use crate::config::CloudConfig;
use crate::error::{Error, Result};

/// One request reads at most this much; larger than any blob we write, so a "partitioned"
/// download is always a single streamed GET.
const ONE_PARTITION: usize = 1 << 45;

/// The largest blob one Put Blob writes (5000 MiB). Below it a write is one request: the crate
/// would otherwise cut anything over 4 MiB into blocks staged one after another, and commit them
/// in one more request (a 32 MiB pack cost nine).
const PUT_BLOB_MAX: u64 = 5000 << 20;

/// A [`super::StreamBody`] as the crate's seekable stream: read as the request is sent, read
/// again from its start on a reset. A clone starts from the start too.
struct BodyReader {
    body: super::StreamBody,
    stream: std::sync::Mutex<Option<super::ByteStream>>,
    pending: Bytes,
}

impl BodyReader {
    fn new(body: super::StreamBody) -> Self {
        Self { body, stream: std::sync::Mutex::new(None), pending: Bytes::new() }
    }
}

impl Clone for BodyReader {
    fn clone(&self) -> Self {
        Self::new(self.body.clone())
    }
}

impl fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyReader").field("len", &self.body.len()).finish_non_exhaustive()
    }
}

impl futures::io::AsyncRead for BodyReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = buf.len().min(this.pending.len());
                buf[..n].copy_from_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(n));
            }
            let body = &this.body;
            let slot = this.stream.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            let stream = slot.get_or_insert_with(|| body.open());
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.pending = bytes,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[async_trait]
impl azure_core::stream::SeekableStream for BodyReader {
    async fn reset(&mut self) -> azure_core::Result<()> {
        *self = Self::new(self.body.clone());
        Ok(())
    }

    fn len(&self) -> Option<u64> {
        Some(self.body.len())
    }
}

/// An Azure Blob container.
pub struct AzureProvider {
    container: BlobContainerClient,
    name: String,
    /// The config's prefix: `status` checks access with a listing under it.
    prefix: String,
    encryption_scope: Option<String>,
    credentials: String,
    /// The container's URL (no query) and how to authorise plain reads of its blobs.
    data: (Url, DataAuth),
}

/// How [`Provider::data_url`] authorises a blob URL.
enum DataAuth {
    /// A service SAS for the one blob, made with the account key.
    Key(SharedKey),
    /// The credentials are a SAS: it is never handed to a mirror (it may allow writes and
    /// deletes, for weeks, and a cache logs the URLs it is sent), so reads go to the bucket.
    Sas,
    /// Entra ID: a token would have to go in a header on every read; reads go direct.
    None,
}

/// SAS query parameters: they differ per signer and expiry, so a shared cache ignores them.
const SAS_PARAMS: &[&str] = &[
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "sip", "si", "ses", "skoid", "sktid", "skt", "ske", "sks",
    "skv", "saoid", "suoid", "scid", "sdd",
];

impl fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a SAS: show only the container and the credential source.
        f.debug_struct("AzureProvider")
            .field("container", &self.name)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

enum Auth {
    SharedKey(SharedKey),
    Sas(String),
    Entra(Arc<dyn TokenCredential>),
}

/// Reads one environment variable (tests pass their own).
pub type EnvFn<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

fn access(message: impl Into<String>, hint: &str) -> Error {
    Error::Access { message: message.into(), hint: Some(hint.to_string()), source: None }
}

const CRED_HINT: &str = "set AZURE_STORAGE_CONNECTION_STRING (portal: Storage account > Access keys), or AZURE_STORAGE_KEY with `account` in the config, or AZURE_STORAGE_SAS_TOKEN; on AKS use workload identity";

impl AzureProvider {
    /// One Put Blob of `content` under `mode` (`If-None-Match: *` for create-only, `If-Match`).
    async fn put_blob(&self, key: &str, content: Body, mode: PutMode) -> PResult<Option<String>> {
        let (if_none_match, if_match) = match mode {
            PutMode::Overwrite => (None, None),
            PutMode::Create => (Some(Etag::from("*")), None),
            PutMode::IfMatch(etag) => (None, Some(Etag::from(etag))),
        };
        let options = BlockBlobClientUploadOptions {
            if_none_match,
            if_match,
            encryption_scope: self.encryption_scope.clone(),
            blob_content_type: Some("application/octet-stream".into()),
            parallel: NonZero::new(1),
            partition_size: NonZero::new(PUT_BLOB_MAX),
            ..Default::default()
        };
        let content: RequestContent<Bytes, NoFormat> = content.into();
        let rsp = self
            .blob(key)
            .block_blob_client()
            .upload(content, Some(options))
            .await
            .map_err(|e| map_err("put", key, e))?;
        Ok(rsp.etag.map(|e| e.to_string()))
    }

    /// Builds a client for the container `cfg` names, with credentials from the environment.
    pub async fn new(cfg: &CloudConfig) -> Result<Self> {
        Self::with_env(cfg, &|name| std::env::var(name).ok())
    }

    /// Like [`AzureProvider::new`], reading the environment through `env`.
    pub fn with_env(cfg: &CloudConfig, env: EnvFn<'_>) -> Result<Self> {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let account = cfg.account.clone().or_else(|| env("AZURE_STORAGE_ACCOUNT"));
        let (auth, mut endpoint, credentials) = if let Some(text) = env("AZURE_STORAGE_CONNECTION_STRING") {
            let cs = ConnectionString::parse(&text)
                .map_err(|e| access(format!("AZURE_STORAGE_CONNECTION_STRING is malformed: {e}"), CRED_HINT))?;
            let endpoint = cs.endpoint();
            match (&cs.key, &cs.sas) {
                (Some(key), _) => {
                    let name = cs.account.clone().unwrap_or_default();
                    let key = SharedKey::new(&name, key).map_err(|e| access(e, CRED_HINT))?;
                    (Auth::SharedKey(key), endpoint, "connection string (AZURE_STORAGE_CONNECTION_STRING), account key")
                }
                (None, Some(sas)) => {
                    (Auth::Sas(sas.clone()), endpoint, "connection string (AZURE_STORAGE_CONNECTION_STRING), SAS")
                }
                (None, None) => unreachable!("ConnectionString::parse requires a key or a SAS"),
            }
        } else if let Some(key) = env("AZURE_STORAGE_KEY") {
            let name = account.clone().ok_or_else(|| {
                Error::config(
                    "account",
                    "AZURE_STORAGE_KEY is set but the storage account is not known",
                    "add \"account\" to the config (`crowecode-cloud setup --account NAME`) or set AZURE_STORAGE_ACCOUNT",
                )
            })?;
            let key = SharedKey::new(&name, &key).map_err(|e| access(e, CRED_HINT))?;
            (Auth::SharedKey(key), None, "account key (AZURE_STORAGE_KEY)")
        } else if let Some(sas) = env("AZURE_STORAGE_SAS_TOKEN") {
            (Auth::Sas(sas.trim_start_matches('?').to_string()), None, "SAS token (AZURE_STORAGE_SAS_TOKEN)")
        } else {
            let (credential, source) = entra_credential(&env)?;
            (Auth::Entra(credential), None, source)
        };
        if let Some(e) = &cfg.endpoint {
            endpoint = Some(e.trim_end_matches('/').to_string());
        }
        let endpoint = match (endpoint, &account) {
            (Some(e), _) => e,
            (None, Some(a)) => format!("https://{a}.blob.core.windows.net"),
            (None, None) => {
                return Err(Error::config(
                    "account",
                    "the Azure storage account is not known",
                    "add \"account\" to the config (`crowecode-cloud setup --provider azure --account NAME --bucket CONTAINER`), or set AZURE_STORAGE_ACCOUNT or a connection string",
                ));
            }
        };
        let mut url: Url = format!("{endpoint}/{}", cfg.bucket).parse().map_err(|e| {
            Error::config(
                "endpoint",
                format!("not a valid Azure blob endpoint URL {endpoint:?}: {e}"),
                "use the form https://ACCOUNT.blob.core.windows.net",
            )
        })?;

        let mut client_options = ClientOptions { retry: RetryOptions::none(), ..Default::default() };
        let mut token = None;
        let data_auth = match &auth {
            Auth::SharedKey(key) => DataAuth::Key(key.clone()),
            Auth::Sas(_) => DataAuth::Sas,
            Auth::Entra(_) => DataAuth::None,
        };
        let container_url = url.clone();
        match auth {
            Auth::SharedKey(key) => client_options.per_try_policies.push(Arc::new(SharedKeyPolicy(key))),
            Auth::Sas(sas) => url.set_query(Some(&sas)),
            Auth::Entra(credential) => {
                if url.scheme() != "https" {
                    return Err(access(
                        format!("Entra ID credentials need an https endpoint, and {endpoint} is not"),
                        "use an account key or SAS with a plain-http endpoint (Azurite), or an https endpoint",
                    ));
                }
                token = Some(credential);
            }
        }
        let options = BlobContainerClientOptions { client_options, ..Default::default() };
        let container = BlobContainerClient::new(url, token, Some(options))
            .map_err(|e| Error::config("endpoint", redact(&e.to_string()), "check the endpoint and container names"))?;
        Ok(Self {
            container,
            name: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            encryption_scope: cfg.encryption_scope.clone(),
            credentials: credentials.to_string(),
            data: (container_url, data_auth),
        })
    }

    fn blob(&self, key: &str) -> azure_storage_blob::BlobClient {
        self.container.blob_client(key)
    }
}

/// Picks the Entra ID credential the environment sets up, without any network call.
fn entra_credential(env: &dyn Fn(&str) -> Option<String>) -> Result<(Arc<dyn TokenCredential>, &'static str)> {
    let failed = |what: &str, e: azure_core::Error| {
        access(format!("cannot set up {what}: {}", redact(&e.to_string())), CRED_HINT)
    };
    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let c = azure_identity::WorkloadIdentityCredential::new(None).map_err(|e| failed("workload identity", e))?;
        return Ok((c, "Entra ID workload identity (AZURE_FEDERATED_TOKEN_FILE)"));
    }
    let az_on_path = env("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("az").is_file()));
    if env("IDENTITY_ENDPOINT").is_none() && env("MSI_ENDPOINT").is_none() && az_on_path {
        let c = azure_identity::AzureCliCredential::new(None).map_err(|e| failed("the Azure CLI credential", e))?;
        return Ok((c, "Entra ID via the Azure CLI (az login)"));
    }
    let c = azure_identity::ManagedIdentityCredential::new(None).map_err(|e| failed("managed identity", e))?;
    Ok((c, "Entra ID managed identity"))
}

/// Removes SAS signatures from text that may quote a URL.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';' | b' ');
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        if boundary {
            out.push_str("REDACTED");
            let end = rest
                .find(|c: char| c == '&' || c == ';' || c.is_whitespace() || c == ')' || c == '"')
                .unwrap_or(rest.len());
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

fn map_err(op: &str, target: &str, err: azure_core::Error) -> ProviderError {
    // The service's error code, when it gave one.
    // A bare number (some servers repeat the status there) is no code.
    let code = match err.kind() {
        ErrorKind::HttpResponse { error_code, .. } => {
            error_code.as_deref().filter(|c| !c.chars().all(|ch| ch.is_ascii_digit())).unwrap_or("")
        }
        _ => "",
    };
    let (kind, message) = match err.kind() {
        ErrorKind::HttpResponse { status, .. } => {
            let status = u16::from(*status);
            let kind = match (status, code) {
                (_, "AuthenticationFailed" | "NoAuthenticationInformation" | "InvalidAuthenticationInfo") => {
                    ProviderErrorKind::Unauthenticated
                }
                (401, _) => ProviderErrorKind::Unauthenticated,
                (
                    _,
                    "AuthorizationFailure" | "AuthorizationPermissionMismatch" | "AuthorizationResourceTypeMismatch",
                ) => ProviderErrorKind::PermissionDenied,
                (403, _) => ProviderErrorKind::PermissionDenied,
                (_, "ContainerNotFound") => ProviderErrorKind::BucketNotFound,
                (404, _) => ProviderErrorKind::NotFound,
                (_, "BlobAlreadyExists" | "ConditionNotMet" | "TargetConditionNotMet") | (409 | 412, _) => {
                    ProviderErrorKind::Precondition
                }
                (_, "ServerBusy") | (429, _) => ProviderErrorKind::RateLimited,
                (500..=599, _) | (408, _) => ProviderErrorKind::Transport,
                _ => ProviderErrorKind::Other,
            };
            let message = if (200..300).contains(&status) {
                format!(
                    "{op} {target}: the endpoint answered HTTP {status} with something that is not an Azure Blob answer"
                )
            } else {
                format!("{op} {target}: HTTP {status} {}", if code.is_empty() { "(no error code)" } else { code })
            };
            (kind, message)
        }
        ErrorKind::Connection | ErrorKind::Io => {
            (ProviderErrorKind::Transport, format!("{op} {target}: {}", redact(&super::error_chain(&err))))
        }
        ErrorKind::Credential => {
            (ProviderErrorKind::Unauthenticated, format!("{op} {target}: {}", redact(&super::error_chain(&err))))
        }
        _ => (ProviderErrorKind::Other, format!("{op} {target}: {}", redact(&super::error_chain(&err)))),
    };
    let mut e = ProviderError::new(kind, message);
    e.hint = match (kind, code) {
        _ if matches!(err.kind(), ErrorKind::Credential) => Some(CRED_HINT.into()),
        // Azurite answers a bad signature with this code too, so it may be the key.
        (_, "AuthorizationFailure") => Some(format!(
            "Azure refused to {op}: an account key may be wrong or rotated; a SAS may have expired or lack a permission (r,l to download; r,l,w,c to upload); an Entra identity needs Storage Blob Data Reader (download) or Contributor (upload)"
        )),
        (ProviderErrorKind::Unauthenticated, _) => {
            Some("Azure rejected the credentials (wrong or rotated key, expired SAS); `crowecode-cloud status` shows which source is used".into())
        }
        (ProviderErrorKind::PermissionDenied, _) => Some(format!(
            "the identity may not {op}: downloads need the Storage Blob Data Reader role, uploads Storage Blob Data Contributor (a SAS needs r,l or r,l,w,c)"
        )),
        (ProviderErrorKind::Transport, _) => {
            Some("check the network path to the blob endpoint; the command retries before giving up".into())
        }
        _ if matches!(err.kind(), ErrorKind::HttpResponse { status, .. } if (200..300).contains(&u16::from(*status))) => {
            Some("this endpoint does not speak Azure Blob (a captive portal, a web server or a wrong URL?): check --endpoint and any proxy in between".into())
        }
        _ => None,
    };
    // No source: the SDK's error text can quote a URL with a SAS in it.
    e
}

fn block_id(upload_id: &str, number: u32) -> String {
    // Same length for every block of a blob, as the service requires.
    B64.encode(format!("{upload_id}-{number:06}"))
}

fn to_system_time(t: Option<azure_core::time::OffsetDateTime>) -> Option<SystemTime> {
    t.map(SystemTime::from)
}

#[async_trait]
impl Provider for AzureProvider {
    fn describe(&self) -> String {
        format!("azure://{}", self.name)
    }

    fn limits(&self) -> Limits {
        Limits {
            min_part_size: 1 << 20,
            max_part_size: 4000 << 20,
            max_parts: 50_000,
            part_alignment: 1,
            concurrent_parts: true,
            max_reads_in_flight: None,
        }
    }

    async fn head(&self, key: &str) -> PResult<ObjectMeta> {
        let rsp = self.blob(key).get_properties(None).await.map_err(|e| map_err("head", key, e))?;
        let size = rsp.content_length().ok().flatten().unwrap_or(0);
        let etag = rsp.etag().ok().flatten().map(|e| e.to_string());
        let last_modified = to_system_time(rsp.last_modified().ok().flatten());
        Ok(ObjectMeta { key: key.to_string(), size, etag, last_modified })
    }

    async fn list(&self, prefix: &str) -> PResult<Vec<ObjectMeta>> {
        // No `prefix=` at all for the whole container: an empty value is a parameter that
        // servers canonicalise differently for SharedKey (Azurite rejects the signature).
        let prefix_param = (!prefix.is_empty()).then(|| prefix.to_string());
        let options = BlobContainerClientListBlobsOptions { prefix: prefix_param, ..Default::default() };
        let mut pager = self.container.list_blobs(Some(options)).map_err(|e| map_err("list", prefix, e))?;
        let mut out = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(|e| map_err("list", prefix, e))? {
            let Some(name) = item.name else { continue };
            let props = item.properties.unwrap_or_default();
            out.push(ObjectMeta {
                key: name,
                size: props.content_length.unwrap_or(0),
                etag: props.etag.map(|e| e.to_string()),
                last_modified: to_system_time(props.last_modified),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str, range: GetRange) -> PResult<ByteStream> {
        let range = match range {
            GetRange::All => None,
            GetRange::From(s) => Some(HttpRange::from(s..)),
            GetRange::Bounded(r) if r.is_empty() => return Ok(futures::stream::empty().boxed()),
            GetRange::Bounded(r) => Some(HttpRange::from(r)),
        };
        let options = BlobClientDownloadOptions {
            range,
            parallel: NonZero::new(1),
            partition_size: NonZero::new(ONE_PARTITION),
            ..Default::default()
        };
        let rsp = self.blob(key).download(Some(options)).await.map_err(|e| map_err("get", key, e))?;
        let key = key.to_string();
        Ok(rsp.body.map_err(move |e| map_err("read", &key, e)).boxed())
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> PResult<Option<String>> {
        self.put_blob(key, Body::Bytes(data), mode).await
    }

    async fn put_stream(&self, key: &str, body: super::StreamBody, mode: PutMode) -> PResult<Option<String>> {
        // Read as it is sent (with its Content-Length): a body that fails midway never gets its
        // last bytes to the service, which then stores nothing.
        self.put_blob(key, Body::SeekableStream(Box::new(BodyReader::new(body))), mode).await
    }

    async fn copy_within_service(&self, source: &super::CopySource, key: &str) -> PResult<bool> {
        // Copy Blob: the service reads the source itself, at a URL with a read SAS. Within an
        // account it is done at once; across accounts it goes on in the service, polled here.
        let Some(url) = &source.url else { return Ok(false) };
        let blob = self.blob(key);
        let rsp = blob.start_copy_from_url(url.clone(), None).await.map_err(|e| map_err("copy blob", key, e))?;
        let mut status = rsp.copy_status().ok().flatten();
        let started = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(100);
        while matches!(status, Some(CopyStatus::Pending)) {
            if started.elapsed() > std::time::Duration::from_secs(3600) {
                return Err(ProviderError::new(
                    ProviderErrorKind::Other,
                    format!("copy blob {key}: still pending after an hour"),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(5));
            let props = blob.get_properties(None).await.map_err(|e| map_err("copy blob", key, e))?;
            status = props.copy_status().ok().flatten();
        }
        match status {
            None | Some(CopyStatus::Success) => Ok(true),
            Some(other) => Err(ProviderError::new(ProviderErrorKind::Other, format!("copy blob {key}: {other:?}"))),
        }
    }

    async fn create_multipart(&self, _key: &str, _part_size: u64) -> PResult<String> {
        // Nothing to create on the service: blocks are staged against the blob name. The id
        // only keeps block ids of concurrent uploads to one name apart.
        Ok(format!("{:016x}", fastrand::u64(..)))
    }

    async fn put_part(&self, key: &str, upload_id: &str, number: u32, data: Bytes) -> PResult<PartTag> {
        let id = block_id(upload_id, number);
        let len = data.len() as u64;
        let options =
            BlockBlobClientStageBlockOptions { encryption_scope: self.encryption_scope.clone(), ..Default::default() };
        let content: RequestContent<Bytes, NoFormat> = Body::Bytes(data).into();
        self.blob(key)
            .block_blob_client()
            .stage_block(id.as_bytes(), len, content, Some(options))
            .await
            .map_err(|e| map_err("stage block of", key, e))?;
        Ok(PartTag { number, tag: id })
    }

    async fn complete_multipart(&self, key: &str, _upload_id: &str, mut parts: Vec<PartTag>) -> PResult<()> {
        parts.sort_by_key(|p| p.number);
        let list = BlockLookupList {
            latest: Some(parts.into_iter().map(|p| p.tag.into_bytes()).collect()),
            ..Default::default()
        };
        let content = RequestContent::try_from(list)
            .map_err(|e| ProviderError::new(ProviderErrorKind::Other, format!("commit {key}: {e}")))?;
        let options = BlockBlobClientCommitBlockListOptions {
            encryption_scope: self.encryption_scope.clone(),
            blob_content_type: Some("application/octet-stream".into()),
            ..Default::default()
        };
        self.blob(key)
            .block_blob_client()
            .commit_block_list(content, Some(options))
            .await
            .map_err(|e| map_err("commit block list of", key, e))?;
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, _upload_id: &str) -> PResult<()> {
        // Uncommitted blocks are invisible and expire on their own after seven days.
        Ok(())
    }

    async fn delete(&self, key: &str) -> PResult<()> {
        match self.blob(key).delete(None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err("delete", key, e) {
                e if e.kind == ProviderErrorKind::NotFound => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn check_bucket(&self) -> PResult<()> {
        // A one-blob listing under the prefix, as `list` does: a container (service) SAS
        // authorises List Blobs but not Get Container Properties.
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!self.prefix.is_empty()).then(|| self.prefix.clone()),
            maxresults: Some(1),
            ..Default::default()
        };
        let first_page = match self.container.list_blobs(Some(options)) {
            Ok(mut pager) => pager.try_next().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match first_page {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut e = map_err("check container", &self.name, e);
                if e.kind == ProviderErrorKind::NotFound {
                    e.kind = ProviderErrorKind::BucketNotFound;
                }
                Err(e)
            }
        }
    }

    async fn create_bucket(&self) -> PResult<bool> {
        match self.container.create(Some(BlobContainerClientCreateOptions::default())).await {
            Ok(_) => Ok(true),
            Err(e) => match map_err("create container", &self.name, e) {
                e if e.kind == ProviderErrorKind::Precondition => Ok(false),
                e => Err(e),
            },
        }
    }

    async fn data_url(&self, key: &str, valid_for: std::time::Duration) -> PResult<Option<super::DataUrl>> {
        let (container, auth) = &self.data;
        let mut url = container.clone();
        {
            let Ok(mut segments) = url.path_segments_mut() else { return Ok(None) };
            segments.pop_if_empty();
            for part in key.split('/') {
                segments.push(part);
            }
        }
        let query = match auth {
            DataAuth::Key(key_auth) => {
                let blob_path = format!("{}/{key}", self.name);
                key_auth.blob_read_sas(&blob_path, SystemTime::now() + valid_for)
            }
            DataAuth::Sas => {
                return Err(ProviderError::new(
                    ProviderErrorKind::Unsupported,
                    "the Azure credential is a SAS token, which is never sent to a mirror or data proxy (it may allow writes and deletes, and a cache logs the URLs it receives); archive reads go to the bucket",
                )
                .with_hint("an account key or connection string lets this tool mint a read-only SAS for one blob and one hour, which is what a mirror gets"));
            }
            DataAuth::None => return Ok(None),
        };
        url.set_query(Some(&query));
        Ok(Some(super::DataUrl {
            url: url.to_string(),
            headers: Vec::new(),
            volatile_params: SAS_PARAMS.iter().map(|p| p.to_string()).collect(),
        }))
    }

    async fn credential_source(&self) -> String {
        self.credentials.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length() {
        let a = block_id("00000000000000ff", 1);
        let b = block_id("00000000000000ff", 50_000);
        assert_eq!(a.len(), b.len());
        assert_ne!(a, b);
    }

    #[test]
    fn sas_signatures_are_redacted() {
        let text = "error sending request for url (https://a.blob.core.windows.net/c?sv=2024&sig=abc%2Bdef&se=1)";
        let out = redact(text);
        assert!(!out.contains("abc%2Bdef"), "{out}");
        assert!(out.contains("sig=REDACTED&se=1"), "{out}");
        assert_eq!(redact("no signature here"), "no signature here");
        assert_eq!(redact("xsig=keep"), "xsig=keep");
    }
}
