//! Content-defined chunking for bucket formats 2 and 3 (see ARCHITECTURE.md, "Incremental
//! versions"), and the digests that name chunks: sha256 in format 2, BLAKE3 in format 3.
//!
//! FastCDC: a gear rolling hash `h = (h << 1) + GEAR[byte]`, whose top bits depend on the last
//! 64 bytes only, cuts where those bits are zero. No cut in the first [`MIN`] bytes of a chunk; up
//! to [`AVG`] a harder condition (more bits), after it an easier one (fewer bits), so chunk sizes
//! gather around [`AVG`]; [`MAX`] always cuts. Cuts depend only on nearby bytes, so an insert or an
//! overwrite moves the chunks it touches and leaves the later boundaries where they were.
//!
//! The parameters and the gear table are part of the bucket format: changing either changes every
//! chunk, and with it what an upload can reuse. A test pins both.

use std::io::Read;

use sha2::{Digest as _, Sha256};

/// No cut before this many bytes of a chunk (a shorter chunk ends a file).
pub const MIN: usize = 128 << 10;
/// The size chunks gather around.
pub const AVG: usize = 512 << 10;
/// Always a cut at this size.
pub const MAX: usize = 2 << 20;

/// Bits of `log2(AVG)`: the harder condition tests two more, the easier two fewer.
const AVG_BITS: u32 = AVG.trailing_zeros();
const HARD_SHIFT: u32 = 64 - (AVG_BITS + 2);
const EASY_SHIFT: u32 = 64 - (AVG_BITS - 2);

/// The gear table: 256 fixed pseudo-random words (splitmix64 from a fixed seed).
static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6372_6f77_6563_6f64; // "crowecod"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Finds chunk boundaries in a stream fed in pieces of any size.
#[derive(Clone, Debug, Default)]
pub struct Chunker {
    hash: u64,
    /// Bytes of the current chunk seen so far.
    len: usize,
}

impl Chunker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where in `data` the current chunk ends (exclusive), if it ends there; the chunker then
    /// starts the next chunk, so the rest of `data` is to be fed again. `None`: all of `data`
    /// belongs to the current chunk.
    pub fn cut(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        // The first MIN bytes of a chunk are never hashed: no cut can fall there.
        if self.len < MIN {
            let skip = (MIN - self.len).min(data.len());
            self.len += skip;
            i = skip;
        }
        // Two tight loops rather than one that tests the chunk's length at every byte: the
        // harder condition while the chunk (counting the byte just hashed) is under AVG, the
        // easier one up to MAX, which always cuts. The cuts are those of the one-loop form
        // (`cut_reference` in the tests).
        let mut hash = self.hash;
        let hard = (AVG - 1).saturating_sub(self.len).min(data.len() - i);
        if let Some(at) = gear_scan(&mut hash, &data[i..i + hard], HARD_SHIFT) {
            *self = Self::default();
            return Some(i + at);
        }
        i += hard;
        self.len += hard;
        let easy = (MAX - self.len).min(data.len() - i);
        let found = gear_scan(&mut hash, &data[i..i + easy], EASY_SHIFT);
        i += found.unwrap_or(easy);
        self.len += found.unwrap_or(easy);
        if found.is_some() || self.len >= MAX {
            *self = Self::default();
            return Some(i);
        }
        self.hash = hash;
        None
    }
}

/// The digest that names a chunk in a version: sha256 in bucket format 2, BLAKE3 in format 3
/// (four times faster here, so that a download that checks every chunk costs about as much CPU
/// as one that checks nothing). Files keep their sha256 in both (signatures sign those).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkHash {
    Sha256,
    Blake3,
}

impl ChunkHash {
    /// The hash of a version in chunks of manifest format `format`: sha256 in format 2, BLAKE3
    /// from format 3 on.
    pub fn of_format(format: u32) -> Self {
        if format == crate::manifest::FORMAT_PIECES { Self::Sha256 } else { Self::Blake3 }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            Self::Sha256 => Sha256::digest(data).into(),
            Self::Blake3 => blake3::hash(data).into(),
        }
    }

    /// A hasher fed in pieces.
    pub fn hasher(self) -> ChunkHasher {
        match self {
            Self::Sha256 => ChunkHasher::Sha256(Sha256::new()),
            Self::Blake3 => ChunkHasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

/// [`ChunkHash::hasher`].
#[derive(Clone)]
pub enum ChunkHasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl ChunkHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of what was fed since the last one, and a fresh start.
    pub fn finalize_reset(&mut self) -> [u8; 32] {
        match self {
            Self::Sha256(h) => h.finalize_reset().into(),
            Self::Blake3(h) => {
                let digest = h.finalize().into();
                h.reset();
                digest
            }
        }
    }
}

/// One chunk of a file: where it starts, how long it is, its digest in the hash of the version
/// being written, and, when it was asked for, its sha256 (what format 2 versions name it by, for
/// reuse across the formats; in format 2 the digest is the sha256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u32,
    pub digest: [u8; 32],
    pub sha256: Option<[u8; 32]>,
}

impl Piece {
    /// Where `places` (by chunk digest, of either hash) has this chunk.
    pub fn found_in<'a, T>(&self, places: &'a std::collections::HashMap<[u8; 32], T>) -> Option<&'a T> {
        places.get(&self.digest).or_else(|| self.sha256.and_then(|sha| places.get(&sha)))
    }

    /// Whether `known` (chunk digests of either hash) holds this chunk.
    pub fn known_in(&self, known: &std::collections::HashSet<[u8; 32]>) -> bool {
        known.contains(&self.digest) || self.sha256.is_some_and(|sha| known.contains(&sha))
    }
}

/// The sha256 of each of `pieces` (chunks of the file at `path`, in order), read again from the
/// file: what reuse of a format 2 version's chunks needs when the cut did not compute them.
pub fn chunk_sha256s(path: &std::path::Path, pieces: &[Piece]) -> std::io::Result<Vec<[u8; 32]>> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    pieces
        .iter()
        .map(|p| {
            buf.resize(p.len as usize, 0);
            file.read_exact_at(&mut buf, p.offset)?;
            Ok(Sha256::digest(&buf).into())
        })
        .collect()
}

/// Rolls `hash` over `data`; the count of bytes up to and including the first one after which
/// its top `64 - shift` bits are zero, if any.
#[inline]
fn gear_scan(hash: &mut u64, data: &[u8], shift: u32) -> Option<usize> {
    let mut h = *hash;
    for (k, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h >> shift == 0 {
            *hash = h;
            return Some(k + 1);
        }
    }
    *hash = h;
    None
}

/// A file cut into chunks, and the sha256 of the whole file.
pub type Cut = (Vec<Piece>, [u8; 32]);

/// Cuts what `reader` yields into chunks, each named by `hash` (and by its sha256 too with
/// `chunk_sha256`: a pass of sha256 over the bytes more, worth it only when format 2 chunks may
/// be reused); returns them and the sha256 of all the bytes.
pub fn cut_stream(mut reader: impl Read, hash: ChunkHash, chunk_sha256: bool) -> std::io::Result<Cut> {
    let mut buf = vec![0u8; 4 << 20];
    let (mut whole, mut piece) = (Sha256::new(), Sha256::new());
    // In format 2 the digest is the sha256: one pass, not two.
    let mut named = (hash != ChunkHash::Sha256).then(|| hash.hasher());
    let chunk_sha256 = chunk_sha256 || named.is_none();
    let (mut chunker, mut pieces) = (Chunker::new(), Vec::new());
    let (mut offset, mut start) = (0u64, 0u64);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let data = &buf[..n];
        whole.update(data);
        let mut at = 0;
        while let Some(end) = chunker.cut(&data[at..]) {
            if chunk_sha256 {
                piece.update(&data[at..at + end]);
            }
            if let Some(h) = &mut named {
                h.update(&data[at..at + end]);
            }
            offset += end as u64;
            pieces.push(close(start, offset, chunk_sha256.then_some(&mut piece), &mut named));
            start = offset;
            at += end;
        }
        if chunk_sha256 {
            piece.update(&data[at..]);
        }
        if let Some(h) = &mut named {
            h.update(&data[at..]);
        }
        offset += (n - at) as u64;
    }
    if offset > start || pieces.is_empty() {
        pieces.push(close(start, offset, chunk_sha256.then_some(&mut piece), &mut named));
    }
    Ok((pieces, whole.finalize().into()))
}

fn close(start: u64, end: u64, sha: Option<&mut Sha256>, named: &mut Option<ChunkHasher>) -> Piece {
    let sha256: Option<[u8; 32]> = sha.map(|h| h.finalize_reset().into());
    let digest = match named.as_mut() {
        Some(h) => h.finalize_reset(),
        None => sha256.expect("format 2 chunks are named by their sha256"),
    };
    Piece { offset: start, len: (end - start) as u32, digest, sha256 }
}

/// [`cut_stream`] of each file, on up to `threads` cores at once (a model's shards hash in
/// parallel; one file is read by one thread, front to back). Results are in the order of `paths`.
pub fn cut_files(
    paths: &[std::path::PathBuf],
    threads: usize,
    hash: ChunkHash,
    chunk_sha256: bool,
) -> std::io::Result<Vec<Cut>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<std::io::Result<Cut>>>> =
        paths.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, paths.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let cut = std::fs::File::open(path)
                        .and_then(|f| cut_stream(std::io::BufReader::new(f), hash, chunk_sha256));
                    *results[i].lock().expect("result slot") = Some(cut);
                }
            });
        }
    });
    results.into_iter().map(|slot| slot.into_inner().expect("result slot").expect("every file was cut")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reproducible noise (xorshift), as model weights look to a chunker.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut(data: &[u8]) -> Vec<Piece> {
        cut_stream(data, ChunkHash::Blake3, false).unwrap().0
    }

    /// Bytes of `new`'s chunks that `old` does not have: what an upload of `new` sends, and what
    /// a machine holding `old` fetches.
    fn new_bytes(old: &[Piece], new: &[Piece]) -> u64 {
        let have: std::collections::HashSet<[u8; 32]> = old.iter().map(|p| p.digest).collect();
        new.iter().filter(|p| !have.contains(&p.digest)).map(|p| u64::from(p.len)).sum()
    }

    #[test]
    fn the_gear_table_and_the_cuts_are_pinned() {
        // Part of the bucket format: a change here changes every chunk of every upload.
        let table: Vec<u8> = GEAR.iter().flat_map(|g| g.to_le_bytes()).collect();
        let lens: Vec<u8> = cut(&noise(8 << 20, 7)).iter().flat_map(|p| p.len.to_le_bytes()).collect();
        assert_eq!(
            hex::encode(Sha256::digest(&table)),
            "67d848db72ac63c888a369ffa57c70946c49306bbc9e395c70679d82d71a6d86",
            "gear table"
        );
        assert_eq!(
            hex::encode(Sha256::digest(&lens)),
            "8bca95dff8c4bc46bcdb690beab26e6b22357cdea7ce1f2ce590320cc94d903d",
            "cut points"
        );
    }

    /// The chunker as first written, a byte at a time: what `Chunker::cut` must agree with.
    fn cut_reference(data: &[u8]) -> Vec<usize> {
        let (mut hash, mut len, mut out) = (0u64, 0usize, Vec::new());
        for (i, &b) in data.iter().enumerate() {
            len += 1;
            if len <= MIN {
                continue;
            }
            hash = (hash << 1).wrapping_add(GEAR[b as usize]);
            let shift = if len < AVG { HARD_SHIFT } else { EASY_SHIFT };
            if hash >> shift == 0 || len >= MAX {
                out.push(i + 1);
                (hash, len) = (0, 0);
            }
        }
        out
    }

    #[test]
    fn the_two_loop_chunker_cuts_where_the_one_loop_form_does() {
        // Noise (cuts by the hash), zeros (a long run with no cut: MAX), and both, fed whole
        // and in odd pieces.
        let mut data = noise(40 << 20, 9);
        data[(3 << 20)..(8 << 20)].fill(0);
        let want = cut_reference(&data);
        assert!(want.windows(2).any(|w| w[1] - w[0] == MAX), "a MAX cut is covered");
        assert!(want.windows(2).any(|w| w[1] - w[0] < AVG), "a hard-condition cut is covered");
        for piece in [data.len(), 1 << 20, 65_537, 4093] {
            let (mut c, mut got, mut base) = (Chunker::new(), Vec::new(), 0);
            for part in data.chunks(piece) {
                let mut at = 0;
                while let Some(end) = c.cut(&part[at..]) {
                    at += end;
                    got.push(base + at);
                }
                base += part.len();
            }
            assert_eq!(got, want, "fed in pieces of {piece}");
        }
    }

    #[test]
    fn chunks_stay_within_bounds_and_gather_around_the_average() {
        let data = noise(48 << 20, 1);
        let pieces = cut(&data);
        let (last, rest) = pieces.split_last().unwrap();
        assert!(rest.iter().all(|p| (MIN..=MAX).contains(&(p.len as usize))), "bounds");
        assert!(last.len as usize <= MAX);
        let mean = data.len() / pieces.len();
        assert!((AVG * 6 / 10..=AVG * 16 / 10).contains(&mean), "mean chunk {mean}");
        // Contiguous, and the whole.
        let mut at = 0;
        for p in &pieces {
            assert_eq!(p.offset, at);
            at += u64::from(p.len);
        }
        assert_eq!(at, data.len() as u64);
    }

    #[test]
    fn fed_in_any_pieces_the_cuts_are_the_same() {
        let data = noise(9 << 20, 3);
        let whole = cut(&data);
        // A reader that hands out odd-sized reads.
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1 = self.1 * 7 % 100_003 + 1;
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let (dribbled, digest) = cut_stream(Dribble(&data, 1), ChunkHash::Blake3, true).unwrap();
        assert_eq!(
            dribbled.iter().map(|p| (p.offset, p.len, p.digest)).collect::<Vec<_>>(),
            whole.iter().map(|p| (p.offset, p.len, p.digest)).collect::<Vec<_>>()
        );
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
        // Each chunk carries both digests of its bytes when asked; in format 2 they are one.
        let path = std::env::temp_dir().join(format!("crowecode-chunk-test-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let reread = chunk_sha256s(&path, &whole).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (i, p) in dribbled.iter().enumerate() {
            let bytes = &data[p.offset as usize..][..p.len as usize];
            assert_eq!(p.digest, <[u8; 32]>::from(blake3::hash(bytes)));
            assert_eq!(p.sha256, Some(<[u8; 32]>::from(Sha256::digest(bytes))));
            assert_eq!(Some(reread[i]), p.sha256, "read again from the file, the same");
        }
        assert!(whole.iter().all(|p| p.sha256.is_none()), "not computed unless asked");
        let sha_named = cut_stream(&data[..], ChunkHash::Sha256, false).unwrap().0;
        assert!(sha_named.iter().zip(&dribbled).all(|(a, b)| Some(a.digest) == a.sha256 && a.sha256 == b.sha256));
    }

    #[test]
    fn chunk_hashes_match_their_reference_vectors() {
        // FIPS 180-2 and the BLAKE3 reference: the digests every version's chunks are named by.
        assert_eq!(
            hex::encode(ChunkHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(ChunkHash::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let data = noise(3 << 20, 4);
        for hash in [ChunkHash::Sha256, ChunkHash::Blake3] {
            let mut h = hash.hasher();
            for part in data.chunks(100_001) {
                h.update(part);
            }
            assert_eq!(h.finalize_reset(), hash.digest(&data), "{hash:?}");
            h.update(b"abc");
            assert_eq!(h.finalize_reset(), hash.digest(b"abc"), "{hash:?} after a reset");
        }
    }

    #[test]
    fn small_and_empty_files_are_one_chunk() {
        assert_eq!(cut(b"").len(), 1);
        let p = cut(b"{\"hidden_size\": 512}");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].len, 20);
        assert_eq!(cut(&noise(MIN - 1, 5)).len(), 1);
    }

    /// The three edits of a 64 MiB shard each cost at most 8 MiB of new chunks.
    #[test]
    fn an_edit_costs_the_chunks_around_it() {
        let old = noise(64 << 20, 11);
        let before = cut(&old);
        let limit = 8 << 20;

        let mut overwritten = old.clone();
        overwritten[(30 << 20)..(31 << 20)].copy_from_slice(&noise(1 << 20, 99));
        let n = new_bytes(&before, &cut(&overwritten));
        assert!((1 << 20..=limit).contains(&n), "1 MiB overwritten in the middle: {n} new bytes");

        let mut appended = old.clone();
        appended.extend_from_slice(&noise(1 << 20, 98));
        let n = new_bytes(&before, &cut(&appended));
        assert!((1 << 20..=limit).contains(&n), "1 MiB appended: {n} new bytes");

        let mut inserted = noise(4 << 10, 97);
        inserted.extend_from_slice(&old);
        let n = new_bytes(&before, &cut(&inserted));
        assert!((4 << 10..=limit).contains(&n), "4 KiB inserted at the start: {n} new bytes");
    }

    #[test]
    fn files_cut_in_parallel_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..5u64)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, noise((i as usize + 1) * (700 << 10), i + 20)).unwrap();
                path
            })
            .collect();
        let parallel = cut_files(&paths, 3, ChunkHash::Blake3, true).unwrap();
        for (path, got) in paths.iter().zip(&parallel) {
            assert_eq!(got, &cut_stream(std::fs::File::open(path).unwrap(), ChunkHash::Blake3, true).unwrap());
        }
        assert!(cut_files(&[dir.path().join("missing")], 2, ChunkHash::Blake3, false).is_err());
    }
}
