//! `verify MODEL...`: re-hash installed models against their manifests. Needs no bucket access.

use super::{Batch, Context, ModelError};
use crate::cache::{Cache, VerifyReport};
use crate::error::{Error, Result};
use crate::names::ModelName;

/// Verifies each model in the cache; a model that cannot be checked is an error entry.
pub async fn run(ctx: &Context, models: &[String]) -> Result<Batch<VerifyReport>> {
    let names = models.iter().map(|m| ModelName::new(m)).collect::<Result<Vec<_>>>()?;
    let cache = Cache::new(&ctx.cache_root);
    let mut batch = Batch { models: Vec::new(), errors: Vec::new() };
    for model in names {
        let c = cache.clone();
        let m = model.clone();
        let result = tokio::task::spawn_blocking(move || c.verify(&m))
            .await
            .map_err(|e| Error::other(format!("verify task failed: {e}"), None))?;
        match result {
            Ok(report) => batch.models.push(report),
            Err(e) => batch.errors.push(ModelError::new(model.as_str(), &e)),
        }
    }
    Ok(batch)
}
