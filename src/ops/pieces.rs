//! Bucket format 2, the writing side (ARCHITECTURE.md, "Incremental versions"): a version's
//! files are cut into content-defined chunks; the chunks the bucket does not hold yet go up in
//! packs; the version names every chunk by its digest, and its locations say in which pack each
//! chunk is. A version is committed when every pack it names is known to have survived any
//! concurrent pack sweep.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};

use super::versions::{self, Found};
use super::{Session, blocking};
use crate::archive::{ArchivePlan, Compression};
use crate::chunk::{ChunkHash, Piece};
use crate::error::{Error, Result};
use crate::manifest::{DirEntry, FileEntry, Manifest};
use crate::names::{ModelName, Sha256Hex};
use crate::pack::{self, Locations, PlannedPack};
use crate::progress::Direction;
use crate::provider::{ProviderErrorKind, PutMode};
use crate::reference::VersionId;
use crate::transfer::Progress;

/// The largest locations object read (a 60 GB model's is about 3 MB).
const MAX_LOCATIONS_BYTES: usize = 64 << 20;

/// A format 2 version written to the bucket (not yet tagged).
pub(crate) struct Stored {
    pub manifest: Manifest,
    pub version: VersionId,
    /// Packs sent, and their bytes.
    pub packs: usize,
    pub sent: u64,
    /// Bytes of the files found in the bucket already (chunks of earlier versions).
    pub reused: u64,
    /// The pack size and packs in flight chosen, and why.
    pub tuning: crate::transfer::tuning::Tuning,
}

/// Where each chunk of `found` (a format 2 version) is: its digest, pack id and offset.
pub(crate) async fn chunk_places(s: &Session, found: &Found) -> Result<Vec<([u8; 32], String, u64)>> {
    let loc = locations(s, found).await?;
    let digests = found.manifest.files.iter().flat_map(|f| f.chunks.iter());
    Ok(digests
        .zip(&loc.chunks)
        .map(|((sha, _), &(p, offset))| (digest_bytes(sha), loc.packs[p as usize].clone(), offset))
        .collect())
}

/// The locations object of `found`, checked against its chunk count.
pub(crate) async fn locations(s: &Session, found: &Found) -> Result<Locations> {
    locations_of(s, &found.manifest.model, &found.version, found.manifest.chunk_count()).await
}

/// The locations object of the version `version` of `model`, of `count` chunks.
pub(crate) async fn locations_of(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    count: usize,
) -> Result<Locations> {
    stored_locations(s, model, version, count).await?.ok_or_else(|| {
        let key = s.layout.locations_key(model, version);
        Error::integrity(&key, "the locations of the version are missing from the bucket", None, None)
    })
}

/// [`locations_of`], or `None` when the bucket has no locations object for the version.
pub(crate) async fn stored_locations(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    count: usize,
) -> Result<Option<Locations>> {
    let key = s.layout.locations_key(model, version);
    let Some(bytes) = s.get_small(&key).await? else { return Ok(None) };
    if bytes.len() > MAX_LOCATIONS_BYTES {
        return Err(Error::integrity(&key, format!("locations of {} bytes are too large", bytes.len()), None, None));
    }
    Locations::parse(&bytes, count).map(Some).map_err(|what| Error::integrity(&key, what, None, None))
}

pub(crate) fn digest_bytes(sha: &Sha256Hex) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(sha.as_str(), &mut out).expect("a Sha256Hex is 64 hex digits");
    out
}

/// A model directory cut into chunks: one read of every file, on several cores, which gives
/// each file's sha256 too (what the up-to-date check compares).
pub(crate) struct CutTree {
    plan: ArchivePlan,
    paths: Vec<PathBuf>,
    cuts: Vec<crate::chunk::Cut>,
    /// The manifest format of the version to write (2 or 3), which fixes the chunk hash.
    format: u32,
}

impl CutTree {
    /// Whether `m` describes exactly this tree (paths, sizes, modes, sha256; directories).
    pub(crate) fn same_as(&self, m: &Manifest) -> bool {
        let mut ours: Vec<(&str, Option<u64>, u32, Option<String>)> = Vec::new();
        let mut cut = self.cuts.iter();
        for e in &self.plan.entries {
            let sha = e.size.map(|_| hex::encode(cut.next().expect("one cut per file").1));
            ours.push((e.path.as_str(), e.size, e.mode, sha));
        }
        let mut theirs: Vec<(&str, Option<u64>, u32, Option<String>)> = m
            .files
            .iter()
            .map(|f| (f.path.as_str(), Some(f.size), f.mode, Some(f.sha256.to_string())))
            .chain(m.dirs.iter().map(|d| (d.path.as_str(), None, d.mode, None)))
            .collect();
        ours.sort();
        theirs.sort();
        ours == theirs
    }
}

/// Cuts every file of `plan` (see [`CutTree`]); a file whose size changed since the scan fails.
/// `chunk_sha256`: name each chunk by its sha256 too, for reuse of a format 2 version's chunks
/// (what the model's latest version is says whether that is likely; [`store`] fills them in
/// later when another source needs them).
pub(crate) async fn cut_tree(plan: ArchivePlan, format: u32, chunk_sha256: bool) -> Result<CutTree> {
    let hash = ChunkHash::of_format(format);
    let files: Vec<&crate::archive::PlannedEntry> = plan.entries.iter().filter(|e| e.size.is_some()).collect();
    let paths: Vec<PathBuf> = files.iter().map(|e| e.source.clone()).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cut_paths = paths.clone();
    let cuts = blocking(move || {
        crate::chunk::cut_files(&cut_paths, threads, hash, chunk_sha256)
            .map_err(|e| Error::other(format!("cannot read the model: {e}"), None))
    })
    .await?;
    for ((entry, (pieces, _)), path) in files.iter().zip(&cuts).zip(&paths) {
        let read: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
        if Some(read) != entry.size {
            return Err(changed(path));
        }
    }
    Ok(CutTree { plan, paths, cuts, format })
}

/// Sends the packs of the chunks of `tree` that neither `previous` (earlier versions of the
/// model, format 2) nor the bucket's file index nor this upload already hold, and writes the
/// locations and then the version, create-only. Then checks that every pack the version names
/// survived a concurrent sweep ([`packs_survive`]).
pub(crate) async fn store(
    s: &Session,
    model: &ModelName,
    tree: CutTree,
    previous: &[Found],
    force: bool,
) -> Result<Stored> {
    let CutTree { plan, paths, mut cuts, format } = tree;
    // A format 2 version names its chunks by sha256: reusing them needs those of this tree.
    if previous.iter().any(|f| f.manifest.format == 2 && !force) {
        fill_chunk_sha256s(&paths, &mut cuts).await?;
    }
    let pieces: Vec<Vec<Piece>> = cuts.iter().map(|(p, _)| p.clone()).collect();

    // What the bucket holds already: the chunks of the earlier versions given. With `force`,
    // nothing: every chunk is sent again, over what is there (which repairs a damaged pack).
    let mut have: HashMap<[u8; 32], (String, u64)> = HashMap::new();
    for found in previous.iter().filter(|f| f.manifest.is_pieces() && !force) {
        match chunk_places(s, found).await {
            Ok(places) => have.extend(places.into_iter().map(|(d, p, o)| (d, (p, o)))),
            // Unreadable locations only cost reuse.
            Err(e @ Error::Integrity { .. }) => s.info(model, format!("not reusing {}: {e}", found.version.short())),
            Err(e) => return Err(e),
        }
    }
    // Files another model (or an earlier version no tag names) holds: one GET per file.
    let indexed = if force {
        (0..cuts.len()).map(|i| (i, Vec::new())).collect()
    } else {
        read_file_indexes(s, &cuts, &paths).await?
    };
    for (_, places) in &indexed {
        have.extend(places.iter().cloned());
    }
    // Keyed by the digest each source names its chunks by: the sha256 of a format 2 version, the
    // BLAKE3 of a format 3 one. A chunk is found by either of its own.
    let known: HashSet<[u8; 32]> = have.keys().copied().collect();
    let planned = pack::plan(&pieces, &known, pack_size(s), packs_in_flight(s));
    let sent: u64 = planned.iter().map(|p| p.size).sum();
    let total: u64 = pieces.iter().flatten().map(|p| u64::from(p.len)).sum();
    let reused: u64 = pieces.iter().flatten().filter(|p| p.known_in(&known)).map(|p| u64::from(p.len)).sum();

    let progress = Progress::new(s.reporter.clone(), model.as_str());
    progress.started(Direction::Upload, sent);
    let mode = if force { PutMode::Overwrite } else { PutMode::Create };
    let sending = send_packs(s, &planned, &paths, &pieces, ChunkHash::of_format(format), mode, &progress).await;
    progress.finished();
    let tuning = sending?;

    let mut entries = Vec::new();
    let mut dirs = Vec::new();
    let mut cut = cuts.iter();
    for e in &plan.entries {
        match e.size {
            Some(size) => {
                let (pieces, sha) = cut.next().expect("one cut per file");
                entries.push(FileEntry {
                    path: e.path.clone(),
                    size,
                    sha256: Sha256Hex::from_digest(sha),
                    mode: e.mode,
                    offset: None,
                    chunks: pieces.iter().map(|p| (Sha256Hex::from_digest(&p.digest), p.len)).collect(),
                });
            }
            None => dirs.push(DirEntry { path: e.path.clone(), mode: e.mode }),
        }
    }
    let manifest = Manifest {
        format,
        model: model.clone(),
        archive_key: String::new(),
        archive_sha256: None,
        archive_size: 0,
        compression: Compression::None,
        total_size: total,
        files: entries,
        dirs,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        upload_id: format!("{:016x}", fastrand::u64(..)),
    };
    manifest.validate().map_err(|what| Error::other(format!("the version built is invalid: {what}"), None))?;
    let bytes = Bytes::from(manifest.to_bytes());
    let version = VersionId::of(&bytes);
    let loc = Locations::build(&pieces, &planned, &have).expect("every chunk is planned or held");
    let loc_key = s.layout.locations_key(model, &version);
    let loc_bytes = Bytes::from(serde_json::to_vec(&loc).expect("locations serialise"));
    s.provider
        .put(&loc_key, loc_bytes, PutMode::Overwrite)
        .await
        .map_err(|e| Error::from_provider(format!("writing {loc_key}"), e))?;
    super::upload::put_version(s, model, &version, &bytes).await?;
    packs_survive(s, model, &version, &loc, "upload").await?;
    write_file_indexes(s, &manifest, &loc, &indexed).await;
    Ok(Stored { manifest, version, packs: planned.len(), sent, reused, tuning })
}

/// The largest pack an upload makes: a fifth of the memory budget, within 2 MiB (a chunk is never
/// split) and [`pack::MAX_PACK`]. At the default budget, 32 MiB: a 60 GB model goes up in about
/// 1,800 PUTs. (A pack is read as it is sent, so its size does not bound the packs in flight.)
pub(crate) fn pack_size(s: &Session) -> u64 {
    (crate::transfer::tuning::memory_budget(&s.transfer) / 5).clamp(crate::chunk::MAX as u64, pack::MAX_PACK)
}

/// Gives every chunk of `cuts` its sha256, where the cut did not (each file read again, on
/// several cores).
async fn fill_chunk_sha256s(paths: &[PathBuf], cuts: &mut [crate::chunk::Cut]) -> Result<()> {
    let todo: Vec<usize> = (0..cuts.len()).filter(|&i| cuts[i].0.iter().any(|p| p.sha256.is_none())).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let filled: Vec<(usize, Vec<[u8; 32]>)> = stream::iter(todo)
        .map(|i| {
            let (path, pieces) = (paths[i].clone(), cuts[i].0.clone());
            blocking(move || {
                crate::chunk::chunk_sha256s(&path, &pieces)
                    .map(|shas| (i, shas))
                    .map_err(|e| Error::other(format!("cannot read the model: {e}"), None))
            })
        })
        .buffer_unordered(threads)
        .try_collect()
        .await?;
    for (i, shas) in filled {
        for (p, sha) in cuts[i].0.iter_mut().zip(shas) {
            p.sha256 = Some(sha);
        }
    }
    Ok(())
}

/// What to do when a file changed while it was being uploaded.
const CHANGED_HINT: &str = "nothing was committed; upload again once the model directory is no longer being written";

fn changed(path: &std::path::Path) -> Error {
    Error::other(format!("{} changed while it was being uploaded", path.display()), Some(CHANGED_HINT.into()))
}

/// Packs in flight at most (what format 1's uploads reach on a long link, and its downloads).
const MAX_PACKS_IN_FLIGHT: usize = 16;
/// One pack is in flight per this much of the memory budget (16 at the default budget). A pack
/// is read from its files as it is sent, so it holds a piece of about [`pack::READ_PIECE`] and
/// what the HTTP client buffers, not the pack: the share is for those and the rest of the program.
const PACK_SHARE: u64 = 10 << 20;

/// Sends the planned packs, create-only (a pack of that id already there holds the same
/// chunks), each read from the files as it is sent, so that as many go up at once as the link
/// needs, whatever their size: one per [`PACK_SHARE`] of the memory budget, at most
/// [`MAX_PACKS_IN_FLIGHT`] (a directory gets a few). Every chunk is hashed again just before its
/// bytes go out: a file that changed since it was cut stops its pack's request before the pack is
/// whole, so no object is made of it, and fails the upload.
async fn send_packs(
    s: &Session,
    planned: &[PlannedPack],
    paths: &[PathBuf],
    pieces: &[Vec<Piece>],
    hash: ChunkHash,
    mode: PutMode,
    progress: &Progress,
) -> Result<crate::transfer::tuning::Tuning> {
    let budget = crate::transfer::tuning::memory_budget(&s.transfer);
    let in_flight = packs_in_flight(s);
    let limiter = std::sync::Arc::new(crate::transfer::RateLimiter::new(s.transfer.limit_rate));
    let paths = std::sync::Arc::new(paths.to_vec());
    let pieces = std::sync::Arc::new(pieces.to_vec());
    stream::iter(planned.iter().cloned())
        .map(|p| {
            let (paths, pieces, limiter, mode) = (paths.clone(), pieces.clone(), limiter.clone(), mode.clone());
            async move {
                let key = s.layout.pack_key(&hex::encode(p.id));
                let size = p.size;
                let spoiled = std::sync::Arc::new(std::sync::OnceLock::new());
                let body = pack_body(std::sync::Arc::new(p), paths, pieces, hash, limiter, spoiled);
                let sent = s.put_stream_named(&key, body.clone(), mode).await;
                if let Some(why) = body.spoiled() {
                    let hint = why.contains(CHANGED).then(|| CHANGED_HINT.to_string());
                    return Err(Error::other(why.to_string(), hint));
                }
                sent?;
                progress.advanced(size);
                Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(crate::transfer::tuning::Tuning {
        part_size: pack_size(s),
        start: in_flight,
        limit: in_flight,
        reached: in_flight.min(planned.len().max(1)),
        memory_budget: budget,
        memory_source: crate::transfer::tuning::memory_source(&s.transfer),
        peak_held: None,
        why: format!(
            "in chunks: packs of up to {} MiB, read as they are sent, {in_flight} in flight",
            pack_size(s) >> 20
        ),
    })
}

/// Packs in flight for an upload ([`send_packs`]): `--concurrency`, within the budget's share.
pub(crate) fn packs_in_flight(s: &Session) -> usize {
    let budget = crate::transfer::tuning::memory_budget(&s.transfer);
    let most = match s.provider.limits().max_reads_in_flight {
        Some(cap) => cap,
        None => MAX_PACKS_IN_FLIGHT,
    };
    let fits = ((budget / PACK_SHARE) as usize).clamp(1, most);
    s.transfer.concurrency.map_or(fits, |c| c.clamp(1, fits))
}

/// What [`pack::read_piece`] says of a file that changed.
const CHANGED: &str = "changed while it was being uploaded";

/// The body of one pack: its pieces read from the files in turn as the request sends them, each
/// checked by [`pack::read_piece`] and paced by `--limit-rate` when it goes on the wire. A piece
/// that cannot be read as planned spoils the body (with the reason) and ends the stream with an
/// error, before its bytes are handed on.
fn pack_body(
    pack: std::sync::Arc<PlannedPack>,
    paths: std::sync::Arc<Vec<PathBuf>>,
    pieces: std::sync::Arc<Vec<Vec<Piece>>>,
    hash: ChunkHash,
    limiter: std::sync::Arc<Option<crate::transfer::RateLimiter>>,
    spoiled: std::sync::Arc<std::sync::OnceLock<String>>,
) -> crate::provider::StreamBody {
    use crate::provider::{ProviderError, ProviderErrorKind};
    let ranges = std::sync::Arc::new(pack::pieces(&pack, &pieces));
    let size = pack.size;
    let spoils = spoiled.clone();
    crate::provider::StreamBody::new(size, spoiled, move |paced| {
        let (pack, paths, pieces, limiter, spoiled) =
            (pack.clone(), paths.clone(), pieces.clone(), limiter.clone(), spoils.clone());
        let ranges = ranges.clone();
        Box::pin(stream::iter(0..ranges.len()).then(move |i| {
            let (pack, paths, pieces, limiter, spoiled, range) =
                (pack.clone(), paths.clone(), pieces.clone(), limiter.clone(), spoiled.clone(), ranges[i].clone());
            async move {
                if let Some(why) = spoiled.get() {
                    return Err(ProviderError::new(ProviderErrorKind::Other, why.clone()));
                }
                let read = tokio::task::spawn_blocking(move || pack::read_piece(&pack, range, &paths, &pieces, hash))
                    .await
                    .map_err(|e| std::io::Error::other(format!("a read task failed: {e}")))
                    .and_then(|r| r);
                let bytes = match read {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let why = match e.kind() {
                            // `read_piece` says which file changed.
                            std::io::ErrorKind::InvalidData => e.to_string(),
                            _ => format!("cannot read the model: {e}"),
                        };
                        let _ = spoiled.set(why.clone());
                        return Err(ProviderError::new(ProviderErrorKind::Other, why));
                    }
                };
                if let (true, Some(limiter)) = (paced, limiter.as_ref()) {
                    limiter.take(bytes.len() as u64).await;
                }
                Ok(Bytes::from(bytes))
            }
        })) as crate::provider::ByteStream
    })
}

/// The commit check of a format 2 version just written: a pack sweep (`prune --remote`) whose
/// last read of the stored versions came before this version was written may have found one of
/// its packs unreferenced. Such a sweep has its marker up until after its last delete, and
/// deletes only within the sweep window of that read; so, waiting out the window when a marker is
/// up, then finding every pack, proves none will be deleted for want of this version. A pack
/// missing then was deleted: the version is removed again and the upload fails (exit 8), and run
/// again sends what is missing. The argument is in ARCHITECTURE.md.
/// `action` names what wrote the version in the message: `upload` or `copy`.
pub(crate) async fn packs_survive(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    loc: &Locations,
    action: &str,
) -> Result<()> {
    if versions::sweep_running(s, &s.layout.pack_sweep_markers()).await? {
        versions::wait_out_sweep(
            s,
            model.as_str(),
            "a `prune --remote` is removing unused packs".into(),
            &format!("every pack of {}", version.short()),
        )
        .await;
    }
    let missing = missing_packs(s, loc).await?;
    let loc_key = s.layout.locations_key(model, version);
    let loc_there = match s.provider.head(&loc_key).await {
        Ok(_) => true,
        Err(e) if e.kind == ProviderErrorKind::NotFound => false,
        Err(e) => return Err(Error::from_provider(format!("reading {loc_key}"), e)),
    };
    if missing.is_empty() && loc_there {
        return Ok(());
    }
    let missing = if missing.is_empty() { vec![loc_key.clone()] } else { missing };
    let _ = s.provider.delete(&s.layout.version_key(model, version)).await;
    let _ = s.provider.delete(&loc_key).await;
    Err(Error::Conflict {
        message: format!(
            "{model}: a `prune --remote` running at the same time deleted {} pack(s) this {action} reuses (first: {}); the new version was removed again",
            missing.len(),
            missing[0]
        ),
        hint: Some(format!("run the {action} of {model} again: it sends what is missing")),
    })
}

/// The keys of the packs `loc` names that are not in the bucket (one HEAD each, 16 at once).
pub(crate) async fn missing_packs(s: &Session, loc: &Locations) -> Result<Vec<String>> {
    stream::iter(loc.packs.iter().cloned())
        .map(|id| async move {
            let key = s.layout.pack_key(&id);
            match s.provider.head(&key).await {
                Ok(_) => Ok(None),
                Err(e) if e.kind == ProviderErrorKind::NotFound => Ok(Some(key)),
                Err(e) => Err(Error::from_provider(format!("reading {key}"), e)),
            }
        })
        .buffer_unordered(16)
        .try_filter_map(|k| async move { Ok(k) })
        .try_collect()
        .await
}

/// `_pieces/files/<sha256>.json`: where the chunks of a file of that sha256 are, so that the
/// same file under another model's name costs no upload. It needs no trust: a wrong entry makes
/// a version whose chunks fail their digests when read (exit 6), never wrong bytes, and an
/// upload checks that its packs exist before it relies on it.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileIndex {
    packs: Vec<String>,
    /// `[chunk digest, pack index, offset]` per chunk, in file order (the digest the version
    /// that wrote it names chunks by: sha256 in format 2, BLAKE3 in format 3).
    chunks: Vec<(String, u32, u64)>,
}

type Places = Vec<([u8; 32], (String, u64))>;

/// For each file: the chunk places its index gives, when the index matches the file's chunks and
/// every pack it names is there. Files with no usable index are returned with no places (their
/// index is written after the commit).
async fn read_file_indexes(s: &Session, cuts: &[crate::chunk::Cut], paths: &[PathBuf]) -> Result<Vec<(usize, Places)>> {
    // Every file is looked up (one small GET each), so that a file this model already had
    // gets its index too when it has none yet.
    stream::iter(0..cuts.len())
        .map(|i| async move {
            let key = s.layout.file_index_key(&hex::encode(cuts[i].1));
            let Some(bytes) = s.get_small(&key).await? else { return Ok((i, Vec::new())) };
            let Ok(index) = serde_json::from_slice::<FileIndex>(&bytes) else { return Ok((i, Vec::new())) };
            let pieces = &cuts[i].0;
            let fits =
                index.chunks.len() == pieces.len() && index.chunks.iter().all(|c| (c.1 as usize) < index.packs.len());
            // An index names chunks as the upload that wrote it did: by BLAKE3 or by sha256 (a
            // format 2 upload's, whose chunk sha256s the cut may not have computed: read again).
            let by_digest = fits && index.chunks.iter().zip(pieces).all(|(c, p)| c.0 == hex::encode(p.digest));
            let by_sha256 = fits && !by_digest && {
                let shas = match pieces.iter().map(|p| p.sha256).collect::<Option<Vec<_>>>() {
                    Some(shas) => shas,
                    None => {
                        let (path, pieces) = (paths[i].clone(), pieces.clone());
                        blocking(move || {
                            crate::chunk::chunk_sha256s(&path, &pieces)
                                .map_err(|e| Error::other(format!("cannot read the model: {e}"), None))
                        })
                        .await?
                    }
                };
                index.chunks.iter().zip(&shas).all(|(c, sha)| c.0 == hex::encode(sha))
            };
            if !by_digest && !by_sha256 {
                return Ok((i, Vec::new()));
            }
            for pack in &index.packs {
                match s.provider.head(&s.layout.pack_key(pack)).await {
                    Ok(_) => {}
                    Err(e) if e.kind == ProviderErrorKind::NotFound => return Ok((i, Vec::new())),
                    Err(e) => return Err(Error::from_provider(format!("reading {}", s.layout.pack_key(pack)), e)),
                }
            }
            let places = cuts[i]
                .0
                .iter()
                .zip(&index.chunks)
                .map(|(p, c)| (p.digest, (index.packs[c.1 as usize].clone(), c.2)))
                .collect();
            Ok((i, places))
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

/// Writes the index of each file `indexed` found none usable for (best effort: it only saves
/// later uploads of the same file).
async fn write_file_indexes(s: &Session, manifest: &Manifest, loc: &Locations, indexed: &[(usize, Places)]) {
    let mut first = Vec::with_capacity(manifest.files.len());
    let mut n = 0;
    for f in &manifest.files {
        first.push(n);
        n += f.chunks.len();
    }
    let todo: Vec<usize> = indexed.iter().filter(|(_, places)| places.is_empty()).map(|(i, _)| *i).collect();
    stream::iter(todo)
        .for_each_concurrent(16, |i| {
            let f = &manifest.files[i];
            let mut packs: Vec<String> = Vec::new();
            let chunks = f
                .chunks
                .iter()
                .enumerate()
                .map(|(j, (sha, _))| {
                    let (p, offset) = loc.chunks[first[i] + j];
                    let id = &loc.packs[p as usize];
                    let at = packs.iter().position(|q| q == id).unwrap_or_else(|| {
                        packs.push(id.clone());
                        packs.len() - 1
                    });
                    (sha.to_string(), at as u32, offset)
                })
                .collect();
            let body = serde_json::to_vec(&FileIndex { packs, chunks }).expect("an index serialises");
            let key = s.layout.file_index_key(f.sha256.as_str());
            async move {
                let _ = s.provider.put(&key, Bytes::from(body), PutMode::Overwrite).await;
            }
        })
        .await;
}
