//! Downloading a whole version: read the manifest, hand out the cached version if it is the one,
//! else, under the model's lock, fetch the archive into a staging area (resuming what a crashed
//! run verified) and commit it. A model missing from the bucket goes to the fallback command.

use std::path::PathBuf;
use std::time::Instant;

pub use super::downloaded::{DownloadOptions, DownloadStatus, Downloaded};
use super::fallback::{self, Fallback};
use super::signatures::{self, Accepted};
use super::versions::{self, Found};
use super::{Session, blocking};
use crate::archive::Extractor;
use crate::cache::{Acquired, Resume};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::provider::ProviderErrorKind;
use crate::reference::{Reference, Target, VersionId};
use crate::transfer::{self, Progress};

/// The version `reference` names if this machine has it, without contacting the bucket
/// (`latest`: what `models/<Model>` points at; another tag: what it last resolved to here); a
/// download otherwise.
pub(crate) async fn ensure(s: &Session, reference: &str) -> Result<PathBuf> {
    let r = Reference::parse(reference)?;
    if let Some((path, id)) = cached(s, &r).await?
        && installed_passes(s, &r, &path, id.as_ref()).is_ok()
    {
        return Ok(path);
    }
    Ok(model_or_fallback(s, reference, &DownloadOptions::default()).await?.path)
}

/// The version `r` names as this machine has it, and its id when recorded; no request.
pub(crate) async fn cached(s: &Session, r: &Reference) -> Result<Option<(PathBuf, Option<VersionId>)>> {
    let model = &r.model;
    let path = match &r.target {
        Target::Tag(tag) if tag.is_latest() => s.use_ready(model, None).await?,
        Target::Tag(tag) => match s.cache.get_ref(model, tag) {
            Some(id) => use_found(s, model, s.cache.find_version(model, &Target::Version(id))).await?,
            None => None,
        },
        target => use_found(s, model, s.cache.find_version(model, target)).await?,
    };
    Ok(path.map(|p| {
        let id = s.cache.version_of(&p);
        (p, id)
    }))
}

async fn use_found(s: &Session, model: &ModelName, dir: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let Some(dir) = dir else { return Ok(None) };
    let (cache, m) = (s.cache.clone(), model.clone());
    blocking(move || cache.use_version(&m, &dir)).await
}

/// The version `reference` names, ready in the cache; when the bucket has no such model and a
/// fallback command is configured, what it makes (uploaded too with `publish`). A pinned
/// version this machine has costs no request at all.
pub(crate) async fn model_or_fallback(s: &Session, reference: &str, opts: &DownloadOptions) -> Result<Downloaded> {
    let before = s.plane.traffic();
    let mut done = model_or_fallback_inner(s, reference, opts).await?;
    done.traffic = Some(done.traffic.unwrap_or_default().plus(&s.plane.traffic().since(&before)));
    Ok(done)
}

async fn model_or_fallback_inner(s: &Session, reference: &str, opts: &DownloadOptions) -> Result<Downloaded> {
    let started = Instant::now();
    let before = s.plane.traffic();
    let r = Reference::parse(reference)?;
    let model = r.model.clone();
    if opts.offline {
        let Some((path, id)) = cached(s, &r).await? else {
            return Err(Error::ModelNotFound {
                model: r.to_string(),
                location: format!("the cache {} (offline)", s.cache.root().display()),
            });
        };
        let manifest = s.cache.read_manifest_copy(&path, &model).ok_or_else(|| s.not_found(&model))?;
        let signed_by = installed_passes(s, &r, &path, id.as_ref())?;
        let mut done = Downloaded::whole(path, DownloadStatus::Cached, &manifest, 0, started);
        done.reference = label(&r, id.as_ref());
        done.version = id.map(|v| v.to_string());
        done.tag = r.tag().map(ToString::to_string);
        done.signature = installed_signature(s, &done.path);
        done.signed_by = signed_by;
        return Ok(done);
    }
    if !opts.force
        && !matches!(r.target, Target::Tag(_))
        && let Some((path, id)) = cached(s, &r).await?
        && let Some(manifest) = s.cache.read_manifest_copy(&path, &model)
        && let Ok(signed_by) = installed_passes(s, &r, &path, id.as_ref())
    {
        let mut done = Downloaded::whole(path, DownloadStatus::Cached, &manifest, 0, started);
        done.reference = label(&r, id.as_ref());
        done.version = id.map(|v| v.to_string());
        done.signature = installed_signature(s, &done.path);
        done.signed_by = signed_by;
        return Ok(done);
    }
    match versions::resolve(s, &r).await? {
        Some(found) => {
            let accepted = signatures::check(s, &found).await?;
            match whole_version(s, found.clone(), accepted.clone(), &r, opts.force, started).await {
                // An untrusted mirror served bytes that fail verification: nothing was installed;
                // read the version again from the bucket.
                Err(e @ Error::Integrity { .. })
                    if s.plane.mirror().is_some() && s.plane.traffic().since(&before).mirror_bytes > 0 =>
                {
                    let mirror = s.plane.mirror().map(|m| m.base().to_string()).unwrap_or_default();
                    s.reporter.report(crate::progress::Event::Warning {
                        message: format!(
                            "mirror {mirror} served bytes that fail verification ({e}); reading {model} again from the bucket"
                        ),
                    });
                    let direct = s.direct();
                    let mut done = whole_version(&direct, found, accepted, &r, opts.force, started).await?;
                    done.traffic = Some(direct.plane.traffic());
                    done.reread_from_bucket = true;
                    Ok(done)
                }
                other => other,
            }
        }
        None if r.is_latest() && s.trust.require => Err(Error::Signature {
            subject: r.to_string(),
            what: "the model is not in the bucket, and what the fallback command would make is signed by no one".into(),
            hint: format!(
                "upload {model} signed (`crowecode-cloud upload {model} --sign-key KEY`), or unset require_signature to let the fallback run"
            ),
        }),
        None if r.is_latest() => match s.config.fallback_command.clone() {
            Some(command) => match fallback::run(s, &model, &command, opts.publish, started).await? {
                Fallback::Made(done) => Ok(done),
                // Published by another machine while this one waited for the model's lock.
                Fallback::InBucket(found) => {
                    let accepted = signatures::check(s, &found).await?;
                    whole_version(s, found, accepted, &r, false, started).await
                }
            },
            None => Err(s.not_found(&model)),
        },
        None => Err(Error::ModelNotFound { model: r.to_string(), location: s.config.location() }),
    }
}

/// How lines about a download of `r` (resolved to `id`) are labelled: the model for latest, the
/// tag, or the short version id (never an archive digest, which is no reference).
pub(crate) fn label(r: &Reference, id: Option<&VersionId>) -> String {
    match (&r.target, id) {
        _ if r.is_latest() => r.model.to_string(),
        (Target::Tag(_), _) | (_, None) => r.to_string(),
        (_, Some(id)) => format!("{}@{}", r.model, id.short()),
    }
}

/// Makes the version `found` (what `r` resolved to) describes ready in the cache. One download
/// per model per machine: concurrent calls wait for the first and then find the version ready.
/// For a download of `latest`, `models/<Model>` points at it afterwards. With `force`, the version
/// is fetched and verified again, and replaces the cached copy.
pub(crate) async fn whole_version(
    s: &Session,
    found: Found,
    accepted: Option<Accepted>,
    r: &Reference,
    force: bool,
    started: Instant,
) -> Result<Downloaded> {
    let Found { manifest, version: id, tag, .. } = found;
    let model = manifest.model.clone();
    let link = r.is_latest();
    let shown = label(r, Some(&id));
    let name = s.cache.version_name(&model, &id, &manifest.content_digest());
    let version = s.cache.version_path(&model, &name);
    let finish = |path: PathBuf, status, transferred| -> Result<Downloaded> {
        s.cache.record_version(&path, &id)?;
        if let Some(a) = &accepted {
            write_signature(&s.cache.signature_path(&path), &a.bytes)?;
        }
        if let Some(tag) = &tag {
            s.cache.set_ref(&model, tag, &id)?;
        }
        let mut done = Downloaded::whole(path, status, &manifest, transferred, started);
        done.reference = shown.clone();
        done.version = Some(id.to_string());
        done.tag = tag.as_ref().map(|t| t.to_string());
        done.signature = installed_signature(s, &done.path);
        done.signed_by = accepted.as_ref().map(|a| a.key.clone());
        Ok(done)
    };
    if !force {
        let ready = if link {
            s.use_ready(&model, Some(&version)).await?
        } else {
            use_found(s, &model, Some(version.clone())).await?
        };
        if let Some(path) = ready {
            return finish(path, DownloadStatus::Cached, 0);
        }
    }
    let lock = s.lock(&model).await?;
    let acquired = {
        let (cache, m, name) = (s.cache.clone(), manifest.clone(), name.clone());
        blocking(move || {
            if force {
                cache.begin_replacing(lock, &m).map(Acquired::Staging)
            } else {
                cache.begin(lock, &m, &name, link)
            }
        })
        .await?
    };
    let staging = match acquired {
        Acquired::Ready(path) => return finish(path, DownloadStatus::Cached, 0),
        Acquired::Staging(staging) => staging,
    };
    if let Some(r) = staging.resume() {
        let message = if manifest.is_pieces() {
            format!(
                "resuming an interrupted download: {} files are here, whole or in part; each chunk is checked against its digest before it is kept",
                r.kept_files
            )
        } else {
            format!(
                "resuming an interrupted download: {} files ({:.1} MiB) already here and verified",
                r.kept_files,
                r.kept_bytes as f64 / f64::from(1 << 20)
            )
        };
        s.reporter.report(crate::progress::Event::Info { model: &shown, message });
    }
    let resume = staging.resume().cloned();
    s.cache.check_room(manifest.total_size - resume.as_ref().map_or(0, |r| r.kept_bytes))?;
    let (tuning, transferred, pieces) = if manifest.is_pieces() {
        // The chunk digests are as trusted as the file digests unless what vouches for the
        // version is a publisher's signature of the files alone: then every file is hashed too.
        let hash_files = accepted.as_ref().is_some_and(|a| !a.bound);
        let how = super::pieces_fetch::How { reuse_local: !force, hash_files };
        let (got, tuning) = super::pieces_fetch::fetch(s, &manifest, &id, staging.dir(), None, how, &shown).await?;
        (tuning, got.fetched, Some(got))
    } else {
        let tuning = fetch_into(s, &manifest, staging.dir(), resume.as_ref(), &shown).await?;
        (tuning, manifest.archive_size - resume.map_or(0, |r| r.start_offset), None)
    };
    let path = staging.commit(&manifest, &name, link)?;
    let mut done = finish(path, DownloadStatus::Downloaded, transferred)?;
    tuning.log(&model);
    done.tuning = Some(tuning);
    if let Some(got) = pieces {
        done.requests = Some(got.requests);
        done.local_bytes = Some(got.local);
    }
    Ok(done)
}

/// With trusted keys configured, whether the installed copy at `path` carries a signature a
/// trusted key made over it: `Ok(Some(key))` when it does, `Ok(None)` when nothing is checked
/// (or it fails and signatures are not required), an error (exit 6) when it fails and they are.
fn installed_passes(
    s: &Session,
    r: &Reference,
    path: &std::path::Path,
    id: Option<&VersionId>,
) -> Result<Option<String>> {
    if !s.trust.checks() {
        return Ok(None);
    }
    let Some(manifest) = s.cache.read_manifest_copy(path, &r.model) else { return Ok(None) };
    let signature = std::fs::read(s.cache.signature_path(path)).ok();
    match signatures::check_installed(&s.trust, &r.model, id, &manifest, signature.as_deref()) {
        Ok(key) => Ok(Some(key)),
        Err(what) if s.trust.require => Err(Error::Signature {
            subject: id.map_or_else(|| r.to_string(), |v| Reference::pinned(&r.model, v).to_string()),
            what,
            hint: "download it again while the bucket is reachable (the signature is checked and installed with it)"
                .into(),
        }),
        Err(_) => Ok(None),
    }
}

/// `<dir>.sig` when it exists.
fn installed_signature(s: &Session, dir: &std::path::Path) -> Option<PathBuf> {
    Some(s.cache.signature_path(dir)).filter(|p| p.is_file())
}

/// Writes the signature beside the version directory (whole or not at all).
fn write_signature(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("sig.{:016x}", fastrand::u64(..)));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

/// One HEAD before the ranged reads: an archive that is missing, shorter or longer than the
/// manifest says is an integrity failure (exit 6), found at once instead of after retries.
pub(crate) async fn check_archive_size(s: &Session, manifest: &Manifest) -> Result<()> {
    let key = &s.layout.archive_key(manifest);
    match s.provider.head(key).await {
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
    s: &Session,
    manifest: &Manifest,
    staging: &std::path::Path,
    resume: Option<&Resume>,
    label: &str,
) -> Result<crate::transfer::tuning::Tuning> {
    let extractor = match resume {
        Some(r) => Extractor::resuming(staging.to_path_buf(), manifest.expected_entries(), r.start_index, true),
        None => Extractor::new(staging.to_path_buf(), manifest.expected_entries(), false),
    };
    let key = &s.layout.archive_key(manifest);
    check_archive_size(s, manifest).await?;
    let progress = Progress::new(s.reporter.clone(), label);
    let sha = transfer::download_archive(
        s.provider.clone(),
        key,
        resume.map_or(0, |r| r.start_offset),
        manifest.archive_size,
        manifest.compression,
        extractor,
        &s.transfer,
        &progress,
    )
    .await;
    progress.finished();
    let (sha, tuning) = match sha {
        Err(Error::Provider { source, .. }) if source.kind == ProviderErrorKind::NotFound => {
            return Err(Error::integrity(key, "the archive the manifest names is missing from the bucket", None, None));
        }
        other => other?,
    };
    // A resumed run checked every file against its own sha256 (the kept ones by re-hashing,
    // the rest as they were written); its digest covers only the bytes it fetched.
    if resume.is_none() && Some(&sha) != manifest.archive_sha256.as_ref() {
        return Err(Error::integrity(
            key,
            "archive sha256 differs from the manifest",
            manifest.archive_sha256.as_ref().map(ToString::to_string),
            Some(sha.to_string()),
        ));
    }
    Ok(tuning)
}
