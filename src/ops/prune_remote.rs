//! `prune --remote`: archives in the bucket that no manifest references (all but the newest few
//! per model, none younger than a minimum age) and unfinished multipart uploads; a list unless
//! applied.

use std::time::SystemTime;

use serde::Serialize;

use super::Session;
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::progress::Event;

/// An unreferenced archive that `prune --remote` deleted (or would delete).
#[derive(Clone, Debug, Serialize)]
pub struct RemotePruned {
    pub model: ModelName,
    pub key: String,
    pub bytes: u64,
}

/// What `prune --remote` found (and, when applied, removed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemotePruneOutcome {
    /// Unreferenced archives.
    pub archives: Vec<RemotePruned>,
    /// Keys of unfinished multipart uploads older than the minimum age.
    pub unfinished_uploads: Vec<String>,
    /// Models skipped because their manifest could not be read.
    pub skipped: Vec<ModelName>,
}

/// Old archives in the bucket that no manifest references: all but the `keep` newest of
/// each model, and none younger than `min_age` (an upload in progress has an archive and no
/// manifest yet; a download that began on the previous version is still reading it). Also
/// unfinished multipart uploads under the prefix older than `min_age` (a killed upload's parts,
/// billed until aborted). Deletes and aborts them when `apply`. A model without a manifest is
/// left alone; one whose manifest cannot be read is skipped with a warning, the others pruned.
/// `models` empty means all.
pub(crate) async fn run(
    s: &Session,
    models: &[ModelName],
    keep: usize,
    min_age: std::time::Duration,
    apply: bool,
) -> Result<RemotePruneOutcome> {
    let names: Vec<ModelName> = if models.is_empty() {
        let objects = s
            .provider
            .list(s.layout.prefix())
            .await
            .map_err(|e| Error::from_provider(format!("listing {}", s.config.location()), e))?;
        objects.iter().filter_map(|o| s.layout.model_of_manifest_key(&o.key)).collect()
    } else {
        models.to_vec()
    };
    let cutoff = SystemTime::now().checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = RemotePruneOutcome::default();
    for model in names {
        let manifest = match s.fetch_manifest(&model).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e @ (Error::Integrity { .. } | Error::Other { .. })) if models.is_empty() => {
                s.reporter
                    .report(Event::Warning { message: format!("{model}: skipped, its manifest cannot be read ({e})") });
                out.skipped.push(model);
                continue;
            }
            Err(e) => return Err(e),
        };
        let prefix = s.layout.archives_prefix(&model);
        let mut archives =
            s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
        let current = s.layout.archive_key(&manifest);
        archives.retain(|o| o.key != current);
        // Keys begin with a UTC stamp: newest last in key order.
        archives.sort_by(|a, b| b.key.cmp(&a.key));
        for o in archives.into_iter().skip(keep) {
            if o.last_modified.is_none_or(|t| t > cutoff) {
                continue;
            }
            if apply {
                s.provider.delete(&o.key).await.map_err(|e| Error::from_provider(format!("deleting {}", o.key), e))?;
            }
            out.archives.push(RemotePruned { model: model.clone(), key: o.key, bytes: o.size });
        }
    }
    let pending = s
        .provider
        .list_pending_uploads(s.layout.prefix())
        .await
        .map_err(|e| Error::from_provider(format!("listing unfinished uploads in {}", s.config.location()), e))?;
    for p in pending {
        let wanted = models.is_empty() || models.iter().any(|m| p.key.starts_with(&s.layout.archives_prefix(m)));
        // An upload without a start time is treated as young: it may be running now.
        if !wanted || p.initiated.is_none_or(|t| t > cutoff) {
            continue;
        }
        if apply {
            s.provider
                .abort_multipart(&p.key, &p.upload_id)
                .await
                .map_err(|e| Error::from_provider(format!("aborting the upload of {}", p.key), e))?;
        }
        out.unfinished_uploads.push(p.key);
    }
    Ok(out)
}
