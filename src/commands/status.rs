//! `status`: configuration source, provider, bucket, credentials, reachability, cache.

use super::Context;
use crate::error::{Error, Result};
use crate::manager::StatusReport;

/// Builds the report; fails only when there is no usable configuration. Credentials that cannot
/// even be set up (a key file that does not parse) are reported like an unreachable bucket: the
/// configuration and the cache are still shown.
pub async fn run(ctx: &Context) -> Result<StatusReport> {
    let resolved = ctx.resolve()?;
    let (config, source, warnings) = (resolved.config.clone(), resolved.source.clone(), resolved.warnings.clone());
    match ctx.manager_for(resolved).await {
        Ok(manager) => Ok(manager.status().await),
        Err(e @ Error::Access { .. }) => {
            Ok(StatusReport::without_provider(&config, &source, &warnings, &ctx.cache(), &e))
        }
        Err(e) => Err(e),
    }
}
