//! `list`: the models in the bucket (or, with `--local`, in the cache).

use serde::Serialize;

use super::Context;
use crate::cache::{Cache, CachedVersion};
use crate::error::Result;
use crate::manager::RemoteModel;

/// Models in the bucket.
#[derive(Debug, Serialize)]
pub struct Remote {
    pub location: String,
    pub models: Vec<RemoteModel>,
}

/// Versions in the cache.
#[derive(Debug, Serialize)]
pub struct Local {
    pub cache_dir: std::path::PathBuf,
    pub models: Vec<CachedVersion>,
}

/// Lists the bucket.
pub async fn remote(ctx: &Context) -> Result<Remote> {
    let manager = ctx.manager().await?;
    let models = match manager.list_cloud_models().await {
        Ok(m) => m,
        Err(e) => return Err(manager.explain(e).await),
    };
    Ok(Remote { location: manager.get_cloud_config().location(), models })
}

/// Lists the cache; needs no configuration.
pub fn local(ctx: &Context) -> Result<Local> {
    let cache = Cache::new(&ctx.cache_root);
    Ok(Local { cache_dir: ctx.cache_root.clone(), models: cache.list()? })
}
