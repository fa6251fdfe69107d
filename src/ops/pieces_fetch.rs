//! Bucket format 2, the reading side (ARCHITECTURE.md, "Incremental versions"): a version's
//! files are made in a staging directory from what this machine has (a file of the same sha256 in
//! the cache's blob store or in another installed version, a chunk of an earlier version's file)
//! and from ranged reads of packs for the rest. Every chunk is checked against its digest as it
//! arrives, every file against its sha256 once whole (on as many cores as files finish at once),
//! and a verified file enters the blob store at once: a killed download keeps what it finished.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{StreamExt as _, TryStreamExt as _, stream};

use super::pieces::{digest_bytes, locations_of};
use super::{Session, blocking};
use crate::archive::installed_mode;
use crate::cache::blobs::LocalSources;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::Direction;
use crate::provider::GetRange;
use crate::reference::VersionId;
use crate::transfer::Progress;
use crate::transfer::tuning::Tuning;

/// The largest ranged read of a pack: runs of consecutive chunks are read together up to this.
pub const RANGE: u64 = 32 << 20;
/// Ranged reads in flight at most (what format 1's downloads reach on a long link).
const MAX_RANGES: usize = 16;
/// Over the network, one ranged read is in flight per this much of the memory budget (16 at the
/// default budget). A read holds one frame of the HTTP client's buffer at a time, well under a
/// MiB: the share is for the client's buffers and the rest of the program.
const NETWORK_SHARE: u64 = 10 << 20;

/// What making a format 2 version cost.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fetched {
    /// Bytes read from the bucket (packs).
    pub fetched: u64,
    /// Ranged reads of packs.
    pub requests: usize,
    /// Bytes of files found whole on this machine, and of chunks read from local files.
    pub local: u64,
}

/// A local chunk that no longer matched its digest: file index, offset in it, digest.
type Miss = (usize, u64, [u8; 32]);

/// A chunk to read from a pack, and where its bytes go (file index, offset in the file).
struct Wanted {
    pack: usize,
    offset: u64,
    len: u64,
    digest: [u8; 32],
    targets: Vec<(usize, u64)>,
}

/// How a version is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct How {
    /// Use what this machine has (`false` for `download --force`: a clean copy from the bucket).
    pub reuse_local: bool,
    /// Hash every file whole against its sha256 once made, besides every chunk against its
    /// digest (needed when a signature of the files alone vouches for the version).
    pub hash_files: bool,
}

/// Makes every file of `manifest` (the version `version`) in `staging`, verified, with its mode;
/// `only` limits it to those files (indexes into `manifest.files`).
pub(crate) async fn fetch(
    s: &Session,
    manifest: &Manifest,
    version: &VersionId,
    staging: &Path,
    only: Option<&[usize]>,
    how: How,
    label: &str,
) -> Result<(Fetched, Tuning)> {
    let How { reuse_local, hash_files } = how;
    let model = manifest.model.clone();
    let loc = locations_of(s, &model, version, manifest.chunk_count()).await?;
    let wanted: Vec<usize> = only.map_or_else(|| (0..manifest.files.len()).collect(), <[usize]>::to_vec);
    let (cache, m) = (s.cache.clone(), model.clone());
    // `download --force` fetches everything again: a clean copy from the bucket.
    let sources = if reuse_local {
        blocking(move || Ok(LocalSources::gather(&cache, &m))).await?
    } else {
        LocalSources::default()
    };
    let sources = Arc::new(sources);
    let manifest = Arc::new(manifest.clone());
    let staging = staging.to_path_buf();

    // Directories first, then each file: whole from this machine if it has one of the same
    // sha256 (hashed before it is trusted), else an empty file of its size to write chunks into.
    {
        let (manifest, staging, selection) = (manifest.clone(), staging.clone(), only.is_some());
        blocking(move || make_dirs(&manifest, &staging, selection)).await?;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut out = Fetched::default();
    let reused: Vec<Option<u64>> = stream::iter(wanted.iter().copied())
        .map(|i| {
            let (manifest, staging, sources, cache) =
                (manifest.clone(), staging.clone(), sources.clone(), s.cache.clone());
            blocking(move || Ok(reuse_local.then(|| reuse_whole(&cache, &sources, &manifest, i, &staging)).flatten()))
        })
        .buffered(threads)
        .try_collect()
        .await?;
    let mut open: HashMap<usize, Arc<File>> = HashMap::new();
    let mut in_place = Vec::new();
    for (&i, reused) in wanted.iter().zip(&reused) {
        if let Some(bytes) = reused {
            out.local += bytes;
            continue;
        }
        let f = &manifest.files[i];
        let path = staging.join(&f.path);
        // A file of the right size left by a killed run of this download: its chunks are
        // checked where they are, and only the others fetched.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == f.size) {
            in_place.push(i);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|h| h.set_len(f.size).map(|()| h));
        open.insert(i, Arc::new(file.map_err(|e| Error::io("cannot write", &path, e))?));
    }

    // Each chunk of the files still to make: from a local file that has it (checked), else
    // from its pack. A chunk that occurs several times is read once.
    let mut offsets: Vec<Vec<u64>> = Vec::with_capacity(manifest.files.len());
    let mut first_chunk = Vec::with_capacity(manifest.files.len());
    let mut n = 0;
    for f in &manifest.files {
        first_chunk.push(n);
        n += f.chunks.len();
        let mut at = 0;
        offsets.push(
            f.chunks
                .iter()
                .map(|(_, len)| {
                    let start = at;
                    at += u64::from(*len);
                    start
                })
                .collect(),
        );
    }
    let offsets = Arc::new(offsets);
    let mut good: HashMap<usize, std::collections::HashSet<usize>> = {
        stream::iter(in_place)
            .map(|i| {
                let (manifest, staging, offsets) = (manifest.clone(), staging.clone(), offsets.clone());
                blocking(move || Ok((i, chunks_in_place(&manifest, &staging, &offsets, i))))
            })
            .buffer_unordered(threads)
            .try_collect()
            .await?
    };
    for (&i, js) in &good {
        out.local += js.iter().map(|&j| u64::from(manifest.files[i].chunks[j].1)).sum::<u64>();
    }
    // An empty file's one chunk is empty: nothing to read (a range of no bytes is no request).
    let hash = manifest.chunk_hash();
    let empty: [u8; 32] = hash.digest(&[]);
    for &i in open.keys() {
        for (j, (sha, len)) in manifest.files[i].chunks.iter().enumerate() {
            if *len == 0 {
                if digest_bytes(sha) != empty {
                    return Err(Error::integrity(
                        &manifest.files[i].path,
                        "the version gives an empty chunk a digest that is not the empty one's",
                        Some(hex::encode(empty)),
                        Some(sha.to_string()),
                    ));
                }
                good.entry(i).or_default().insert(j);
            }
        }
    }
    let remaining: Arc<HashMap<usize, AtomicUsize>> = Arc::new(
        open.keys()
            .map(|&i| (i, AtomicUsize::new(manifest.files[i].chunks.len() - good.get(&i).map_or(0, |g| g.len()))))
            .collect(),
    );
    let mut remote: HashMap<[u8; 32], Wanted> = HashMap::new();
    let mut local: Vec<([u8; 32], PathBuf, u64, u64, usize, u64)> = Vec::new();
    let mut order: Vec<usize> = open.keys().copied().collect();
    order.sort_unstable();
    for &i in &order {
        let f = &manifest.files[i];
        for (j, (sha, len)) in f.chunks.iter().enumerate() {
            if good.get(&i).is_some_and(|g| g.contains(&j)) {
                continue;
            }
            let digest = digest_bytes(sha);
            let target = (i, offsets[i][j]);
            if let Some((path, at)) = sources.chunk(&digest) {
                local.push((digest, path.clone(), *at, u64::from(*len), i, target.1));
                continue;
            }
            let (pack, offset) = loc.chunks[first_chunk[i] + j];
            remote
                .entry(digest)
                .or_insert_with(|| Wanted {
                    pack: pack as usize,
                    offset,
                    len: u64::from(*len),
                    digest,
                    targets: Vec::new(),
                })
                .targets
                .push(target);
        }
    }
    let ctx = Arc::new(Writer {
        files: open,
        remaining,
        manifest: manifest.clone(),
        staging: staging.clone(),
        cache: s.cache.clone(),
        hash_files,
    });

    // Files every chunk of which was in place are complete now.
    for (&i, r) in ctx.remaining.iter() {
        if r.load(Ordering::SeqCst) == 0 {
            let ctx = ctx.clone();
            blocking(move || ctx.finish(i)).await?;
        }
    }

    // Local chunks, checked: one that no longer matches is read from its pack instead.
    let read_locally: Vec<std::result::Result<u64, Miss>> = stream::iter(local)
        .map(|(digest, path, at, len, i, to)| {
            let ctx = ctx.clone();
            blocking(move || {
                let mut buf = vec![0u8; len as usize];
                let good = File::open(&path).and_then(|f| f.read_exact_at(&mut buf, at)).is_ok()
                    && hash.digest(&buf) == digest;
                if !good {
                    return Ok(Err((i, to, digest)));
                }
                ctx.write(&buf, &[(i, to)])?;
                Ok(Ok(len))
            })
        })
        .buffer_unordered(threads)
        .try_collect()
        .await?;
    for r in read_locally {
        let (i, to, digest) = match r {
            Ok(len) => {
                out.local += len;
                continue;
            }
            Err(miss) => miss,
        };
        let j = offsets[i].iter().position(|&o| o == to).expect("a chunk of the file");
        let (pack, offset) = loc.chunks[first_chunk[i] + j];
        let len = u64::from(manifest.files[i].chunks[j].1);
        remote
            .entry(digest)
            .or_insert_with(|| Wanted { pack: pack as usize, offset, len, digest, targets: Vec::new() })
            .targets
            .push((i, to));
    }

    // The rest from the packs: runs of consecutive chunks of a pack in one ranged read.
    let budget = crate::transfer::tuning::memory_budget(&s.transfer);
    // Each range is hashed and written frame by frame as it arrives, so a range in flight holds
    // one frame at a time. Over the network that is a slice of the HTTP client's buffer (well
    // under a MiB), and the ranges in flight are what the link needs: one per NETWORK_SHARE of
    // the budget, at most MAX_RANGES. A store that caps its reads in flight (a directory) may hand a range
    // over in frames as large as the range: as many as the budget holds whole.
    let range = (budget / 2).clamp(crate::chunk::MAX as u64, RANGE);
    let in_flight = match s.provider.limits().max_reads_in_flight {
        Some(cap) => ((budget / range) as usize).clamp(1, cap),
        None => ((budget / NETWORK_SHARE) as usize).clamp(1, MAX_RANGES),
    };
    let in_flight = s.transfer.concurrency.map_or(in_flight, |c| c.clamp(1, in_flight));
    let mut chunks: Vec<Wanted> = remote.into_values().collect();
    chunks.sort_by_key(|w| (w.pack, w.offset));
    let mut queue: std::collections::VecDeque<Vec<Wanted>> =
        by_turns(crate::pack::runs(chunks, |w| (w.pack, w.offset, w.len), range)).into();
    out.fetched = queue.iter().flatten().map(|w| w.len).sum();
    let mut left = out.fetched;
    let limiter = Arc::new(crate::transfer::RateLimiter::new(s.transfer.limit_rate));
    let held = Arc::new(Held::default());
    let progress = Progress::new(s.reporter.clone(), label);
    progress.started(Direction::Download, out.fetched);
    // Each range is a task of its own, so that the ranges in flight are received, hashed and
    // written on every core at once (polled together in one task, they would take turns on one).
    let mut tasks = tokio::task::JoinSet::new();
    let mut result = Ok(());
    loop {
        while tasks.len() < in_flight {
            // Towards the end, the runs are cut finer, so that the connections finish together.
            let Some(run) = crate::pack::next_read(&mut queue, &mut left, in_flight, |w| w.len) else { break };
            out.requests += 1;
            let key = s.layout.pack_key(&loc.packs[run[0].pack]);
            let (provider, ctx, held, limiter, progress) =
                (s.provider.clone(), ctx.clone(), held.clone(), limiter.clone(), progress.clone());
            tasks.spawn(async move {
                stream_run(&*provider, &ctx, &key, &run, &held, (*limiter).as_ref(), &progress).await
            });
        }
        match tasks.join_next().await {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                result = Err(e);
                break;
            }
            Some(Err(e)) => {
                result = Err(Error::other(format!("a download task failed: {e}"), None));
                break;
            }
        }
    }
    // On a failure the other ranges stop at their next read; none is left writing afterwards.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    progress.finished();
    result?;
    // Files whose every chunk was local finished in the writes above too; any left (a file of
    // no chunks cannot be: each has at least one) would be a bug.
    if let Some((&i, _)) = ctx.remaining.iter().find(|(_, r)| r.load(Ordering::SeqCst) > 0) {
        return Err(Error::other(format!("{} was not completed", manifest.files[i].path), None));
    }
    {
        let (manifest, staging) = (manifest.clone(), staging.clone());
        blocking(move || set_dir_modes(&manifest, &staging)).await?;
    }
    let tuning = Tuning {
        part_size: range,
        start: in_flight,
        limit: in_flight,
        reached: in_flight,
        memory_budget: budget,
        memory_source: crate::transfer::tuning::memory_source(&s.transfer),
        peak_held: Some(held.peak()),
        why: format!("in chunks: ranges of up to {} MiB over packs, {in_flight} at once", range >> 20),
    };
    Ok((out, tuning))
}

/// The ranges in an order that takes the files in turns (the first range of each file, then the
/// second, ...), so that the ranges in flight write into different files: writes into one file
/// wait for each other on its inode lock (4% of a download's CPU spent spinning on it, in pack
/// order, where every range in flight went to the same shard).
fn by_turns(runs: Vec<Vec<Wanted>>) -> Vec<Vec<Wanted>> {
    let mut queues: std::collections::BTreeMap<usize, std::collections::VecDeque<Vec<Wanted>>> = Default::default();
    for run in runs {
        let file = run.first().and_then(|w| w.targets.first()).map_or(0, |t| t.0);
        queues.entry(file).or_default().push_back(run);
    }
    let mut out = Vec::new();
    while !queues.is_empty() {
        queues.retain(|_, q| {
            out.extend(q.pop_front());
            !q.is_empty()
        });
    }
    out
}

/// Bytes of ranges in memory, and the most there were at once.
#[derive(Default)]
struct Held {
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

impl Held {
    fn hold(&self, n: u64) -> HeldGuard<'_> {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
        HeldGuard(self, n)
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

struct HeldGuard<'a>(&'a Held, u64);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// Reads a run of consecutive chunks of one pack by one ranged GET and writes them as the bytes
/// arrive: each chunk is hashed on the way and written at every place it goes, and counts as
/// done (its files may then be complete) only once its digest matched. A read cut off midway is
/// made again from where it stopped (a few times); unverified bytes may sit in the staging
/// file meanwhile, never in a version. A short or missing pack is an integrity failure.
async fn stream_run(
    provider: &dyn crate::provider::Provider,
    ctx: &Writer,
    key: &str,
    run: &[Wanted],
    held: &Held,
    limiter: Option<&crate::transfer::RateLimiter>,
    progress: &Progress,
) -> Result<()> {
    let end = run.last().map_or(0, |w| w.offset + w.len);
    let (mut idx, mut done, mut hasher, mut attempt) = (0usize, 0u64, ctx.manifest.chunk_hash().hasher(), 0);
    'read: loop {
        attempt += 1;
        let from = run[idx].offset + done;
        let mut stream = match provider.get(key, GetRange::Bounded(from..end)).await {
            Ok(stream) => stream,
            Err(e) if e.kind == crate::provider::ProviderErrorKind::NotFound => {
                return Err(Error::integrity(key, "a pack the version names is missing from the bucket", None, None));
            }
            Err(e) => return Err(Error::from_provider(format!("reading {key}"), e)),
        };
        while let Some(part) = stream.next().await {
            let part = match part {
                Ok(part) => part,
                Err(e) if e.kind == crate::provider::ProviderErrorKind::Transport && attempt < 4 => {
                    tracing::info!(%key, attempt, "a ranged read of a pack was cut off; reading on from where it stopped");
                    continue 'read;
                }
                Err(e) => return Err(Error::from_provider(format!("reading {key}"), e)),
            };
            if let Some(limiter) = limiter {
                limiter.take(part.len() as u64).await;
            }
            let _holding = held.hold(part.len() as u64);
            let mut data: &[u8] = &part;
            // Hashed and written right here: the task is one range of several on as many
            // workers, and a frame takes well under a millisecond. (`block_in_place` for each
            // frame handed the worker's other tasks to another thread every time: 20% slower.)
            while !data.is_empty() {
                let Some(w) = run.get(idx) else {
                    return Err(Error::integrity(key, "the pack answered more bytes than asked", None, None));
                };
                let take = data.len().min((w.len - done) as usize);
                hasher.update(&data[..take]);
                ctx.put(&data[..take], &w.targets, done)?;
                done += take as u64;
                data = &data[take..];
                if done == w.len {
                    let digest = hasher.finalize_reset();
                    if digest != w.digest {
                        return Err(Error::integrity(
                            key,
                            format!("a chunk at offset {} differs from its digest in the version", w.offset),
                            Some(hex::encode(w.digest)),
                            Some(hex::encode(digest)),
                        ));
                    }
                    ctx.chunk_done(&w.targets)?;
                    progress.advanced(w.len);
                    (idx, done) = (idx + 1, 0);
                }
            }
        }
        if idx < run.len() {
            if attempt < 4 {
                continue 'read;
            }
            return Err(Error::integrity(key, "the pack answered fewer bytes than asked", None, None));
        }
        return Ok(());
    }
}

/// The files being written, and how many chunks each still waits for.
struct Writer {
    files: HashMap<usize, Arc<File>>,
    remaining: Arc<HashMap<usize, AtomicUsize>>,
    manifest: Arc<Manifest>,
    staging: PathBuf,
    cache: crate::cache::Cache,
    hash_files: bool,
}

impl Writer {
    /// Writes a verified chunk at each target; a file whose last chunk this was is hashed whole,
    /// given its mode and entered into the blob store.
    fn write(&self, bytes: &[u8], targets: &[(usize, u64)]) -> Result<()> {
        self.put(bytes, targets, 0)?;
        self.chunk_done(targets)
    }

    /// Writes part of a chunk, `skip` bytes into it, at each of its places (not yet verified).
    fn put(&self, bytes: &[u8], targets: &[(usize, u64)], skip: u64) -> Result<()> {
        for &(i, at) in targets {
            self.files[&i]
                .write_all_at(bytes, at + skip)
                .map_err(|e| Error::io("cannot write", &self.staging.join(&self.manifest.files[i].path), e))?;
        }
        Ok(())
    }

    /// A chunk written whole and verified at each of its places: a file whose last chunk it was
    /// is complete.
    fn chunk_done(&self, targets: &[(usize, u64)]) -> Result<()> {
        for &(i, _) in targets {
            if self.remaining[&i].fetch_sub(1, Ordering::SeqCst) == 1 {
                self.finish(i)?;
            }
        }
        Ok(())
    }

    fn finish(&self, i: usize) -> Result<()> {
        let f = &self.manifest.files[i];
        let path = self.staging.join(&f.path);
        if self.hash_files {
            self.hash_whole(i, &path)?;
        }
        set_mode(&path, f.mode)?;
        crate::cache::blobs::keep(&self.cache, &path, &f.sha256);
        Ok(())
    }

    /// The file made from its chunks, hashed whole against its sha256.
    fn hash_whole(&self, i: usize, path: &Path) -> Result<()> {
        let f = &self.manifest.files[i];
        let (sha, _) = crate::archive::sha256_file(path).map_err(|e| Error::io("cannot read", path, e))?;
        if sha != f.sha256 {
            return Err(Error::integrity(
                &f.path,
                "the file made from its chunks differs from its sha256 in the version",
                Some(f.sha256.to_string()),
                Some(sha.to_string()),
            ));
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(installed_mode(mode)))
        .map_err(|e| Error::io("cannot set the mode of", path, e))
}

/// A file of the version found whole on this machine (blob store or another installed version),
/// hashed and then linked (or copied) into place: its size, or `None` to make it from chunks.
fn reuse_whole(
    cache: &crate::cache::Cache,
    sources: &LocalSources,
    manifest: &Manifest,
    i: usize,
    staging: &Path,
) -> Option<u64> {
    let f = &manifest.files[i];
    let target = staging.join(&f.path);
    for candidate in sources.whole(cache, &f.sha256) {
        let same = std::fs::metadata(&candidate).is_ok_and(|m| m.len() == f.size)
            && crate::archive::sha256_file(&candidate).is_ok_and(|(sha, _)| sha == f.sha256);
        if !same {
            if candidate == cache.blob_path(&f.sha256) {
                // A changed blob (a write into a file of a version): out of the store, so that
                // the verified file made now takes its place.
                let _ = std::fs::remove_file(&candidate);
            }
            continue;
        }
        let _ = std::fs::remove_file(&target);
        let placed = crate::cache::blobs::link_or_copy(cache, &candidate, &f.sha256, &target);
        if placed && set_mode(&target, f.mode).is_ok() {
            return Some(f.size);
        }
    }
    None
}

fn make_dirs(manifest: &Manifest, staging: &Path, selection: bool) -> Result<()> {
    let mk = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io("cannot create", p, e));
    if !selection {
        for d in &manifest.dirs {
            mk(&staging.join(&d.path))?;
        }
    }
    for f in &manifest.files {
        if let Some(parent) = staging.join(&f.path).parent() {
            mk(parent)?;
        }
    }
    Ok(())
}

/// Directory modes, deepest first (a read-only directory must not block its children).
fn set_dir_modes(manifest: &Manifest, staging: &Path) -> Result<()> {
    let mut dirs: Vec<_> = manifest.dirs.iter().collect();
    dirs.sort_by(|a, b| b.path.cmp(&a.path));
    for d in dirs {
        let path = staging.join(&d.path);
        if path.is_dir() {
            set_mode(&path, d.mode)?;
        }
    }
    Ok(())
}

/// The chunks of file `i` that a killed run left complete in `staging` (each read where it is
/// and checked against its digest).
fn chunks_in_place(
    manifest: &Manifest,
    staging: &Path,
    offsets: &[Vec<u64>],
    i: usize,
) -> std::collections::HashSet<usize> {
    let (f, hash) = (&manifest.files[i], manifest.chunk_hash());
    let Ok(file) = File::open(staging.join(&f.path)) else { return Default::default() };
    let mut buf = Vec::new();
    f.chunks
        .iter()
        .enumerate()
        .filter(|(j, (sha, len))| {
            buf.resize(*len as usize, 0);
            file.read_exact_at(&mut buf, offsets[i][*j]).is_ok() && hash.digest(&buf) == digest_bytes(sha)
        })
        .map(|(j, _)| j)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_the_files_in_turns_and_keep_their_order_within_a_file() {
        let run = |file: usize, offset: u64| {
            vec![Wanted { pack: 0, offset, len: 1, digest: [0; 32], targets: vec![(file, offset)] }]
        };
        let runs = vec![run(0, 0), run(0, 1), run(0, 2), run(1, 3), run(1, 4), run(2, 5)];
        let order: Vec<(usize, u64)> = by_turns(runs).iter().map(|r| r[0].targets[0]).collect();
        assert_eq!(order, vec![(0, 0), (1, 3), (2, 5), (0, 1), (1, 4), (0, 2)]);
    }
}
