//! `copy`: versions, with their pieces, signatures and tags, from this bucket to another (any
//! provider, or a local directory carried to an air-gapped site).
//!
//! At the destination, what a reader can see is always whole: pieces (packs, or the archive)
//! first, then the locations and the version, then its signatures, then tags by compare-and-swap.
//! A reader sees the old state or the new, never a tag naming something missing. A copy killed
//! anywhere and run again sends only what is missing: every pack is named by its content and
//! HEADed at the destination first; a version object is create-only.
//!
//! Bytes that pass through this machine are verified before they are written: each chunk the
//! version names against its digest (format 2), the archive against its sha256 and size
//! (format 1, before its multipart upload is completed). Between two buckets of one service the
//! objects are copied inside it (S3 `CopyObject`, GCS `rewrite`, Azure Copy Blob from a read SAS):
//! no byte passes through the machine, and the copy is checked by its size (S3: and its ETag, the
//! MD5 of a single-PUT object) against the source's; the chunks are not re-hashed there, and
//! every download at the destination still checks each one against the digests in the version,
//! which the copy never changes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::versions::{self, Expect, Found};
use super::{Session, pieces};
use crate::config::ProviderKind;
use crate::error::{Error, Result};
use crate::names::{ModelName, Sha256Hex};
use crate::pack::Locations;
use crate::progress::Direction;
use crate::provider::{GetRange, ProviderErrorKind, PutMode};
use crate::reference::{Reference, TagName, Target, VersionId};
use crate::transfer::Progress;

/// What to copy besides the references' versions.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Every version of each referenced model.
    pub all_versions: bool,
    /// Every tag of each model that points at a version copied.
    pub tags: bool,
    /// Report what would be sent; write nothing.
    pub dry_run: bool,
}

/// Bytes and objects a copy moved, and how.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Data objects (packs, archives) written at the destination.
    pub objects: usize,
    /// Data bytes that passed through this machine (read from the source, verified, written).
    pub through_machine_bytes: u64,
    /// Data bytes copied inside the storage service.
    pub server_side_bytes: u64,
    /// Data objects the destination had already (not sent).
    pub present_objects: usize,
}

impl Traffic {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Traffic) {
        self.objects += other.objects;
        self.through_machine_bytes += other.through_machine_bytes;
        self.server_side_bytes += other.server_side_bytes;
        self.present_objects += other.present_objects;
    }
}

/// One version copied (or found at the destination already).
#[derive(Clone, Debug, Serialize)]
pub struct CopiedVersion {
    pub model: ModelName,
    /// `sha256:…`.
    pub version: String,
    /// `Model@sha256:…`, the same at both ends.
    pub pinned: String,
    /// The bucket format of the version (1: one archive, 2: chunks in packs).
    pub format: u32,
    /// `copied`, `present` (nothing was missing) or, with `--dry-run`, `would copy`.
    pub status: &'static str,
    /// OMS signatures copied beside it.
    pub signatures: usize,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Data bytes that would be sent (`--dry-run`), or were.
    pub missing_bytes: u64,
    /// What was verified on the way.
    pub checked: String,
}

/// A tag moved at the destination.
#[derive(Clone, Debug, Serialize)]
pub struct CopiedTag {
    pub model: ModelName,
    pub tag: TagName,
    /// `sha256:…`.
    pub version: String,
    /// False when it already pointed there (or with `--dry-run`).
    pub changed: bool,
    /// Whether its move carries a claim signed for the destination (`--sign-key`).
    pub signed: bool,
}

/// What `copy` did for one reference.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Copied {
    pub versions: Vec<CopiedVersion>,
    pub tags: Vec<CopiedTag>,
}

/// Copies the versions `reference` names (every version of its model with `all_versions`) from
/// `src` to `dst`, then moves at `dst` the tag it names and, with `tags`, every tag pointing at a
/// copied version.
pub(crate) async fn copy(src: &Session, dst: &Session, reference: &str, opts: &CopyOptions) -> Result<Copied> {
    let r = Reference::parse(reference)?;
    let model = r.model.clone();
    let mut found: Vec<Found> = Vec::new();
    if opts.all_versions {
        for id in versions::list_versions(src, &model).await? {
            if let Some(f) = versions::by_id(src, &model, &id).await? {
                found.push(f);
            }
        }
        // A model of an earlier release has only `manifest.json`.
        if found.is_empty()
            && let Some(f) = versions::legacy(src, &model).await?
        {
            found.push(f);
        }
        if found.is_empty() {
            return Err(Error::ModelNotFound { model: model.to_string(), location: src.config.location() });
        }
    }
    let named = versions::resolve(src, &r)
        .await?
        .ok_or_else(|| Error::ModelNotFound { model: r.to_string(), location: src.config.location() })?;
    if !found.iter().any(|f| f.version == named.version) {
        found.push(named.clone());
    }

    let mut moves: Vec<(TagName, VersionId)> = Vec::new();
    if let Target::Tag(tag) = &r.target {
        moves.push((tag.clone(), named.version.clone()));
    }
    if opts.tags {
        for t in versions::list_tags(src, &model).await? {
            if found.iter().any(|f| f.version == t.version) && !moves.iter().any(|(tag, _)| tag == &t.tag) {
                moves.push((t.tag.clone(), t.version.clone()));
            }
        }
    }

    // A model always has `latest` (it exists while the model does): a model new at the
    // destination gets it too, on the version the reference names.
    let latest = TagName::latest();
    if !moves.iter().any(|(t, _)| t.is_latest()) && versions::read_tag(dst, &model, &latest).await?.is_none() {
        let to = match versions::read_tag(src, &model, &latest).await? {
            Some(t) if opts.all_versions && found.iter().any(|f| f.version == t.version) => t.version,
            _ => named.version.clone(),
        };
        moves.push((latest, to));
    }
    let mut out = Copied::default();
    for f in &found {
        out.versions.push(copy_version(src, dst, f, opts.dry_run).await?);
    }
    // Tags last, each by compare-and-swap: a reader sees them only once all they name is there.
    // `latest` goes last of all, with `manifest.json` (what release 0.1.0 reads) after it.
    moves.sort_by_key(|(tag, _)| tag.is_latest());
    for (tag, to) in moves {
        let signed = !dst.trust.signers.is_empty();
        if opts.dry_run {
            out.tags.push(CopiedTag { model: model.clone(), tag, version: to.to_string(), changed: false, signed });
            continue;
        }
        let moved = versions::move_tag(dst, &model, &tag, &to, Expect::Any).await?;
        if tag.is_latest() {
            versions::write_alias(dst, &model).await?;
        }
        out.tags.push(CopiedTag { model: model.clone(), tag, version: to.to_string(), changed: moved.changed, signed });
    }
    Ok(out)
}

/// Whether `dst` can copy `src`'s objects inside the service: two buckets of one S3 or GCS
/// endpoint (the destination's credentials read the source), or two Azure containers (the
/// source named by a read SAS the source's account key makes).
fn server_side(src: &Session, dst: &Session) -> bool {
    src.config.provider == dst.config.provider
        && src.config.endpoint == dst.config.endpoint
        && match src.config.provider {
            ProviderKind::S3 | ProviderKind::Gcs => true,
            // Copy Blob writes with the container's default encryption scope, not a chosen one.
            ProviderKind::Azure => dst.config.encryption_scope.is_none(),
            ProviderKind::Local => false,
        }
}

/// What a copy inside the service was checked by.
fn checked_in_service(src: &Session, what: &str) -> String {
    match src.config.provider {
        ProviderKind::S3 => format!("copied inside the service: {what} size and ETag checked against the source's"),
        _ => format!("copied inside the service: {what} size checked against the source's"),
    }
}

/// What the data of one version cost, and what the destination holds of it afterwards.
struct Sent {
    traffic: Traffic,
    /// Data bytes the destination lacked (sent, or with `dry_run` to be sent).
    missing_bytes: u64,
    /// Inside the service, when that is how the data goes (`dry_run`: would go).
    in_service: bool,
    /// Format 2: the locations at the destination (`None` with `dry_run`).
    locations: Option<Locations>,
}

/// Copies one version's data, then the version, then its signatures.
async fn copy_version(src: &Session, dst: &Session, found: &Found, dry_run: bool) -> Result<CopiedVersion> {
    let model = &found.manifest.model;
    let version = &found.version;
    let pieces_format = found.manifest.is_pieces();
    let progress = Progress::new(dst.reporter.clone(), model.as_str());
    let sent = if pieces_format {
        copy_packs(src, dst, found, dry_run, &progress).await?
    } else {
        copy_archive(src, dst, found, dry_run, &progress).await?
    };
    progress.finished();
    let mut signatures = 0;
    if !dry_run {
        super::upload::put_version(dst, model, version, &found.bytes).await?;
        if let Some(loc) = &sent.locations {
            // A `prune --remote` at the destination may have swept a pack this version reuses
            // between the HEADs above and the version's write: the upload's commit check.
            pieces::packs_survive(dst, model, version, loc, "copy").await?;
        }
        for (id, bytes) in super::signatures::list(src, model, version).await? {
            dst.put_named(&dst.layout.signature_key(model, version, &id), bytes, PutMode::Create).await?;
            signatures += 1;
        }
    }
    let Sent { traffic, missing_bytes, in_service, .. } = sent;
    // What was checked: by how the bytes went (a copy inside the service may have fallen back).
    let (what, through) = if pieces_format {
        ("each pack's", "every chunk checked against its digest before it was written")
    } else {
        ("the archive's", "the archive checked against its sha256 and size before it was completed")
    };
    let checked = match (dry_run, traffic.server_side_bytes > 0, traffic.through_machine_bytes > 0) {
        (true, ..) if in_service => checked_in_service(src, what),
        (true, ..) => through.to_string(),
        (false, false, false) => "nothing sent: the destination holds every piece".to_string(),
        (false, true, false) => checked_in_service(src, what),
        (false, false, true) => through.to_string(),
        (false, true, true) => format!("{}; the rest {through}", checked_in_service(src, what)),
    };
    let status = match (dry_run, traffic.objects) {
        (true, _) if missing_bytes > 0 => "would copy",
        (_, 0) => "present",
        _ => "copied",
    };
    Ok(CopiedVersion {
        model: model.clone(),
        version: version.to_string(),
        pinned: format!("{model}@{version}"),
        format: found.manifest.format,
        status,
        signatures,
        traffic,
        missing_bytes,
        checked,
    })
}

/// The packs of a format 2 version the destination lacks, copied (verified), then its locations.
async fn copy_packs(src: &Session, dst: &Session, found: &Found, dry_run: bool, progress: &Progress) -> Result<Sent> {
    let loc = pieces::locations(src, found).await?;
    let missing = pieces::missing_packs(dst, &loc).await?;
    // The chunks of this version in each pack: offset, length, digest.
    let mut expected: HashMap<String, Vec<(u64, u32, [u8; 32])>> = HashMap::new();
    let chunks = found.manifest.files.iter().flat_map(|f| f.chunks.iter());
    for ((sha, len), &(p, offset)) in chunks.zip(&loc.chunks) {
        let id = &loc.packs[p as usize];
        expected.entry(dst.layout.pack_key(id)).or_default().push((offset, *len, pieces::digest_bytes(sha)));
    }
    let mut sizes = Vec::with_capacity(missing.len());
    for key in &missing {
        let id = dst.layout.pack_of_key(key).unwrap_or_default().to_string();
        let src_key = src.layout.pack_key(&id);
        let meta =
            src.provider.head(&src_key).await.map_err(|e| Error::from_provider(format!("reading {src_key}"), e))?;
        sizes.push((key.clone(), src_key, meta));
    }
    let missing_bytes: u64 = sizes.iter().map(|(_, _, m)| m.size).sum();
    let mut traffic = Traffic { present_objects: loc.packs.len() - missing.len(), ..Default::default() };
    let in_service = server_side(src, dst);
    if dry_run {
        return Ok(Sent { traffic, missing_bytes, in_service, locations: None });
    }
    if !missing.is_empty() {
        progress.started(Direction::Upload, missing_bytes);
        let hash = found.manifest.chunk_hash();
        for t in &send_packs(src, dst, sizes, expected, hash, in_service, progress).await? {
            traffic.add(t);
        }
    }
    // Locations: not covered by the version id, so a destination's own (a repack there) stay;
    // missing, they are written as the source has them.
    let (model, count) = (&found.manifest.model, found.manifest.chunk_count());
    let locations = match pieces::stored_locations(dst, model, &found.version, count).await? {
        Some(there) => there,
        None => {
            let loc_key = dst.layout.locations_key(model, &found.version);
            let loc_bytes = Bytes::from(serde_json::to_vec(&loc).expect("locations serialise"));
            dst.provider
                .put(&loc_key, loc_bytes, PutMode::Overwrite)
                .await
                .map_err(|e| Error::from_provider(format!("writing {loc_key}"), e))?;
            loc
        }
    };
    Ok(Sent { traffic, missing_bytes, in_service, locations: Some(locations) })
}

/// Copies the packs `sizes` names (destination key, source key, source object), verified.
async fn send_packs(
    src: &Session,
    dst: &Session,
    sizes: Vec<(String, String, crate::provider::ObjectMeta)>,
    expected: HashMap<String, Vec<(u64, u32, [u8; 32])>>,
    hash: crate::chunk::ChunkHash,
    in_service: bool,
    progress: &Progress,
) -> Result<Vec<Traffic>> {
    // Packs in flight within the memory budget (a pack is read whole before it is checked).
    let budget = crate::transfer::tuning::memory_budget(&dst.transfer);
    let largest = sizes.iter().map(|(_, _, m)| m.size).max().unwrap_or(1).max(1);
    let fits = ((budget / largest) as usize).max(1);
    let in_flight = dst.transfer.concurrency.unwrap_or(8).clamp(1, fits);
    let expected = Arc::new(expected);
    let limiter = crate::transfer::RateLimiter::new(dst.transfer.limit_rate);
    let limiter = limiter.as_ref();
    stream::iter(sizes)
        .map(|(key, src_key, meta)| {
            let expected = expected.clone();
            async move {
                if let Some(l) = limiter {
                    l.take(meta.size).await;
                }
                let t = if in_service { copy_in_service(src, dst, &src_key, &key, &meta).await? } else { None };
                let t = match t {
                    Some(t) => t,
                    None => {
                        let chunks = expected.get(&key).cloned().unwrap_or_default();
                        copy_pack_through(src, dst, src_key, &key, meta.size, chunks, hash).await?
                    }
                };
                progress.advanced(meta.size);
                Ok::<_, Error>(t)
            }
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await
}

/// Copies `src_key` to `key` inside the service, checked by size and ETag against `source`;
/// `None` when the service cannot (the caller copies through the machine).
async fn copy_in_service(
    src: &Session,
    dst: &Session,
    src_key: &str,
    key: &str,
    source: &crate::provider::ObjectMeta,
) -> Result<Option<Traffic>> {
    // Azure reads the source at a URL of its own: one with a read SAS for this blob.
    let url = match src.config.provider {
        ProviderKind::Azure => match src.provider.data_url(src_key, std::time::Duration::from_secs(3600)).await {
            Ok(Some(u)) if u.headers.is_empty() => Some(u.url),
            _ => return Ok(None),
        },
        _ => None,
    };
    let from = crate::provider::CopySource { bucket: src.config.bucket.clone(), key: src_key.to_string(), url };
    match dst.provider.copy_within_service(&from, key).await {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => {
            tracing::info!("copying {src_key} inside the service failed ({e}); copying it through this machine");
            return Ok(None);
        }
    }
    let copy = dst.provider.head(key).await.map_err(|e| Error::from_provider(format!("reading {key}"), e))?;
    let md5 = |etag: &Option<String>| {
        etag.as_deref().map(|e| e.trim_matches('"').to_ascii_lowercase()).filter(|e| e.len() == 32 && !e.contains('-'))
    };
    let etags_differ = matches!((md5(&source.etag), md5(&copy.etag)), (Some(a), Some(b)) if a != b);
    if copy.size != source.size || etags_differ {
        let _ = dst.provider.delete(key).await;
        return Err(Error::integrity(
            key,
            "the copy made inside the storage service differs from its source",
            Some(format!("{} bytes, ETag {}", source.size, source.etag.as_deref().unwrap_or("-"))),
            Some(format!("{} bytes, ETag {}", copy.size, copy.etag.as_deref().unwrap_or("-"))),
        ));
    }
    Ok(Some(Traffic { objects: 1, server_side_bytes: source.size, ..Default::default() }))
}

/// Reads a pack, checks each chunk `expected` names against its digest, writes it (create-only:
/// the same id is the same chunks, so one written meanwhile is as good). The read and its checks
/// are a task of their own, so that the packs in flight are hashed on every core.
async fn copy_pack_through(
    src: &Session,
    dst: &Session,
    src_key: String,
    key: &str,
    size: u64,
    expected: Vec<(u64, u32, [u8; 32])>,
    hash: crate::chunk::ChunkHash,
) -> Result<Traffic> {
    let read = tokio::spawn(read_pack_checked(src.provider.clone(), src_key, size, expected, hash));
    // A copy that fails elsewhere drops this future: the read stops with it.
    let _stop = AbortOnDrop(read.abort_handle());
    let body = read.await.map_err(|e| Error::other(format!("a copy task failed: {e}"), None))??;
    let size = body.len() as u64;
    dst.put_named(key, body, PutMode::Create).await?;
    Ok(Traffic { objects: 1, through_machine_bytes: size, ..Default::default() })
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pack's bytes, each chunk `expected` names hashed as soon as its last byte is in, while the
/// rest of the pack arrives.
async fn read_pack_checked(
    provider: Arc<dyn crate::provider::Provider>,
    src_key: String,
    size: u64,
    mut checks: Vec<(u64, u32, [u8; 32])>,
    hash: crate::chunk::ChunkHash,
) -> Result<bytes::Bytes> {
    let reading = |e| Error::from_provider(format!("reading {src_key}"), e);
    let mut body = provider.get(&src_key, GetRange::All).await.map_err(reading)?;
    checks.sort_by_key(|&(offset, len, _)| offset + u64::from(len));
    let mut next = 0;
    let mut buf = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    loop {
        let piece = body.next().await.transpose().map_err(reading)?;
        if let Some(piece) = &piece {
            buf.extend_from_slice(piece);
        }
        while let Some(&(offset, len, digest)) = checks.get(next) {
            let end = offset as usize + len as usize;
            if end > buf.len() {
                break;
            }
            let got = hash.digest(&buf[offset as usize..end]);
            if got != digest {
                return Err(Error::integrity(
                    &src_key,
                    format!(
                        "the chunk at offset {offset} does not match its digest; nothing was written at the destination for it"
                    ),
                    Some(Sha256Hex::from_digest(&digest).to_string()),
                    Some(Sha256Hex::from_digest(&got).to_string()),
                ));
            }
            next += 1;
        }
        if piece.is_none() {
            break;
        }
    }
    if let Some(&(offset, len, _)) = checks.get(next) {
        return Err(Error::integrity(
            &src_key,
            format!(
                "the pack ends at {} bytes, before the chunk at offset {offset} ({len} bytes) the version names",
                buf.len()
            ),
            None,
            None,
        ));
    }
    Ok(buf.freeze())
}

/// The archive of a format 1 version, when the destination lacks it: inside the service, or
/// streamed through this machine into a multipart upload that is completed only once the bytes
/// match the manifest's sha256 and size.
async fn copy_archive(src: &Session, dst: &Session, found: &Found, dry_run: bool, progress: &Progress) -> Result<Sent> {
    let m = &found.manifest;
    let (src_key, key) = (src.layout.archive_key(m), dst.layout.archive_key(m));
    let expected = m
        .archive_sha256
        .clone()
        .ok_or_else(|| Error::integrity(&src_key, "the version names no archive digest", None, None))?;
    let in_service =
        server_side(src, dst) && (src.config.provider == ProviderKind::Gcs || m.archive_size <= 5000 << 20);
    let sent = |traffic, missing_bytes| Sent { traffic, missing_bytes, in_service, locations: None };
    match dst.provider.head(&key).await {
        Ok(meta) if meta.size == m.archive_size => {
            return Ok(sent(Traffic { present_objects: 1, ..Default::default() }, 0));
        }
        Ok(_) => {}
        Err(e) if e.kind == ProviderErrorKind::NotFound => {}
        Err(e) => return Err(Error::from_provider(format!("reading {key}"), e)),
    }
    if dry_run {
        return Ok(sent(Traffic::default(), m.archive_size));
    }
    progress.started(Direction::Upload, m.archive_size);
    if in_service {
        let source =
            src.provider.head(&src_key).await.map_err(|e| Error::from_provider(format!("reading {src_key}"), e))?;
        if let Some(t) = copy_in_service(src, dst, &src_key, &key, &source).await? {
            progress.advanced(m.archive_size);
            return Ok(sent(t, m.archive_size));
        }
    }
    let limits = dst.provider.limits();
    let part = crate::transfer::choose_part_size(None, m.archive_size, &limits) as usize;
    let upload_id = dst
        .provider
        .create_multipart(&key, part as u64)
        .await
        .map_err(|e| Error::from_provider(format!("writing {key}"), e))?;
    let streamed = stream_parts(src, dst, &src_key, &key, &upload_id, part, progress).await;
    let (parts, sha, size) = match streamed {
        Ok(v) => v,
        Err(e) => {
            let _ = dst.provider.abort_multipart(&key, &upload_id).await;
            return Err(e);
        }
    };
    if sha != expected || size != m.archive_size {
        let _ = dst.provider.abort_multipart(&key, &upload_id).await;
        return Err(Error::integrity(
            &src_key,
            "the archive read from the source does not match its version; nothing was written at the destination",
            Some(format!("sha256 {expected}, {} bytes", m.archive_size)),
            Some(format!("sha256 {sha}, {size} bytes")),
        ));
    }
    dst.provider
        .complete_multipart(&key, &upload_id, parts)
        .await
        .map_err(|e| Error::from_provider(format!("writing {key}"), e))?;
    Ok(sent(Traffic { objects: 1, through_machine_bytes: size, ..Default::default() }, m.archive_size))
}

/// Streams `src_key` into parts of `part` bytes of the multipart upload `upload_id` (one part in
/// flight while the next is read), hashing on the way.
async fn stream_parts(
    src: &Session,
    dst: &Session,
    src_key: &str,
    key: &str,
    upload_id: &str,
    part: usize,
    progress: &Progress,
) -> Result<(Vec<crate::provider::PartTag>, Sha256Hex, u64)> {
    let mut body = src
        .provider
        .get(src_key, GetRange::All)
        .await
        .map_err(|e| Error::from_provider(format!("reading {src_key}"), e))?;
    let mut hasher = Sha256::new();
    let (mut size, mut number) = (0u64, 0u32);
    let mut parts = Vec::new();
    let mut buf = BytesMut::with_capacity(part);
    let mut sending: Option<tokio::task::JoinHandle<Result<crate::provider::PartTag>>> = None;
    let limiter = crate::transfer::RateLimiter::new(dst.transfer.limit_rate);
    let send = |number: u32, data: Bytes| {
        let (provider, key, upload_id) = (dst.provider.clone(), key.to_string(), upload_id.to_string());
        tokio::spawn(async move {
            provider
                .put_part(&key, &upload_id, number, data)
                .await
                .map_err(|e| Error::from_provider(format!("writing {key}"), e))
        })
    };
    let join = |h: tokio::task::JoinHandle<Result<crate::provider::PartTag>>| async move {
        h.await.map_err(|e| Error::other(format!("part upload task failed: {e}"), None))?
    };
    loop {
        let next = body.next().await.transpose().map_err(|e| Error::from_provider(format!("reading {src_key}"), e))?;
        if let Some(bytes) = &next {
            if let Some(l) = &limiter {
                l.take(bytes.len() as u64).await;
            }
            hasher.update(bytes);
            size += bytes.len() as u64;
            progress.advanced(bytes.len() as u64);
            buf.extend_from_slice(bytes);
        }
        while buf.len() >= part || (next.is_none() && (!buf.is_empty() || number == 0)) {
            let data = buf.split_to(part.min(buf.len())).freeze();
            if let Some(h) = sending.take() {
                parts.push(join(h).await?);
            }
            number += 1;
            sending = Some(send(number, data));
            if next.is_none() && buf.is_empty() {
                break;
            }
        }
        if next.is_none() {
            break;
        }
    }
    if let Some(h) = sending.take() {
        parts.push(join(h).await?);
    }
    Ok((parts, Sha256Hex::from_digest(&hasher.finalize()), size))
}
