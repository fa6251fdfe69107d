//! Deterministic tar: scan a model directory into a plan (entries, headers, offsets), then stream
//! the archive from the plan, hashing each file as it is read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::names::Sha256Hex;

pub(crate) const BLOCK: u64 = 512;
/// Largest size the ustar size field holds (11 octal digits); larger files get a PAX `size`.
const USTAR_MAX_SIZE: u64 = (1 << 33) - 1;
const USTAR_NAME_LEN: usize = 100;
pub(crate) const PAX_HEADER_NAME: &str = "././@PaxHeader";

/// One entry of an archive plan.
#[derive(Clone, Debug)]
pub struct PlannedEntry {
    /// Relative, `/`-separated path.
    pub path: String,
    /// `Some(size)` for a regular file, `None` for a directory.
    pub size: Option<u64>,
    /// Permission bits (`& 0o777`).
    pub mode: u32,
    /// Where the bytes come from.
    pub source: PathBuf,
    /// Offset of the file's data inside the uncompressed archive.
    pub data_offset: u64,
    header: Vec<u8>,
}

/// What will be archived, with every offset known before a byte is read.
#[derive(Clone, Debug)]
pub struct ArchivePlan {
    /// Entries in archive order (sorted by path).
    pub entries: Vec<PlannedEntry>,
    /// Exact size of the uncompressed tar.
    pub tar_size: u64,
    /// Sum of file sizes.
    pub file_bytes: u64,
}

impl ArchivePlan {
    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| e.size.is_some()).count()
    }
}

/// Scans `root` into a plan. Symlinks are followed (so a Hugging Face snapshot directory, made of
/// links into a blob store, uploads as the files it shows); other special files are refused.
pub fn scan_tree(root: &Path) -> Result<ArchivePlan> {
    let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::usage(
            format!("model directory {} does not exist", root.display()),
            "pass the directory with --from DIR, or the folder holding it with --models-dir DIR",
        ),
        _ => Error::io("cannot read model directory", root, e),
    })?;
    if !meta.is_dir() {
        return Err(Error::usage(format!("{} is not a directory", root.display()), "upload takes a model directory"));
    }
    let mut raw = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
            match e.into_io_error() {
                Some(io) if io.kind() == io::ErrorKind::NotFound && path.is_symlink() => Error::other(
                    format!(
                        "{} is a dangling symbolic link (-> {})",
                        path.display(),
                        std::fs::read_link(&path).unwrap_or_default().display()
                    ),
                    Some("remove the link, or put the file it names in place; links are followed on upload".into()),
                ),
                Some(io) if io.kind() == io::ErrorKind::PermissionDenied => Error::other(
                    format!("cannot read {} in the model directory: {io}", path.display()),
                    Some("check the owner and mode of that file or directory (the upload reads every file)".into()),
                ),
                Some(io) => Error::io("cannot read", &path, io),
                None => Error::other(
                    format!("symbolic link loop at {}", path.display()),
                    Some("remove the looping link".into()),
                ),
            }
        })?;
        let rel = entry.path().strip_prefix(root).expect("walkdir yields paths under root");
        let Some(rel_str) = rel.to_str() else {
            return Err(Error::other(
                format!("file name {} is not valid UTF-8", entry.path().display()),
                Some("rename the file; object stores and manifests need UTF-8 names".into()),
            ));
        };
        if let Err(why) = super::check_relative_path(rel_str) {
            let hint = if rel_str.contains('\\') {
                "rename it without '\\': a backslash is a path separator on Windows and in some tools, so manifests refuse it"
            } else {
                "rename it; model paths are relative, without empty, '.' or '..' segments"
            };
            return Err(Error::other(format!("cannot archive {}: {why}", entry.path().display()), Some(hint.into())));
        }
        let m =
            entry.metadata().map_err(|e| Error::other(format!("cannot read {}: {e}", entry.path().display()), None))?;
        let mode = m.permissions().mode() & 0o777;
        let size = if m.is_file() {
            Some(m.len())
        } else if m.is_dir() {
            None
        } else {
            return Err(Error::other(
                format!("{} is not a regular file or directory", entry.path().display()),
                Some("devices, sockets and FIFOs cannot be part of a model; remove it".into()),
            ));
        };
        raw.push((rel_str.to_string(), size, mode, entry.path().to_path_buf()));
    }
    if !raw.iter().any(|(_, size, _, _)| size.is_some()) {
        return Err(Error::usage(format!("model directory {} contains no files", root.display()), "check the path"));
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(plan_entries(raw))
}

fn plan_entries(raw: Vec<(String, Option<u64>, u32, PathBuf)>) -> ArchivePlan {
    let mut pos = 0u64;
    let mut file_bytes = 0u64;
    let mut entries = Vec::with_capacity(raw.len());
    for (path, size, mode, source) in raw {
        let header = entry_header(&path, size, mode);
        let data_offset = pos + header.len() as u64;
        pos = data_offset + size.map_or(0, padded);
        file_bytes += size.unwrap_or(0);
        entries.push(PlannedEntry { path, size, mode, source, data_offset, header });
    }
    ArchivePlan { entries, tar_size: pos + 2 * BLOCK, file_bytes }
}

/// `n` rounded up to whole blocks.
pub(crate) fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// The header bytes for one entry: an optional PAX header, then the ustar header.
fn entry_header(path: &str, size: Option<u64>, mode: u32) -> Vec<u8> {
    let name = match size {
        Some(_) => path.to_string(),
        None => format!("{path}/"),
    };
    let mut pax = Vec::new();
    if name.len() > USTAR_NAME_LEN {
        pax_record(&mut pax, "path", &name);
    }
    let file_size = size.unwrap_or(0);
    if file_size > USTAR_MAX_SIZE {
        pax_record(&mut pax, "size", &file_size.to_string());
    }
    let mut out = Vec::with_capacity(1536);
    if !pax.is_empty() {
        out.extend_from_slice(&ustar_header(PAX_HEADER_NAME.as_bytes(), 0o644, pax.len() as u64, b'x'));
        let len = pax.len();
        out.extend_from_slice(&pax);
        out.resize(out.len() + (padded(len as u64) as usize - len), 0);
    }
    let short: &[u8] = if name.len() > USTAR_NAME_LEN { &name.as_bytes()[..USTAR_NAME_LEN] } else { name.as_bytes() };
    let (typeflag, header_size) = match size {
        Some(s) if s > USTAR_MAX_SIZE => (b'0', 0),
        Some(s) => (b'0', s),
        None => (b'5', 0),
    };
    out.extend_from_slice(&ustar_header(short, mode, header_size, typeflag));
    out
}

/// A PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &str) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
}

fn ustar_header(name: &[u8], mode: u32, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0"); // uid
    h[116..124].copy_from_slice(b"0000000\0"); // gid
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0"); // mtime
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

enum Phase {
    Header(usize),
    Data { file: File, remaining: u64, hasher: Box<Sha256>, stamp: Stamp },
    Padding(usize),
    Trailer(usize),
    Done,
}

/// The archive of a plan as a `Read`. Hashes every file while reading it; a file that changes size
/// while it is read makes the stream fail rather than produce an archive that lies.
pub struct TarStream {
    plan: ArchivePlan,
    idx: usize,
    phase: Phase,
    hashes: Vec<Option<Sha256Hex>>,
}

impl TarStream {
    /// Streams `plan`.
    pub fn new(plan: ArchivePlan) -> Self {
        let n = plan.entries.len();
        let phase = if n == 0 { Phase::Trailer(0) } else { Phase::Header(0) };
        Self { plan, idx: 0, phase, hashes: vec![None; n] }
    }

    /// The plan and each file's sha256 (`None` for directories), once the stream is finished.
    pub fn finish(self) -> (ArchivePlan, Vec<Option<Sha256Hex>>) {
        (self.plan, self.hashes)
    }

    fn next_entry(&mut self) {
        self.idx += 1;
        self.phase = if self.idx < self.plan.entries.len() { Phase::Header(0) } else { Phase::Trailer(0) };
    }

    fn start_data(&mut self) -> io::Result<()> {
        let entry = &self.plan.entries[self.idx];
        match entry.size {
            None => self.next_entry(),
            Some(size) => {
                let file = File::open(&entry.source)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.source.display())))?;
                if size == 0 {
                    // A file that says it is empty but reads as more (procfs, sysfs) would be
                    // archived as empty: refuse it like a file that grew.
                    let mut probe = [0u8; 1];
                    if (&file).read(&mut probe)? != 0 {
                        return Err(io::Error::other(format!(
                            "{} has a size of 0 but reads as more (a /proc or /sys file?): copy it to a real file first",
                            entry.source.display()
                        )));
                    }
                    self.hashes[self.idx] = Some(Sha256Hex::from_digest(&Sha256::digest(b"")));
                    self.next_entry();
                } else {
                    let stamp = Stamp::of(&file)?;
                    self.phase = Phase::Data { file, remaining: size, hasher: Box::new(Sha256::new()), stamp };
                }
            }
        }
        Ok(())
    }
}

/// When a file's data or inode last changed, as `fstat` says: equal before and after reading it
/// means nothing wrote to it meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(file: &File) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = file.metadata()?;
        Ok(Self { mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) })
    }
}

fn changed(path: &Path, how: &str) -> io::Error {
    io::Error::other(format!("{} {how} while it was being archived; upload again once it is stable", path.display()))
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.phase {
                Phase::Header(pos) => {
                    let header = &self.plan.entries[self.idx].header;
                    if *pos < header.len() {
                        let n = (header.len() - *pos).min(buf.len());
                        buf[..n].copy_from_slice(&header[*pos..*pos + n]);
                        *pos += n;
                        return Ok(n);
                    }
                    self.start_data()?;
                }
                Phase::Data { file, remaining, hasher, stamp } => {
                    if *remaining == 0 {
                        let entry = &self.plan.entries[self.idx];
                        let mut probe = [0u8; 1];
                        if file.read(&mut probe)? != 0 {
                            return Err(changed(&entry.source, "grew"));
                        }
                        // Rewritten in place at the same size: the bytes read may be half old,
                        // half new, and would still hash "correctly".
                        if Stamp::of(file)? != *stamp {
                            return Err(changed(&entry.source, "was modified"));
                        }
                        let digest = std::mem::replace(hasher, Box::new(Sha256::new())).finalize();
                        self.hashes[self.idx] = Some(Sha256Hex::from_digest(&digest));
                        let size = entry.size.unwrap_or(0);
                        self.phase = Phase::Padding((padded(size) - size) as usize);
                        continue;
                    }
                    let want = (*remaining).min(buf.len() as u64) as usize;
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(changed(&self.plan.entries[self.idx].source, "shrank"));
                    }
                    hasher.update(&buf[..n]);
                    *remaining -= n as u64;
                    return Ok(n);
                }
                Phase::Padding(left) => {
                    if *left == 0 {
                        self.next_entry();
                        continue;
                    }
                    let n = (*left).min(buf.len());
                    buf[..n].fill(0);
                    *left -= n;
                    return Ok(n);
                }
                Phase::Trailer(pos) => {
                    let total = 2 * BLOCK as usize;
                    if *pos >= total {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let n = (total - *pos).min(buf.len());
                    buf[..n].fill(0);
                    *pos += n;
                    return Ok(n);
                }
                Phase::Done => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for value in ["x", &"a".repeat(95), &"b".repeat(996)] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", value);
            let text = String::from_utf8(out.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "{text}");
        }
    }

    #[test]
    fn header_checksum_matches_the_ustar_rule() {
        let h = ustar_header(b"a.txt", 0o644, 5, b'0');
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| u32::from(*b)).sum::<u32>());
    }

    #[test]
    fn same_tree_same_bytes_and_offsets_point_at_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::write(dir.path().join("b.bin"), vec![7u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/a.json"), b"{}").unwrap();
        let long = "x".repeat(120);
        std::fs::write(dir.path().join(&long), b"long name").unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();

        let read_all = || {
            let plan = scan_tree(dir.path()).unwrap();
            let mut s = TarStream::new(plan);
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            let (plan, hashes) = s.finish();
            (out, plan, hashes)
        };
        let (a, plan, hashes) = read_all();
        let (b, _, _) = read_all();
        assert_eq!(a, b, "archive must be deterministic");
        assert_eq!(a.len() as u64, plan.tar_size);
        for (e, h) in plan.entries.iter().zip(&hashes) {
            if let Some(size) = e.size {
                let data = &a[e.data_offset as usize..(e.data_offset + size) as usize];
                assert_eq!(data, std::fs::read(&e.source).unwrap().as_slice(), "{}", e.path);
                assert_eq!(h.as_ref().unwrap(), &Sha256Hex::from_digest(&Sha256::digest(data)));
            } else {
                assert!(h.is_none());
            }
        }
        assert_eq!(plan.file_count(), 4);
        assert_eq!(plan.entries.iter().filter(|e| e.size.is_none()).count(), 2);
    }

    #[test]
    fn a_file_that_grows_while_read_fails_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"1234").unwrap();
        let plan = scan_tree(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"123456789").unwrap();
        let err = TarStream::new(plan).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("grew"), "{err}");
    }

    #[test]
    fn empty_or_missing_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scan_tree(dir.path()).unwrap_err().exit_code(), 2);
        assert_eq!(scan_tree(&dir.path().join("missing")).unwrap_err().exit_code(), 2);
    }
}
