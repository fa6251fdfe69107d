//! `copy REF... --to DEST`: versions, their pieces, signatures and tags, into another bucket (any
//! provider) or a local directory.
//!
//! DEST is a URL, `s3://bucket/prefix/`, `gs://bucket/prefix/`, `az://account/container/prefix/`
//! or `file:///dir` (the directory is a local-provider bucket); a URL without a path after the
//! bucket (and a `file://` URL) gets the prefix `setup` gives by default, `crowecode-models/`, so
//! that `setup --provider … --bucket …` at the other end finds the models; `--to-prefix` sets
//! another (`""` for none). What a URL cannot say comes from `--to-endpoint` and `--to-region`.
//! DEST may also be a config file, or a `CROWECODE_CLOUD_CONFIG_B64` string. Credentials for
//! each side come from the usual chains (see the README for two different ones).

use serde::Serialize;

use super::{Context, ModelError};
use crate::config::{self, FileLocation, Overrides, Resolved};
use crate::error::{Error, Result};
use crate::manager::{CopiedTag, CopiedVersion, CopyOptions, CopyTraffic};

/// How the destination was given.
#[derive(Clone, Debug, Default)]
pub struct Destination {
    /// `--to`.
    pub to: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    /// An AWS profile for an S3 destination.
    pub profile: Option<String>,
}

/// What `copy` did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where from and where to: `s3://bucket/prefix/`, a directory, ….
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    pub versions: Vec<CopiedVersion>,
    pub tags: Vec<CopiedTag>,
    /// The sums over `versions`.
    pub totals: CopyTraffic,
    /// Data bytes sent (or, with `--dry-run`, that would be).
    pub missing_bytes: u64,
    pub errors: Vec<ModelError>,
}

impl Report {
    /// The exit code: that of the first failure, or 0.
    pub fn exit_code(&self) -> i32 {
        self.errors.first().map_or(0, |e| e.exit_code)
    }
}

/// The destination's configuration.
pub fn destination(ctx: &Context, dest: &Destination) -> Result<Resolved> {
    let mut resolved = destination_config(ctx, dest)?;
    if let Some(profile) = &dest.profile {
        if resolved.config.provider != config::ProviderKind::S3 {
            return Err(Error::usage(
                format!(
                    "--to-profile is for an S3 destination; {} is {}",
                    resolved.config.location(),
                    resolved.config.provider
                ),
                "give the destination's credentials in its provider's own variables (see the README)",
            ));
        }
        resolved.config.aws_profile = Some(profile.clone());
    }
    Ok(resolved)
}

fn destination_config(ctx: &Context, dest: &Destination) -> Result<Resolved> {
    let to = dest.to.trim();
    let base_env = ctx.env.clone();
    // The source's configuration never leaks into the destination's.
    let env_without_config = move |k: &str| if k == config::ENV_CONFIG_B64 { None } else { base_env(k) };
    let mut overrides =
        Overrides { endpoint: dest.endpoint.clone(), region: dest.region.clone(), ..Default::default() };
    if let Some((scheme, rest)) = to.split_once("://") {
        let (provider, bucket, path) = match scheme {
            "s3" | "gs" => {
                let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                (if scheme == "s3" { "s3" } else { "gcs" }, bucket.to_string(), path)
            }
            "az" => {
                let (account, rest) = rest.split_once('/').unwrap_or((rest, ""));
                let (container, path) = rest.split_once('/').unwrap_or((rest, ""));
                overrides.account = Some(account.to_string()).filter(|a| !a.is_empty());
                ("azure", container.to_string(), path)
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(usage(to, "a file URL names an absolute directory: file:///mnt/disk"));
                }
                ("local", rest.trim_end_matches('/').to_string(), "")
            }
            _ => return Err(usage(to, &format!("{scheme}:// is not a destination this tool writes"))),
        };
        if bucket.is_empty() {
            return Err(usage(to, "it names no bucket"));
        }
        overrides.provider = Some(provider.to_string());
        overrides.bucket = Some(bucket);
        overrides.prefix = Some(match &dest.prefix {
            Some(p) => p.clone(),
            None if path.is_empty() => super::setup::DEFAULT_PREFIX.to_string(),
            None if path.ends_with('/') => path.to_string(),
            None => format!("{path}/"),
        });
        return config::resolve(&env_without_config, &FileLocation::none(), &overrides);
    }
    overrides.prefix = dest.prefix.clone();
    let path = std::path::Path::new(to);
    if path.is_file() {
        let file = FileLocation { path: path.to_path_buf(), explicit: true };
        return config::resolve(&env_without_config, &file, &overrides);
    }
    // A `CROWECODE_CLOUD_CONFIG_B64` value.
    let b64 = to.to_string();
    let env = move |k: &str| if k == config::ENV_CONFIG_B64 { Some(b64.clone()) } else { None };
    config::resolve(&env, &FileLocation::none(), &overrides).map_err(|e| match e {
        Error::Config { .. } => Error::usage(
            format!("--to {}: not a URL, a config file or a valid config string ({e})", shown(to)),
            "give s3://bucket/prefix/, gs://bucket/prefix/, az://account/container/prefix/, file:///dir, a config file, or a CROWECODE_CLOUD_CONFIG_B64 value",
        ),
        other => other,
    })
}

fn usage(to: &str, why: &str) -> Error {
    Error::usage(
        format!("--to {}: {why}", shown(to)),
        "give s3://bucket/prefix/, gs://bucket/prefix/, az://account/container/prefix/, file:///dir, a config file, or a CROWECODE_CLOUD_CONFIG_B64 value",
    )
}

/// A destination as it may be shown: a long config string is cut (it holds no secret, but it is
/// no use in a message).
fn shown(to: &str) -> String {
    if to.contains("://") || to.len() <= 40 {
        to.to_string()
    } else {
        format!("{}…", &to[..to.floor_char_boundary(24)])
    }
}

/// Copies each reference; a failure of one does not stop the others.
pub async fn run(ctx: &Context, references: &[String], dest: &Destination, opts: &CopyOptions) -> Result<Report> {
    let mut target = destination(ctx, dest)?;
    let to = target.config.location();
    let source = ctx.manager().await?;
    if source.location() == to {
        return Err(Error::usage(
            format!("--to {to} is where the models are already"),
            "give another bucket, prefix or directory",
        ));
    }
    // A disk to carry: the directory is made, as `setup --create-bucket` would; a dry run against
    // one not made yet reads an empty one instead.
    let _empty;
    let local = std::path::PathBuf::from(&target.config.bucket);
    if target.config.provider == config::ProviderKind::Local && !local.is_dir() {
        if opts.dry_run {
            _empty = tempfile_dir()?;
            target.config.bucket = _empty.path().display().to_string();
        } else {
            std::fs::create_dir_all(&local)
                .map_err(|e| Error::io("cannot create the destination directory", &local, e))?;
        }
    }
    let dest_manager = ctx.manager_for(target).await?;
    let mut report = Report { from: source.location(), to, dry_run: opts.dry_run, ..Default::default() };
    for r in references {
        match source.copy_to(&dest_manager, r, opts).await {
            Ok(copied) => {
                for v in &copied.versions {
                    report.totals.add(&v.traffic);
                    report.missing_bytes += v.missing_bytes;
                }
                report.versions.extend(copied.versions);
                report.tags.extend(copied.tags);
            }
            Err(e) => {
                report.errors.push(ModelError::new(r, &source.explain(e).await));
            }
        }
    }
    Ok(report)
}

/// An empty directory, removed on drop.
fn tempfile_dir() -> Result<EmptyDir> {
    let path = std::env::temp_dir().join(format!("crowecode-copy-{:016x}", fastrand::u64(..)));
    std::fs::create_dir(&path).map_err(|e| Error::io("cannot create", &path, e))?;
    Ok(EmptyDir(path))
}

struct EmptyDir(std::path::PathBuf);

impl EmptyDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
