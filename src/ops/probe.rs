//! Whether the store honours conditional writes, which tag moves depend on: probed once per
//! process, since S3 compatibles (and emulators) differ.

use bytes::Bytes;

use super::Session;
use crate::error::{Error, Result};
use crate::provider::{ProviderErrorKind, PutMode};

pub(crate) const UNSAFE_HINT: &str = "this storage does not honour conditional writes (rclone `serve s3` does not), so two moves could silently overwrite each other; use a store that does (S3, GCS, Azure, MinIO), or set CROWECODE_UNSAFE_TAG_MOVES=1 to accept last-writer-wins";

/// Whether the storage honours create-only writes: checked once per process with a probe object
/// (S3 compatibles differ, and emulators too). `CROWECODE_UNSAFE_TAG_MOVES=1` skips the check.
pub(crate) async fn require_conditional_writes(s: &Session) -> Result<()> {
    if std::env::var("CROWECODE_UNSAFE_TAG_MOVES").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    match conditional_writes(s).await? {
        true => Ok(()),
        false => Err(Error::Conflict {
            message: format!(
                "{} ignores conditional writes, so tags cannot be moved safely there",
                s.config.location()
            ),
            hint: Some(UNSAFE_HINT.into()),
        }),
    }
}

/// Probes whether a create-only write of an existing object fails, as it must for tags.
pub(crate) async fn conditional_writes(s: &Session) -> Result<bool> {
    // The local provider implements them itself, under its bucket lock (and a probe's cleanup of
    // empty directories could race another process's write there).
    if s.config.provider == crate::config::ProviderKind::Local {
        return Ok(true);
    }
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(known) = KNOWN.get() {
        return Ok(*known);
    }
    // Model names start with a letter or digit: this key is never taken for a model.
    let key = format!("{}_crowecode-probe-{:016x}", s.layout.prefix(), fastrand::u64(..));
    let put = |mode| s.provider.put(&key, Bytes::from_static(b"probe\n"), mode);
    put(PutMode::Create).await.map_err(|e| Error::from_provider(format!("writing {key}"), e))?;
    let honoured = match put(PutMode::Create).await {
        Ok(_) => false,
        Err(e) if e.kind == ProviderErrorKind::Precondition => true,
        Err(e) => {
            let _ = s.provider.delete(&key).await;
            return Err(Error::from_provider(format!("writing {key}"), e));
        }
    };
    let _ = s.provider.delete(&key).await;
    let _ = KNOWN.set(honoured);
    Ok(honoured)
}
