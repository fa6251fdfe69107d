//! `resolve`, `tag`, `untag`, `rollback`, `history`, `delete`: naming versions in the bucket.

use super::{Batch, Context, ModelError};
use crate::error::{Error, Result};
use crate::manager::{Deleted, History, Moved, Resolution, Signed};
use crate::names::ModelName;
use crate::reference::{Reference, TagName};

/// Resolves each reference; one that names nothing is that reference's error (exit 5).
pub async fn resolve(ctx: &Context, references: &[String]) -> Result<Batch<Resolution>> {
    let (valid, mut batch) = Batch::valid_references(references);
    if valid.is_empty() {
        return Ok(batch);
    }
    let manager = ctx.manager().await?;
    for r in &valid {
        match manager.resolve(r).await {
            Ok(res) => batch.models.push(res),
            Err(e) => batch.errors.push(ModelError::new(r, &manager.explain(e).await)),
        }
    }
    Ok(batch)
}

/// Points `tags` at the version `reference` names; returns the model's name and the moves.
pub async fn tag(
    ctx: &Context,
    reference: &str,
    tags: &[String],
    if_current: Option<&str>,
) -> Result<(String, Vec<Moved>)> {
    let model = Reference::parse(reference)?.model;
    let tags = tags.iter().map(|t| TagName::new(t)).collect::<Result<Vec<_>>>()?;
    let manager = ctx.manager().await?;
    match manager.tag(reference, &tags, if_current).await {
        Ok(moved) => Ok((model.to_string(), moved)),
        Err(e) => Err(manager.explain(e).await),
    }
}

/// Adds signatures to the version `reference` names.
pub async fn sign(ctx: &Context, reference: &str) -> Result<Signed> {
    Reference::parse(reference)?;
    let manager = ctx.manager().await?;
    match manager.sign(reference).await {
        Ok(signed) => Ok(signed),
        Err(e) => Err(manager.explain(e).await),
    }
}

/// Removes a tag; `false` when there was none.
pub async fn untag(ctx: &Context, reference: &str) -> Result<bool> {
    Reference::parse(reference)?;
    let manager = ctx.manager().await?;
    match manager.untag(reference).await {
        Ok(removed) => Ok(removed),
        Err(e) => Err(manager.explain(e).await),
    }
}

/// Moves a tag back one move.
pub async fn rollback(ctx: &Context, reference: &str) -> Result<(String, Moved)> {
    let model = Reference::parse(reference)?.model;
    let manager = ctx.manager().await?;
    match manager.rollback(reference).await {
        Ok(moved) => Ok((model.to_string(), moved)),
        Err(e) => Err(manager.explain(e).await),
    }
}

/// A model's versions and a tag's moves.
pub async fn history(ctx: &Context, reference: &str) -> Result<History> {
    Reference::parse(reference)?;
    let manager = ctx.manager().await?;
    match manager.history(reference).await {
        Ok(h) => Ok(h),
        Err(e) => Err(manager.explain(e).await),
    }
}

/// Deletes a version, or with `all` (and `yes`) a whole model.
pub async fn delete(ctx: &Context, reference: &str, force: bool, all: bool, yes: bool) -> Result<Deleted> {
    if all {
        let model = ModelName::new(reference).map_err(|_| {
            Error::usage(
                format!("`delete --all` takes a model name, not {reference:?}"),
                "crowecode-cloud delete MODEL --all --yes",
            )
        })?;
        if !yes {
            return Err(Error::usage(
                format!("`delete {model} --all` removes every version, tag and archive of {model} from the bucket"),
                "add --yes to really do it",
            ));
        }
        let manager = ctx.manager().await?;
        return manager.delete_model(&model).await;
    }
    Reference::parse(reference)?;
    let manager = ctx.manager().await?;
    match manager.delete_version(reference, force).await {
        Ok(d) => Ok(d),
        Err(e) => Err(manager.explain(e).await),
    }
}
