//! Packing chunks into pack objects for bucket formats 2 and 3 (see ARCHITECTURE.md, "Incremental
//! versions"): which chunks an upload must send, in which packs, and how a machine reads them
//! back in few requests.

use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use crate::chunk::{ChunkHash, Piece};

/// The largest pack: one PUT of at most this many bytes.
pub const MAX_PACK: u64 = 64 << 20;

/// A chunk of an upload: file `file` (an index into the upload's files), its piece `piece`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub file: usize,
    pub piece: usize,
}

/// One pack to send: its id (the sha256 of its chunk digests in order, known before a byte is
/// sent), its chunks in order, and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPack {
    pub id: [u8; 32],
    pub chunks: Vec<ChunkRef>,
    pub size: u64,
}

/// The packs an upload sends: every chunk of `files` whose digest (either of them: see
/// [`Piece::known_in`]) is neither in `have` (what the bucket holds already) nor earlier in this
/// upload, in file order, cut into packs of at
/// most [`MAX_PACK`] bytes, no chunk split.
pub fn plan(files: &[Vec<Piece>], have: &HashSet<[u8; 32]>, max_pack: u64) -> Vec<PlannedPack> {
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut packs = Vec::new();
    let mut current: Vec<ChunkRef> = Vec::new();
    let mut size = 0u64;
    for (file, pieces) in files.iter().enumerate() {
        for (piece, p) in pieces.iter().enumerate() {
            if p.known_in(have) || !seen.insert(p.digest) {
                continue;
            }
            if size + u64::from(p.len) > max_pack && !current.is_empty() {
                packs.push(close(files, std::mem::take(&mut current), size));
                size = 0;
            }
            current.push(ChunkRef { file, piece });
            size += u64::from(p.len);
        }
    }
    if !current.is_empty() {
        packs.push(close(files, current, size));
    }
    packs
}

fn close(files: &[Vec<Piece>], chunks: Vec<ChunkRef>, size: u64) -> PlannedPack {
    let id = pack_id(chunks.iter().map(|c| &files[c.file][c.piece].digest));
    PlannedPack { id, chunks, size }
}

/// A pack's id: the sha256 of its chunks' digests, in order.
pub fn pack_id<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// How many ranged GETs read `chunks` (each `(pack index, offset, length)`, in the order they
/// are needed) when runs of consecutive chunks of one pack are read together, in ranges of at
/// most `range` bytes: what a fresh machine's download costs in requests.
pub fn range_requests(chunks: &[(usize, u64, u64)], range: u64) -> usize {
    runs(chunks.to_vec(), |c| *c, range).len()
}

/// `items` (chunks in the order they are read, each at `place(item)`: pack index, offset and
/// length) grouped into runs that one ranged read of at most `range` bytes covers: consecutive
/// chunks of one pack, back to back.
pub fn runs<T>(items: Vec<T>, place: impl Fn(&T) -> (usize, u64, u64), range: u64) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut open: Option<(usize, u64, u64)> = None; // pack, start, end of the run being built
    for item in items {
        let (pack, offset, len) = place(&item);
        match (open, out.last_mut()) {
            (Some((p, start, end)), Some(run)) if p == pack && end == offset && offset + len - start <= range => {
                open = Some((p, start, offset + len));
                run.push(item);
            }
            _ => {
                open = Some((pack, offset, offset + len));
                out.push(vec![item]);
            }
        }
    }
    out
}

/// The smallest ranged read the end of a download is cut into.
pub const TAIL_RANGE: u64 = 1 << 20;

/// The next ranged read of a download, from `queue` (runs of consecutive chunks of one pack, as
/// [`runs`] makes them, in the order they are to be read; `left` is the bytes the queue still
/// holds, `len` a chunk's length), with `in_flight` reads at once: the run at the front, cut to
/// `left / in_flight` bytes when that is less (at a chunk boundary, at least [`TAIL_RANGE`] and one
/// chunk), the rest of it, when it is not under [`TAIL_RANGE`] too, staying at the front. Full ranges while much is left; towards the end,
/// smaller and smaller ones, so that the connections finish together instead of a few carrying
/// the last large ranges alone while the others sit idle (guided self-scheduling). It depends on
/// the bytes left only, so the reads of a download do not depend on how fast they arrive.
pub fn next_read<T>(
    queue: &mut std::collections::VecDeque<Vec<T>>,
    left: &mut u64,
    in_flight: usize,
    len: impl Fn(&T) -> u64,
) -> Option<Vec<T>> {
    let mut run = queue.pop_front()?;
    let size: u64 = run.iter().map(&len).sum();
    let target = (*left / in_flight.max(1) as u64).max(TAIL_RANGE);
    // A rest under TAIL_RANGE is read with the run: a request of its own would cost more.
    if size > target + TAIL_RANGE {
        let (mut taken, mut n) = (0, 0);
        while n < run.len() && (n == 0 || taken < target) {
            taken += len(&run[n]);
            n += 1;
        }
        if n < run.len() {
            let rest = run.split_off(n);
            queue.push_front(rest);
        }
    }
    *left -= run.iter().map(&len).sum::<u64>();
    Some(run)
}

/// How many ranged reads a download of `chunks` (each `(pack index, offset, length)`, in the
/// order they are read) makes with ranges of at most `range` bytes and `in_flight` at once:
/// [`range_requests`] plus the smaller reads [`next_read`] cuts the end into.
pub fn read_requests(chunks: &[(usize, u64, u64)], range: u64, in_flight: usize) -> usize {
    let mut queue: std::collections::VecDeque<Vec<(usize, u64, u64)>> = runs(chunks.to_vec(), |c| *c, range).into();
    let mut left: u64 = chunks.iter().map(|c| c.2).sum();
    std::iter::from_fn(|| next_read(&mut queue, &mut left, in_flight, |c| c.2)).count()
}

/// The bytes of `pack`, read from the files it was planned from (`paths[i]` holds `files[i]`),
/// every chunk hashed again: a file that changed since it was cut fails with `InvalidData`, so a
/// pack never holds bytes that do not match the digests the version will name.
pub fn assemble(
    pack: &PlannedPack,
    paths: &[std::path::PathBuf],
    files: &[Vec<Piece>],
    hash: ChunkHash,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut out = Vec::with_capacity(pack.size as usize);
    let mut open: Option<(usize, std::fs::File)> = None;
    for c in &pack.chunks {
        let piece = &files[c.file][c.piece];
        let file = match &mut open {
            Some((i, f)) if *i == c.file => f,
            _ => &mut open.insert((c.file, std::fs::File::open(&paths[c.file])?)).1,
        };
        file.seek(std::io::SeekFrom::Start(piece.offset))?;
        let start = out.len();
        out.resize(start + piece.len as usize, 0);
        file.read_exact(&mut out[start..])?;
        if hash.digest(&out[start..]) != piece.digest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} changed while it was being uploaded", paths[c.file].display()),
            ));
        }
    }
    Ok(out)
}

/// Where the chunks of one version are (`<Model>/versions/<id>.loc.json`): the packs, and for
/// each chunk of the version, in file order then chunk order, its pack and offset. Not covered by
/// the version id, so a repack may rewrite it; every chunk read through it is checked against the
/// version's digest, so a wrong entry costs an integrity failure, never wrong bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Locations {
    pub format: u32,
    /// Pack ids, hex.
    pub packs: Vec<String>,
    /// `[pack index, offset]` per chunk.
    pub chunks: Vec<(u32, u64)>,
}

impl Locations {
    /// Where the chunks of `files` are once `packs` are stored, the other chunks being where
    /// `have` says (a previous version's locations, by chunk digest of either hash). `None` when a chunk is in
    /// neither (a plan that does not cover the files).
    pub fn build(
        files: &[Vec<Piece>],
        packs: &[PlannedPack],
        have: &std::collections::HashMap<[u8; 32], (String, u64)>,
    ) -> Option<Self> {
        let mut ids: Vec<String> = Vec::new();
        let mut index = std::collections::HashMap::<String, u32>::new();
        let mut at = std::collections::HashMap::<[u8; 32], (u32, u64)>::new();
        let mut intern = |id: &str, ids: &mut Vec<String>| {
            *index.entry(id.to_string()).or_insert_with(|| {
                ids.push(id.to_string());
                (ids.len() - 1) as u32
            })
        };
        for pack in packs {
            let p = intern(&hex::encode(pack.id), &mut ids);
            let mut offset = 0;
            for c in &pack.chunks {
                let piece = &files[c.file][c.piece];
                at.insert(piece.digest, (p, offset));
                offset += u64::from(piece.len);
            }
        }
        let mut chunks = Vec::new();
        for piece in files.iter().flatten() {
            let place = match at.get(&piece.digest) {
                Some(&place) => place,
                None => {
                    let (pack, offset) = piece.found_in(have)?;
                    let place = (intern(pack, &mut ids), *offset);
                    at.insert(piece.digest, place);
                    place
                }
            };
            chunks.push(place);
        }
        Some(Self { format: 2, packs: ids, chunks })
    }

    /// Parses and checks a locations object for a version of `count` chunks.
    pub fn parse(bytes: &[u8], count: usize) -> std::result::Result<Self, String> {
        let l: Self = serde_json::from_slice(bytes).map_err(|e| format!("unreadable locations: {e}"))?;
        if l.format != 2 {
            return Err(format!("locations of format {}, expected 2", l.format));
        }
        if l.chunks.len() != count {
            return Err(format!("{} locations for {count} chunks", l.chunks.len()));
        }
        if l.packs.iter().any(|p| p.len() != 64 || !p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) {
            return Err("a pack id is not 64 lowercase hex digits".into());
        }
        if l.chunks.iter().any(|&(p, _)| p as usize >= l.packs.len()) {
            return Err("a chunk names a pack that is not listed".into());
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(n: u8, len: u32) -> Piece {
        Piece { offset: 0, len, digest: [n; 32], sha256: [n ^ 0xff; 32] }
    }

    #[test]
    fn packs_hold_what_is_new_once_in_file_order_and_never_split_a_chunk() {
        let mib = 1 << 20;
        let files = vec![
            vec![piece(1, 30 * mib), piece(2, 30 * mib), piece(3, 30 * mib)],
            vec![piece(2, 30 * mib), piece(4, 5 * mib)],
            vec![piece(5, 1)],
        ];
        let have: HashSet<[u8; 32]> = [[3; 32]].into_iter().collect();
        let packs = plan(&files, &have, MAX_PACK);
        let order: Vec<Vec<u8>> =
            packs.iter().map(|p| p.chunks.iter().map(|c| files[c.file][c.piece].digest[0]).collect()).collect();
        assert_eq!(order, vec![vec![1, 2], vec![4, 5]], "3 is in the bucket, 2 is sent once");
        assert!(packs.iter().all(|p| p.size <= MAX_PACK));
        assert_eq!(packs[0].size, 60 * u64::from(mib));
        // The id is the digest of the chunk digests: the same chunks, the same pack.
        assert_eq!(plan(&files, &have, MAX_PACK), packs);
        assert_ne!(packs[0].id, packs[1].id);
        assert!(plan(&files[..1], &[[1; 32], [2; 32], [3; 32]].into_iter().collect(), MAX_PACK).is_empty());
    }

    #[test]
    fn a_chunk_larger_than_what_is_left_starts_a_new_pack() {
        let files = vec![(0..40).map(|i| piece(i, 2 << 20)).collect::<Vec<_>>()];
        let packs = plan(&files, &HashSet::new(), MAX_PACK);
        assert_eq!(packs.iter().map(|p| p.chunks.len()).collect::<Vec<_>>(), [32, 8]);
    }

    #[test]
    fn consecutive_chunks_of_a_pack_are_read_together() {
        let m = 1 << 20;
        // Four consecutive 4 MiB chunks of pack 0, a gap, then pack 1.
        let chunks =
            [(0, 0, 4 * m), (0, 4 * m, 4 * m), (0, 8 * m, 4 * m), (0, 12 * m, 4 * m), (0, 20 * m, m), (1, 0, m)];
        assert_eq!(range_requests(&chunks, 16 * m), 3);
        assert_eq!(range_requests(&chunks, 8 * m), 4);
        // 60 GiB sent whole, chunks of 512 KiB in 32 MiB packs (the default budget's), read in
        // 32 MiB ranges (`pieces_fetch::RANGE`): one GET a pack. (16 MiB ranges took 3,840.)
        let pack = 32u64 << 20;
        let per_pack = (pack / (512 << 10)) as usize;
        let packs = (60u64 << 30) / pack;
        let all: Vec<(usize, u64, u64)> = (0..packs as usize)
            .flat_map(|p| (0..per_pack).map(move |i| (p, i as u64 * (512 << 10), 512 << 10)))
            .collect();
        assert_eq!(packs, 1920, "PUTs to send it");
        assert_eq!(range_requests(&all, crate::ops::pieces_fetch::RANGE), 1920);
        assert_eq!(range_requests(&all, 16 << 20), 3840);
        // With the end cut finer for 16 reads in flight: 56 more, far under 5,000.
        assert_eq!(read_requests(&all, crate::ops::pieces_fetch::RANGE, 16), 1976);
    }

    #[test]
    fn the_end_of_a_download_is_cut_finer_so_that_the_reads_finish_together() {
        let m = 1u64 << 20;
        // 17 packs of 32 MiB in 512 KiB chunks: one more pack than reads in flight.
        let chunks: Vec<(usize, u64, u64)> =
            (0..17).flat_map(|p| (0..64).map(move |i| (p, i * (512 << 10), 512 << 10))).collect();
        let mut queue: std::collections::VecDeque<_> = runs(chunks.clone(), |c| *c, 32 * m).into();
        let mut left: u64 = chunks.iter().map(|c| c.2).sum();
        let reads: Vec<Vec<(usize, u64, u64)>> =
            std::iter::from_fn(|| next_read(&mut queue, &mut left, 16, |c| c.2)).collect();
        assert_eq!(left, 0);
        // Every chunk once, in order, each read within one pack and contiguous.
        assert_eq!(reads.concat(), chunks);
        for r in &reads {
            assert!(r.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 + w[0].2 == w[1].1), "{r:?}");
        }
        let sizes: Vec<u64> = reads.iter().map(|r| r.iter().map(|c| c.2).sum()).collect();
        // Full ranges first; then smaller and smaller reads, ending in reads of about TAIL_RANGE
        // that the connections share (not the last pack read alone, by one connection).
        assert_eq!(sizes[..2], [32 * m; 2], "{sizes:?}");
        assert!(sizes.iter().all(|&s| s <= 32 * m));
        assert!(sizes[sizes.len() - 16..].iter().all(|&s| s <= 2 * TAIL_RANGE), "{sizes:?}");
        assert!(sizes.len() < 80, "{} reads for 17 packs", sizes.len());
        // A single chunk larger than the target is read whole; one read at a time takes full ranges.
        assert_eq!(read_requests(&[(0, 0, 2 * m)], 32 * m, 16), 1);
        assert_eq!(read_requests(&chunks, 32 * m, 1), 17);
    }

    #[test]
    fn a_pack_is_assembled_from_its_files_and_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..2).map(|i| dir.path().join(format!("f{i}"))).collect();
        // Noise, so that no two chunks are alike.
        let data = [crate::chunk::tests::noise(3 << 20, 11), crate::chunk::tests::noise(3 << 20, 12)];
        for (p, d) in paths.iter().zip(&data) {
            std::fs::write(p, d).unwrap();
        }
        let files: Vec<Vec<Piece>> = paths
            .iter()
            .map(|p| crate::chunk::cut_stream(std::fs::File::open(p).unwrap(), ChunkHash::Blake3).unwrap().0)
            .collect();
        let packs = plan(&files, &HashSet::new(), MAX_PACK);
        let mut whole = Vec::new();
        for p in &packs {
            let bytes = assemble(p, &paths, &files, ChunkHash::Blake3).unwrap();
            assert_eq!(bytes.len() as u64, p.size);
            whole.extend(bytes);
        }
        // Every byte of both files, once, in file order (the data does not repeat across files).
        assert_eq!(whole, data.concat());
        let mut changed = data[1].clone();
        changed[10] ^= 1;
        std::fs::write(&paths[1], changed).unwrap();
        let last = packs.last().unwrap();
        assert_eq!(
            assemble(last, &paths, &files, ChunkHash::Blake3).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn locations_name_each_chunk_once_where_it_is_and_round_trip() {
        let files = vec![vec![piece(1, 10), piece(2, 20)], vec![piece(3, 30), piece(1, 10)]];
        let old_pack = "ab".repeat(32);
        let have: std::collections::HashMap<[u8; 32], (String, u64)> =
            [([3; 32], (old_pack.clone(), 500))].into_iter().collect();
        let packs = plan(&files, &[[3; 32]].into_iter().collect(), MAX_PACK);
        let l = Locations::build(&files, &packs, &have).unwrap();
        let new_pack = hex::encode(packs[0].id);
        assert_eq!(l.packs, vec![new_pack, old_pack]);
        // Chunk 1 appears twice and is stored once; chunk 3 stays where the old version had it.
        assert_eq!(l.chunks, vec![(0, 0), (0, 10), (1, 500), (0, 0)]);
        let bytes = serde_json::to_vec(&l).unwrap();
        assert_eq!(Locations::parse(&bytes, 4).unwrap(), l);
        assert!(Locations::parse(&bytes, 3).unwrap_err().contains("4 locations for 3 chunks"));
        let mut bad = l.clone();
        bad.chunks[0].0 = 7;
        assert!(Locations::parse(&serde_json::to_vec(&bad).unwrap(), 4).is_err());
        // A chunk neither planned nor known: no locations.
        assert!(Locations::build(&files, &packs, &std::collections::HashMap::new()).is_none());
    }

    #[test]
    fn a_format_2_version_is_reused_by_the_sha256_of_each_chunk() {
        // The new version names its chunks by BLAKE3 (`digest`); the old one, format 2, by sha256.
        let files = vec![vec![piece(1, 10), piece(2, 20)]];
        let old_pack = "cd".repeat(32);
        let have: std::collections::HashMap<[u8; 32], (String, u64)> =
            [([2 ^ 0xff; 32], (old_pack.clone(), 70))].into_iter().collect();
        let known: HashSet<[u8; 32]> = have.keys().copied().collect();
        let packs = plan(&files, &known, MAX_PACK);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].chunks, vec![ChunkRef { file: 0, piece: 0 }], "chunk 2 is in the bucket already");
        let l = Locations::build(&files, &packs, &have).unwrap();
        assert_eq!(l.packs, vec![hex::encode(packs[0].id), old_pack]);
        assert_eq!(l.chunks, vec![(0, 0), (1, 70)]);
        // The pack is named by the digests the version names its chunks by.
        assert_eq!(packs[0].id, pack_id([&[1u8; 32]]));
    }
}
