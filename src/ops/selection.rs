//! A selection of a version's files (`download --only`): each file by a ranged read of the
//! uncompressed archive, verified against its own sha256, installed in a directory of its own
//! (never the model's version directory), so a partial model is never taken for the model.

use std::time::Instant;

use super::Session;
use super::download::{DownloadStatus, Downloaded, check_archive_size};
use crate::archive::Compression;
use crate::error::{Error, Result};
use crate::manifest::FileEntry;
use crate::reference::Reference;
use crate::transfer::{self, Progress};

/// Downloads only the files of `name` that match one of `patterns` (see [`crate::select`]); they
/// land in a directory of their own, which is returned as `path`; a second identical request
/// finds it there.
pub(crate) async fn run(s: &Session, reference: &str, patterns: &[String]) -> Result<Downloaded> {
    let started = Instant::now();
    let before = s.plane.traffic();
    let r = Reference::parse(reference)?;
    let model = r.model.clone();
    let found = super::versions::resolve(s, &r)
        .await?
        .ok_or_else(|| Error::ModelNotFound { model: r.to_string(), location: s.config.location() })?;
    // Before anything is fetched: a selection of an unsigned version is refused like the version.
    let accepted = super::signatures::check(s, &found).await?;
    let manifest = &found.manifest;
    if manifest.compression != Compression::None && !manifest.is_pieces() {
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
    let dest = s.cache.selection_path(&model, found.version.short(), &key);
    let size = selected.iter().map(|f| f.size).sum();
    let shown = super::download::label(&r, Some(&found.version));
    let done = |status, transferred| Downloaded {
        model: model.clone(),
        reference: shown.clone(),
        path: dest.clone(),
        status,
        sha256: manifest.content_digest(),
        size,
        files: selected.len(),
        transferred,
        seconds: started.elapsed().as_secs_f64(),
        version: Some(found.version.to_string()),
        tag: found.tag.as_ref().map(|t| t.to_string()),
        // A selection is not the signed tree; the signature is installed with the whole version.
        signature: None,
        signed_by: accepted.as_ref().map(|a| a.key.clone()),
        traffic: Some(s.plane.traffic().since(&before)),
        reread_from_bucket: false,
        tuning: None,
        format: manifest.format,
        local_bytes: None,
        requests: None,
    };
    if dest.is_dir() {
        return Ok(done(DownloadStatus::Cached, 0));
    }
    let lock = s.lock(&model).await?;
    if dest.is_dir() {
        return Ok(done(DownloadStatus::Cached, 0));
    }
    let staging = s.cache.begin_empty(lock)?;
    s.cache.check_room(size)?;
    if manifest.is_pieces() {
        // Only the chunks of the selected files are read.
        let wanted: Vec<usize> = (0..manifest.files.len())
            .filter(|&i| patterns.iter().any(|p| crate::select::matches(p, &manifest.files[i].path)))
            .collect();
        let how =
            super::pieces_fetch::How { reuse_local: true, hash_files: accepted.as_ref().is_some_and(|a| !a.bound) };
        let (got, _) =
            super::pieces_fetch::fetch(s, manifest, &found.version, staging.dir(), Some(&wanted), how, &shown).await?;
        staging.commit_to(&dest)?;
        let mut out = done(DownloadStatus::Downloaded, got.fetched);
        out.local_bytes = Some(got.local);
        out.requests = Some(got.requests);
        return Ok(out);
    }
    let mut files = Vec::with_capacity(selected.len());
    for f in &selected {
        let offset = f.offset.ok_or_else(|| {
            Error::integrity(&manifest.archive_key, format!("the manifest has no offset for {}", f.path), None, None)
        })?;
        let dest = staging.dir().join(&f.path);
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
    check_archive_size(s, manifest).await?;
    let progress = Progress::new(s.reporter.clone(), &shown);
    let fetched =
        transfer::download_files(s.provider.clone(), &s.layout.archive_key(manifest), files, &s.transfer, &progress)
            .await;
    progress.finished();
    fetched?;
    staging.commit_to(&dest)?;
    Ok(done(DownloadStatus::Downloaded, size))
}
