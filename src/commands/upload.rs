//! `upload MODEL...`: upload model directories.

use std::path::PathBuf;

use super::{Batch, Context, ModelError};
use crate::error::{Error, Result};
use crate::manager::{UploadOptions, Uploaded};

/// Where the model directories are.
#[derive(Clone, Debug)]
pub enum Source {
    /// `<dir>/<MODEL>` for each model.
    ModelsDir(PathBuf),
    /// This directory, for the single model named.
    Dir(PathBuf),
}

/// Uploads each model; a failure of one does not stop the others.
pub async fn run(ctx: &Context, models: &[String], source: &Source, opts: &UploadOptions) -> Result<Batch<Uploaded>> {
    if matches!(source, Source::Dir(_)) && models.len() != 1 {
        return Err(Error::usage(
            "--from takes exactly one model",
            "upload several models with --models-dir DIR instead",
        ));
    }
    // An invalid name is that model's failure (exit 2); the others go ahead. All names are
    // checked before any I/O, and when none is valid nothing is set up at all.
    // `Alpha:prod` uploads Alpha and moves prod too; a version (`@…`) names no upload.
    let (valid, mut batch) = Batch::valid_references(models);
    let mut uploads = Vec::new();
    for m in valid {
        let r = crate::reference::Reference::parse(&m)?;
        match r.tag() {
            Some(tag) => uploads.push((m, r.model.clone(), tag.clone())),
            None => batch.errors.push(ModelError::new(
                &m,
                &Error::usage(
                    format!("{m} names a version; upload creates one"),
                    "upload MODEL or MODEL:TAG; `crowecode-cloud tag` points tags at existing versions",
                ),
            )),
        }
    }
    if uploads.is_empty() {
        return Ok(batch);
    }
    let manager = ctx.manager().await?;
    for (m, model, tag) in &uploads {
        let dir = match source {
            Source::ModelsDir(d) => d.join(model.as_str()),
            Source::Dir(d) => d.clone(),
        };
        let mut opts = opts.clone();
        if !tag.is_latest() {
            opts.tags.insert(0, tag.clone());
        }
        match manager.upload_model(model.as_str(), &dir, &opts).await {
            Ok(u) => batch.models.push(u),
            Err(e) => batch.errors.push(ModelError::new(m, &manager.explain(e).await)),
        }
    }
    Ok(batch)
}
