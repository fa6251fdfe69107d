//! `setup`: validate a configuration, optionally create the bucket, write the config file
//! (mode 0600) and produce the `CROWECODE_CLOUD_CONFIG_B64` value.

use std::path::PathBuf;

use serde::Serialize;

use super::Context;
use crate::config::{self, CloudConfig, ProviderKind};
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
}

/// Runs setup: the flags (over any existing config) are validated and saved.
pub async fn run(ctx: &Context, opts: &SetupOptions) -> Result<SetupOutcome> {
    let env = ctx.env.clone();
    let mut overrides = ctx.overrides.clone();
    if overrides.provider.is_none()
        && overrides.bucket.is_none()
        && !ctx.config_file.path.exists()
        && env(config::ENV_CONFIG_B64).is_none()
    {
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
    let resolved = config::resolve(&move |k| env(k), &ctx.config_file, &overrides)?;
    let cfg = resolved.config;
    let bucket_created = if opts.create_bucket {
        let p = provider::from_config(&cfg, ctx.retry.clone()).await?;
        Some(p.create_bucket().await.map_err(|e| Error::from_provider(format!("creating {}", cfg.location()), e))?)
    } else {
        None
    };
    let config_file = if opts.write {
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
        warnings: resolved.warnings,
    })
}
