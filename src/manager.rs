//! `CloudManager`: the library's public API, a thin facade over the operations in [`crate::ops`].
//! It holds the resolved configuration, the provider (with retries), the cache, the transfer
//! options and the progress reporter; every method is one operation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::Cache;
use crate::config::{self, CloudConfig, ConfigSource, Overrides, Resolved};
use crate::error::{Error, Result};
use crate::manifest::{Layout, Manifest};
use crate::names::ModelName;
use crate::ops::{self, Session};
use crate::progress::{Reporter, Silent};
use crate::provider::{self, Provider, RetryPolicy};
use crate::reference::TagName;
use crate::transfer::TransferOptions;

pub use crate::ops::copy::{Copied, CopiedTag, CopiedVersion, CopyOptions, Traffic as CopyTraffic};
pub use crate::ops::download::{DownloadOptions, DownloadStatus, Downloaded};
pub use crate::ops::list::RemoteModel;
pub use crate::ops::prune_remote::{RemotePruneOutcome, RemotePruned};
pub use crate::ops::signatures::Signers;
pub use crate::ops::status::StatusReport;
pub use crate::ops::tags::{Deleted, History, Resolution, Signed, VersionEntry};
pub use crate::ops::upload::{UploadOptions, UploadStatus, Uploaded};
pub use crate::ops::versions::{Moved, TagMove};

/// The library's entry point.
pub struct CloudManager {
    session: Session,
    source: ConfigSource,
    warnings: Vec<String>,
}

impl std::fmt::Debug for CloudManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudManager")
            .field("config", &self.session.config)
            .field("source", &self.source)
            .field("cache", &self.session.cache)
            .finish()
    }
}

fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl CloudManager {
    /// Configuration from `CROWECODE_CLOUD_CONFIG_B64` or the config file, cache from
    /// `CROWECODE_HOME` (or the XDG default), default transfer options.
    pub async fn from_env() -> Result<Self> {
        let explicit = process_env(config::ENV_CONFIG_PATH).filter(|s| !s.is_empty()).map(PathBuf::from);
        let file = config::file_location(explicit, &process_env);
        let resolved = config::resolve(&process_env, &file, &Overrides::default())?;
        Self::new(
            resolved,
            Cache::new(Cache::default_root(&process_env)?),
            TransferOptions::default(),
            RetryPolicy::from_env(&process_env)?,
        )
        .await
    }

    /// A manager over an already resolved configuration.
    pub async fn new(resolved: Resolved, cache: Cache, transfer: TransferOptions, retry: RetryPolicy) -> Result<Self> {
        let provider = provider::from_config(&resolved.config, retry).await?;
        // A local directory is read as files: a mirror or proxy does not apply (`config` says so).
        let local = resolved.config.provider == config::ProviderKind::Local;
        let mirror = match (&resolved.config.mirror, &resolved.config.data_proxy) {
            _ if local => None,
            (Some(url), _) => Some(provider::dataplane::Mirror::new(url).map_err(|e| {
                Error::config("mirror", e, "use an http:// or https:// URL of a cache or CDN in front of the bucket")
            })?),
            (None, Some(url)) => Some(provider::dataplane::Mirror::forward_proxy(url).map_err(|e| {
                Error::config(
                    "data_proxy",
                    e,
                    "use the http:// URL of the proxy, e.g. http://127.0.0.1:4001 for dfdaemon",
                )
            })?),
            (None, None) => None,
        };
        let mut manager = Self::with_provider(resolved, provider.clone(), cache, transfer);
        let plane = Arc::new(provider::dataplane::DataPlane::new(provider, mirror));
        manager.session.provider = plane.clone();
        manager.session.plane = plane;
        Ok(manager)
    }

    /// A manager over a given provider (tests, custom backends).
    pub fn with_provider(
        resolved: Resolved,
        provider: Arc<dyn Provider>,
        cache: Cache,
        transfer: TransferOptions,
    ) -> Self {
        let plane = Arc::new(provider::dataplane::DataPlane::new(provider, None));
        let scope = resolved.config.signing_scope();
        let session = Session {
            layout: Layout::new(&resolved.config.prefix),
            config: resolved.config,
            provider: plane.clone(),
            plane,
            cache,
            transfer,
            reporter: Arc::new(Silent),
            trust: Arc::new(crate::signing::Trust { scope, ..Default::default() }),
        };
        Self { session, source: resolved.source, warnings: resolved.warnings }
    }

    /// Sends progress events to `reporter`.
    #[must_use]
    pub fn with_reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.session.reporter = reporter;
        self
    }

    /// Checks and makes signatures by `trust`.
    #[must_use]
    pub fn with_trust(mut self, mut trust: crate::signing::Trust) -> Self {
        if trust.scope.is_empty() {
            trust.scope = self.session.config.signing_scope();
        }
        self.session.trust = Arc::new(trust);
        self
    }

    /// The signature policy in force.
    pub fn trust(&self) -> &crate::signing::Trust {
        &self.session.trust
    }

    /// The effective configuration.
    pub fn get_cloud_config(&self) -> &CloudConfig {
        &self.session.config
    }

    /// Where the configuration came from.
    pub fn config_source(&self) -> &ConfigSource {
        &self.source
    }

    /// Warnings found while reading the configuration.
    pub fn config_warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The local cache.
    pub fn cache(&self) -> &Cache {
        &self.session.cache
    }

    /// The storage provider (with retries).
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.session.provider
    }

    /// Adds to a credentials or permission error which credentials were in use (a name and a
    /// masked key id, never a secret): the first thing to check.
    pub async fn explain(&self, err: Error) -> Error {
        match err {
            Error::Access { message, hint, source } => {
                let creds = self.session.provider.credential_source().await;
                let hint = Some(match hint {
                    Some(h) => format!("{h} (credentials in use: {creds})"),
                    None => format!("credentials in use: {creds}"),
                });
                Error::Access { message, hint, source }
            }
            other => other,
        }
    }

    /// The model's current manifest, or `None` if the bucket has none.
    pub async fn fetch_manifest(&self, model: &ModelName) -> Result<Option<Manifest>> {
        self.session.fetch_manifest(model).await
    }

    /// Returns the cached version `reference` names if this machine has it, without contacting
    /// the bucket; downloads it otherwise. References: `Alpha`, `Alpha:prod`, `Alpha@sha256:…`.
    pub async fn ensure_model(&self, name: &str) -> Result<PathBuf> {
        ops::download::ensure(&self.session, name).await
    }

    /// Makes the bucket's current version of `name` ready in the cache: downloads, verifies and
    /// installs it unless it is already there. One download per model per machine: concurrent
    /// calls wait for the first and then find the model ready.
    pub async fn download_model(&self, name: &str) -> Result<Downloaded> {
        self.download(name, &DownloadOptions::default()).await
    }

    /// [`CloudManager::download_model`]; and when the bucket has no such model and the config
    /// names a `fallback_command`, runs it to make the model, installs the result like a
    /// download, and with `publish` uploads it so the next machine finds it in the bucket.
    pub async fn download_model_or_fallback(&self, name: &str, publish: bool) -> Result<Downloaded> {
        self.download(name, &DownloadOptions { publish, ..Default::default() }).await
    }

    /// [`CloudManager::download_model_or_fallback`] with all its options: `force` fetches and
    /// verifies the version again even when it is cached, and replaces the cached copy.
    pub async fn download(&self, name: &str, opts: &DownloadOptions) -> Result<Downloaded> {
        ops::download::model_or_fallback(&self.session, name, opts).await
    }

    /// Downloads only the files of `name` that match one of `patterns` (see [`crate::select`]),
    /// each verified against its own sha256, into a directory of their own (never the model's
    /// version directory), returned as `path`.
    pub async fn download_selected(&self, name: &str, patterns: &[String]) -> Result<Downloaded> {
        ops::selection::run(&self.session, name, patterns).await
    }

    /// Uploads the directory `dir` as model `name`, unless the bucket already holds the same tree.
    /// The manifest is written last, conditionally, so readers see the old version or the new one.
    pub async fn upload_model(&self, name: &str, dir: &Path, opts: &UploadOptions) -> Result<Uploaded> {
        ops::upload::run(&self.session, name, dir, opts).await
    }

    /// Unreferenced versions, archives, packs and unfinished uploads in the bucket (see
    /// [`ops::prune_remote`]); deleted and aborted when `apply`. `models` empty means all. With
    /// `repack`, the live chunks of mostly dead packs are copied into new ones.
    pub async fn prune_remote(
        &self,
        models: &[ModelName],
        keep: usize,
        min_age: std::time::Duration,
        apply: bool,
        repack: bool,
    ) -> Result<RemotePruneOutcome> {
        ops::prune_remote::run(&self.session, models, keep, min_age, apply, repack).await
    }

    /// The version a reference (`Alpha`, `Alpha:prod`, `Alpha@sha256:…`) names now, pinned.
    pub async fn resolve(&self, reference: &str) -> Result<Resolution> {
        ops::tags::resolve(&self.session, reference).await
    }

    /// Copies the versions `reference` names (with their pieces and signatures) into the bucket
    /// of `dest`, then moves the tags asked for there (see [`crate::ops::copy`]).
    pub async fn copy_to(&self, dest: &CloudManager, reference: &str, opts: &CopyOptions) -> Result<Copied> {
        ops::copy::copy(&self.session, &dest.session, reference, opts).await
    }

    /// Where models live: `s3://bucket/prefix/`, a directory, ….
    pub fn location(&self) -> String {
        self.session.config.location()
    }

    /// Points `tags` at the version `reference` names; with `if_current`, only tags that point
    /// where it does now (compare-and-swap: of two concurrent moves exactly one wins).
    pub async fn tag(&self, reference: &str, tags: &[TagName], if_current: Option<&str>) -> Result<Vec<Moved>> {
        ops::tags::tag(&self.session, reference, tags, if_current).await
    }

    /// Adds a signature by each signing key (see [`CloudManager::with_trust`]) to the version
    /// `reference` names.
    pub async fn sign(&self, reference: &str) -> Result<Signed> {
        ops::tags::sign(&self.session, reference).await
    }

    /// Removes the tag `reference` (`Alpha:TAG`) names; `false` if there was none.
    pub async fn untag(&self, reference: &str) -> Result<bool> {
        ops::tags::untag(&self.session, reference).await
    }

    /// Moves a tag (`Alpha` is `Alpha:latest`) back to where it pointed before its last move.
    pub async fn rollback(&self, reference: &str) -> Result<Moved> {
        ops::tags::rollback(&self.session, reference).await
    }

    /// The model's versions, newest first, with their tags, and the moves of the tag named.
    pub async fn history(&self, reference: &str) -> Result<History> {
        ops::tags::history(&self.session, reference).await
    }

    /// Deletes one version (`Alpha@VERSION`); refused for a tagged one unless `force` untags it.
    pub async fn delete_version(&self, reference: &str, force: bool) -> Result<Deleted> {
        ops::tags::delete_version(&self.session, reference, force).await
    }

    /// Deletes every object of a model from the bucket.
    pub async fn delete_model(&self, model: &ModelName) -> Result<Deleted> {
        ops::tags::delete_model(&self.session, model).await
    }

    /// Every model in the bucket, with its manifest's summary and this machine's cached version.
    pub async fn list_cloud_models(&self) -> Result<Vec<RemoteModel>> {
        ops::list::run(&self.session).await
    }

    /// Configuration, credentials, reachability and cache, in one report. Never fails on a
    /// storage error: it reports it.
    pub async fn status(&self) -> StatusReport {
        ops::status::run(&self.session, &self.source, &self.warnings).await
    }
}
