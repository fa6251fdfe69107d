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
/// upload, in file order, cut into [`pack_count`] packs of about equal size (at most `max_pack`
/// bytes, no chunk split), so that with `in_flight` sent at once the last ones go up together
/// instead of one connection carrying the last pack alone.
pub fn plan(files: &[Vec<Piece>], have: &HashSet<[u8; 32]>, max_pack: u64, in_flight: usize) -> Vec<PlannedPack> {
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut new: Vec<ChunkRef> = Vec::new();
    for (file, pieces) in files.iter().enumerate() {
        for (piece, p) in pieces.iter().enumerate() {
            if p.known_in(have) || !seen.insert(p.digest) {
                continue;
            }
            new.push(ChunkRef { file, piece });
        }
    }
    let len = |c: &ChunkRef| u64::from(files[c.file][c.piece].len);
    let total: u64 = new.iter().map(len).sum();
    let count = pack_count(total, max_pack, in_flight) as u128;
    let mut packs = Vec::new();
    let mut current: Vec<ChunkRef> = Vec::new();
    let (mut done, mut size) = (0u64, 0u64);
    for c in new {
        // Pack k ends where the k-th of `count` equal shares of the bytes ends.
        let end = ((packs.len() as u128 + 1) * u128::from(total) / count) as u64;
        if !current.is_empty() && (done + size + len(&c) > end || size + len(&c) > max_pack) {
            packs.push(close(files, std::mem::take(&mut current), size));
            done += size;
            size = 0;
        }
        size += len(&c);
        current.push(c);
    }
    if !current.is_empty() {
        packs.push(close(files, current, size));
    }
    packs
}

/// The smallest pack [`pack_count`] cuts an upload into to fill the packs in flight: an upload of
/// a few MiB (a changed file) stays one object.
pub const MIN_SHARE: u64 = 8 << 20;

/// How many packs an upload of `total` new bytes makes with `in_flight` packs sent at once: as
/// few as packs of `max_pack` allow, rounded up to a multiple of `in_flight` (so that each round
/// of packs in flight is full and the last ends with the others), but none under
/// [`MIN_SHARE`]. At most `in_flight - 1` more than full packs would take.
pub fn pack_count(total: u64, max_pack: u64, in_flight: usize) -> u64 {
    let full = total.div_ceil(max_pack.max(1));
    let rounds = full.div_ceil(in_flight.max(1) as u64) * in_flight.max(1) as u64;
    rounds.min(total / MIN_SHARE).max(full).max(1)
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

/// How many bytes of a pack [`read_piece`] reads at once: consecutive chunks of one file, read
/// together.
pub const READ_PIECE: u64 = 1 << 20;

/// The pieces `pack` is read in: runs of its chunks (indexes into `pack.chunks`) that lie back to
/// back in one file, of about [`READ_PIECE`] bytes (at least one chunk each).
pub fn pieces(pack: &PlannedPack, files: &[Vec<Piece>]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut size, mut end_at) = (0u64, None::<(usize, u64)>);
    for (i, c) in pack.chunks.iter().enumerate() {
        let p = &files[c.file][c.piece];
        let follows = end_at == Some((c.file, p.offset));
        match out.last_mut() {
            Some(last) if follows && size + u64::from(p.len) <= READ_PIECE => {
                last.end = i + 1;
                size += u64::from(p.len);
            }
            _ => {
                out.push(i..i + 1);
                size = u64::from(p.len);
            }
        }
        end_at = Some((c.file, p.offset + u64::from(p.len)));
    }
    out
}

/// The bytes of the chunks `range` of `pack` (one of [`pieces`]), read from the file they were
/// cut from (`paths[i]` holds `files[i]`), each chunk hashed again: a file that changed since it
/// was cut fails with `InvalidData`, which says which, so a pack never holds bytes that do not
/// match the digests the version will name.
pub fn read_piece(
    pack: &PlannedPack,
    range: std::ops::Range<usize>,
    paths: &[std::path::PathBuf],
    files: &[Vec<Piece>],
    hash: ChunkHash,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let chunks = &pack.chunks[range];
    let Some(first) = chunks.first() else { return Ok(Vec::new()) };
    let start = files[first.file][first.piece].offset;
    let len: u64 = chunks.iter().map(|c| u64::from(files[c.file][c.piece].len)).sum();
    let mut out = vec![0u8; len as usize];
    std::fs::File::open(&paths[first.file])?.read_exact_at(&mut out, start)?;
    let mut at = 0usize;
    for c in chunks {
        let piece = &files[c.file][c.piece];
        debug_assert!(c.file == first.file && piece.offset == start + at as u64, "a piece is one run of one file");
        let bytes = &out[at..at + piece.len as usize];
        if hash.digest(bytes) != piece.digest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} changed while it was being uploaded", paths[c.file].display()),
            ));
        }
        at += piece.len as usize;
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
        Piece { offset: 0, len, digest: [n; 32], sha256: Some([n ^ 0xff; 32]) }
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
        let packs = plan(&files, &have, MAX_PACK, 1);
        let order: Vec<Vec<u8>> =
            packs.iter().map(|p| p.chunks.iter().map(|c| files[c.file][c.piece].digest[0]).collect()).collect();
        // 65 MiB in two packs of about half each.
        assert_eq!(order, vec![vec![1], vec![2, 4, 5]], "3 is in the bucket, 2 is sent once");
        assert!(packs.iter().all(|p| p.size <= MAX_PACK));
        assert_eq!(packs[0].size, 30 * u64::from(mib));
        // The id is the digest of the chunk digests: the same chunks, the same pack.
        assert_eq!(plan(&files, &have, MAX_PACK, 1), packs);
        assert_ne!(packs[0].id, packs[1].id);
        assert!(plan(&files[..1], &[[1; 32], [2; 32], [3; 32]].into_iter().collect(), MAX_PACK, 1).is_empty());
    }

    #[test]
    fn an_upload_cuts_its_packs_in_equal_shares_so_that_the_last_ones_go_up_together() {
        let m = 1u32 << 20;
        // 66 MiB in 512 KiB chunks, 16 packs in flight, packs of at most 32 MiB: not two full
        // packs and a third of 2 MiB sent after them, but 8 of about 8 MiB (the smallest share).
        let files = vec![(0..132).map(|i| Piece { offset: 0, len: m / 2, digest: [i; 32], sha256: None }).collect()];
        let packs = plan(&files, &HashSet::new(), 32 << 20, 16);
        let sizes: Vec<u64> = packs.iter().map(|p| p.size).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 66 << 20);
        assert_eq!(packs.len(), 8, "{sizes:?}");
        assert!(sizes.iter().all(|&s| (8 << 20..=9 << 20).contains(&s)), "{sizes:?}");
        // Every chunk once, in order.
        let order: Vec<u8> = packs.iter().flat_map(|p| p.chunks.iter().map(|c| files[0][c.piece].digest[0])).collect();
        assert_eq!(order, (0..132).collect::<Vec<u8>>());
        // One at a time: full packs.
        let one = plan(&files, &HashSet::new(), 32 << 20, 1);
        assert_eq!(one.iter().map(|p| p.size >> 20).collect::<Vec<_>>(), [22, 22, 22]);
        // The count: full rounds of packs in flight, none under 1 MiB, never over the largest.
        assert_eq!(pack_count(1 << 30, 32 << 20, 16), 32);
        assert_eq!(pack_count((1 << 30) + 1, 32 << 20, 16), 48);
        assert_eq!(pack_count(60_000_000_000, 32 << 20, 16), 1792, "a 60 GB model: under 2,000 PUTs");
        assert_eq!(pack_count(5 << 20, 32 << 20, 16), 1, "a changed file of a few MiB: one pack");
        assert_eq!(pack_count(64 << 20, 32 << 20, 16), 8);
        assert_eq!(pack_count(1000, 32 << 20, 16), 1);
        assert_eq!(pack_count(0, 32 << 20, 16), 1);
        assert_eq!(pack_count(100 << 20, 32 << 20, 1), 4);
    }

    #[test]
    fn a_chunk_that_would_pass_the_share_or_the_largest_pack_starts_a_new_pack() {
        // 80 MiB: two packs of 40, not 64 and 16.
        let files = vec![(0..40).map(|i| piece(i, 2 << 20)).collect::<Vec<_>>()];
        let packs = plan(&files, &HashSet::new(), MAX_PACK, 1);
        assert_eq!(packs.iter().map(|p| p.chunks.len()).collect::<Vec<_>>(), [20, 20]);
        // Chunks of 3 MiB into packs of at most 8: never over, a chunk never split.
        let files = vec![(0..5).map(|i| piece(i, 3 << 20)).collect::<Vec<_>>()];
        let packs = plan(&files, &HashSet::new(), 8 << 20, 1);
        assert!(packs.iter().all(|p| p.size <= 8 << 20), "{:?}", packs.iter().map(|p| p.size).collect::<Vec<_>>());
        assert_eq!(packs.iter().map(|p| p.chunks.len()).sum::<usize>(), 5);
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
    fn a_pack_is_read_from_its_files_in_pieces_and_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..2).map(|i| dir.path().join(format!("f{i}"))).collect();
        // Noise, so that no two chunks are alike.
        let data = [crate::chunk::tests::noise(3 << 20, 11), crate::chunk::tests::noise(3 << 20, 12)];
        for (p, d) in paths.iter().zip(&data) {
            std::fs::write(p, d).unwrap();
        }
        let files: Vec<Vec<Piece>> = paths
            .iter()
            .map(|p| crate::chunk::cut_stream(std::fs::File::open(p).unwrap(), ChunkHash::Blake3, false).unwrap().0)
            .collect();
        let packs = plan(&files, &HashSet::new(), MAX_PACK, 1);
        let mut whole = Vec::new();
        for p in &packs {
            let mut bytes = Vec::new();
            let pieces = pieces(p, &files);
            for r in &pieces {
                let piece = read_piece(p, r.clone(), &paths, &files, ChunkHash::Blake3).unwrap();
                // About READ_PIECE each, never more but for a single larger chunk; one file each.
                assert!(
                    piece.len() as u64 <= READ_PIECE || r.len() == 1,
                    "{} bytes in {} chunks",
                    piece.len(),
                    r.len()
                );
                assert!(p.chunks[r.clone()].iter().all(|c| c.file == p.chunks[r.start].file));
                bytes.extend(piece);
            }
            assert_eq!(pieces.iter().map(|r| r.len()).sum::<usize>(), p.chunks.len());
            assert!(pieces.len() >= 6, "6 MiB in pieces of about 1 MiB: {}", pieces.len());
            assert_eq!(bytes.len() as u64, p.size);
            whole.extend(bytes);
        }
        // Every byte of both files, once, in file order (the data does not repeat across files).
        assert_eq!(whole, data.concat());
        let mut changed = data[1].clone();
        changed[10] ^= 1;
        std::fs::write(&paths[1], changed).unwrap();
        let last = packs.last().unwrap();
        let first_of_file_1 = pieces(last, &files).into_iter().find(|r| last.chunks[r.start].file == 1).unwrap();
        let err = read_piece(last, first_of_file_1, &paths, &files, ChunkHash::Blake3).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("f1 changed while it was being uploaded"), "{err}");
    }

    #[test]
    fn locations_name_each_chunk_once_where_it_is_and_round_trip() {
        let files = vec![vec![piece(1, 10), piece(2, 20)], vec![piece(3, 30), piece(1, 10)]];
        let old_pack = "ab".repeat(32);
        let have: std::collections::HashMap<[u8; 32], (String, u64)> =
            [([3; 32], (old_pack.clone(), 500))].into_iter().collect();
        let packs = plan(&files, &[[3; 32]].into_iter().collect(), MAX_PACK, 1);
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
        let packs = plan(&files, &known, MAX_PACK, 1);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].chunks, vec![ChunkRef { file: 0, piece: 0 }], "chunk 2 is in the bucket already");
        let l = Locations::build(&files, &packs, &have).unwrap();
        assert_eq!(l.packs, vec![hex::encode(packs[0].id), old_pack]);
        assert_eq!(l.chunks, vec![(0, 0), (1, 70)]);
        // The pack is named by the digests the version names its chunks by.
        assert_eq!(packs[0].id, pack_id([&[1u8; 32]]));
    }
}
