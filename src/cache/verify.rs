//! `verify`: re-hash an installed version against the manifest it was installed from.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use super::Cache;
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::reference::{Reference, Target};

/// How an installed version compares with its manifest.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub model: ModelName,
    pub path: PathBuf,
    /// The version id the directory was installed as (`sha256:…`), when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether every file matches and nothing is missing or extra.
    pub ok: bool,
    pub files_checked: usize,
    /// In the manifest, not on disk.
    pub missing: Vec<String>,
    /// On disk with another size, sha256 or mode than the manifest says.
    pub changed: Vec<String>,
    /// On disk, not in the manifest.
    pub extra: Vec<String>,
    /// The trusted key whose signature (installed beside the version) covers it, when checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Why the signature does not pass, when checked (with `require_signature`, `ok` is false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_problem: Option<String>,
}

impl VerifyReport {
    /// Whether the files on disk differ from the manifest (missing, changed or extra).
    pub fn differs(&self) -> bool {
        !self.missing.is_empty() || !self.changed.is_empty() || !self.extra.is_empty()
    }
}

impl Cache {
    /// Re-hashes the installed version `r` names (the current one for a model name, what a tag
    /// last resolved to here, or a pinned version) against the manifest it was installed from.
    /// Blocking; reads every byte of the model.
    pub fn verify(&self, r: &Reference) -> Result<VerifyReport> {
        use std::collections::BTreeSet;
        use std::os::unix::fs::PermissionsExt as _;

        let model = &r.model;
        let path = match &r.target {
            Target::Tag(t) if t.is_latest() => self.current(model)?,
            Target::Tag(t) => self.get_ref(model, t).and_then(|id| self.find_version(model, &Target::Version(id))),
            target => self.find_version(model, target),
        };
        let Some(path) = path else {
            return Err(Error::ModelNotFound {
                model: r.to_string(),
                location: format!("the cache {}", self.root.display()),
            });
        };
        let manifest = self.read_manifest_copy(&path, model).ok_or_else(|| {
            Error::integrity(
                path.display().to_string(),
                "the manifest this version was installed from is missing or unreadable",
                None,
                None,
            )
        })?;
        let mut missing = Vec::new();
        let mut changed = Vec::new();
        for f in &manifest.files {
            let p = path.join(&f.path);
            match fs::symlink_metadata(&p) {
                Err(_) => missing.push(f.path.clone()),
                Ok(m)
                    if !m.is_file()
                        || m.len() != f.size
                        || !crate::archive::mode_matches(m.permissions().mode(), f.mode) =>
                {
                    changed.push(f.path.clone());
                }
                Ok(_) => match crate::archive::sha256_file(&p) {
                    Ok((sha, _)) if sha == f.sha256 => {}
                    Ok(_) => changed.push(f.path.clone()),
                    Err(e) => return Err(Error::io("cannot read", &p, e)),
                },
            }
        }
        let known: BTreeSet<&str> = manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(manifest.dirs.iter().map(|d| d.path.as_str()))
            .collect();
        let mut extra = Vec::new();
        for entry in walkdir::WalkDir::new(&path).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::other(format!("cannot walk {}: {e}", path.display()), None))?;
            let rel = entry.path().strip_prefix(&path).expect("under the version dir").to_string_lossy().into_owned();
            let parent_of_known = entry.file_type().is_dir() && known.iter().any(|k| k.starts_with(&format!("{rel}/")));
            if !known.contains(rel.as_str()) && !parent_of_known {
                extra.push(rel);
            }
        }
        let ok = missing.is_empty() && changed.is_empty() && extra.is_empty();
        Ok(VerifyReport {
            model: model.clone(),
            version: self.version_of(&path).map(|v| v.to_string()),
            path,
            ok,
            files_checked: manifest.files.len(),
            missing,
            changed,
            extra,
            signed_by: None,
            signature_problem: None,
        })
    }
}
