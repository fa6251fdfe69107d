//! `setup`: validate a configuration, optionally create the bucket, write the config file
//! (mode 0600) and produce the `CROWECODE_CLOUD_CONFIG_B64` value.

use std::path::PathBuf;

use serde::Serialize;

use super::{Context, EnvReader};
use crate::config::{self, CloudConfig, ConfigSource, FileLocation, ProviderKind};
use crate::error::{Error, Result};
use crate::provider;

/// What setup did.
#[derive(Debug, Serialize)]
pub struct SetupOutcome {
    pub config: CloudConfig,
    pub provider: ProviderKind,
    /// The file written (`None` with `--no-write`).
    pub config_file: Option<PathBuf>,
    /// Value for `CROWECODE_CLOUD_CONFIG_B64`.
    pub config_b64: String,
    /// Whether `--create-bucket` created it (false if it existed).
    pub bucket_created: Option<bool>,
    pub warnings: Vec<String>,
}

/// Setup options.
#[derive(Debug, Default)]
pub struct SetupOptions {
    pub create_bucket: bool,
    pub write: bool,
    /// Public keys to trust (paths or PEM), stored as PEM text so the config string carries them.
    pub trusted_keys: Vec<String>,
    /// Set `require_signature`.
    pub require_signature: bool,
}

/// The prefix `setup` writes when none is given: the one existing deployments use, so the seed's
/// own `setup` command prints the seed's own config string. A config document without a `prefix`
/// key still means no prefix (buckets written that way stay readable).
pub const DEFAULT_PREFIX: &str = "crowecode-models/";

/// Runs setup: the flags (over any existing config) are validated and saved.
///
/// A config file at an explicit path that does not exist yet is created (with its directories,
/// mode 0700). With `--provider` and `--bucket` given, a config file (or
/// `CROWECODE_CLOUD_CONFIG_B64`) that cannot be parsed is set aside rather than blocking the
/// command that repairs it: the file is kept as `<file>.bak`.
pub async fn run(ctx: &Context, opts: &SetupOptions) -> Result<SetupOutcome> {
    let env = ctx.env.clone();
    let mut overrides = ctx.overrides.clone();
    let b64_set = env(config::ENV_CONFIG_B64).is_some_and(|v| !v.trim().is_empty());
    if overrides.provider.is_none() && overrides.bucket.is_none() && !ctx.config_file.path.exists() && !b64_set {
        return Err(Error::usage(
            "setup needs at least --provider and --bucket",
            "for example: crowecode-cloud setup --provider s3 --bucket my-models --region us-west-2",
        ));
    }
    // A local bucket is stored as an absolute path, so the config works from any directory.
    if overrides.provider.as_deref().and_then(ProviderKind::parse) == Some(ProviderKind::Local)
        && let Some(b) = &overrides.bucket
    {
        let abs = std::path::absolute(b).map_err(|e| Error::io("cannot resolve", std::path::Path::new(b), e))?;
        overrides.bucket = Some(abs.display().to_string());
    }
    // The file setup is about to write need not exist yet, even at an explicit path.
    let mut file = FileLocation { path: ctx.config_file.path.clone(), explicit: false };
    let complete = overrides.provider.is_some() && overrides.bucket.is_some();
    let mut notes = Vec::new();
    let mut set_aside = None;
    // What the configuration is read from; a broken part is left out, for this resolution and the
    // one with the default prefix below.
    let mut env_used: EnvReader = env.clone();
    let resolve = |env: &EnvReader, file: &FileLocation, ov: &config::Overrides| {
        let env = env.clone();
        config::resolve(&move |k| env(k), file, ov)
    };
    let mut resolved = match resolve(&env_used, &file, &overrides) {
        Err(Error::Config { origin, message, .. }) if complete && is_document_error(&message) => {
            // Only the document is broken: the flags say everything setup needs.
            if origin == config::ENV_CONFIG_B64 {
                notes.push(format!(
                    "{origin} in this environment is not usable ({message}); the export line below replaces it"
                ));
                env_used = std::sync::Arc::new(move |k: &str| if k == config::ENV_CONFIG_B64 { None } else { env(k) });
            } else {
                set_aside = Some(ctx.config_file.path.clone());
                notes.push(format!(
                    "{origin} was not usable ({message}); replaced, the old file is kept as {origin}.bak"
                ));
                file = FileLocation::none();
            }
            resolve(&env_used, &file, &overrides)?
        }
        other => other?,
    };
    if overrides.prefix.is_none() && resolved.source == ConfigSource::Flags {
        // A fresh configuration (not an edit of an existing one): the deployments' default prefix.
        overrides.prefix = Some(DEFAULT_PREFIX.into());
        resolved = resolve(&env_used, &file, &overrides)?;
    }
    let mut cfg = resolved.config;
    // The keys the config trusts already, read once; each new one is added as PEM unless known.
    let resolve_keys = |entries: Vec<String>| {
        crate::signing::Trust::resolve(
            &crate::signing::TrustSources { config_keys: entries, ..Default::default() },
            &|_| None,
        )
    };
    let mut known = resolve_keys(cfg.trusted_keys.clone()).map(|t| t.keys).unwrap_or_default();
    for entry in &opts.trusted_keys {
        for key in resolve_keys(vec![entry.clone()])?.keys {
            if !known.contains(&key) {
                cfg.trusted_keys.push(key.pem().to_string());
                known.push(key);
            }
        }
    }
    cfg.require_signature |= opts.require_signature;
    // The config's own signature settings, checked as every later command will check them.
    crate::signing::Trust::resolve(
        &crate::signing::TrustSources {
            config_keys: cfg.trusted_keys.clone(),
            config_require: cfg.require_signature,
            ..Default::default()
        },
        &|_| None,
    )?;
    let bucket_created = if opts.create_bucket {
        let p = provider::from_config(&cfg, ctx.retry.clone()).await?;
        Some(p.create_bucket().await.map_err(|e| Error::from_provider(format!("creating {}", cfg.location()), e))?)
    } else {
        None
    };
    let config_file = if opts.write {
        if let Some(path) = &set_aside {
            let mut bak = path.as_os_str().to_os_string();
            bak.push(".bak");
            std::fs::rename(path, &bak).map_err(|e| Error::io("cannot set aside", path, e))?;
        }
        config::write_config_file(&ctx.config_file.path, &cfg)?;
        Some(ctx.config_file.path.clone())
    } else {
        None
    };
    Ok(SetupOutcome {
        provider: cfg.provider,
        config_b64: cfg.to_b64(),
        config: cfg,
        config_file,
        bucket_created,
        warnings: notes.into_iter().chain(resolved.warnings).collect(),
    })
}

/// Whether a config error is about the document's text (JSON, base64, shape) rather than a value
/// that the flags could not fix either.
fn is_document_error(message: &str) -> bool {
    [
        "not valid JSON",
        "not valid base64",
        "expected a JSON object",
        "must be true or false",
        "must be a string",
        "must be an object",
        "disabled",
        "too large",
    ]
    .iter()
    .any(|m| message.contains(m))
}
