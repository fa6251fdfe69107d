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
#[doc(hidden)]
pub mod testing;

pub use extract::{ExtractError, Extractor};

#[cfg(test)]
mod mode_tests {
    use super::*;

    #[test]
    fn installed_modes_are_never_group_or_world_writable() {
        for m in [0o666, 0o777, 0o4777, 0o1777, 0o2775] {
            assert_eq!(installed_mode(m) & 0o7022, 0, "{m:o}");
        }
        assert_eq!(installed_mode(0o644) & 0o700, 0o600);
        assert!(mode_matches(0o644, 0o666));
        assert!(mode_matches(0o600, 0o666), "a stricter umask");
        assert!(!mode_matches(0o666, 0o666), "world-writable on disk");
        assert!(!mode_matches(0o400, 0o644), "the owner lost a bit");
        assert!(!mode_matches(0o755, 0o644), "a bit the manifest does not have");
    }
}
pub use hash::{HashReader, sha256_file};
pub use tar::{ArchivePlan, PlannedEntry, TarStream, scan_tree};

/// The permission bits a file or directory of a model gets on this machine: the manifest's
/// `rwx` bits less the process umask (as tar does for users other than root), and never writable
/// by group or others, whatever the manifest says: a verified version directory is not for
/// other local users to rewrite. Setuid, setgid and sticky bits never survive.
pub fn installed_mode(mode: u32) -> u32 {
    mode & 0o777 & !(umask() | 0o022)
}

/// Whether a mode found on disk is what [`installed_mode`] gives for `manifest_mode`, under this
/// or another umask (the model may have been installed by another process): no bit beyond the
/// manifest's, the owner's bits intact, nothing writable by group or others.
pub fn mode_matches(on_disk: u32, manifest_mode: u32) -> bool {
    let on_disk = on_disk & 0o7777;
    let allowed = manifest_mode & 0o777 & !0o022;
    on_disk & !allowed == 0 && on_disk & 0o700 == allowed & 0o700
}

/// The process umask, read without changing it (`/proc/self/status`); 022 where unknown.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Umask:").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
            })
            .unwrap_or(0o022)
    })
}

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
