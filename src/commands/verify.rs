//! `verify REF...`: re-hash installed versions against their manifests. Needs no bucket access.

use super::{Batch, Context, ModelError};
use crate::cache::{Cache, VerifyReport};
use crate::error::{Error, Result};
use crate::reference::Reference;

/// Verifies each model in the cache; a model that cannot be checked is an error entry.
pub async fn run(ctx: &Context, models: &[String]) -> Result<Batch<VerifyReport>> {
    let names = models.iter().map(|m| Reference::parse(m)).collect::<Result<Vec<_>>>()?;
    // The bucket is not needed, but the config's trusted keys are, when there is a config.
    let config = match ctx.resolve() {
        Ok(resolved) => Some(resolved.config),
        Err(Error::NotConfigured { .. }) => None,
        Err(e) => return Err(e),
    };
    let trust = std::sync::Arc::new(ctx.trust_for(config.as_ref())?);
    let cache = Cache::new(&ctx.cache_root);
    let mut batch = Batch { models: Vec::new(), errors: Vec::new() };
    for model in names {
        let c = cache.clone();
        let m = model.clone();
        let result = tokio::task::spawn_blocking(move || c.verify(&m))
            .await
            .map_err(|e| Error::other(format!("verify task failed: {e}"), None))?;
        match result {
            Ok(mut report) => {
                if trust.checks() {
                    check_signature(&cache, &trust, &mut report);
                }
                batch.models.push(report);
            }
            Err(e) => batch.errors.push(ModelError::new(&model.to_string(), &e)),
        }
    }
    Ok(batch)
}

/// Checks the signature installed beside the verified version against the trusted keys.
fn check_signature(cache: &Cache, trust: &crate::signing::Trust, report: &mut VerifyReport) {
    let manifest = cache.read_manifest_copy(&report.path, &report.model);
    let signature = std::fs::read(cache.signature_path(&report.path)).ok();
    let version = cache.version_of(&report.path);
    let outcome = match &manifest {
        Some(m) => {
            crate::ops::signatures::check_installed(trust, &report.model, version.as_ref(), m, signature.as_deref())
        }
        None => Err("the manifest it was installed from is missing".into()),
    };
    match outcome {
        Ok(key) => report.signed_by = Some(key),
        Err(problem) => {
            report.ok &= !trust.require;
            report.signature_problem = Some(problem);
        }
    }
}
