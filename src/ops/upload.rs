//! Uploading a model directory: scan it, skip the upload when the bucket already holds the same
//! tree, stream the archive up in parts, then commit by a conditional manifest write, so readers
//! see the old version or the new one and two concurrent uploads cannot interleave.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde::Serialize;

use super::{Session, blocking};
use crate::archive::{self, ArchivePlan, Compression};
use crate::error::{Error, Result};
use crate::manifest::{DirEntry, FORMAT_VERSION, FileEntry, Manifest};
use crate::names::{ModelName, Sha256Hex};
use crate::provider::{ProviderErrorKind, PutMode};
use crate::transfer::{self, Progress};

/// How a lost manifest commit is described (and recognised by the fallback's `--publish`).
pub(crate) const CONFLICT: &str = "another upload of a different tree committed while this one ran";

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

/// Uploads the directory `dir` as model `name`, unless the bucket already holds the same tree.
/// The manifest is written last, conditionally, so readers see the old version or the new one.
pub(crate) async fn run(s: &Session, name: &str, dir: &Path, opts: &UploadOptions) -> Result<Uploaded> {
    let started = Instant::now();
    let model = ModelName::new(name)?;
    let dir_owned = dir.to_path_buf();
    let plan = blocking(move || archive::scan_tree(&dir_owned)).await?;
    let manifest_key = s.layout.manifest_key(&model);
    let current = match s.provider.head(&manifest_key).await {
        Ok(meta) => Some(meta),
        Err(e) if e.kind == ProviderErrorKind::NotFound => None,
        Err(e) => return Err(Error::from_provider(format!("reading {manifest_key}"), e)),
    };
    let existing = match &current {
        Some(_) => match s.fetch_manifest(&model).await {
            Ok(m) => m,
            Err(e @ Error::Integrity { .. }) => {
                s.info(&model, format!("the current manifest is unreadable and will be replaced ({e})"));
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    if let Some(old) = existing.as_ref().filter(|_| !opts.force)
        && let Some(same) = unchanged(&plan, old).await?
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

    let archive_key = s.layout.new_archive_key(&model, SystemTime::now(), opts.compression);
    let progress = Progress::new(s.reporter.clone(), model.as_str());
    let up = transfer::upload_archive(s.provider.clone(), &archive_key, plan, opts.compression, &s.transfer, &progress)
        .await;
    progress.finished();
    let up = up?;
    let manifest = build_manifest(&model, &archive_key, opts.compression, &up);
    let mode = match &current {
        Some(meta) => meta.etag.clone().map_or(PutMode::Overwrite, PutMode::IfMatch),
        None => PutMode::Create,
    };
    if let Err(e) = s.provider.put(&manifest_key, manifest.to_bytes().into(), mode).await {
        // The archive is unreferenced now; do not leave it behind.
        let _ = s.provider.delete(&archive_key).await;
        if e.kind == ProviderErrorKind::Precondition {
            // The same tree uploaded twice at once (CI retries, `--publish` on a fleet's cold
            // start) is no conflict: the bucket holds exactly this tree.
            if let Ok(Some(winner)) = s.fetch_manifest(&model).await
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
async fn unchanged<'a>(plan: &ArchivePlan, old: &'a Manifest) -> Result<Option<&'a Manifest>> {
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
        .map(|(path, source)| {
            blocking(move || {
                archive::sha256_file(&source).map(|(h, _)| (path, h)).map_err(|e| Error::io("cannot read", &source, e))
            })
        })
        .buffer_unordered(2)
        .try_collect()
        .await?;
    let by_path: std::collections::HashMap<&str, &Sha256Hex> =
        old.files.iter().map(|f| (f.path.as_str(), &f.sha256)).collect();
    Ok(hashes.iter().all(|(p, h)| by_path.get(p.as_str()) == Some(&h)).then_some(old))
}

/// The manifest of an archive just written (or, for the fallback, hashed).
pub(crate) fn build_manifest(
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
