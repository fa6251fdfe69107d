//! The manifest (the commit point of an upload) and the bucket layout.
//!
//! ```text
//! <prefix><Model>/manifest.json                   written last: a model exists when this does
//! <prefix><Model>/archives/<utc-stamp>-<rand>.tar  format 1: one archive per uploaded version
//! <prefix><Model>/versions/<id>.loc.json           format 2: where each chunk of the version is
//! <prefix>_pieces/packs/<hh>/<pack id>.pack        format 2: chunks, shared by every model
//! ```

use std::collections::HashSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::archive::extract::Expected;
use crate::archive::{Compression, check_relative_path};
use crate::error::{Error, Result};
use crate::names::{ModelName, Sha256Hex};

/// Format 1: a version is one archive.
pub const FORMAT_VERSION: u32 = 1;
/// Format 2: a version is its files' chunks, in packs shared by every model of the prefix,
/// each chunk named by its sha256.
pub const FORMAT_PIECES: u32 = 2;
/// Format 3: format 2 with each chunk named by its BLAKE3 digest (files keep their sha256).
pub const FORMAT_PIECES_BLAKE3: u32 = 3;
/// The newest manifest format this version reads.
pub const NEWEST_FORMAT: u32 = FORMAT_PIECES_BLAKE3;
/// The largest manifest accepted (a model with ~100k files).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// A regular file of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// Permission bits.
    pub mode: u32,
    /// Offset of the file's bytes inside the archive (uncompressed archives only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Formats 2 and 3: the file's content-defined chunks in order, `[digest, length]` each
    /// (offsets are the running sum; the digest is the sha256 in format 2, the BLAKE3 in format
    /// 3). Covered by the version id, so a pinned reference fixes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<(Sha256Hex, u32)>,
}

/// A directory of the model (kept so empty directories and modes round-trip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// What one uploaded version of a model is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    pub model: ModelName,
    /// Key of the archive object (format 1; empty in format 2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub archive_key: String,
    /// The archive's sha256 (format 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_sha256: Option<Sha256Hex>,
    /// The archive's size (format 1; 0 in format 2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub archive_size: u64,
    #[serde(default)]
    pub compression: Compression,
    /// Files in archive order.
    pub files: Vec<FileEntry>,
    /// Directories in archive order.
    #[serde(default)]
    pub dirs: Vec<DirEntry>,
    /// Sum of file sizes.
    pub total_size: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// The `crowecode-cloud` version that wrote it.
    pub tool_version: String,
    /// Format 2: a random id of the upload that wrote it, so that `upload --force` of the same
    /// tree makes a version of its own (format 1 has its archive's random name for that).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upload_id: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    /// Whether the version is stored as chunks in packs (formats 2 and 3) rather than one archive.
    pub fn is_pieces(&self) -> bool {
        self.format == FORMAT_PIECES || self.format == FORMAT_PIECES_BLAKE3
    }

    /// The digest its chunks are named by (formats 2 and 3).
    pub fn chunk_hash(&self) -> crate::chunk::ChunkHash {
        crate::chunk::ChunkHash::of_format(self.format)
    }

    /// How many chunks the version's files have (format 2; 0 in format 1).
    pub fn chunk_count(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum()
    }

    /// What names the stored bytes of the version for the cache: the archive's digest (format 1),
    /// or, in format 2, the digest of the files' digests in order.
    pub fn content_digest(&self) -> Sha256Hex {
        if let Some(sha) = &self.archive_sha256 {
            return sha.clone();
        }
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.sha256.as_str().as_bytes());
        }
        Sha256Hex::from_digest(&h.finalize())
    }

    /// Parses and validates a manifest read from `key`, which must describe `model`.
    pub fn parse(bytes: &[u8], model: &ModelName, key: &str) -> Result<Self> {
        let bad = |what: String| Error::integrity(key, what, None, None);
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!("manifest of {} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit", bytes.len())));
        }
        #[derive(Deserialize)]
        struct Probe {
            format: Option<u32>,
        }
        if let Ok(Probe { format: Some(f) }) = serde_json::from_slice::<Probe>(bytes)
            && f > NEWEST_FORMAT
        {
            return Err(Error::other(
                format!("{key}: manifest format {f} is newer than this crowecode-cloud understands ({NEWEST_FORMAT})"),
                Some("upgrade crowecode-cloud".into()),
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(format!("unreadable manifest: {e}")))?;
        if &m.model != model {
            return Err(bad(format!("manifest is for model {}, not {model}", m.model)));
        }
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Internal consistency: safe unique paths, sizes adding up, offsets inside the archive.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT_VERSION && !self.is_pieces() {
            return Err(format!("unsupported manifest format {}", self.format));
        }
        match self.format {
            FORMAT_VERSION if self.archive_sha256.is_none() || self.archive_key.is_empty() => {
                return Err("a format 1 manifest must name its archive and its digest".into());
            }
            FORMAT_VERSION if self.files.iter().any(|f| !f.chunks.is_empty()) => {
                return Err("a format 1 manifest lists chunks".into());
            }
            FORMAT_PIECES | FORMAT_PIECES_BLAKE3 if self.archive_sha256.is_some() || !self.archive_key.is_empty() => {
                return Err(format!("a format {} manifest names an archive", self.format));
            }
            _ => {}
        }
        if self.is_pieces() {
            for f in &self.files {
                let sum = f.chunks.iter().try_fold(0u64, |acc, (_, len)| acc.checked_add(u64::from(*len)));
                if f.chunks.is_empty() || sum != Some(f.size) {
                    return Err(format!("the chunks of {} do not add up to its size", f.path));
                }
                if f.chunks.iter().any(|(_, len)| u64::from(*len) > crate::chunk::MAX as u64) {
                    return Err(format!("a chunk of {} is larger than the largest chunk", f.path));
                }
            }
        }
        let mut seen = HashSet::new();
        for path in self.files.iter().map(|f| &f.path).chain(self.dirs.iter().map(|d| &d.path)) {
            check_relative_path(path)?;
            if !seen.insert(path.as_str()) {
                return Err(format!("path {path} listed twice"));
            }
        }
        // A file cannot also be a directory of another entry (`d` and `d/a`).
        let file_paths: HashSet<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        for path in self.files.iter().map(|f| &f.path).chain(self.dirs.iter().map(|d| &d.path)) {
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                if file_paths.contains(up) {
                    return Err(format!("{up} is listed as a file and as a directory of {path}"));
                }
                parent = up;
            }
        }
        let total = self.files.iter().try_fold(0u64, |acc, f| acc.checked_add(f.size)).ok_or("file sizes overflow")?;
        if total != self.total_size {
            return Err(format!("total_size {} is not the sum of file sizes {total}", self.total_size));
        }
        if self.compression == Compression::None && !self.is_pieces() {
            for f in &self.files {
                let end = f.offset.and_then(|o| o.checked_add(f.size));
                if end.is_none_or(|e| e > self.archive_size) {
                    return Err(format!("offset of {} lies outside the archive", f.path));
                }
            }
            if self.total_size > self.archive_size {
                return Err("files are larger than the archive".into());
            }
        }
        Ok(())
    }

    /// The entries the archive holds, in archive order (sorted by path, as the writer emits them).
    pub fn expected_entries(&self) -> Vec<Expected> {
        let mut out: Vec<Expected> = self
            .files
            .iter()
            .map(|f| Expected {
                path: f.path.clone(),
                size: Some(f.size),
                mode: f.mode,
                sha256: Some(f.sha256.clone()),
            })
            .chain(self.dirs.iter().map(|d| Expected { path: d.path.clone(), size: None, mode: d.mode, sha256: None }))
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Checks that the archive this manifest names (read from `key`) is one of the model's own:
    /// `…<Model>/archives/<name>`, so a manifest cannot steer a reader to another model's or
    /// another team's objects. The prefix before `<Model>/` is not checked: where the model lives
    /// now decides where its archive is read ([`Layout::archive_key`]), so a model copied to
    /// another prefix or bucket with any copy tool still downloads.
    pub fn confined(self, _layout: &Layout, key: &str) -> Result<Self> {
        if !self.is_pieces() && self.archive_name().is_none() {
            return Err(Error::integrity(
                key,
                format!(
                    "the manifest names the archive {:?}, which is not one of the model's own archives ({}/archives/NAME)",
                    self.archive_key, self.model
                ),
                None,
                None,
            ));
        }
        Ok(self)
    }

    /// The archive's file name, when `archive_key` is `[…/]<Model>/archives/<name>` with a plain
    /// name (no `/`, not `.` or `..`, no control characters).
    pub fn archive_name(&self) -> Option<&str> {
        let own = format!("{}/archives/", self.model);
        let at = self.archive_key.rfind(&own)?;
        if at > 0 && !self.archive_key[..at].ends_with('/') {
            return None;
        }
        let name = &self.archive_key[at + own.len()..];
        let plain = !name.is_empty()
            && !name.contains('/')
            && name != "."
            && name != ".."
            && !name.chars().any(char::is_control);
        plain.then_some(name)
    }

    /// Whether `other` describes the same tree (paths, sizes, digests, modes), whatever the archive.
    pub fn same_tree(&self, other: &Manifest) -> bool {
        let files = |m: &Manifest| {
            m.files.iter().map(|f| (f.path.clone(), f.size, f.sha256.clone(), f.mode)).collect::<Vec<_>>()
        };
        files(self) == files(other) && self.dirs == other.dirs
    }

    /// Serialised form (pretty, stable key order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

/// Where a model's objects live in the bucket.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// Layout under `prefix` (empty or ending in `/`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// `<prefix><Model>/manifest.json`.
    pub fn manifest_key(&self, model: &ModelName) -> String {
        format!("{}{model}/manifest.json", self.prefix)
    }

    /// `<prefix><Model>/archives/`.
    pub fn archives_prefix(&self, model: &ModelName) -> String {
        format!("{}{model}/archives/", self.prefix)
    }

    /// A fresh archive key: `<prefix><Model>/archives/<utc-stamp>-<rand>.<ext>`.
    pub fn new_archive_key(&self, model: &ModelName, now: SystemTime, compression: Compression) -> String {
        let stamp = humantime::format_rfc3339_seconds(now).to_string().replace([':', '-'], "");
        format!("{}{stamp}-{:08x}.{}", self.archives_prefix(model), fastrand::u32(..), compression.extension())
    }

    /// Where the archive of `manifest` is read: its file name under this layout's archives of the
    /// model (the manifest's own `archive_key` may carry the prefix of where it was written).
    pub fn archive_key(&self, manifest: &Manifest) -> String {
        match manifest.archive_name() {
            Some(name) => format!("{}{name}", self.archives_prefix(&manifest.model)),
            None => manifest.archive_key.clone(),
        }
    }

    /// `<prefix><Model>/versions/`: one immutable manifest per version, named by its digest.
    pub fn versions_prefix(&self, model: &ModelName) -> String {
        format!("{}{model}/versions/", self.prefix)
    }

    /// `<prefix><Model>/versions/<hex>.json`.
    pub fn version_key(&self, model: &ModelName, version: &crate::reference::VersionId) -> String {
        format!("{}{}.json", self.versions_prefix(model), version.hex())
    }

    /// `<prefix><Model>/versions/<hex>.`: what the version's signatures' keys start with.
    pub fn signatures_prefix(&self, model: &ModelName, version: &crate::reference::VersionId) -> String {
        format!("{}{}.", self.versions_prefix(model), version.hex())
    }

    /// `<prefix><Model>/versions/<hex>.<key id 16>.sig`: one OMS signature of the version per key.
    pub fn signature_key(&self, model: &ModelName, version: &crate::reference::VersionId, key_id: &str) -> String {
        format!("{}{key_id}.sig", self.signatures_prefix(model, version))
    }

    /// `<prefix><Model>/tags/`: the only mutable objects, moved by compare-and-swap.
    pub fn tags_prefix(&self, model: &ModelName) -> String {
        format!("{}{model}/tags/", self.prefix)
    }

    /// `<prefix><Model>/tags/<tag>.json`.
    pub fn tag_key(&self, model: &ModelName, tag: &crate::reference::TagName) -> String {
        format!("{}{tag}.json", self.tags_prefix(model))
    }

    /// What the markers of sweeps deleting in the model start with: `<prefix><Model>/pruning`.
    /// Each sweep (`prune --remote`, `delete --all`) raises its own,
    /// `pruning-<rand>.json` ([`Layout::new_sweep_marker`]); earlier releases raised
    /// `pruning.json`. A tag move that finds any waits before checking that its version survived
    /// (ARCHITECTURE.md).
    pub fn sweep_markers(&self, model: &ModelName) -> String {
        format!("{}{model}/pruning", self.prefix)
    }

    /// A new sweep marker for the model: `<prefix><Model>/pruning-<rand>.json`.
    pub fn new_sweep_marker(&self, model: &ModelName) -> String {
        format!("{}-{:016x}.json", self.sweep_markers(model), fastrand::u64(..))
    }

    /// `<prefix><Model>/versions/<hex>.loc.json`: where each chunk of a format 2 version is.
    pub fn locations_key(&self, model: &ModelName, version: &crate::reference::VersionId) -> String {
        format!("{}{}.loc.json", self.versions_prefix(model), version.hex())
    }

    /// `<prefix>_pieces/`: what every model of the prefix shares (`_` starts no model name).
    pub fn pieces_prefix(&self) -> String {
        format!("{}_pieces/", self.prefix)
    }

    /// `<prefix>_pieces/packs/`.
    pub fn packs_prefix(&self) -> String {
        format!("{}packs/", self.pieces_prefix())
    }

    /// `<prefix>_pieces/packs/<hh>/<id>.pack` for a pack id (64 hex digits).
    pub fn pack_key(&self, id: &str) -> String {
        format!("{}{}/{id}.pack", self.packs_prefix(), &id[..2.min(id.len())])
    }

    /// The pack id of a listed pack key.
    pub fn pack_of_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.packs_prefix())?;
        let (hh, name) = rest.split_once('/')?;
        let id = name.strip_suffix(".pack")?;
        (id.len() == 64 && id.starts_with(hh) && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }

    /// `<prefix>_pieces/files/<sha256>.json`: where the chunks of a file of that sha256 are.
    pub fn file_index_key(&self, sha: &str) -> String {
        format!("{}files/{sha}.json", self.pieces_prefix())
    }

    /// What the markers of pack sweeps start with: `<prefix>_pieces/pruning`.
    pub fn pack_sweep_markers(&self) -> String {
        format!("{}pruning", self.pieces_prefix())
    }

    /// A new marker of a pack sweep: `<prefix>_pieces/pruning-<rand>.json`.
    pub fn new_pack_sweep_marker(&self) -> String {
        format!("{}-{:016x}.json", self.pack_sweep_markers(), fastrand::u64(..))
    }

    /// Whether `key` is one of the objects this tool writes for `model`: `manifest.json`,
    /// `pruning.json`, `tags/<tag>.json`, `versions/<file>` and `archives/<file>`; not anything in
    /// a deeper directory (another prefix's models, files a person put there).
    pub fn is_model_object(&self, model: &ModelName, key: &str) -> bool {
        let Some(rest) = key.strip_prefix(&format!("{}{model}/", self.prefix)) else { return false };
        match rest.split_once('/') {
            None => {
                rest == "manifest.json"
                    || rest == "pruning.json"
                    || rest.strip_prefix("pruning-").is_some_and(|r| r.ends_with(".json"))
            }
            Some(("tags", name)) => name.ends_with(".json") && !name.contains('/'),
            Some(("versions", name)) => !name.contains('/') && (name.ends_with(".json") || name.ends_with(".sig")),
            Some(("archives", name)) => !name.contains('/') && !name.is_empty(),
            Some(_) => false,
        }
    }

    /// The model a listed key is the manifest of, if it is one.
    pub fn model_of_manifest_key(&self, key: &str) -> Option<ModelName> {
        let rest = key.strip_prefix(&self.prefix)?;
        let name = rest.strip_suffix("/manifest.json")?;
        ModelName::new(name).ok()
    }

    /// The model a listed key belongs to, if it is a model's manifest or one of its versions.
    pub fn model_of_key(&self, key: &str) -> Option<ModelName> {
        if let Some(m) = self.model_of_manifest_key(key) {
            return Some(m);
        }
        let rest = key.strip_prefix(&self.prefix)?;
        let (name, version) = rest.split_once("/versions/")?;
        (version.ends_with(".json") && !version.contains('/')).then(|| ModelName::new(name).ok())?
    }

    /// The prefix every model key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: 1,
            model: ModelName::new("Alpha").unwrap(),
            archive_key: "p/Alpha/archives/x.tar".into(),
            archive_sha256: Some(Sha256Hex::parse(&"a".repeat(64)).unwrap()),
            archive_size: 4096,
            compression: Compression::None,
            files: vec![FileEntry {
                path: "w.bin".into(),
                size: 10,
                sha256: Sha256Hex::parse(&"b".repeat(64)).unwrap(),
                mode: 0o644,
                offset: Some(512),
                chunks: vec![],
            }],
            dirs: vec![DirEntry { path: "sub".into(), mode: 0o755 }],
            total_size: 10,
            created_at: "2026-01-01T00:00:00Z".into(),
            tool_version: "0.1.0".into(),
            upload_id: String::new(),
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let m = sample();
        let model = m.model.clone();
        assert_eq!(Manifest::parse(&m.to_bytes(), &model, "k").unwrap(), m);
    }

    #[test]
    fn refuses_lies_and_escapes() {
        let model = ModelName::new("Alpha").unwrap();
        let mut m = sample();
        m.files[0].path = "../../etc/passwd".into();
        assert_eq!(Manifest::parse(&m.to_bytes(), &model, "k").unwrap_err().exit_code(), 6);
        let mut m = sample();
        m.total_size = 11;
        assert!(Manifest::parse(&m.to_bytes(), &model, "k").is_err());
        let mut m = sample();
        m.files[0].offset = Some(4090);
        assert!(Manifest::parse(&m.to_bytes(), &model, "k").is_err());
        let m = sample();
        assert!(Manifest::parse(&m.to_bytes(), &ModelName::new("Beta").unwrap(), "k").is_err());
        assert!(Manifest::parse(b"{not json", &model, "k").is_err());
        let newer = String::from_utf8(sample().to_bytes()).unwrap().replace("\"format\": 1", "\"format\": 9");
        assert!(Manifest::parse(newer.as_bytes(), &model, "k").unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn the_archive_must_be_one_of_the_models_own() {
        let layout = Layout::new("p/");
        assert!(sample().confined(&layout, "k").is_ok());
        for key in [
            "p/Other/archives/x.tar",
            "zz-other-team/x.tar",
            "p/Alpha/archives/../../Other/archives/x.tar",
            "p/Alpha/archives/",
            "p/Alpha/archives/sub/x.tar",
            "p/Alpha/manifest.json",
            "../../etc/passwd",
            "/etc/passwd",
            "p/NotAlpha/archives/x.tar",
            "",
        ] {
            let mut m = sample();
            m.archive_key = key.into();
            let err = m.confined(&layout, "k").unwrap_err();
            assert_eq!(err.exit_code(), 6, "{key}");
        }
        // Copied to another prefix (or bucket): the archive is read where the model is now.
        let copied = sample().confined(&Layout::new("elsewhere/"), "k").unwrap();
        assert_eq!(Layout::new("elsewhere/").archive_key(&copied), "elsewhere/Alpha/archives/x.tar");
        assert_eq!(Layout::new("").archive_key(&copied), "Alpha/archives/x.tar");
    }

    #[test]
    fn a_path_cannot_be_a_file_and_a_directory() {
        let mut m = sample();
        m.files.push(FileEntry { path: "w.bin/a".into(), ..m.files[0].clone() });
        m.files[1].offset = Some(1024);
        m.total_size = 20;
        assert!(m.validate().unwrap_err().contains("as a file and as a directory"));
    }

    #[test]
    fn layout_keys() {
        let l = Layout::new("models/");
        let m = ModelName::new("Alpha").unwrap();
        assert_eq!(l.manifest_key(&m), "models/Alpha/manifest.json");
        assert_eq!(l.model_of_manifest_key("models/Alpha/manifest.json"), Some(m.clone()));
        assert_eq!(l.model_of_manifest_key("models/a/b/manifest.json"), None);
        let k = l.new_archive_key(&m, SystemTime::UNIX_EPOCH, Compression::Zstd);
        assert!(k.starts_with("models/Alpha/archives/19700101T000000Z-") && k.ends_with(".tar.zst"), "{k}");
        for ours in [
            "manifest.json",
            "pruning.json",
            "pruning-0123456789abcdef.json",
            "versions/ab.loc.json",
            "tags/prod.json",
            "versions/ab.json",
            "versions/ab.0123.sig",
            "archives/x.tar",
        ] {
            assert!(l.is_model_object(&m, &format!("models/Alpha/{ours}")), "{ours}");
        }
        for theirs in [
            "docs/README.md",
            "X/manifest.json",
            "X/tags/latest.json",
            "tags/a/b.json",
            "versions/x/y.json",
            "notes.txt",
        ] {
            assert!(!l.is_model_object(&m, &format!("models/Alpha/{theirs}")), "{theirs}");
        }
        assert!(!l.is_model_object(&m, "models/AlphaB/manifest.json"));
        let id = "ab".repeat(32);
        assert_eq!(l.pack_key(&id), format!("models/_pieces/packs/ab/{id}.pack"));
        assert_eq!(l.pack_of_key(&l.pack_key(&id)), Some(id.as_str()));
        assert_eq!(l.pack_of_key(&format!("models/_pieces/packs/cd/{id}.pack")), None);
        assert_eq!(l.pack_of_key("models/_pieces/packs/ab/x.pack"), None);
        assert!(l.new_sweep_marker(&m).starts_with(&l.sweep_markers(&m)));
        assert!(l.is_model_object(&m, &l.new_sweep_marker(&m)));
    }
}
