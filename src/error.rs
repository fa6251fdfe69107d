//! The library's error types and the exit codes they map to: [`Error`], what users see, and
//! [`ProviderError`], what a storage call reports (the bottom of the crate: it imports nothing
//! of it, so every layer can use both).
//!
//! Every error carries the context a user needs (model, bucket, key, path) and most carry a hint:
//! the command or flag to try next. The CLI renders them in one place (`cli::Printer::error`).

use std::io;
use std::path::Path;

/// What kind of failure a storage call had; retries and exit codes key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// The object does not exist.
    NotFound,
    /// The bucket (container, directory) does not exist.
    BucketNotFound,
    /// No credentials, or credentials the service rejects.
    Unauthenticated,
    /// Authenticated, but the action is not allowed.
    PermissionDenied,
    /// A conditional write lost (create-only target exists, or the ETag changed).
    Precondition,
    /// The service asked us to slow down.
    RateLimited,
    /// The operation is not supported by this backend.
    Unsupported,
    /// Connection reset, timeout, 5xx, or a stream that stalled.
    Transport,
    /// Anything else.
    Other,
}

/// A failed storage call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// What went wrong, provider-agnostically.
    pub kind: ProviderErrorKind,
    /// Whether trying again may help.
    pub temporary: bool,
    /// One line, including the service's own code when it gave one; never a secret.
    pub message: String,
    /// What the user can do, when the provider knows better than the caller.
    pub hint: Option<String>,
    /// How many attempts were made before giving up (set by the retry layer).
    pub attempts: u32,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    /// A new error; `temporary` follows from the kind (transport and rate limiting).
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        let temporary = matches!(kind, ProviderErrorKind::Transport | ProviderErrorKind::RateLimited);
        Self { kind, temporary, message: crate::redact::text(&message.into()), hint: None, attempts: 0, source: None }
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether this is a missing object.
    pub fn is_not_found(&self) -> bool {
        self.kind == ProviderErrorKind::NotFound
    }
}

/// Process exit codes, documented in the README. Stable: scripts depend on them.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Anything not covered below.
    pub const FAILURE: i32 = 1;
    /// Bad command line: unknown flag, invalid model name, bad size.
    pub const USAGE: i32 = 2;
    /// No usable configuration: none found, malformed, disabled, or the bucket does not exist.
    pub const NOT_CONFIGURED: i32 = 3;
    /// Credentials missing or rejected, or permission denied.
    pub const ACCESS: i32 = 4;
    /// The model is not in the bucket.
    pub const NOT_FOUND: i32 = 5;
    /// A checksum, size or archive-safety check failed; nothing was installed.
    pub const INTEGRITY: i32 = 6;
    /// The network was still failing after retries.
    pub const NETWORK: i32 = 7;
    /// A tag moved meanwhile: a compare-and-swap lost (or the storage cannot do one); nothing
    /// was changed by this command.
    pub const CONFLICT: i32 = 8;
    /// Stopped by SIGINT (Ctrl-C), after cleaning up.
    pub const SIGINT: i32 = 130;
    /// Stopped by SIGTERM (what Kubernetes sends a pod it stops), after cleaning up.
    pub const SIGTERM: i32 = 143;
}

/// Everything that can go wrong in `crowecode_cloud`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (exit 2).
    #[error("{message}")]
    Usage { message: String, hint: Option<String> },

    /// The configuration is missing, malformed or unusable (exit 3). `origin` names where it came
    /// from: a file path, `CROWECODE_CLOUD_CONFIG_B64`, or a flag.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String, hint: Option<String> },

    /// No configuration at all (exit 3).
    #[error(
        "cloud storage is not configured (no --provider/--bucket flags, no CROWECODE_CLOUD_CONFIG_B64, no config file at {looked_at})"
    )]
    NotConfigured { looked_at: String },

    /// Credentials missing or rejected, or an action denied (exit 4).
    #[error("{message}")]
    Access {
        message: String,
        hint: Option<String>,
        #[source]
        source: Option<ProviderError>,
    },

    /// The model has no manifest in the bucket (exit 5).
    #[error("{} not found in {location}", what_is_missing(model))]
    ModelNotFound { model: String, location: String },

    /// Bytes did not match what the manifest promised, or an archive was unsafe (exit 6).
    #[error("integrity check failed for {object}: {what}")]
    Integrity { object: String, what: String, expected: Option<String>, computed: Option<String> },

    /// What no trusted key signed, or a signature that does not match (exit 6): nothing was
    /// installed. `subject` is the reference (`Alpha@sha256:…`, `Alpha:latest`).
    #[error("signature check failed for {subject}: {what}")]
    Signature { subject: String, what: String, hint: String },

    /// Still failing after the retries (exit 7).
    #[error("{context}: still failing after {attempts} attempts: {source}")]
    Network {
        context: String,
        attempts: u32,
        #[source]
        source: ProviderError,
    },

    /// A local file-system operation failed (exit 1).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A storage call failed for a reason without a more specific code (exit 1).
    #[error("{context}: {source}")]
    Provider {
        context: String,
        #[source]
        source: ProviderError,
    },

    /// Anything else (exit 1).
    #[error("{message}")]
    Other { message: String, hint: Option<String> },

    /// A tag (or the model's latest version) moved while this command ran, or the storage
    /// cannot move tags safely (exit 8).
    #[error("{message}")]
    Conflict { message: String, hint: Option<String> },

    /// The COMMAND given to `run` could not be started: 127 when there is no such command, 126
    /// when it is not executable (as a shell says).
    #[error("{message}")]
    CommandNotRunnable { message: String, hint: String, code: i32 },

    /// Stopped by SIGINT (exit 130) or SIGTERM (exit 143), after cleaning up.
    #[error("interrupted by {signal}{cleanup}")]
    Interrupted { signal: &'static str, code: i32, cleanup: String },
}

impl Error {
    /// A usage error with a hint.
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::Usage { message: message.into(), hint: Some(hint.into()) }
    }

    /// A config error from `origin` with a hint.
    pub fn config(origin: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::Config { origin: origin.into(), message: message.into(), hint: Some(hint.into()) }
    }

    /// An I/O error with what was being done to which path.
    pub fn io(what: &str, path: &Path, source: io::Error) -> Self {
        Self::Io { context: format!("{what} {}", path.display()), source }
    }

    /// A failure without a more specific kind.
    pub fn other(message: impl Into<String>, hint: Option<String>) -> Self {
        Self::Other { message: message.into(), hint }
    }

    /// An integrity failure with the expected and computed values.
    pub fn integrity(
        object: impl Into<String>,
        what: impl Into<String>,
        expected: Option<String>,
        computed: Option<String>,
    ) -> Self {
        Self::Integrity { object: object.into(), what: what.into(), expected, computed }
    }

    /// Maps a provider error to the error users see, by its kind: this is where the storage
    /// failure kinds become exit codes.
    pub fn from_provider(context: impl Into<String>, err: ProviderError) -> Self {
        let context = context.into();
        match err.kind {
            ProviderErrorKind::Unauthenticated | ProviderErrorKind::PermissionDenied => {
                let hint = err.hint.clone();
                Self::Access { message: format!("{context}: {err}"), hint, source: None }
            }
            ProviderErrorKind::BucketNotFound => Self::Config {
                origin: "bucket".into(),
                message: format!("{context}: {err}"),
                hint: Some(err.hint.clone().unwrap_or_else(|| {
                    "check the bucket name with `crowecode-cloud status`, or create it with `crowecode-cloud setup --create-bucket ...`".into()
                })),
            },
            _ if err.temporary => Self::Network { context, attempts: err.attempts.max(1), source: err },
            _ => Self::Provider { context, source: err },
        }
    }

    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage { .. } => exit::USAGE,
            Self::Config { .. } | Self::NotConfigured { .. } => exit::NOT_CONFIGURED,
            Self::Access { .. } => exit::ACCESS,
            Self::ModelNotFound { .. } => exit::NOT_FOUND,
            Self::Integrity { .. } | Self::Signature { .. } => exit::INTEGRITY,
            Self::Network { .. } => exit::NETWORK,
            Self::Io { .. } | Self::Provider { .. } | Self::Other { .. } => exit::FAILURE,
            Self::Conflict { .. } => exit::CONFLICT,
            Self::Interrupted { code, .. } | Self::CommandNotRunnable { code, .. } => *code,
        }
    }

    /// What to do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Usage { hint, .. }
            | Self::Config { hint, .. }
            | Self::Access { hint, .. }
            | Self::Other { hint, .. }
            | Self::Conflict { hint, .. } => hint.clone(),
            Self::Signature { hint, .. } | Self::CommandNotRunnable { hint, .. } => Some(hint.clone()),
            Self::NotConfigured { .. } => Some(
                "run `crowecode-cloud setup --provider s3 --bucket NAME`, or set CROWECODE_CLOUD_CONFIG_B64".into(),
            ),
            Self::ModelNotFound { model, location } if location.ends_with("(offline)") => Some(format!(
                "--offline uses only what this machine has: download {model} once while the bucket is reachable"
            )),
            Self::ModelNotFound { model, location } if location.starts_with("the cache") => Some(format!(
                "it was never downloaded on this machine: run `crowecode-cloud download {model}`, or `crowecode-cloud list --local` to see the cached models"
            )),
            Self::ModelNotFound { model, .. } if model.contains([':', '@']) => {
                let name = model.split([':', '@']).next().unwrap_or(model);
                Some(format!(
                    "run `crowecode-cloud history {name}` to see its versions and tags (`crowecode-cloud list` for the models)"
                ))
            }
            Self::ModelNotFound { .. } => Some("run `crowecode-cloud list` to see the models in the bucket".into()),
            Self::Integrity { .. } => Some(
                "nothing was installed and the previous version is untouched; run the command again, and if it fails the same way re-upload the model (`upload --force` sends every piece again, repairing a damaged one)".into(),
            ),
            Self::Network { source, .. } => Some(source.hint.clone().unwrap_or_else(|| {
                "check the network path to the storage endpoint (proxy, DNS, firewall); the command resumes where it stopped when run again".into()
            })),
            Self::Provider { source, .. } => source.hint.clone(),
            Self::Interrupted { .. } => Some("run the same command again: downloads and uploads restart cleanly".into()),
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(
                    "free disk space (`crowecode-cloud prune` removes cached versions that are not current; `--max-size` evicts least recently used models), or point --cache-dir at a larger filesystem".into(),
                ),
                io::ErrorKind::PermissionDenied => Some(
                    "check the owner and mode of that path; for the cache, --cache-dir (CROWECODE_HOME) chooses another".into(),
                ),
                io::ErrorKind::ReadOnlyFilesystem => Some(
                    "that filesystem is read-only: point --cache-dir (CROWECODE_HOME) at a writable one; cached models can still be read there".into(),
                ),
                _ => None,
            },
        }
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a missing reference names: `model A`, `tag prod of A`, `version A@1a2b…`.
fn what_is_missing(reference: &str) -> String {
    if let Some((model, tag)) = reference.split_once(':') {
        format!("tag {tag} of model {model}")
    } else if reference.contains('@') {
        format!("version {reference}")
    } else {
        format!("model {reference}")
    }
}
