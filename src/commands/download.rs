//! `download MODEL...`: make models ready in the cache, one after the other.

use super::{Batch, Context, ModelError};
use crate::error::Result;
use crate::manager::{DownloadOptions, Downloaded};

/// Downloads each model; a failure of one does not stop the others. Names are all validated
/// before any I/O.
/// With `only`, just the matching files of each model (see [`crate::select`]).
/// With `publish`, a model made by the fallback command is also uploaded; with `force`, a cached
/// version is fetched and verified again.
pub async fn run(
    ctx: &Context,
    models: &[String],
    only: &[String],
    opts: &DownloadOptions,
) -> Result<Batch<Downloaded>> {
    // An invalid name is that model's failure (exit 2); the others go ahead. All names are
    // checked before any I/O, and when none is valid nothing is set up at all.
    let (valid, mut batch) = Batch::valid_references(models);
    if valid.is_empty() {
        return Ok(batch);
    }
    let manager = ctx.manager().await?;
    for m in &valid {
        let result =
            if only.is_empty() { manager.download(m, opts).await } else { manager.download_selected(m, only).await };
        match result {
            Ok(d) => batch.models.push(d),
            Err(e) => batch.errors.push(ModelError::new(m, &manager.explain(e).await)),
        }
    }
    Ok(batch)
}
