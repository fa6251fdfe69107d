//! Archives: a deterministic tar writer, a strict streaming extractor, compression and hashing.
//!
//! The writer emits only what the extractor accepts: ustar headers for files and directories,
//! with a PAX `x` header for paths over 100 bytes or files of 8 GiB and more; mtime, uid and gid
//! fixed at zero, entries sorted by path, permission bits kept. The same tree always gives the
//! same bytes. The extractor accepts exactly the entries of the manifest, in order, and refuses
//! everything else (links, devices, unexpected paths or sizes) before it writes a byte of it.

use serde::{Deserialize, Serialize};

pub(crate) mod extract;
mod hash;
mod tar;

pub use extract::{ExtractError, Extractor};
pub use hash::{HashReader, sha256_file};
pub use tar::{ArchivePlan, PlannedEntry, TarStream, scan_tree};

/// Compression of the archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain tar: fastest, allows selective and resumable downloads (the default; dense weights
    /// barely compress).
    #[default]
    None,
    /// zstd level 3.
    Zstd,
    /// gzip level 6.
    Gzip,
}

impl Compression {
    /// File-name extension of an archive with this compression.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "tar",
            Self::Zstd => "tar.zst",
            Self::Gzip => "tar.gz",
        }
    }

    /// Name as used in manifests and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }
}

/// Checks that `path` is a plain relative path that stays inside the directory it is joined to:
/// `/`-separated, no leading `/`, no empty, `.` or `..` segments, no NUL or backslash.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err(format!("absolute path {path:?}"));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(format!("path {path:?} contains NUL or a backslash"));
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err(format!("path {path:?} has an empty segment")),
            "." | ".." => return Err(format!("path {path:?} contains {seg:?}")),
            _ => {}
        }
    }
    if path.len() > 4096 {
        return Err(format!("path of {} bytes is too long", path.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_check_refuses_escapes() {
        for ok in ["a", "a/b.c", "x/.hidden", "weird name (1)", "ünïcode/ok"] {
            assert!(check_relative_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/.", "a\\..\\b", "a\0b"] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }
}
