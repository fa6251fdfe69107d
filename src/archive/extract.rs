//! A strict, push-driven tar extractor.
//!
//! Bytes are pushed in with [`Extractor::feed`] (or through `Write`, so a decompressor can sit in
//! front), in chunks of any size. Every header is checked against the next expected entry of the
//! manifest before anything is created: the path (relative, no `..`, no absolute path), the type
//! (regular file or directory only: links, devices and FIFOs are refused), the size and the mode.
//! Files are created with `O_EXCL` inside a fresh staging directory that holds no links, so
//! nothing can be written outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::tar::padded;
use crate::names::Sha256Hex;

/// Largest PAX header accepted: ours hold one path and maybe a size.
const MAX_PAX: u64 = 64 * 1024;

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that could write outside the target or is not a plain file or directory.
    #[error("unsafe archive entry refused: {0}")]
    Unsafe(String),
    /// An entry that the manifest does not describe.
    #[error("archive does not match its manifest: {0}")]
    Mismatch(String),
    /// A file whose bytes do not hash to the manifest's sha256.
    #[error("{path}: sha256 differs from the manifest")]
    FileHash { path: String, expected: Sha256Hex, computed: Sha256Hex },
    /// Not a well-formed tar stream.
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// Writing to the staging directory failed (disk full, permissions).
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One entry the archive must contain, in archive order.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Relative path.
    pub path: String,
    /// `Some(size)` for a file, `None` for a directory.
    pub size: Option<u64>,
    /// Permission bits.
    pub mode: u32,
    /// The file's digest, checked when per-file verification is on.
    pub sha256: Option<Sha256Hex>,
}

enum State {
    Header,
    Pax { remaining: u64, pad: u64, buf: Vec<u8> },
    Data { file: File, remaining: u64, pad: u64, hasher: Option<Box<Sha256>>, idx: usize },
    Skip(u64),
    End,
}

/// Extracts one archive into a directory, refusing anything the manifest does not promise.
pub struct Extractor {
    root: PathBuf,
    expected: Vec<Expected>,
    next: usize,
    state: State,
    header: Box<[u8; 512]>,
    filled: usize,
    pax_path: Option<String>,
    pax_size: Option<u64>,
    verify_files: bool,
    dirs: Vec<(PathBuf, u32)>,
    written: u64,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io { path: path.to_path_buf(), source }
}

impl Extractor {
    /// Extracts into `root` (an existing, empty staging directory) exactly the `expected` entries.
    /// With `verify_files`, each file is also hashed against its manifest sha256.
    pub fn new(root: PathBuf, expected: Vec<Expected>, verify_files: bool) -> Self {
        Self {
            root,
            expected,
            next: 0,
            state: State::Header,
            header: Box::new([0u8; 512]),
            filled: 0,
            pax_path: None,
            pax_size: None,
            verify_files,
            dirs: Vec::new(),
            written: 0,
        }
    }

    /// Continues an extraction that stopped after `expected[..start]` were complete in `root`:
    /// the bytes fed must begin with the archive's headers of entry `start`. Directories already
    /// made still get their final modes at [`Extractor::finish`].
    pub fn resuming(root: PathBuf, expected: Vec<Expected>, start: usize, verify_files: bool) -> Self {
        let dirs = expected[..start]
            .iter()
            .filter(|e| e.size.is_none())
            .map(|e| (root.join(&e.path), super::installed_mode(e.mode)))
            .collect();
        Self { next: start, dirs, ..Self::new(root, expected, verify_files) }
    }

    /// File bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Pushes the next bytes of the archive.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ExtractError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header => {
                    let n = (512 - self.filled).min(data.len());
                    self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    data = &data[n..];
                    if self.filled == 512 {
                        self.filled = 0;
                        self.on_header()?;
                    }
                }
                State::Pax { remaining, pad, buf } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..n]);
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        let (pad, buf) = (*pad, std::mem::take(buf));
                        self.on_pax(&buf)?;
                        self.state = State::Skip(pad);
                    }
                }
                State::Data { file, remaining, pad, hasher, idx } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    let path = &self.expected[*idx].path;
                    file.write_all(&data[..n])
                        .map_err(|source| ExtractError::Io { path: self.root.join(path), source })?;
                    if let Some(h) = hasher {
                        h.update(&data[..n]);
                    }
                    *remaining -= n as u64;
                    self.written += n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        let pad = *pad;
                        self.finish_file()?;
                        self.state = State::Skip(pad);
                    }
                }
                State::Skip(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::End => {
                    if data.iter().any(|b| *b != 0) {
                        return Err(ExtractError::Corrupt("data after the end-of-archive marker".into()));
                    }
                    data = &[];
                }
            }
        }
        // A skip of zero bytes (no padding) finishes at once.
        if let State::Skip(0) = self.state {
            self.state = State::Header;
        }
        Ok(())
    }

    /// Checks that the archive ended properly with every expected entry, then applies directory modes.
    pub fn finish(mut self) -> Result<(), ExtractError> {
        if let State::Skip(0) = self.state {
            self.state = State::Header;
        }
        if self.next < self.expected.len() {
            return Err(ExtractError::Corrupt(format!(
                "archive ended before {} (truncated: {} of {} entries)",
                self.expected[self.next].path,
                self.next,
                self.expected.len()
            )));
        }
        if !matches!(self.state, State::End) {
            return Err(ExtractError::Corrupt("archive ended without its end-of-archive marker (truncated)".into()));
        }
        // Deepest first, so that a read-only directory does not block setting its children.
        self.dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode) in &self.dirs {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(io_at(path))?;
        }
        Ok(())
    }

    fn on_header(&mut self) -> Result<(), ExtractError> {
        let h = &*self.header;
        if h.iter().all(|b| *b == 0) {
            if self.pax_path.is_some() || self.pax_size.is_some() {
                return Err(ExtractError::Corrupt("PAX header followed by the end of the archive".into()));
            }
            self.state = State::End;
            return Ok(());
        }
        let stored =
            parse_octal(&h[148..156]).ok_or_else(|| ExtractError::Corrupt("unreadable header checksum".into()))?;
        let sum: u64 =
            h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
        if stored != sum {
            return Err(ExtractError::Corrupt(format!("header checksum mismatch (stored {stored}, computed {sum})")));
        }
        if &h[257..262] != b"ustar" {
            return Err(ExtractError::Corrupt("not a ustar header".into()));
        }
        let typeflag = h[156];
        let name = header_path(h)?;
        let size_field = |name: &str| {
            parse_octal(&h[124..136]).ok_or_else(|| ExtractError::Corrupt(format!("unreadable size for {name}")))
        };
        match typeflag {
            b'x' => {
                if self.pax_path.is_some() || self.pax_size.is_some() {
                    return Err(ExtractError::Corrupt("two PAX headers in a row".into()));
                }
                let size = size_field(&name)?;
                if size == 0 || size > MAX_PAX {
                    return Err(ExtractError::Unsafe(format!("PAX header of {size} bytes")));
                }
                self.state =
                    State::Pax { remaining: size, pad: padded(size) - size, buf: Vec::with_capacity(size as usize) };
                return Ok(());
            }
            b'0' | 0 | b'5' => {}
            b'1' => {
                return Err(ExtractError::Unsafe(format!("hard link {name} -> {}", link_name(h))));
            }
            b'2' => {
                return Err(ExtractError::Unsafe(format!("symbolic link {name} -> {}", link_name(h))));
            }
            b'3' | b'4' => return Err(ExtractError::Unsafe(format!("device file {name}"))),
            b'6' => return Err(ExtractError::Unsafe(format!("FIFO {name}"))),
            other => {
                return Err(ExtractError::Unsafe(format!("entry {name} of unsupported type {:?}", other as char)));
            }
        }
        let is_dir = typeflag == b'5';
        let mut path = self.pax_path.take().unwrap_or(name);
        let size = match self.pax_size.take() {
            Some(s) => s,
            None => size_field(&path)?,
        };
        if is_dir {
            if path.ends_with('/') {
                path.pop();
            }
            if size != 0 {
                return Err(ExtractError::Corrupt(format!("directory {path} with a size")));
            }
        }
        super::check_relative_path(&path).map_err(ExtractError::Unsafe)?;
        let mode = parse_octal(&h[100..108])
            .ok_or_else(|| ExtractError::Corrupt(format!("unreadable mode for {path}")))? as u32
            & 0o777;

        let Some(exp) = self.expected.get(self.next) else {
            return Err(ExtractError::Mismatch(format!("entry {path} is not in the manifest")));
        };
        if exp.path != path {
            return Err(ExtractError::Mismatch(format!("found {path} where the manifest has {}", exp.path)));
        }
        match (exp.size, is_dir) {
            (None, false) => {
                return Err(ExtractError::Mismatch(format!(
                    "{path} is a file in the archive, a directory in the manifest"
                )));
            }
            (Some(_), true) => {
                return Err(ExtractError::Mismatch(format!(
                    "{path} is a directory in the archive, a file in the manifest"
                )));
            }
            (Some(want), false) if want != size => {
                return Err(ExtractError::Mismatch(format!(
                    "{path} is {size} bytes in the archive, {want} in the manifest"
                )));
            }
            _ => {}
        }
        if exp.mode & 0o777 != mode {
            return Err(ExtractError::Mismatch(format!(
                "{path} has mode {mode:o} in the archive, {:o} in the manifest",
                exp.mode
            )));
        }
        let idx = self.next;
        self.next += 1;
        let target = self.root.join(&path);
        if is_dir {
            fs::create_dir_all(&target).map_err(io_at(&target))?;
            self.dirs.push((target, super::installed_mode(mode)));
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(io_at(&target))?;
        let hasher = self.verify_files.then(|| Box::new(Sha256::new()));
        self.state = State::Data { file, remaining: size, pad: padded(size) - size, hasher, idx };
        if size == 0 {
            self.finish_file()?;
            self.state = State::Header;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), ExtractError> {
        let State::Data { file, hasher, idx, .. } = std::mem::replace(&mut self.state, State::Header) else {
            return Ok(());
        };
        let exp = &self.expected[idx];
        let target = self.root.join(&exp.path);
        if let (Some(h), Some(want)) = (hasher, &exp.sha256) {
            let got = Sha256Hex::from_digest(&h.finalize());
            if &got != want {
                return Err(ExtractError::FileHash { path: exp.path.clone(), expected: want.clone(), computed: got });
            }
        }
        file.set_permissions(fs::Permissions::from_mode(super::installed_mode(exp.mode))).map_err(io_at(&target))?;
        Ok(())
    }

    fn on_pax(&mut self, buf: &[u8]) -> Result<(), ExtractError> {
        let mut rest = buf;
        while !rest.is_empty() {
            let space = rest
                .iter()
                .position(|b| *b == b' ')
                .ok_or_else(|| ExtractError::Corrupt("malformed PAX record".into()))?;
            let len: usize = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|l| *l > space + 1 && *l <= rest.len())
                .ok_or_else(|| ExtractError::Corrupt("malformed PAX record length".into()))?;
            let record = &rest[space + 1..len];
            let record =
                record.strip_suffix(b"\n").ok_or_else(|| ExtractError::Corrupt("PAX record without newline".into()))?;
            let eq = record
                .iter()
                .position(|b| *b == b'=')
                .ok_or_else(|| ExtractError::Corrupt("PAX record without '='".into()))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            let value =
                std::str::from_utf8(value).map_err(|_| ExtractError::Unsafe("PAX value is not UTF-8".into()))?;
            match key {
                b"path" => self.pax_path = Some(value.to_string()),
                b"size" => {
                    self.pax_size =
                        Some(value.parse().map_err(|_| ExtractError::Corrupt(format!("PAX size {value:?}")))?)
                }
                b"linkpath" => {
                    return Err(ExtractError::Unsafe(format!("PAX link path {value:?}")));
                }
                _ => {} // mtime, atime and the like: we set none of them
            }
            rest = &rest[len..];
        }
        Ok(())
    }
}

impl Write for Extractor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ExtractError {
    /// Recovers an extraction error that travelled through `io::Error` (via a decompressor).
    pub fn from_io(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<ExtractError>()) {
            if let Some(inner) = e.into_inner()
                && let Ok(x) = inner.downcast::<ExtractError>()
            {
                return *x;
            }
            unreachable!("checked above");
        }
        ExtractError::Corrupt(format!("decompression failed: {e}"))
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return None; // base-256: we never write it, a PAX size is used instead
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn header_path(h: &[u8; 512]) -> Result<String, ExtractError> {
    let name = cstr(&h[..100]);
    let prefix = cstr(&h[345..500]);
    let joined = if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() };
    String::from_utf8(joined).map_err(|_| ExtractError::Unsafe("entry name is not UTF-8".into()))
}

fn link_name(h: &[u8; 512]) -> String {
    String::from_utf8_lossy(cstr(&h[157..257])).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; 512] {
        crate::archive::testing::tar_header(name, typeflag, size, link)
    }

    fn expect(path: &str, size: u64) -> Vec<Expected> {
        vec![Expected { path: path.into(), size: Some(size), mode: 0o644, sha256: None }]
    }

    fn run(entries: Vec<Expected>, archive: &[u8]) -> (tempfile::TempDir, Result<(), ExtractError>) {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        fs::create_dir(&staging).unwrap();
        let mut x = Extractor::new(staging, entries, true);
        // Feed in awkward chunk sizes to exercise the state machine's boundaries.
        let r = archive.chunks(7).try_for_each(|c| x.feed(c)).and_then(|()| x.finish());
        (dir, r)
    }

    fn archive_of(headers_and_data: &[(&[u8; 512], &[u8])]) -> Vec<u8> {
        let owned: Vec<([u8; 512], Vec<u8>)> = headers_and_data.iter().map(|(h, d)| (**h, d.to_vec())).collect();
        crate::archive::testing::tar_of(&owned)
    }

    #[test]
    fn extracts_an_expected_file() {
        let a = archive_of(&[(&header("a.txt", b'0', 5, ""), b"hello")]);
        let mut exp = expect("a.txt", 5);
        exp[0].sha256 = Some(Sha256Hex::from_digest(&Sha256::digest(b"hello")));
        let (dir, r) = run(exp, &a);
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("staging/a.txt")).unwrap(), b"hello");
    }

    #[test]
    fn refuses_links_devices_and_escapes() {
        let cases: Vec<([u8; 512], &str)> = vec![
            (header("../evil", b'0', 1, ""), "contains \"..\""),
            (header("/etc/evil", b'0', 1, ""), "absolute"),
            (header("link", b'2', 0, "/etc/passwd"), "symbolic link"),
            (header("hard", b'1', 0, "../../x"), "hard link"),
            (header("dev", b'3', 0, ""), "device"),
            (header("fifo", b'6', 0, ""), "FIFO"),
            (header("longname", b'L', 10, ""), "unsupported type"),
        ];
        for (h, needle) in cases {
            let (dir, r) = run(expect("x", 1), &archive_of(&[(&h, b"x")]));
            let err = r.unwrap_err();
            assert!(matches!(err, ExtractError::Unsafe(_)), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0, "nothing written for {needle}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn refuses_what_the_manifest_does_not_promise() {
        let h = header("a.txt", b'0', 5, "");
        let (_, r) = run(expect("a.txt", 4), &archive_of(&[(&h, b"hello")]));
        assert!(r.unwrap_err().to_string().contains("5 bytes in the archive, 4 in the manifest"));
        let (_, r) = run(expect("b.txt", 5), &archive_of(&[(&h, b"hello")]));
        assert!(r.unwrap_err().to_string().contains("where the manifest has b.txt"));
        let (_, r) = run(Vec::new(), &archive_of(&[(&h, b"hello")]));
        assert!(r.unwrap_err().to_string().contains("not in the manifest"));
        let mut exp = expect("a.txt", 5);
        exp[0].sha256 = Some(Sha256Hex::from_digest(&Sha256::digest(b"HELLO")));
        let (_, r) = run(exp, &archive_of(&[(&h, b"hello")]));
        assert!(matches!(r.unwrap_err(), ExtractError::FileHash { .. }));
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let full = archive_of(&[(&header("a.txt", b'0', 5, ""), b"hello")]);
        let (_, r) = run(expect("a.txt", 5), &full[..600]);
        assert!(matches!(r.unwrap_err(), ExtractError::Corrupt(_)));
        let (_, r) = run(expect("a.txt", 5), &full[..512 + 512]);
        assert!(r.unwrap_err().to_string().contains("truncated"));
        let mut bad = full.clone();
        bad[10] ^= 0x55;
        let (_, r) = run(expect("a.txt", 5), &bad);
        assert!(r.unwrap_err().to_string().contains("checksum"));
        let mut trailing = full;
        trailing.push(1);
        let (_, r) = run(expect("a.txt", 5), &trailing);
        assert!(r.unwrap_err().to_string().contains("after the end-of-archive"));
    }
}
