//! Where the config file is, and reading and writing it: regular files of at most 1 MiB, written
//! atomically with mode 0600 in directories created 0700.

use std::path::{Path, PathBuf};

use super::CloudConfig;
use crate::error::{Error, Result};

/// The default config file: `$XDG_CONFIG_HOME/crowecode/cloud.json`, else
/// `~/.config/crowecode/cloud.json`; `None` when neither variable is set (then there is no
/// default file, never one under the working directory).
pub fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(x).join("crowecode").join("cloud.json"));
    }
    let home = env("HOME").filter(|s| !s.is_empty())?;
    Some(PathBuf::from(home).join(".config").join("crowecode").join("cloud.json"))
}

/// Where to look for the config file: `explicit` (from `--config` or `CROWECODE_CONFIG`), else
/// the default, else none.
pub fn file_location(explicit: Option<PathBuf>, env: &dyn Fn(&str) -> Option<String>) -> FileLocation {
    match explicit {
        Some(path) => FileLocation { path, explicit: true },
        None => default_config_path(env).map_or_else(FileLocation::none, |path| FileLocation { path, explicit: false }),
    }
}

/// Where to look for a config file, and whether the user named it explicitly.
#[derive(Clone, Debug)]
pub struct FileLocation {
    pub path: PathBuf,
    pub explicit: bool,
}

impl FileLocation {
    /// No config file at all (a path that is never read).
    pub fn none() -> Self {
        Self { path: PathBuf::new(), explicit: false }
    }
}

/// The most a config file may hold: a real one is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file: regular files only (a FIFO or device would block or never end), at most
/// [`MAX_CONFIG_BYTES`]. `Ok(None)` when there is no file at `path`.
pub(super) fn read_config_file(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("too large ({} bytes; a config is at most {MAX_CONFIG_BYTES})", meta.len()),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too large"));
    }
    Ok(Some(bytes))
}

/// Writes the config file with mode 0600, atomically (temp file + rename), creating its directory.
pub fn write_config_file(path: &Path, cfg: &CloudConfig) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Directories it creates are private (0700); existing ones are left as they are.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create the config directory", dir, e))?;
    let mut text = serde_json::to_string_pretty(&cfg.to_document()).expect("config serialises");
    text.push('\n');
    let tmp = dir.join(format!(".cloud.json.{}.tmp", std::process::id()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io("cannot write", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}
