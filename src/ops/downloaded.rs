//! What a download reports: shared by the download of a version and the fallback command.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::manifest::Manifest;
use crate::names::{ModelName, Sha256Hex};
use crate::provider::dataplane::Traffic;

/// What `download_model` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownloadStatus {
    /// Bytes were transferred and installed.
    Downloaded,
    /// The cached version was already current.
    Cached,
    /// Missing from the bucket; made by the fallback command and installed.
    Fallback,
    /// Made by the fallback command, installed, and uploaded for the next machine.
    Published,
}

/// The result of one model download.
#[derive(Clone, Debug, Serialize)]
pub struct Downloaded {
    pub model: ModelName,
    /// What the lines about this download are labelled with: `Alpha` (latest), `Alpha:prod`, or
    /// `Alpha@<short version id>`.
    pub reference: String,
    /// The ready, verified version directory.
    pub path: PathBuf,
    pub status: DownloadStatus,
    /// The sha256 of the version's archive (not its version id: see `version`).
    pub sha256: Sha256Hex,
    /// Sum of file sizes.
    pub size: u64,
    pub files: usize,
    /// Bytes fetched from the bucket by this call.
    pub transferred: u64,
    pub seconds: f64,
    /// The version's id (`sha256:…`), when known.
    pub version: Option<String>,
    /// The tag it was found through.
    pub tag: Option<String>,
    /// The OMS signature installed beside the version (`<dir>.sig`), when there is one.
    pub signature: Option<PathBuf>,
    /// The trusted key that signed it, when signatures were checked.
    pub signed_by: Option<String>,
    /// Requests and bytes of this download, from the mirror and from the bucket.
    pub traffic: Option<Traffic>,
    /// The mirror served bytes that failed verification, so the version was read again from the
    /// bucket (and verified).
    pub reread_from_bucket: bool,
    /// The range size and ranges in flight chosen, and why (when bytes were fetched).
    pub tuning: Option<crate::transfer::tuning::Tuning>,
    /// The bucket format of the version (1: one archive, 2: chunks in packs).
    pub format: u32,
    /// Format 2: bytes of the version this machine had already (whole files and chunks of
    /// installed versions), which were not fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_bytes: Option<u64>,
    /// Format 2: ranged reads of packs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<usize>,
}

impl Downloaded {
    /// The whole version `manifest` describes, at `path`.
    pub(crate) fn whole(
        path: PathBuf,
        status: DownloadStatus,
        manifest: &Manifest,
        transferred: u64,
        started: Instant,
    ) -> Self {
        Self {
            model: manifest.model.clone(),
            reference: manifest.model.to_string(),
            path,
            status,
            sha256: manifest.content_digest(),
            size: manifest.total_size,
            files: manifest.files.len(),
            transferred,
            seconds: started.elapsed().as_secs_f64(),
            version: None,
            tag: None,
            signature: None,
            signed_by: None,
            traffic: None,
            reread_from_bucket: false,
            tuning: None,
            format: manifest.format,
            local_bytes: None,
            requests: None,
        }
    }
}

/// How to download.
#[derive(Clone, Debug, Default)]
pub struct DownloadOptions {
    /// Upload what the fallback command made, so the next machine finds it in the bucket.
    pub publish: bool,
    /// Fetch and verify again even when the version is cached, replacing the cached copy.
    pub force: bool,
    /// No request to the bucket: a pinned version from the cache, or a tag as this machine last
    /// resolved it (for nodes that restart during a storage outage).
    pub offline: bool,
}
