//! `CloudManager`: the library API. Holds the configuration, the provider, the cache and the
//! transfer options, and implements download, upload, list and status on top of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde::Serialize;

use crate::archive::{self, ArchivePlan, Compression, Extractor};
use crate::cache::{Cache, remove_tree, resume_marker};
use crate::config::{self, CloudConfig, ConfigSource, Overrides, Resolved};
use crate::error::{Error, Result};
use crate::manifest::{DirEntry, FORMAT_VERSION, FileEntry, Layout, Manifest};
use crate::names::{ModelName, Sha256Hex};
use crate::progress::{Event, Reporter, Silent};
use crate::provider::{self, Provider, ProviderErrorKind, ProviderExt as _, PutMode, RetryPolicy};
use crate::transfer::{self, Progress, TransferOptions};

/// What `download_model` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownloadStatus {
    /// Bytes were transferred and installed.
    Downloaded,
    /// The cached version was already current.
    Cached,
    /// Missing from the bucket; made by the fallback command and installed.
    Fallback,
    /// Made by the fallback command, installed, and uploaded for the next machine.
    Published,
}

/// The result of one model download.
#[derive(Clone, Debug, Serialize)]
pub struct Downloaded {
    pub model: ModelName,
    /// The ready, verified version directory.
    pub path: PathBuf,
    pub status: DownloadStatus,
    /// Archive sha256 of the installed version.
    pub sha256: Sha256Hex,
    /// Sum of file sizes.
    pub size: u64,
    pub files: usize,
    /// Bytes fetched from the bucket by this call.
    pub transferred: u64,
    pub seconds: f64,
}

impl Downloaded {
    /// The whole version `manifest` describes, at `path`.
    fn whole(
        model: &ModelName,
        path: PathBuf,
        status: DownloadStatus,
        manifest: &Manifest,
        transferred: u64,
        started: Instant,
    ) -> Self {
        Self {
            model: model.clone(),
            path,
            status,
            sha256: manifest.archive_sha256.clone(),
            size: manifest.total_size,
            files: manifest.files.len(),
            transferred,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// What `upload_model` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadStatus {
    /// A new version was uploaded and its manifest committed.
    Uploaded,
    /// The bucket already held exactly this tree; nothing was uploaded.
    UpToDate,
}

/// The result of one model upload.
#[derive(Clone, Debug, Serialize)]
pub struct Uploaded {
    pub model: ModelName,
    pub status: UploadStatus,
    pub archive_key: String,
    pub sha256: Sha256Hex,
    /// Archive size in bytes.
    pub archive_size: u64,
    /// Sum of file sizes.
    pub size: u64,
    pub files: usize,
    pub compression: Compression,
    /// Parts the archive was uploaded in (0 when up to date).
    pub parts: u32,
    pub seconds: f64,
}

/// Options for `upload_model`.
#[derive(Clone, Debug, Default)]
pub struct UploadOptions {
    pub compression: Compression,
    /// Upload even if the bucket already holds the same tree.
    pub force: bool,
}

/// An unreferenced archive that `prune --remote` deleted (or would delete).
#[derive(Clone, Debug, Serialize)]
pub struct RemotePruned {
    pub model: ModelName,
    pub key: String,
    pub bytes: u64,
}

/// What `prune --remote` found (and, when applied, removed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemotePruneOutcome {
    /// Unreferenced archives.
    pub archives: Vec<RemotePruned>,
    /// Keys of unfinished multipart uploads older than the minimum age.
    pub unfinished_uploads: Vec<String>,
    /// Models skipped because their manifest could not be read.
    pub skipped: Vec<ModelName>,
}

/// One model in the bucket.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteModel {
    pub model: ModelName,
    pub size: Option<u64>,
    pub files: Option<usize>,
    pub sha256: Option<Sha256Hex>,
    pub uploaded_at: Option<String>,
    pub compression: Option<Compression>,
    /// The cached version's short sha, when this machine has one.
    pub cached: Option<String>,
    /// Whether the cached version is the bucket's current one.
    pub cached_current: bool,
    /// Why the manifest could not be read, if it could not.
    pub error: Option<String>,
}

impl RemoteModel {
    /// A model whose manifest could not be read: listed with the reason, nothing else known.
    fn unreadable(model: ModelName, cached: Option<String>, error: String) -> Self {
        Self {
            model,
            size: None,
            files: None,
            sha256: None,
            uploaded_at: None,
            compression: None,
            cached,
            cached_current: false,
            error: Some(error),
        }
    }
}

/// A readable account of the setup, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub config_source: String,
    pub provider: String,
    pub location: String,
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub credentials: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// The exit code `status` ends with when the bucket is not reachable.
    pub exit_code: i32,
    pub models_in_bucket: Option<usize>,
    pub pending_uploads: Vec<String>,
    pub cache_dir: PathBuf,
    pub cache_bytes: u64,
    pub models_cached: Vec<String>,
    pub warnings: Vec<String>,
}

/// The library's entry point.
pub struct CloudManager {
    config: CloudConfig,
    source: ConfigSource,
    warnings: Vec<String>,
    provider: Arc<dyn Provider>,
    layout: Layout,
    cache: Cache,
    transfer: TransferOptions,
    reporter: Arc<dyn Reporter>,
}

impl std::fmt::Debug for CloudManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudManager")
            .field("config", &self.config)
            .field("source", &self.source)
            .field("cache", &self.cache)
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
        Ok(Self::with_provider(resolved, provider, cache, transfer))
    }

    /// A manager over a given provider (tests, custom backends).
    pub fn with_provider(
        resolved: Resolved,
        provider: Arc<dyn Provider>,
        cache: Cache,
        transfer: TransferOptions,
    ) -> Self {
        Self {
            layout: Layout::new(&resolved.config.prefix),
            config: resolved.config,
            source: resolved.source,
            warnings: resolved.warnings,
            provider,
            cache,
            transfer,
            reporter: Arc::new(Silent),
        }
    }

    /// Sends progress events to `reporter`.
    #[must_use]
    pub fn with_reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporter = reporter;
        self
    }

    /// The effective configuration.
    pub fn get_cloud_config(&self) -> &CloudConfig {
        &self.config
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
        &self.cache
    }

    /// The storage provider (with retries).
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// Adds to a credentials or permission error which credentials were in use (a name and a
    /// masked key id, never a secret): the first thing to check.
    pub async fn explain(&self, err: Error) -> Error {
        match err {
            Error::Access { message, hint, source } => {
                let creds = self.provider.credential_source().await;
                let hint = Some(match hint {
                    Some(h) => format!("{h} (credentials in use: {creds})"),
                    None => format!("credentials in use: {creds}"),
                });
                Error::Access { message, hint, source }
            }
            other => other,
        }
    }

    /// Takes the model's cache lock, saying so when another process holds it and this one waits.
    async fn lock_model(&self, model: &ModelName) -> Result<crate::cache::ModelLock> {
        let cache = self.cache.clone();
        let m = model.clone();
        let reporter = self.reporter.clone();
        tokio::task::spawn_blocking(move || {
            cache.lock(&m, || {
                reporter.report(Event::Info {
                    model: m.as_str(),
                    message: "another process is downloading this model; waiting for it".into(),
                });
            })
        })
        .await
        .map_err(|e| Error::other(format!("lock task failed: {e}"), None))?
    }

    /// [`Cache::use_ready`] off the async threads.
    async fn use_ready(&self, model: &ModelName, expected: Option<&Path>) -> Result<Option<PathBuf>> {
        let (cache, m, e) = (self.cache.clone(), model.clone(), expected.map(Path::to_path_buf));
        tokio::task::spawn_blocking(move || cache.use_ready(&m, e.as_deref()))
            .await
            .map_err(|e| Error::other(format!("cache task failed: {e}"), None))?
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

    fn info(&self, model: &ModelName, message: String) {
        self.reporter.report(Event::Info { model: model.as_str(), message });
    }

    /// The model's current manifest, or `None` if the bucket has none.
    pub async fn fetch_manifest(&self, model: &ModelName) -> Result<Option<Manifest>> {
        let key = self.layout.manifest_key(model);
        match self.provider.get_bytes(&key).await {
            Ok(bytes) if looks_like_html(&bytes) => Err(Error::other(
                format!("reading {key}: the storage endpoint answered with a web page, not the object"),
                Some(format!(
                    "{} does not answer like {}: check --endpoint (config `endpoint`) and any proxy or captive portal in between",
                    self.config.endpoint.as_deref().unwrap_or("the endpoint"),
                    self.config.provider
                )),
            )),
            Ok(bytes) => Ok(Some(Manifest::parse(&bytes, model, &key)?.confined(&self.layout, &key)?)),
            Err(e) if e.kind == ProviderErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from_provider(format!("reading {key}"), e)),
        }
    }

    /// Returns the cached model if there is one, without contacting the bucket; downloads it otherwise.
    pub async fn ensure_model(&self, name: &str) -> Result<PathBuf> {
        let model = ModelName::new(name)?;
        if let Some(path) = self.use_ready(&model, None).await? {
            return Ok(path);
        }
        Ok(self.download_model(name).await?.path)
    }

    /// Makes the bucket's current version of `name` ready in the cache: downloads, verifies and
    /// installs it unless it is already there. One download per model per machine: concurrent
    /// calls wait for the first and then find the model ready.
    pub async fn download_model(&self, name: &str) -> Result<Downloaded> {
        self.download_model_or_fallback(name, false).await
    }

    /// [`CloudManager::download_model`]; and when the bucket has no such model and the config
    /// names a `fallback_command`, runs it to make the model, installs the result like a
    /// download, and with `publish` uploads it so the next machine finds it in the bucket.
    pub async fn download_model_or_fallback(&self, name: &str, publish: bool) -> Result<Downloaded> {
        let started = Instant::now();
        let model = ModelName::new(name)?;
        let manifest = match self.fetch_manifest(&model).await? {
            Some(m) => m,
            None => match self.config.fallback_command.clone() {
                Some(command) => return self.fallback(&model, &command, publish, started).await,
                None => {
                    return Err(Error::ModelNotFound { model: model.to_string(), location: self.config.location() });
                }
            },
        };
        self.cache.ensure_layout()?;
        self.warn_unreliable_locks();
        let version = self.cache.version_path(&model, &manifest.archive_sha256);
        let done =
            |status, transferred| Downloaded::whole(&model, version.clone(), status, &manifest, transferred, started);
        if self.use_ready(&model, Some(&version)).await?.is_some() {
            return Ok(done(DownloadStatus::Cached, 0));
        }

        let lock = self.lock_model(&model).await?;
        // Whoever held the lock may have installed exactly this version.
        if self.cache.current(&model)?.as_deref() == Some(version.as_path()) && self.cache.is_complete(&version) {
            return Ok(done(DownloadStatus::Cached, 0));
        }
        // A crashed download of this same version left verified files behind: keep them.
        let resume = {
            let (cache, m, man) = (self.cache.clone(), model.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || find_resumable(&cache, &m, &man))
                .await
                .map_err(|e| Error::other(format!("resume task failed: {e}"), None))??
        };
        let removed = self.cache.clean_staging_except(&model, &lock, resume.as_ref().map(|r| r.staging.as_path()))?;
        if removed > 0 {
            tracing::info!(%model, removed, "removed leftovers of an interrupted download");
        }
        if resume.is_none() && version.is_dir() && self.cache.read_manifest_copy(&version, &model).is_some() {
            // This version was installed before (and the link moved on since): point back at it.
            self.cache.point_to(&model, &version, &lock)?;
            return Ok(done(DownloadStatus::Cached, 0));
        }

        // Removed on every way out: an error, or this future being dropped (an interrupted process).
        let staging = match &resume {
            Some(r) => {
                self.info(
                    &model,
                    format!(
                        "resuming an interrupted download: {} files ({:.1} MiB) already here and verified",
                        r.kept_files,
                        r.kept_bytes as f64 / f64::from(1 << 20)
                    ),
                );
                StagingDir(r.staging.clone())
            }
            None => {
                let staging = StagingDir(self.cache.new_staging(&model, &lock)?);
                if manifest.compression == Compression::None {
                    // Lets a run after a crash find and keep what this one completes.
                    let marker = resume_marker(&staging.0);
                    std::fs::write(&marker, manifest.archive_sha256.as_str())
                        .map_err(|e| Error::io("cannot write", &marker, e))?;
                }
                staging
            }
        };
        self.fetch_into(&model, &manifest, &staging.0, resume.as_ref()).await?;
        self.cache.install(&staging.0, &manifest, &lock)?;
        drop(lock);
        Ok(done(DownloadStatus::Downloaded, manifest.archive_size - resume.map_or(0, |r| r.start_offset)))
    }

    /// Downloads only the files of `name` that match one of `patterns` (see [`crate::select`]),
    /// each by a ranged read of the uncompressed archive, verified against its own sha256. They
    /// land in a directory of their own (never the model's version directory), which is
    /// returned as `path`; a second identical request finds it there.
    pub async fn download_selected(&self, name: &str, patterns: &[String]) -> Result<Downloaded> {
        let started = Instant::now();
        let model = ModelName::new(name)?;
        let manifest = self
            .fetch_manifest(&model)
            .await?
            .ok_or_else(|| Error::ModelNotFound { model: model.to_string(), location: self.config.location() })?;
        if manifest.compression != Compression::None {
            return Err(Error::other(
                format!(
                    "{model} was uploaded with {} compression, so its files cannot be read one by one",
                    manifest.compression.as_str()
                ),
                Some("download the whole model, or upload it again with `--compression none` to allow --only".into()),
            ));
        }
        let selected: Vec<&FileEntry> =
            manifest.files.iter().filter(|f| patterns.iter().any(|p| crate::select::matches(p, &f.path))).collect();
        if selected.is_empty() {
            let some: Vec<&str> = manifest.files.iter().take(5).map(|f| f.path.as_str()).collect();
            let dirs: Vec<String> = patterns
                .iter()
                .filter(|p| !p.ends_with('/') && manifest.files.iter().any(|f| f.path.starts_with(&format!("{p}/"))))
                .map(|p| format!("{p}/"))
                .collect();
            let hint = if dirs.is_empty() {
                format!("its files include: {}", some.join(", "))
            } else {
                format!("a directory is matched with a trailing slash: did you mean {}?", dirs.join(", "))
            };
            return Err(Error::Usage {
                message: format!("no file of {model} matches {}", patterns.join(", ")),
                hint: Some(hint),
            });
        }
        let mut sorted = patterns.to_vec();
        sorted.sort();
        let key = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(sorted.join("\n").as_bytes())[..4]);
        let dest = self.cache.selection_path(&model, &manifest.archive_sha256, &key);
        let size = selected.iter().map(|f| f.size).sum();
        let done = |status, transferred| Downloaded {
            model: model.clone(),
            path: dest.clone(),
            status,
            sha256: manifest.archive_sha256.clone(),
            size,
            files: selected.len(),
            transferred,
            seconds: started.elapsed().as_secs_f64(),
        };
        if dest.is_dir() {
            return Ok(done(DownloadStatus::Cached, 0));
        }
        self.cache.ensure_layout()?;
        let lock = self.lock_model(&model).await?;
        if dest.is_dir() {
            return Ok(done(DownloadStatus::Cached, 0));
        }
        let staging = StagingDir(self.cache.new_staging(&model, &lock)?);
        let mut files = Vec::with_capacity(selected.len());
        for f in &selected {
            let offset = f.offset.ok_or_else(|| {
                Error::integrity(
                    &manifest.archive_key,
                    format!("the manifest has no offset for {}", f.path),
                    None,
                    None,
                )
            })?;
            let dest = staging.0.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
            }
            files.push(transfer::FileRange {
                offset,
                size: f.size,
                sha256: f.sha256.clone(),
                dest,
                mode: f.mode,
                path: f.path.clone(),
            });
        }
        self.check_archive_size(&manifest).await?;
        let progress = Progress::new(self.reporter.clone(), model.as_str());
        let fetched =
            transfer::download_files(self.provider.clone(), &manifest.archive_key, files, &self.transfer, &progress)
                .await;
        progress.finished();
        fetched?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
        }
        std::fs::rename(&staging.0, &dest).map_err(|e| Error::io("cannot move the verified files into", &dest, e))?;
        drop(lock);
        Ok(done(DownloadStatus::Downloaded, size))
    }

    async fn fallback(&self, model: &ModelName, command: &str, publish: bool, started: Instant) -> Result<Downloaded> {
        self.cache.ensure_layout()?;
        let lock = self.lock_model(model).await?;
        // Someone may have published it while this process waited for the lock.
        if self.fetch_manifest(model).await?.is_some() {
            drop(lock);
            return Box::pin(self.download_model_or_fallback(model.as_str(), false)).await;
        }
        // Made here by an earlier fallback (and never published): that is the model.
        if !publish
            && let Some(path) = self.cache.current(model)?
            && let Some(m) = self.cache.read_manifest_copy(&path, model)
            && m.archive_key == FALLBACK_KEY
        {
            self.cache.touch(&path);
            return Ok(Downloaded::whole(model, path, DownloadStatus::Cached, &m, 0, started));
        }
        // What a killed fallback of this model left behind is never resumed: remove it.
        self.cache.clean_staging(model, &lock)?;
        let staging = StagingDir(self.cache.new_staging(model, &lock)?);
        self.info(model, format!("not in {}; running the fallback command", self.config.location()));
        run_fallback(command, model, &staging.0).await?;
        let dir = staging.0.clone();
        tokio::task::spawn_blocking(move || resolve_links_inside(&dir))
            .await
            .map_err(|e| Error::other(format!("link check failed: {e}"), None))??;
        let has_files = walkdir::WalkDir::new(&staging.0).into_iter().flatten().any(|e| !e.file_type().is_dir());
        if !has_files {
            return Err(Error::other(
                format!("the fallback command for {model} exited 0 but left no files in its {{dest}} directory"),
                Some("the command must write the model's files into the directory given as {dest}".into()),
            ));
        }
        let dir = staging.0.clone();
        let up = tokio::task::spawn_blocking(move || -> Result<transfer::UploadedArchive> {
            let plan = archive::scan_tree(&dir)?;
            transfer::hash_archive(plan).map_err(|e| Error::io("cannot read", &dir, e))
        })
        .await
        .map_err(|e| Error::other(format!("hash task failed: {e}"), None))??;
        let manifest = build_manifest(model, FALLBACK_KEY, Compression::None, &up);
        let mut status = DownloadStatus::Fallback;
        if publish {
            // The staging tree is what gets uploaded; it is moved into the cache afterwards.
            let opts = UploadOptions { compression: Compression::None, force: false };
            match self.upload_model(model.as_str(), &staging.0, &opts).await {
                Ok(_) => status = DownloadStatus::Published,
                // Another machine published a different tree first: theirs is the bucket's
                // version now; this machine still has a complete model of its own.
                Err(Error::Other { message, .. }) if message.contains(CONFLICT) => self.info(
                    model,
                    "another machine published a different tree of this model first; this machine installs its own copy, the next download takes the bucket's".into(),
                ),
                Err(e) => return Err(e),
            }
        }
        let path = self.cache.install(&staging.0, &manifest, &lock)?;
        drop(lock);
        Ok(Downloaded::whole(model, path, status, &manifest, 0, started))
    }

    /// One HEAD before the ranged reads: an archive that is missing, shorter or longer than the
    /// manifest says is an integrity failure (exit 6), found at once instead of after retries.
    async fn check_archive_size(&self, manifest: &Manifest) -> Result<()> {
        let key = &manifest.archive_key;
        match self.provider.head(key).await {
            Ok(meta) if meta.size == manifest.archive_size => Ok(()),
            Ok(meta) => Err(Error::integrity(
                key,
                format!(
                    "the archive in the bucket is {} bytes, the manifest says {} (truncated or replaced)",
                    meta.size, manifest.archive_size
                ),
                Some(manifest.archive_size.to_string()),
                Some(meta.size.to_string()),
            )),
            Err(e) if e.kind == ProviderErrorKind::NotFound => {
                Err(Error::integrity(key, "the archive the manifest names is missing from the bucket", None, None))
            }
            Err(e) => Err(Error::from_provider(format!("reading {key}"), e)),
        }
    }

    /// Fetches and extracts the archive into `staging`; with `resume`, only from the first entry
    /// the crashed run did not complete.
    async fn fetch_into(
        &self,
        model: &ModelName,
        manifest: &Manifest,
        staging: &Path,
        resume: Option<&Resumable>,
    ) -> Result<()> {
        let extractor = match resume {
            Some(r) => Extractor::resuming(staging.to_path_buf(), manifest.expected_entries(), r.start_index, true),
            None => Extractor::new(staging.to_path_buf(), manifest.expected_entries(), false),
        };
        let key = &manifest.archive_key;
        self.check_archive_size(manifest).await?;
        let progress = Progress::new(self.reporter.clone(), model.as_str());
        let sha = transfer::download_archive(
            self.provider.clone(),
            key,
            resume.map_or(0, |r| r.start_offset),
            manifest.archive_size,
            manifest.compression,
            extractor,
            &self.transfer,
            &progress,
        )
        .await;
        progress.finished();
        let sha = match sha {
            Err(Error::Provider { source, .. }) if source.kind == ProviderErrorKind::NotFound => {
                return Err(Error::integrity(
                    key,
                    "the archive the manifest names is missing from the bucket",
                    None,
                    None,
                ));
            }
            other => other?,
        };
        // A resumed run checked every file against its own sha256 (the kept ones by re-hashing,
        // the rest as they were written); its digest covers only the bytes it fetched.
        if resume.is_none() && sha != manifest.archive_sha256 {
            return Err(Error::integrity(
                key,
                "archive sha256 differs from the manifest",
                Some(manifest.archive_sha256.to_string()),
                Some(sha.to_string()),
            ));
        }
        Ok(())
    }

    /// Uploads the directory `dir` as model `name`, unless the bucket already holds the same tree.
    /// The manifest is written last, conditionally, so readers see the old version or the new one.
    pub async fn upload_model(&self, name: &str, dir: &Path, opts: &UploadOptions) -> Result<Uploaded> {
        let started = Instant::now();
        let model = ModelName::new(name)?;
        let dir_owned = dir.to_path_buf();
        let plan = tokio::task::spawn_blocking(move || archive::scan_tree(&dir_owned))
            .await
            .map_err(|e| Error::other(format!("scan task failed: {e}"), None))??;
        let manifest_key = self.layout.manifest_key(&model);
        let current = match self.provider.head(&manifest_key).await {
            Ok(meta) => Some(meta),
            Err(e) if e.kind == ProviderErrorKind::NotFound => None,
            Err(e) => return Err(Error::from_provider(format!("reading {manifest_key}"), e)),
        };
        let existing = match &current {
            Some(_) => match self.fetch_manifest(&model).await {
                Ok(m) => m,
                Err(e @ Error::Integrity { .. }) => {
                    self.info(&model, format!("the current manifest is unreadable and will be replaced ({e})"));
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        if let Some(old) = existing.as_ref().filter(|_| !opts.force)
            && let Some(same) = self.unchanged(&plan, old).await?
        {
            return Ok(Uploaded {
                model,
                status: UploadStatus::UpToDate,
                archive_key: same.archive_key.clone(),
                sha256: same.archive_sha256.clone(),
                archive_size: same.archive_size,
                size: same.total_size,
                files: same.files.len(),
                compression: same.compression,
                parts: 0,
                seconds: started.elapsed().as_secs_f64(),
            });
        }

        let archive_key = self.layout.new_archive_key(&model, SystemTime::now(), opts.compression);
        let progress = Progress::new(self.reporter.clone(), model.as_str());
        let up = transfer::upload_archive(
            self.provider.clone(),
            &archive_key,
            plan,
            opts.compression,
            &self.transfer,
            &progress,
        )
        .await;
        progress.finished();
        let up = up?;
        let manifest = build_manifest(&model, &archive_key, opts.compression, &up);
        let mode = match &current {
            Some(meta) => meta.etag.clone().map_or(PutMode::Overwrite, PutMode::IfMatch),
            None => PutMode::Create,
        };
        if let Err(e) = self.provider.put(&manifest_key, manifest.to_bytes().into(), mode).await {
            // The archive is unreferenced now; do not leave it behind.
            let _ = self.provider.delete(&archive_key).await;
            if e.kind == ProviderErrorKind::Precondition {
                // The same tree uploaded twice at once (CI retries, `--publish` on a fleet's cold
                // start) is no conflict: the bucket holds exactly this tree.
                if let Ok(Some(winner)) = self.fetch_manifest(&model).await
                    && winner.same_tree(&manifest)
                {
                    return Ok(Uploaded {
                        model,
                        status: UploadStatus::UpToDate,
                        archive_key: winner.archive_key.clone(),
                        sha256: winner.archive_sha256.clone(),
                        archive_size: winner.archive_size,
                        size: winner.total_size,
                        files: winner.files.len(),
                        compression: winner.compression,
                        parts: 0,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                return Err(Error::other(
                    format!("{model}: {CONFLICT}; its version was kept and this one discarded"),
                    Some("run the same upload command again if this tree should win".into()),
                ));
            }
            return Err(Error::from_provider(format!("writing {manifest_key}"), e));
        }
        Ok(Uploaded {
            model,
            status: UploadStatus::Uploaded,
            archive_key,
            sha256: manifest.archive_sha256.clone(),
            archive_size: manifest.archive_size,
            size: manifest.total_size,
            files: manifest.files.len(),
            compression: opts.compression,
            parts: up.parts,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// `Some(old)` when the tree in `plan` is exactly the one `old` describes (hashing only when
    /// paths, sizes and modes already agree).
    async fn unchanged<'a>(&self, plan: &ArchivePlan, old: &'a Manifest) -> Result<Option<&'a Manifest>> {
        let shape = |m: &Manifest| {
            let mut v: Vec<(String, Option<u64>, u32)> =
                m.files.iter().map(|f| (f.path.clone(), Some(f.size), f.mode)).collect();
            v.extend(m.dirs.iter().map(|d| (d.path.clone(), None, d.mode)));
            v.sort();
            v
        };
        let mut local: Vec<(String, Option<u64>, u32)> =
            plan.entries.iter().map(|e| (e.path.clone(), e.size, e.mode)).collect();
        local.sort();
        if local != shape(old) {
            return Ok(None);
        }
        let files: Vec<(String, PathBuf)> =
            plan.entries.iter().filter(|e| e.size.is_some()).map(|e| (e.path.clone(), e.source.clone())).collect();
        let hashes: Vec<(String, Sha256Hex)> = stream::iter(files)
            .map(|(path, source)| async move {
                tokio::task::spawn_blocking(move || {
                    archive::sha256_file(&source)
                        .map(|(h, _)| (path, h))
                        .map_err(|e| Error::io("cannot read", &source, e))
                })
                .await
                .map_err(|e| Error::other(format!("hash task failed: {e}"), None))?
            })
            .buffer_unordered(2)
            .try_collect()
            .await?;
        let by_path: std::collections::HashMap<&str, &Sha256Hex> =
            old.files.iter().map(|f| (f.path.as_str(), &f.sha256)).collect();
        Ok(hashes.iter().all(|(p, h)| by_path.get(p.as_str()) == Some(&h)).then_some(old))
    }

    /// Old archives in the bucket that no manifest references: all but the `keep` newest of
    /// each model, and none younger than `min_age` (an upload in progress has an archive and no
    /// manifest yet; a download that began on the previous version is still reading it). Also
    /// unfinished multipart uploads under the prefix older than `min_age` (a killed upload's parts,
    /// billed until aborted). Deletes and aborts them when `apply`. A model without a manifest is
    /// left alone; one whose manifest cannot be read is skipped with a warning, the others pruned.
    /// `models` empty means all.
    pub async fn prune_remote(
        &self,
        models: &[ModelName],
        keep: usize,
        min_age: std::time::Duration,
        apply: bool,
    ) -> Result<RemotePruneOutcome> {
        let names: Vec<ModelName> = if models.is_empty() {
            let objects = self
                .provider
                .list(self.layout.prefix())
                .await
                .map_err(|e| Error::from_provider(format!("listing {}", self.config.location()), e))?;
            objects.iter().filter_map(|o| self.layout.model_of_manifest_key(&o.key)).collect()
        } else {
            models.to_vec()
        };
        let cutoff = SystemTime::now().checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut out = RemotePruneOutcome::default();
        for model in names {
            let manifest = match self.fetch_manifest(&model).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e @ (Error::Integrity { .. } | Error::Other { .. })) if models.is_empty() => {
                    self.reporter.report(Event::Warning {
                        message: format!("{model}: skipped, its manifest cannot be read ({e})"),
                    });
                    out.skipped.push(model);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let prefix = self.layout.archives_prefix(&model);
            let mut archives =
                self.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
            archives.retain(|o| o.key != manifest.archive_key);
            // Keys begin with a UTC stamp: newest last in key order.
            archives.sort_by(|a, b| b.key.cmp(&a.key));
            for o in archives.into_iter().skip(keep) {
                if o.last_modified.is_none_or(|t| t > cutoff) {
                    continue;
                }
                if apply {
                    self.provider
                        .delete(&o.key)
                        .await
                        .map_err(|e| Error::from_provider(format!("deleting {}", o.key), e))?;
                }
                out.archives.push(RemotePruned { model: model.clone(), key: o.key, bytes: o.size });
            }
        }
        let pending = self.provider.list_pending_uploads(self.layout.prefix()).await.map_err(|e| {
            Error::from_provider(format!("listing unfinished uploads in {}", self.config.location()), e)
        })?;
        for p in pending {
            let wanted = models.is_empty() || models.iter().any(|m| p.key.starts_with(&self.layout.archives_prefix(m)));
            // An upload without a start time is treated as young: it may be running now.
            if !wanted || p.initiated.is_none_or(|t| t > cutoff) {
                continue;
            }
            if apply {
                self.provider
                    .abort_multipart(&p.key, &p.upload_id)
                    .await
                    .map_err(|e| Error::from_provider(format!("aborting the upload of {}", p.key), e))?;
            }
            out.unfinished_uploads.push(p.key);
        }
        Ok(out)
    }

    /// Every model in the bucket, with its manifest's summary and this machine's cached version.
    pub async fn list_cloud_models(&self) -> Result<Vec<RemoteModel>> {
        let objects = self
            .provider
            .list(self.layout.prefix())
            .await
            .map_err(|e| Error::from_provider(format!("listing {}", self.config.location()), e))?;
        let models: Vec<ModelName> = objects.iter().filter_map(|o| self.layout.model_of_manifest_key(&o.key)).collect();
        stream::iter(models)
            .map(|model| async move {
                let cached_path = self.cache.current(&model).ok().flatten();
                let cached = cached_path
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('@'))
                    .map(|(_, s)| s.to_string());
                match self.fetch_manifest(&model).await {
                    Ok(Some(m)) => Ok(RemoteModel {
                        cached_current: cached.as_deref() == Some(m.archive_sha256.short()),
                        model,
                        size: Some(m.total_size),
                        files: Some(m.files.len()),
                        sha256: Some(m.archive_sha256),
                        uploaded_at: Some(m.created_at),
                        compression: Some(m.compression),
                        cached,
                        error: None,
                    }),
                    Ok(None) => Ok(RemoteModel::unreadable(model, cached, "manifest vanished while listing".into())),
                    Err(e @ (Error::Integrity { .. } | Error::Other { .. })) => {
                        Ok(RemoteModel::unreadable(model, cached, e.to_string()))
                    }
                    Err(e) => Err(e),
                }
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Configuration, credentials, reachability and cache, in one report. Never fails on a
    /// storage error: it reports it.
    pub async fn status(&self) -> StatusReport {
        let credentials = self.provider.credential_source().await;
        let (reachable, error, exit_code) = match self.provider.check_bucket().await {
            Ok(()) => (true, None, 0),
            Err(e) => {
                let err = Error::from_provider(format!("checking {}", self.config.location()), e);
                let hint = err.hint().map(|h| format!(" (hint: {h})")).unwrap_or_default();
                (false, Some(format!("{err}{hint}")), err.exit_code())
            }
        };
        let (models_in_bucket, pending_uploads) =
            if reachable {
                let models =
                    self.provider.list(self.layout.prefix()).await.ok().map(|objs| {
                        objs.iter().filter(|o| self.layout.model_of_manifest_key(&o.key).is_some()).count()
                    });
                let pending = self
                    .provider
                    .list_pending_uploads(self.layout.prefix())
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| p.key)
                    .collect();
                (models, pending)
            } else {
                (None, Vec::new())
            };
        let mut models_cached: Vec<String> = self
            .cache
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.current)
            .map(|v| v.model.to_string())
            .collect();
        models_cached.dedup();
        StatusReport {
            config_source: self.source.to_string(),
            provider: self.config.provider.to_string(),
            location: self.config.location(),
            bucket: self.config.bucket.clone(),
            prefix: self.config.prefix.clone(),
            region: self.config.region.clone(),
            endpoint: self.config.endpoint.clone(),
            credentials,
            reachable,
            error,
            exit_code,
            models_in_bucket,
            pending_uploads,
            cache_dir: self.cache.root().to_path_buf(),
            cache_bytes: self.cache.disk_usage(),
            models_cached,
            warnings: self.warnings.iter().cloned().chain(self.cache.lock_warning()).collect(),
        }
    }
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

/// A staging directory that removes itself unless it was moved into place.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = remove_tree(&self.0);
        }
        let _ = std::fs::remove_file(resume_marker(&self.0));
    }
}

/// What a crashed download left that a new one can keep.
struct Resumable {
    staging: PathBuf,
    /// Index into the manifest's expected entries of the first entry still to extract.
    start_index: usize,
    /// Where that entry's headers begin in the archive.
    start_offset: u64,
    kept_files: usize,
    kept_bytes: u64,
}

/// Finds a leftover staging directory of `manifest`'s version (uncompressed archives only) and
/// keeps its leading run of complete files whose sha256 matches the manifest; everything else
/// in it is removed. Blocking: it hashes the files it keeps.
fn find_resumable(cache: &Cache, model: &ModelName, manifest: &Manifest) -> Result<Option<Resumable>> {
    use std::collections::{HashMap, HashSet};
    if manifest.compression != Compression::None || manifest.files.iter().any(|f| f.offset.is_none()) {
        return Ok(None);
    }
    let Ok(rd) = std::fs::read_dir(cache.staging_root()) else {
        return Ok(None);
    };
    let prefix = format!("{model}@");
    let staging = rd.flatten().map(|e| e.path()).find(|p| {
        p.is_dir()
            && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            && std::fs::read_to_string(resume_marker(p)).is_ok_and(|s| s.trim() == manifest.archive_sha256.as_str())
    });
    let Some(staging) = staging else {
        return Ok(None);
    };
    let files: HashMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let expected = manifest.expected_entries();
    let (mut start_index, mut start_offset, mut kept_bytes) = (0usize, 0u64, 0u64);
    let mut kept: HashSet<PathBuf> = HashSet::new();
    for (i, e) in expected.iter().enumerate() {
        let Some(f) = files.get(e.path.as_str()) else { continue };
        let path = staging.join(&f.path);
        let complete = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == f.size)
            && archive::sha256_file(&path).is_ok_and(|(h, _)| h == f.sha256);
        if !complete {
            break;
        }
        kept.insert(path);
        kept_bytes += f.size;
        start_index = i + 1;
        start_offset = f.offset.unwrap_or(0) + f.size.div_ceil(512) * 512;
    }
    if kept.is_empty() {
        return Ok(None);
    }
    // Anything else (a half-written file, files after it) goes; so do directories the manifest
    // does not list (nothing may be installed that it does not describe).
    let dirs: HashSet<PathBuf> = manifest
        .dirs
        .iter()
        .map(|d| staging.join(&d.path))
        .chain(
            manifest
                .files
                .iter()
                .flat_map(|f| staging.join(&f.path).ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>()),
        )
        .collect();
    for entry in walkdir::WalkDir::new(&staging).min_depth(1).contents_first(true).into_iter().flatten() {
        let path = entry.path();
        if entry.file_type().is_dir() {
            if !dirs.contains(path) {
                remove_tree(path)?;
            }
        } else if !kept.contains(path) {
            std::fs::remove_file(path).map_err(|e| Error::io("cannot remove", path, e))?;
        }
    }
    Ok(Some(Resumable { staging, start_index, start_offset, kept_files: kept.len(), kept_bytes }))
}

/// How a lost manifest commit is described (and recognised by the fallback's `--publish`).
const CONFLICT: &str = "another upload of a different tree committed while this one ran";

/// Makes the tree a fallback command left at `dir` safe to install and upload: a symbolic link
/// to a file inside `dir` is replaced by a copy of that file; any other link (out of `dir`, to a
/// directory, dangling) is refused, so nothing from elsewhere on the machine is installed or
/// published, and the installed version holds no link. Blocking.
fn resolve_links_inside(dir: &Path) -> Result<()> {
    let root = std::fs::canonicalize(dir).map_err(|e| Error::io("cannot resolve", dir, e))?;
    let links: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.path_is_symlink())
        .map(|e| e.path().to_path_buf())
        .collect();
    for link in links {
        let rel = link.strip_prefix(dir).unwrap_or(&link).display().to_string();
        let refuse = |why: String| {
            Error::other(
                format!("the fallback command left a symbolic link {rel} {why}; nothing was installed or uploaded"),
                Some("have the command copy files into {dest} (e.g. `cp -rL`, or `git clone` then remove links); links out of {dest} are never followed".into()),
            )
        };
        let target = match std::fs::canonicalize(&link) {
            Ok(t) => t,
            Err(_) => {
                return Err(refuse(format!(
                    "that points nowhere (-> {:?})",
                    std::fs::read_link(&link).unwrap_or_default()
                )));
            }
        };
        if !target.starts_with(&root) {
            return Err(refuse("that points outside {dest}".to_string()));
        }
        if !target.is_file() {
            return Err(refuse("to a directory".to_string()));
        }
        let tmp = link.with_file_name(format!(".{}.link-copy", link.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::copy(&target, &tmp).map_err(|e| Error::io("cannot copy", &target, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| Error::io("cannot replace", &link, e))?;
    }
    Ok(())
}

/// The archive key recorded for a version the fallback command made (it has no archive).
const FALLBACK_KEY: &str = "(fallback command)";

/// Runs a fallback command with `{model}` and `{dest}` filled in, its output on stderr (stdout
/// carries only model paths).
async fn run_fallback(template: &str, model: &ModelName, dest: &Path) -> Result<()> {
    use std::os::fd::AsFd as _;
    let quoted = format!("'{}'", dest.display().to_string().replace('\'', "'\\''"));
    let command = template.replace("{model}", model.as_str()).replace("{dest}", &quoted);
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Io { context: "cannot pass stderr to the fallback command".into(), source: e })?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stdout))
        .env("CROWECODE_MODEL", model.as_str())
        .env("CROWECODE_DEST", dest)
        // Its own process group, so everything it starts can be stopped with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Io { context: format!("cannot run the fallback command `{command}`"), source: e })?;
    // Kills the whole group when this future ends, however it ends (finished, failed, or dropped
    // by SIGINT/SIGTERM): nothing the command started may go on writing into the cache.
    let _group = child.id().map(ProcessGroup);
    let status = child
        .wait()
        .await
        .map_err(|e| Error::Io { context: format!("cannot wait for the fallback command `{command}`"), source: e })?;
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => "a signal".to_string(),
        };
        return Err(Error::other(
            format!("the fallback command for {model} failed with {how}: {command}"),
            Some("its output is above; fix the command (config `fallback_command`) or upload the model".into()),
        ));
    }
    Ok(())
}

/// A process group, killed (SIGKILL) on drop.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

fn build_manifest(
    model: &ModelName,
    archive_key: &str,
    compression: Compression,
    up: &transfer::UploadedArchive,
) -> Manifest {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for (entry, hash) in up.plan.entries.iter().zip(&up.file_hashes) {
        match (entry.size, hash) {
            (Some(size), Some(sha256)) => files.push(FileEntry {
                path: entry.path.clone(),
                size,
                sha256: sha256.clone(),
                mode: entry.mode,
                offset: (compression == Compression::None).then_some(entry.data_offset),
            }),
            _ => dirs.push(DirEntry { path: entry.path.clone(), mode: entry.mode }),
        }
    }
    Manifest {
        format: FORMAT_VERSION,
        model: model.clone(),
        archive_key: archive_key.to_string(),
        archive_sha256: up.sha256.clone(),
        archive_size: up.size,
        compression,
        total_size: up.plan.file_bytes,
        files,
        dirs,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
