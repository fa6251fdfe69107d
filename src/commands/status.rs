//! `status`: configuration source, provider, bucket, credentials, reachability, cache.

use super::Context;
use crate::error::Result;
use crate::manager::StatusReport;

/// Builds the report; fails only when there is no usable configuration.
pub async fn run(ctx: &Context) -> Result<StatusReport> {
    Ok(ctx.manager().await?.status().await)
}
