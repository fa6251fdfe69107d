//! The operations behind [`CloudManager`](crate::CloudManager), one module each, each readable top
//! to bottom: a whole-version download (and resume), a selection of files (`--only`), the
//! fallback command, upload, remote prune, list and status. They share a [`Session`]: the
//! configuration, the provider, the cache, the transfer options and the reporter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::{Cache, ModelLock};
use crate::config::CloudConfig;
use crate::error::{Error, Result};
use crate::manifest::{Layout, Manifest};
use crate::names::ModelName;
use crate::progress::{Event, Reporter};
use crate::provider::{Provider, ProviderErrorKind, ProviderExt as _};
use crate::transfer::TransferOptions;

pub mod copy;
pub mod download;
mod downloaded;
pub mod fallback;
pub mod list;
mod moves;
pub(crate) mod pieces;
pub(crate) mod pieces_fetch;
pub mod pieces_gc;
pub mod probe;
pub mod prune_remote;
pub mod repack;
pub mod selection;
pub mod signatures;
pub mod status;
pub mod tags;
pub mod upload;
pub mod versions;

/// What every operation works with.
pub(crate) struct Session {
    pub config: CloudConfig,
    pub layout: Layout,
    pub provider: Arc<dyn Provider>,
    /// The same provider as its data plane: archive reads counted, and through the mirror if any.
    pub plane: Arc<crate::provider::dataplane::DataPlane>,
    pub cache: Cache,
    pub transfer: TransferOptions,
    pub reporter: Arc<dyn Reporter>,
    /// The signature policy and signing keys.
    pub trust: Arc<crate::signing::Trust>,
}

impl Session {
    /// The same session reading archives from the bucket directly (no mirror).
    pub fn direct(&self) -> Session {
        let plane = Arc::new(crate::provider::dataplane::DataPlane::new(self.plane.direct().clone(), None));
        Session {
            config: self.config.clone(),
            layout: self.layout.clone(),
            provider: plane.clone(),
            plane,
            cache: self.cache.clone(),
            transfer: self.transfer.clone(),
            reporter: self.reporter.clone(),
            trust: self.trust.clone(),
        }
    }

    /// A note about `model` for the user.
    pub fn info(&self, model: &ModelName, message: String) {
        self.reporter.report(Event::Info { model: model.as_str(), message });
    }

    /// The error for a model the bucket does not have.
    pub fn not_found(&self, model: &ModelName) -> Error {
        Error::ModelNotFound { model: model.to_string(), location: self.config.location() }
    }

    /// The model's current manifest, or `None` if the bucket has none. A manifest must describe
    /// `model` and name one of its own archives; an HTML page in its place means the endpoint is
    /// not the storage service.
    pub async fn fetch_manifest(&self, model: &ModelName) -> Result<Option<Manifest>> {
        Ok(self.fetch_manifest_bytes(model).await?.map(|(m, _)| m))
    }

    /// [`Session::fetch_manifest`], with the bytes as stored.
    pub async fn fetch_manifest_bytes(&self, model: &ModelName) -> Result<Option<(Manifest, bytes::Bytes)>> {
        let key = self.layout.manifest_key(model);
        let Some(bytes) = self.get_small(&key).await? else { return Ok(None) };
        Ok(Some((Manifest::parse(&bytes, model, &key)?.confined(&self.layout, &key)?, bytes)))
    }

    /// A small object (a manifest, a tag), or `None` when there is none. An HTML page in its
    /// place means the endpoint is not the storage service (exit 1 with a hint, not exit 6).
    pub async fn get_small(&self, key: &str) -> Result<Option<bytes::Bytes>> {
        match self.provider.get_bytes(key).await {
            Ok(bytes) if looks_like_html(&bytes) => Err(Error::other(
                format!("reading {key}: the storage endpoint answered with a web page, not the object"),
                Some(format!(
                    "{} does not answer like {}: check --endpoint (config `endpoint`) and any proxy or captive portal in between",
                    self.config.endpoint.as_deref().unwrap_or("the endpoint"),
                    self.config.provider
                )),
            )),
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind == ProviderErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from_provider(format!("reading {key}"), e)),
        }
    }

    /// Writes an object whose name fixes what it holds (a version, a pack, a signature). Written
    /// create-only, one that is there already is as good as this one: no error.
    pub async fn put_named(&self, key: &str, bytes: bytes::Bytes, mode: crate::provider::PutMode) -> Result<()> {
        match self.provider.put(key, bytes, mode).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ProviderErrorKind::Precondition => Ok(()),
            Err(e) => Err(Error::from_provider(format!("writing {key}"), e)),
        }
    }

    /// [`Session::put_named`] with a body read as it is sent ([`crate::provider::Provider::put_stream`]).
    pub async fn put_stream_named(
        &self,
        key: &str,
        body: crate::provider::StreamBody,
        mode: crate::provider::PutMode,
    ) -> Result<()> {
        match self.provider.put_stream(key, body, mode).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ProviderErrorKind::Precondition => Ok(()),
            Err(e) => Err(Error::from_provider(format!("writing {key}"), e)),
        }
    }

    /// Deletes an object; one that is already gone is no error.
    pub async fn delete_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.ends_with('/') {
            return Err(Error::other(format!("refusing to delete {key:?}, which names no object"), None));
        }
        match self.provider.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ProviderErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from_provider(format!("deleting {key}"), e)),
        }
    }

    /// Aborts an unfinished multipart upload (its parts are billed until then).
    pub async fn abort_upload(&self, upload: &crate::provider::PendingUpload) -> Result<()> {
        self.provider
            .abort_multipart(&upload.key, &upload.upload_id)
            .await
            .map_err(|e| Error::from_provider(format!("aborting the upload of {}", upload.key), e))
    }

    /// Takes the model's cache lock, saying so when another process holds it and this one waits.
    pub async fn lock(&self, model: &ModelName) -> Result<ModelLock> {
        self.cache.ensure_layout()?;
        self.warn_unreliable_locks();
        let (cache, m, reporter) = (self.cache.clone(), model.clone(), self.reporter.clone());
        blocking(move || {
            cache.lock(&m, || {
                reporter.report(Event::Info {
                    model: m.as_str(),
                    message: "another process is downloading this model; waiting for it".into(),
                });
            })
        })
        .await
    }

    /// The version `models/<Model>` points at, when complete (and, with `expected`, that one),
    /// marked as used; see [`Cache::use_ready`].
    pub async fn use_ready(&self, model: &ModelName, expected: Option<&Path>) -> Result<Option<PathBuf>> {
        let (cache, m, e) = (self.cache.clone(), model.clone(), expected.map(Path::to_path_buf));
        blocking(move || cache.use_ready(&m, e.as_deref())).await
    }

    /// Says once per process when the cache's file locks may not hold between machines.
    fn warn_unreliable_locks(&self) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            if let Some(message) = self.cache.lock_warning() {
                self.reporter.report(Event::Warning { message });
            }
        });
    }
}

/// Runs blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::other(format!("a background task failed: {e}"), None))?
}

/// Whether an answer is an HTML page (a portal, a proxy's error page, a web server at the
/// wrong URL) rather than the JSON or bytes that were asked for.
fn looks_like_html(bytes: &[u8]) -> bool {
    let head: Vec<u8> = bytes.iter().copied().skip_while(u8::is_ascii_whitespace).take(15).collect();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    head.starts_with("<!doctype html")
        || head.starts_with("<html")
        || head.starts_with("<head")
        || head.starts_with("<body")
}
