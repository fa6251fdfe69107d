//! `list`: every model in the bucket with its manifest's summary and this machine's cached version.

use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde::Serialize;

use std::collections::BTreeMap;

use super::{Session, versions};
use crate::archive::Compression;
use crate::error::{Error, Result};
use crate::names::{ModelName, Sha256Hex};
use crate::reference::{Reference, TagName, VersionId};

/// One model in the bucket.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteModel {
    pub model: ModelName,
    pub size: Option<u64>,
    pub files: Option<usize>,
    /// The archive's sha256 (format 1), or the digest of the files' digests (format 2).
    pub sha256: Option<Sha256Hex>,
    pub uploaded_at: Option<String>,
    pub compression: Option<Compression>,
    /// The bucket format of the `latest` version (1: one archive, 2: chunks in packs).
    pub format: Option<u32>,
    /// The cached version's short version id, when this machine has one.
    pub cached: Option<String>,
    /// Whether the cached version is the bucket's current one.
    pub cached_current: bool,
    /// Why the manifest could not be read, if it could not.
    pub error: Option<String>,
    /// The version `latest` points at.
    pub version: Option<VersionId>,
    /// Every tag and the version it points at.
    pub tags: BTreeMap<TagName, VersionId>,
    /// Who signed the `latest` version.
    pub signatures: Option<super::signatures::Signers>,
}

impl RemoteModel {
    /// A model whose manifest could not be read: listed with the reason, nothing else known.
    fn unreadable(model: ModelName, cached: Option<String>, error: String) -> Self {
        Self {
            model,
            size: None,
            files: None,
            sha256: None,
            uploaded_at: None,
            compression: None,
            format: None,
            cached,
            cached_current: false,
            error: Some(error),
            version: None,
            tags: BTreeMap::new(),
            signatures: None,
        }
    }
}

/// Every model in the bucket, with its manifest's summary and this machine's cached version.
pub(crate) async fn run(s: &Session) -> Result<Vec<RemoteModel>> {
    let objects = s
        .provider
        .list(s.layout.prefix())
        .await
        .map_err(|e| Error::from_provider(format!("listing {}", s.config.location()), e))?;
    let mut models: Vec<ModelName> = objects.iter().filter_map(|o| s.layout.model_of_key(&o.key)).collect();
    models.dedup();
    stream::iter(models)
        .map(|model| async move {
            let cached_path = s.cache.current(&model).ok().flatten();
            // The short version id of the cached version (its directory's name says the same,
            // except for a directory of an earlier release or a fallback's, named by archive).
            let cached_id = cached_path.as_ref().and_then(|p| s.cache.version_of(p));
            let cached = cached_id.as_ref().map(|v| v.short().to_string()).or_else(|| {
                let name = cached_path.as_ref()?.file_name()?.to_str()?;
                name.split_once('@').map(|(_, s)| s.to_string())
            });
            let tags: BTreeMap<TagName, VersionId> = versions::list_tags(s, &model)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.tag, t.version))
                .collect();
            match versions::resolve(s, &Reference::parse(model.as_str())?)
                .await
                .map(|f| f.map(|f| (f.manifest, f.version)))
            {
                Ok(Some((m, version))) => Ok(RemoteModel {
                    signatures: super::signatures::signers(s, &model, &version, &m).await.ok(),
                    cached_current: cached_id.as_ref() == Some(&version),
                    version: Some(version),
                    tags,
                    model,
                    size: Some(m.total_size),
                    files: Some(m.files.len()),
                    sha256: Some(m.content_digest()),
                    format: Some(m.format),
                    uploaded_at: Some(m.created_at),
                    compression: Some(m.compression),
                    cached,
                    error: None,
                }),
                Ok(None) => Ok(RemoteModel {
                    tags,
                    ..RemoteModel::unreadable(
                        model,
                        cached,
                        "no latest version (only candidates uploaded with --no-latest)".into(),
                    )
                }),
                Err(e @ (Error::Integrity { .. } | Error::Other { .. })) => {
                    Ok(RemoteModel::unreadable(model, cached, e.to_string()))
                }
                Err(e) => Err(e),
            }
        })
        .buffered(8)
        .try_collect()
        .await
}
