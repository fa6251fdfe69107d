//! `status`: configuration, credentials, reachability and cache in one report, which never fails
//! on a storage error: it reports it.

use std::path::PathBuf;

use serde::Serialize;

use super::Session;
use crate::cache::Cache;
use crate::config::{CloudConfig, ConfigSource};
use crate::error::Error;

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
    /// Whether the bucket honours conditional writes (tag moves need them); `None` when it could
    /// not be checked (unreachable, or no permission to write).
    pub conditional_writes: Option<bool>,
    /// The signature policy of this machine, and who signed the cached models.
    pub signatures: SignatureStatus,
    /// The mirror archive reads go through, when one is configured.
    pub mirror: Option<MirrorStatus>,
}

/// The mirror, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct MirrorStatus {
    pub url: String,
    /// A forward proxy (`data_proxy`) rather than a mirror of the bucket's paths.
    pub forward_proxy: bool,
    /// Whether it answered: a GET of its base URL (any HTTP status), or for a forward proxy a
    /// connection.
    pub answers: bool,
    /// The HTTP status of that GET.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// Whether the bucket's credential makes the presigned (or SAS) URLs mirror reads need;
    /// without them every read goes to the bucket directly.
    pub presigned_urls: bool,
}

/// The signature policy in force, for `status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SignatureStatus {
    /// Trusted public keys (short id and where configured).
    pub trusted_keys: Vec<String>,
    pub require_signature: bool,
    /// Keys this command would sign with (short ids; `CROWECODE_SIGNING_KEY`).
    pub signing_keys: Vec<String>,
    /// Each current cached model: the trusted key that signed it, or why none did (only with
    /// trusted keys).
    pub cached: std::collections::BTreeMap<String, String>,
}

/// Configuration, credentials, reachability and cache, in one report. Never fails on a
/// storage error: it reports it.
pub(crate) async fn run(s: &Session, source: &ConfigSource, warnings: &[String]) -> StatusReport {
    let credentials = s.provider.credential_source().await;
    let mut report = StatusReport::offline(&s.config, source, warnings, &s.cache, credentials);
    report.signatures = signature_status(s);
    if let Some(m) = s.plane.mirror() {
        let (answers, status, error) = match m.answers().await {
            Ok(code) => (true, code, None),
            Err(e) => (false, None, Some(e)),
        };
        let probe = format!("{}_crowecode-probe/archives/none", s.layout.prefix());
        let presigned_urls =
            matches!(s.plane.direct().data_url(&probe, std::time::Duration::from_secs(60)).await, Ok(Some(_)));
        report.mirror = Some(MirrorStatus {
            url: m.base().to_string(),
            forward_proxy: m.is_forward_proxy(),
            answers,
            status,
            error,
            presigned_urls,
        });
    }
    match s.provider.check_bucket().await {
        Ok(()) => {
            report.reachable = true;
            report.models_in_bucket = s
                .provider
                .list(s.layout.prefix())
                .await
                .ok()
                .map(|objs| objs.iter().filter(|o| s.layout.model_of_manifest_key(&o.key).is_some()).count());
            report.pending_uploads = s
                .provider
                .list_pending_uploads(s.layout.prefix())
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.key)
                .collect();
            report.conditional_writes = super::probe::conditional_writes(s).await.ok();
        }
        Err(e) => {
            let err = Error::from_provider(format!("checking {}", s.config.location()), e);
            report.error = Some(describe(&err));
            report.exit_code = err.exit_code();
        }
    }
    report
}

fn signature_status(s: &Session) -> SignatureStatus {
    let mut out = SignatureStatus {
        trusted_keys: s.trust.keys.iter().map(|k| k.label()).collect(),
        require_signature: s.trust.require,
        signing_keys: s.trust.signers.iter().map(|k| k.public().short_id().to_string()).collect(),
        cached: Default::default(),
    };
    if !s.trust.checks() {
        return out;
    }
    for v in s.cache.list().unwrap_or_default().into_iter().filter(|v| v.current) {
        let Some(manifest) = s.cache.read_manifest_copy(&v.path, &v.model) else { continue };
        let signature = std::fs::read(s.cache.signature_path(&v.path)).ok();
        let verdict = super::signatures::check_installed(
            &s.trust,
            &v.model,
            s.cache.version_of(&v.path).as_ref(),
            &manifest,
            signature.as_deref(),
        );
        out.cached.insert(
            v.model.to_string(),
            verdict.map_or_else(|why| format!("not signed by a trusted key: {why}"), |k| format!("signed by {k}")),
        );
    }
    out
}

/// One line for a failed check: the message (without the `bucket:` origin a missing bucket's
/// error carries) and its hint.
fn describe(err: &Error) -> String {
    let message = match err {
        Error::Config { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match err.hint() {
        Some(h) => format!("{message} (hint: {h})"),
        None => message,
    }
}

impl StatusReport {
    /// What is known without asking the bucket: the configuration and the cache.
    fn offline(
        config: &CloudConfig,
        source: &ConfigSource,
        warnings: &[String],
        cache: &Cache,
        credentials: String,
    ) -> Self {
        let mut models_cached: Vec<String> =
            cache.list().unwrap_or_default().into_iter().filter(|v| v.current).map(|v| v.model.to_string()).collect();
        models_cached.dedup();
        Self {
            config_source: source.to_string(),
            provider: config.provider.to_string(),
            location: config.location(),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            region: config.region.clone(),
            endpoint: config.endpoint.clone(),
            credentials,
            reachable: false,
            error: None,
            exit_code: 0,
            models_in_bucket: None,
            pending_uploads: Vec::new(),
            cache_dir: cache.root().to_path_buf(),
            cache_bytes: cache.disk_usage(),
            models_cached,
            warnings: warnings.iter().cloned().chain(cache.lock_warning()).collect(),
            conditional_writes: None,
            signatures: SignatureStatus::default(),
            mirror: None,
        }
    }

    /// The report when no provider could be set up at all (a credentials file that does not
    /// parse, say): the configuration and the cache, with the reason the bucket was not checked.
    pub(crate) fn without_provider(
        config: &CloudConfig,
        source: &ConfigSource,
        warnings: &[String],
        cache: &Cache,
        err: &Error,
    ) -> Self {
        let mut report = Self::offline(config, source, warnings, cache, "not usable (see the error)".into());
        report.error = Some(describe(err));
        report.exit_code = err.exit_code();
        report
    }
}
