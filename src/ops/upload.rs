//! Uploading a model directory: scan it, skip the upload when the bucket already holds the same
//! tree, stream the archive up in parts, then commit by a conditional manifest write, so readers
//! see the old version or the new one and two concurrent uploads cannot interleave.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde::Serialize;

use super::versions::{self, Expect};
use super::{Session, blocking, signatures};
use crate::archive::{self, ArchivePlan, Compression};
use crate::error::{Error, Result};
use crate::manifest::{DirEntry, FORMAT_PIECES_BLAKE3, FORMAT_VERSION, FileEntry, Manifest};
use crate::names::{ModelName, Sha256Hex};
use crate::provider::PutMode;
use crate::reference::{Reference, TagName, Target, VersionId};
use crate::signing::oms::Bundle;
use crate::transfer::{self, Progress};

/// The bucket format of a new version when none is asked for.
pub const DEFAULT_FORMAT: u32 = FORMAT_PIECES_BLAKE3;

/// How a lost manifest commit is described (and recognised by the fallback's `--publish`).
pub(crate) const CONFLICT: &str = "another upload of a different tree moved latest while this one ran";

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
    /// The archive (format 1 only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub archive_key: String,
    /// The archive's sha256 (format 1), or the digest of the files' digests (format 2).
    pub sha256: Sha256Hex,
    /// Archive size in bytes (format 1 only).
    #[serde(skip_serializing_if = "is_zero")]
    pub archive_size: u64,
    /// Sum of file sizes.
    pub size: u64,
    pub files: usize,
    pub compression: Compression,
    /// Parts the archive was uploaded in, or packs sent in format 2 (0 when up to date).
    pub parts: u32,
    /// The bucket format of the version (1: one archive, 2: chunks in packs).
    pub format: u32,
    /// Data bytes sent (the archive, or in format 2 the new packs; 0 when up to date).
    pub sent: u64,
    /// Format 2: bytes of the model's files the bucket held already (not sent).
    pub reused: u64,
    pub seconds: f64,
    /// The version's id (`sha256:…`).
    pub version: VersionId,
    /// The pinned reference, `Model@sha256:…`, for a deploy step.
    pub reference: String,
    /// Tags moved to it.
    pub tags: Vec<TagName>,
    /// Short ids of the keys whose signatures were stored for it by this upload.
    pub signed_by: Vec<String>,
    /// The part size and parts in flight chosen, and why (when bytes were uploaded).
    pub tuning: Option<crate::transfer::tuning::Tuning>,
}

impl Uploaded {
    fn of(
        m: &Manifest,
        version: &VersionId,
        status: UploadStatus,
        tags: Vec<TagName>,
        parts: u32,
        started: Instant,
    ) -> Self {
        Self {
            model: m.model.clone(),
            status,
            archive_key: m.archive_key.clone(),
            sha256: m.content_digest(),
            archive_size: m.archive_size,
            size: m.total_size,
            files: m.files.len(),
            compression: m.compression,
            parts,
            format: m.format,
            sent: 0,
            reused: 0,
            seconds: started.elapsed().as_secs_f64(),
            version: version.clone(),
            reference: Reference::pinned(&m.model, version).to_string(),
            tags,
            signed_by: Vec::new(),
            tuning: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Options for `upload_model`.
#[derive(Clone, Debug, Default)]
pub struct UploadOptions {
    pub compression: Compression,
    /// Upload even if the bucket already holds the same tree.
    pub force: bool,
    /// Tags to move to the version, besides `latest`.
    pub tags: Vec<TagName>,
    /// The bucket format of a new version: 1 (one archive) or 2 (chunks in shared packs: a
    /// version costs what changed). 0: the default, [`DEFAULT_FORMAT`].
    pub format: u32,
    /// Leave `latest` where it is (a candidate for testing before promotion).
    pub no_latest: bool,
    /// An OMS signature its publisher made over the tree (`upload --signature`), stored with the
    /// version after it is checked against the tree.
    pub signature: Option<Vec<u8>>,
}

/// Uploads the directory `dir` as model `name`, unless the bucket already holds the same tree.
/// The manifest is written last, conditionally, so readers see the old version or the new one.
pub(crate) async fn run(s: &Session, name: &str, dir: &Path, opts: &UploadOptions) -> Result<Uploaded> {
    let started = Instant::now();
    let model = ModelName::new(name)?;
    let dir_owned = dir.to_path_buf();
    let plan = blocking(move || archive::scan_tree(&dir_owned)).await?;
    let bound = match &opts.signature {
        Some(bundle) => check_foreign_signature(s, &model, &plan, bundle).await?,
        None => None,
    };
    // Before a byte is uploaded: tags can only be moved where conditional writes hold.
    if !opts.no_latest || !opts.tags.is_empty() {
        super::probe::require_conditional_writes(s).await?;
    }
    let latest =
        match versions::resolve(s, &Reference { model: model.clone(), target: Target::Tag(TagName::latest()) }).await {
            Ok(found) => found,
            Err(e @ Error::Integrity { .. }) => {
                s.info(&model, format!("the current version is unreadable and will be replaced ({e})"));
                None
            }
            Err(e) => return Err(e),
        };
    // A signature this tool made names its version: it can only be stored with that version.
    if let Some(bound) = &bound {
        let same = match latest.as_ref().filter(|old| !opts.force && &old.version == bound) {
            Some(old) => unchanged(&plan, &old.manifest).await?.is_some(),
            None => false,
        };
        if !same {
            return Err(Error::Signature {
                subject: model.to_string(),
                what: format!("the signature was made for the version {} of {model}, not for a new one", bound.short()),
                hint: format!(
                    "nothing was uploaded; sign this upload with --sign-key, or sign the new version afterwards with `crowecode-cloud sign {model}@VERSION --sign-key KEY`"
                ),
            });
        }
    }
    // Where `latest` points now, as a tag (a bucket of an earlier release has only manifest.json).
    let latest_tag = versions::read_tag(s, &model, &TagName::latest()).await.ok().flatten().map(|r| r.version);

    // Compression is of archives: asking for it asks for format 1.
    let format = match opts.format {
        0 if opts.compression != Compression::None => FORMAT_VERSION,
        0 => DEFAULT_FORMAT,
        f => f,
    };
    // Formats 2 and 3 read the tree once: cutting it gives every file's sha256 too.
    let (plan, tree) = if format == FORMAT_VERSION {
        (Some(plan), None)
    } else {
        // Chunk sha256s too when the latest version is in format 2: its chunks are named so.
        let from_format_2 = latest.as_ref().is_some_and(|l| l.manifest.format == 2) && !opts.force;
        (None, Some(super::pieces::cut_tree(plan, format, from_format_2).await?))
    };
    let same = match (latest.as_ref().filter(|_| !opts.force), &plan, &tree) {
        (Some(old), Some(plan), _) => unchanged(plan, &old.manifest).await?.is_some(),
        (Some(old), None, Some(tree)) => tree.same_as(&old.manifest),
        _ => false,
    };
    if let Some(old) = latest.as_ref().filter(|_| same) {
        // Nothing to upload; the version gets its object and its tags if it has none yet (a
        // model of an earlier release gets versions on its next upload).
        put_version(s, &model, &old.version, &old.bytes).await?;
        let signed_by = store_signatures(s, &model, &old.version, &old.manifest, opts).await?;
        let mut tags = Vec::new();
        if !opts.no_latest && latest_tag.is_none() {
            versions::move_tag(s, &model, &TagName::latest(), &old.version, Expect::Current(None)).await?;
            tags.push(TagName::latest());
        }
        tags.extend(move_named_tags(s, &model, &old.version, &opts.tags).await?);
        let mut done = Uploaded::of(&old.manifest, &old.version, UploadStatus::UpToDate, tags, 0, started);
        done.signed_by = signed_by;
        return Ok(done);
    }

    let (manifest, version, parts, tuning, written) = if let Some(tree) = tree {
        // Every version a tag names, latest first: what the new one may reuse chunks of.
        let mut previous: Vec<versions::Found> = latest.iter().cloned().collect();
        for record in versions::list_tags(s, &model).await? {
            if previous.iter().all(|f| f.version != record.version)
                && let Some(found) = versions::by_id(s, &model, &record.version).await.ok().flatten()
            {
                previous.push(found);
            }
        }
        let stored = super::pieces::store(s, &model, tree, &previous, opts.force).await?;
        let loc = s.layout.locations_key(&model, &stored.version);
        let mut manifest = stored.manifest;
        manifest.archive_size = 0;
        let written = Written { keys: vec![loc], sent: stored.sent, reused: stored.reused };
        (manifest, stored.version, stored.packs as u32, Some(stored.tuning), written)
    } else {
        let plan = plan.expect("format 1 keeps the plan");
        let archive_key = s.layout.new_archive_key(&model, SystemTime::now(), opts.compression);
        let progress = Progress::new(s.reporter.clone(), model.as_str());
        let up =
            transfer::upload_archive(s.provider.clone(), &archive_key, plan, opts.compression, &s.transfer, &progress)
                .await;
        progress.finished();
        let up = up?;
        let manifest = build_manifest(&model, &archive_key, opts.compression, &up);
        let bytes = Bytes::from(manifest.to_bytes());
        let version = VersionId::of(&bytes);
        if let Err(e) = put_version(s, &model, &version, &bytes).await {
            // The archive is unreferenced now; do not leave it behind.
            let _ = s.provider.delete(&archive_key).await;
            return Err(e);
        }
        let sent = manifest.archive_size;
        (manifest, version, up.parts, Some(up.tuning.clone()), Written { keys: vec![archive_key], sent, reused: 0 })
    };
    // Signed before any tag names it, so a reader that finds it through a tag finds it signed.
    let signed_by = store_signatures(s, &model, &version, &manifest, opts).await?;
    let mut tags = Vec::new();
    if !opts.no_latest {
        match versions::move_tag(s, &model, &TagName::latest(), &version, Expect::Current(latest_tag)).await {
            Ok(_) => tags.push(TagName::latest()),
            Err(Error::Conflict { message, hint }) => {
                // The same tree uploaded twice at once (CI retries, `--publish` on a fleet's cold
                // start) is no conflict: the bucket holds exactly this tree.
                if let Ok(Some(winner)) = versions::resolve(s, &Reference::parse(model.as_str())?).await
                    && winner.manifest.same_tree(&manifest)
                {
                    let _ = s.provider.delete(&s.layout.version_key(&model, &version)).await;
                    for key in &written.keys {
                        let _ = s.provider.delete(key).await;
                    }
                    let signed_by = store_signatures(s, &model, &winner.version, &winner.manifest, opts).await?;
                    let tags = move_named_tags(s, &model, &winner.version, &opts.tags).await?;
                    let done =
                        Uploaded::of(&winner.manifest, &winner.version, UploadStatus::UpToDate, tags, 0, started);
                    return Ok(Uploaded { signed_by, ..done });
                }
                // A `prune --remote` deleted this version before `latest` could name it: the move
                // was undone, and there is nothing kept to tag.
                if versions::by_id(s, &model, &version).await?.is_none() {
                    return Err(Error::Conflict { message, hint });
                }
                return Err(Error::Conflict {
                    message: format!("{CONFLICT} ({message}); this one is kept as version {}", version.short()),
                    hint: Some(format!(
                        "`crowecode-cloud tag {model}@{} latest` makes it latest, if this tree should win",
                        version.short()
                    )),
                });
            }
            Err(e) => return Err(e),
        }
    }
    tags.extend(move_named_tags(s, &model, &version, &opts.tags).await?);
    if !opts.no_latest {
        versions::write_alias(s, &model).await?;
    }
    let done = Uploaded::of(&manifest, &version, UploadStatus::Uploaded, tags, parts, started);
    if let Some(t) = &tuning {
        t.log(&manifest.model);
    }
    Ok(Uploaded { signed_by, tuning, sent: written.sent, reused: written.reused, ..done })
}

/// What an upload wrote besides its version object (removed again when another upload of the
/// same tree won), and the data bytes it sent.
struct Written {
    keys: Vec<String>,
    sent: u64,
    reused: u64,
}

/// Stores the version's signatures: one by each signing key, and the publisher's (`--signature`).
async fn store_signatures(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    manifest: &Manifest,
    opts: &UploadOptions,
) -> Result<Vec<String>> {
    let mut ids = signatures::sign_version(s, model, version, manifest).await?;
    if let Some(bundle) = &opts.signature {
        ids.push(signatures::put_signature(s, model, version, bundle).await?);
    }
    Ok(ids)
}

/// Checks a publisher's OMS signature against the tree before anything is uploaded: it must be
/// about this model and list exactly the tree's files (the git paths aside) with their sha256;
/// with trusted keys configured, one of them must have made it (or, without
/// `require_signature`, a warning says none did).
async fn check_foreign_signature(
    s: &Session,
    model: &ModelName,
    plan: &ArchivePlan,
    bundle: &[u8],
) -> Result<Option<VersionId>> {
    let refuse = |what: String, hint: &str| Error::Signature { subject: model.to_string(), what, hint: hint.into() };
    let parsed = Bundle::parse(bundle)
        .map_err(|what| refuse(what, "give an OMS signature file (model.sig), as `model_signing sign` writes"))?;
    let statement = parsed
        .statement_unverified()
        .map_err(|what| refuse(what, "give an OMS signature file (model.sig), as `model_signing sign` writes"))?;
    let named = statement.binding.as_ref().map_or(statement.name.as_str(), |b| b.model.as_str());
    if named != model.as_str() {
        return Err(refuse(
            format!("the signature is for model {named}, not {model}"),
            "upload it under the name it was signed for, or sign this tree yourself with --sign-key",
        ));
    }
    let files: std::collections::BTreeMap<String, String> = hash_tree(plan)
        .await?
        .into_iter()
        .filter(|(path, _)| !crate::signing::oms::is_ignored(path, &[]))
        .map(|(path, sha)| (path, sha.to_string()))
        .collect();
    statement.check_files(&files).map_err(|what| {
        refuse(
            format!("the tree does not match the signature: {what}"),
            "nothing was uploaded; sign the tree as it is now, or move files the signature does not cover out of the model directory",
        )
    })?;
    if s.trust.checks()
        && let Err(what) = parsed.verify(&s.trust.keys)
    {
        if s.trust.require {
            return Err(refuse(
                what,
                "nothing was uploaded; add the publisher's public key to trusted_keys if it is to be trusted",
            ));
        }
        s.reporter
            .report(crate::progress::Event::Warning { message: format!("{model}: the signature given is {what}") });
    }
    match statement.binding.as_ref().map(|b| VersionId::parse(&b.version)) {
        None => Ok(None),
        Some(Some(v)) => Ok(Some(v)),
        Some(None) => Err(refuse(
            "the signature names a version that is not a sha256 id".into(),
            "nothing was uploaded; give an OMS signature file (model.sig), as `model_signing sign` writes",
        )),
    }
}

/// The sha256 of every file of the tree in `plan`.
async fn hash_tree(plan: &ArchivePlan) -> Result<Vec<(String, Sha256Hex)>> {
    let files: Vec<(String, PathBuf)> =
        plan.entries.iter().filter(|e| e.size.is_some()).map(|e| (e.path.clone(), e.source.clone())).collect();
    stream::iter(files)
        .map(|(path, source)| {
            blocking(move || {
                archive::sha256_file(&source).map(|(h, _)| (path, h)).map_err(|e| Error::io("cannot read", &source, e))
            })
        })
        .buffer_unordered(2)
        .try_collect()
        .await
}

/// Writes a version object, create-only: an existing one has the same bytes (its name is their
/// digest).
pub(crate) async fn put_version(s: &Session, model: &ModelName, version: &VersionId, bytes: &Bytes) -> Result<()> {
    s.put_named(&s.layout.version_key(model, version), bytes.clone(), PutMode::Create).await
}

/// Moves each of `tags` (other than `latest`) to `version`, wherever they point now.
async fn move_named_tags(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    tags: &[TagName],
) -> Result<Vec<TagName>> {
    let mut moved = Vec::new();
    for tag in tags.iter().filter(|t| !t.is_latest()) {
        versions::move_tag(s, model, tag, version, Expect::Any).await?;
        moved.push(tag.clone());
    }
    Ok(moved)
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
    let hashes = hash_tree(plan).await?;
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
                chunks: Vec::new(),
            }),
            _ => dirs.push(DirEntry { path: entry.path.clone(), mode: entry.mode }),
        }
    }
    Manifest {
        format: FORMAT_VERSION,
        model: model.clone(),
        archive_key: archive_key.to_string(),
        archive_sha256: Some(up.sha256.clone()),
        archive_size: up.size,
        compression,
        total_size: up.plan.file_bytes,
        files,
        dirs,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        upload_id: String::new(),
    }
}
