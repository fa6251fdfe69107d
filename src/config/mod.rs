//! Configuration: the seed-compatible JSON document, where it comes from, and its validation.
//!
//! The document is `{"enabled":true,"provider":"s3","config":{"bucket":..,"region":..,"prefix":..}}`,
//! found (highest precedence first) in command-line flags, `CROWECODE_CLOUD_CONFIG_B64`, or the config
//! file. Credentials never belong here: each cloud's own credential chain supplies them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

mod document;
mod file;
mod validate;

use document::Document;

use file::read_config_file;
pub use file::{FileLocation, MAX_CONFIG_BYTES, default_config_path, file_location, write_config_file};
use validate::{Problem, bucket_problem, check_prefix, check_url, region_problem};
pub(crate) use validate::{looks_like_secret, shell_quote};
pub use validate::{normalise_prefix, redact_url};

/// Name of the environment variable holding the base64 config.
pub const ENV_CONFIG_B64: &str = "CROWECODE_CLOUD_CONFIG_B64";
/// Name of the environment variable naming the config file.
pub const ENV_CONFIG_PATH: &str = "CROWECODE_CONFIG";

/// Which storage service holds the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Amazon S3 or an S3-compatible store (`endpoint`).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage (`bucket` is the container).
    Azure,
    /// A directory on this machine, with the same semantics as a bucket.
    Local,
}

impl ProviderKind {
    /// All kinds, in the order the help lists them.
    pub const ALL: [ProviderKind; 4] = [Self::S3, Self::Gcs, Self::Azure, Self::Local];

    /// The name used in config and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::Gcs => "gcs",
            Self::Azure => "azure",
            Self::Local => "local",
        }
    }

    /// Parses a provider name (case-insensitive; `aws`, `gs`, `google` and `blob` are accepted aliases).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "s3" | "aws" => Some(Self::S3),
            "gcs" | "gs" | "google" => Some(Self::Gcs),
            "azure" | "blob" | "az" => Some(Self::Azure),
            "local" | "file" | "fs" => Some(Self::Local),
            _ => None,
        }
    }

    /// The config keys this provider reads.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Self::S3 => &[
                "bucket",
                "prefix",
                "region",
                "endpoint",
                "sse",
                "kms_key_id",
                "fallback_command",
                "mirror",
                "data_proxy",
                "signing_scope",
            ],
            Self::Gcs => &[
                "bucket",
                "prefix",
                "project",
                "endpoint",
                "kms_key",
                "fallback_command",
                "mirror",
                "data_proxy",
                "signing_scope",
            ],
            Self::Azure => &[
                "bucket",
                "prefix",
                "account",
                "endpoint",
                "encryption_scope",
                "fallback_command",
                "mirror",
                "data_proxy",
                "signing_scope",
            ],
            Self::Local => &["bucket", "prefix", "fallback_command", "signing_scope"],
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every key any provider reads, besides provider-independent ones.
const KNOWN_KEYS: &[&str] = &[
    "signing_scope",
    "bucket",
    "prefix",
    "region",
    "endpoint",
    "account",
    "project",
    "sse",
    "kms_key_id",
    "kms_key",
    "encryption_scope",
    "fallback_command",
    "mirror",
    "data_proxy",
];

/// A validated configuration.
///
/// Holds no secrets by construction; unknown keys are kept (so `setup` can write them back) but only
/// their names are ever shown.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CloudConfig {
    /// Which service.
    #[serde(skip)]
    pub provider: ProviderKind,
    /// Bucket (S3, GCS), container (Azure) or directory (local).
    pub bucket: String,
    /// AWS region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix inside the bucket; empty or ending in `/`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Endpoint URL for S3-compatible stores, emulators, sovereign clouds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Azure storage account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// GCP project (for bucket creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// S3 server-side encryption: `AES256` or `aws:kms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// S3 KMS key id for `aws:kms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// GCS customer-managed encryption key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// Azure encryption scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_scope: Option<String>,
    /// Runs when a model is missing from the bucket: `{model}` and `{dest}` are replaced by the
    /// model name and the (shell-quoted) directory to fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_command: Option<String>,
    /// Base URL of a mirror (a reverse-proxy cache or a CDN in front of the bucket) that serves
    /// archive reads on the same request path; manifests, tags and writes go to the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// An HTTP proxy archive reads are sent to as plain `http://` requests (Dragonfly's dfdaemon,
    /// with a `useTLS` rule to reach the bucket over TLS): nothing has to trust a proxy's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_proxy: Option<String>,
    /// Public keys whose signatures are trusted: PEM text or paths (see [`crate::signing`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Refuse what no trusted key signed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
    /// The AWS shared-config profile whose credentials this bucket is reached with, instead of
    /// the default chain: `copy --to-profile` (the destination of a copy between two S3
    /// accounts). Never stored in a config.
    #[serde(skip)]
    pub aws_profile: Option<String>,
    /// The scope signed tag moves are bound to (default: [`CloudConfig::location`]); machines
    /// accept only claims of their own scope. Give staging and prod different ones, and keep a
    /// bucket's scope when it is copied or moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_scope: Option<String>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so that unknown keys, which could hold anything, show by name only.
        f.debug_struct("CloudConfig")
            .field("provider", &self.provider)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("account", &self.account)
            .field("project", &self.project)
            .field("sse", &self.sse)
            .field("kms_key_id", &self.kms_key_id.as_ref().map(|_| "<set>"))
            .field("kms_key", &self.kms_key.as_ref().map(|_| "<set>"))
            .field("encryption_scope", &self.encryption_scope)
            .field("fallback_command", &self.fallback_command)
            .field("mirror", &self.mirror)
            .field("data_proxy", &self.data_proxy)
            .field("trusted_keys", &self.trusted_keys.len())
            .field("require_signature", &self.require_signature)
            .field("signing_scope", &self.signing_scope)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where the effective configuration came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum ConfigSource {
    /// Command-line flags alone.
    Flags,
    /// `CROWECODE_CLOUD_CONFIG_B64`.
    Env,
    /// A config file.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flags => f.write_str("command-line flags"),
            Self::Env => f.write_str(ENV_CONFIG_B64),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Per-key overrides from the command line (`--provider`, `--bucket`, ...).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub provider: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub account: Option<String>,
    pub project: Option<String>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub kms_key: Option<String>,
    pub encryption_scope: Option<String>,
    pub fallback_command: Option<String>,
    pub mirror: Option<String>,
    pub data_proxy: Option<String>,
    /// Keys whose value came from an environment variable (named here) rather than `--key`.
    pub from_env: BTreeMap<&'static str, &'static str>,
}

impl Overrides {
    /// What set `key` on the command line: its environment variable, else its flag.
    fn source_of(&self, key: &str) -> String {
        match self.from_env.get(key) {
            Some(var) => (*var).to_string(),
            None => format!("--{}", key.replace('_', "-")),
        }
    }

    fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, v)| v.is_none()) && self.provider.is_none()
    }

    fn pairs(&self) -> [(&'static str, &Option<String>); 13] {
        [
            ("bucket", &self.bucket),
            ("prefix", &self.prefix),
            ("region", &self.region),
            ("endpoint", &self.endpoint),
            ("account", &self.account),
            ("project", &self.project),
            ("sse", &self.sse),
            ("kms_key_id", &self.kms_key_id),
            ("kms_key", &self.kms_key),
            ("encryption_scope", &self.encryption_scope),
            ("fallback_command", &self.fallback_command),
            ("mirror", &self.mirror),
            ("data_proxy", &self.data_proxy),
        ]
    }
}

/// The outcome of resolving flags, environment and file.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub config: CloudConfig,
    pub source: ConfigSource,
    /// Things worth telling the user (unknown keys, ignored keys); never values.
    pub warnings: Vec<String>,
}

/// Resolves the effective configuration: flags > `CROWECODE_CLOUD_CONFIG_B64` > file.
///
/// `env` reads an environment variable (injected so tests need not touch the process environment).
pub fn resolve(env: &dyn Fn(&str) -> Option<String>, file: &FileLocation, overrides: &Overrides) -> Result<Resolved> {
    let mut warnings = Vec::new();
    let b64 = env(ENV_CONFIG_B64);
    if b64.as_deref().is_some_and(|v| v.trim().is_empty()) {
        warnings.push(format!("{ENV_CONFIG_B64} is set but empty; ignored"));
    }
    let base: Option<(Document, ConfigSource)> = if let Some(b64) = b64.filter(|s| !s.trim().is_empty()) {
        Some((Document::from_b64(&b64, &mut warnings)?, ConfigSource::Env))
    } else {
        match read_config_file(&file.path) {
            Ok(Some(bytes)) => {
                let origin = file.path.display().to_string();
                Some((Document::from_json(&bytes, &origin, &mut warnings)?, ConfigSource::File(file.path.clone())))
            }
            Ok(None) if !file.explicit => None,
            Ok(None) => {
                return Err(Error::config(
                    file.path.display().to_string(),
                    "cannot read the config file: it does not exist",
                    format!(
                        "check the path given by --config or CROWECODE_CONFIG, or create it there with `crowecode-cloud --config {} setup --provider s3 --bucket NAME`",
                        shell_quote(&file.path.display().to_string())
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::config(
                    file.path.display().to_string(),
                    format!("cannot read the config file: {e}"),
                    "check the path given by --config or CROWECODE_CONFIG (a regular file of at most 1 MiB)",
                ));
            }
        }
    };

    let (doc, source) = match base {
        // A different provider on the command line starts from a clean slate: mixing an S3
        // region into an Azure config would only confuse.
        Some((doc, src))
            if overrides.provider.as_deref().is_none_or(|p| ProviderKind::parse(p) == doc.provider_kind()) =>
        {
            (doc, src)
        }
        _ if !overrides.is_empty() => (Document::default(), ConfigSource::Flags),
        Some((doc, src)) => (doc, src),
        None => {
            let looked_at = if file.path.as_os_str().is_empty() {
                "none: HOME and XDG_CONFIG_HOME are not set".to_string()
            } else {
                file.path.display().to_string()
            };
            return Err(Error::NotConfigured { looked_at });
        }
    };
    let origin = source.to_string();
    if doc.enabled == Some(false) && overrides.is_empty() {
        return Err(Error::config(
            origin,
            "cloud storage is disabled (\"enabled\": false)",
            "set \"enabled\": true, or run `crowecode-cloud setup` again",
        ));
    }
    let config = doc.into_config(overrides, &origin, &mut warnings)?;
    Ok(Resolved { config, source, warnings })
}

impl CloudConfig {
    /// Checks the bucket name against the provider's rules and the encryption options for consistency.
    pub fn validate(&self, origin: &str) -> Result<()> {
        match self.problem() {
            Some((_, problem)) => Err(problem.in_config(origin)),
            None => Ok(()),
        }
    }

    /// The first value that breaks the provider's rules, with the key it is under.
    pub(crate) fn problem(&self) -> Option<(&'static str, Problem)> {
        if let Some(problem) = bucket_problem(self.provider, &self.bucket) {
            let hint = match self.provider {
                ProviderKind::Local => "give a directory path, e.g. --bucket /srv/model-bucket",
                ProviderKind::Azure => "container names are 3-63 lowercase letters, digits and single hyphens",
                _ => {
                    "bucket names are 3-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                }
            };
            let message = format!("invalid {} bucket name {:?}: {problem}", self.provider, self.bucket);
            return Some(("bucket", Problem::new(message, hint)));
        }
        if let Some(region) = &self.region
            && let Some(problem) = region_problem(region)
        {
            let message = format!("invalid region {region:?}: {problem}");
            return Some(("region", Problem::new(message, "for example --region us-west-2")));
        }
        if let Some(sse) = &self.sse
            && sse != "AES256"
            && sse != "aws:kms"
        {
            return Some(("sse", Problem::new(format!("invalid sse {sse:?}"), "use \"AES256\" or \"aws:kms\"")));
        }
        if self.kms_key_id.is_some() && self.sse.as_deref() != Some("aws:kms") && self.provider == ProviderKind::S3 {
            let message = "kms_key_id is set but sse is not \"aws:kms\"".to_string();
            return Some(("kms_key_id", Problem::new(message, "add --sse aws:kms")));
        }
        None
    }

    /// The seed-compatible JSON document for this configuration.
    pub fn to_document(&self) -> Value {
        let mut top = Map::new();
        top.insert("enabled".into(), Value::Bool(true));
        top.insert("provider".into(), Value::String(self.provider.as_str().into()));
        top.insert("config".into(), serde_json::to_value(self).expect("config serialises"));
        Value::Object(top)
    }

    /// Base64 (standard, padded) of the compact document: the value for `CROWECODE_CLOUD_CONFIG_B64`.
    pub fn to_b64(&self) -> String {
        let json = document_string(self);
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// A short `scheme://bucket/prefix` description.
    /// The scope signed tag moves of this bucket are bound to: `signing_scope`, else the location.
    pub fn signing_scope(&self) -> String {
        self.signing_scope.clone().unwrap_or_else(|| self.location())
    }

    /// Where models live, as one line: `s3://bucket/prefix/`.
    pub fn location(&self) -> String {
        match self.provider {
            ProviderKind::S3 => format!("s3://{}/{}", self.bucket, self.prefix),
            ProviderKind::Gcs => format!("gs://{}/{}", self.bucket, self.prefix),
            ProviderKind::Azure => format!("azure://{}/{}", self.bucket, self.prefix),
            ProviderKind::Local => format!("{}/{}", self.bucket.trim_end_matches('/'), self.prefix),
        }
    }
}

/// The compact JSON text, keys in the seed's order (`enabled`, `provider`, `config`).
fn document_string(cfg: &CloudConfig) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        enabled: bool,
        provider: &'a str,
        config: &'a CloudConfig,
    }
    serde_json::to_string(&Doc { enabled: true, provider: cfg.provider.as_str(), config: cfg })
        .expect("config serialises")
}

#[cfg(test)]
mod tests;
