//! One module per command, each a thin wrapper over [`CloudManager`](crate::CloudManager)
//! operations. Commands receive a resolved [`Context`] (no clap types) and return typed outcomes
//! (which the CLI prints as text or JSON).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::cache::Cache;
use crate::config::{self, FileLocation, Overrides};
use crate::error::{Error, Result};
use crate::manager::CloudManager;
use crate::progress::Reporter;
use crate::provider::RetryPolicy;
use crate::transfer::TransferOptions;

pub mod copy;
pub mod download;
pub mod list;
pub mod prune;
pub mod run;
pub mod setup;
pub mod status;
pub mod upload;
pub mod verify;
pub mod versions;

/// Reads an environment variable (injected, so tests and embedders control the environment).
pub type EnvReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything a command needs, resolved from flags, environment and defaults.
pub struct Context {
    /// Reads an environment variable.
    pub env: EnvReader,
    /// Where the config file is.
    pub config_file: FileLocation,
    /// Config keys given on the command line.
    pub overrides: Overrides,
    /// Cache root.
    pub cache_root: PathBuf,
    pub transfer: TransferOptions,
    pub retry: RetryPolicy,
    pub reporter: Arc<dyn Reporter>,
    /// Signature flags (`--require-signature`, `--sign-key`).
    pub trust: crate::signing::TrustSources,
}

impl Context {
    /// Resolves the configuration and builds a manager.
    pub async fn manager(&self) -> Result<CloudManager> {
        self.manager_for(self.resolve()?).await
    }

    /// Resolves the configuration, reporting its warnings.
    pub fn resolve(&self) -> Result<config::Resolved> {
        let env = self.env.clone();
        let resolved = config::resolve(&move |k| env(k), &self.config_file, &self.overrides)?;
        for message in &resolved.warnings {
            self.reporter.report(crate::progress::Event::Warning { message: message.clone() });
        }
        Ok(resolved)
    }

    /// A manager over `resolved`.
    pub async fn manager_for(&self, resolved: config::Resolved) -> Result<CloudManager> {
        let trust = self.trust_for(Some(&resolved.config))?;
        Ok(CloudManager::new(resolved, self.cache(), self.transfer.clone(), self.retry.clone())
            .await?
            .with_reporter(self.reporter.clone())
            .with_trust(trust))
    }

    /// The signature policy: the config's (when there is one), the environment's and the flags'.
    pub fn trust_for(&self, config: Option<&config::CloudConfig>) -> Result<crate::signing::Trust> {
        let sources = crate::signing::TrustSources {
            config_keys: config.map(|c| c.trusted_keys.clone()).unwrap_or_default(),
            config_require: config.is_some_and(|c| c.require_signature),
            scope: config.map(|c| c.signing_scope()).unwrap_or_default(),
            ..self.trust.clone()
        };
        crate::signing::Trust::resolve(&sources, &*self.env)
    }

    /// The cache.
    pub fn cache(&self) -> Cache {
        Cache::new(&self.cache_root)
    }
}

/// A per-model failure inside a multi-model command.
#[derive(Debug, Serialize)]
pub struct ModelError {
    pub model: String,
    pub error: String,
    pub hint: Option<String>,
    pub exit_code: i32,
    /// For integrity failures: what the manifest promised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// For integrity failures: what was computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computed: Option<String>,
}

impl ModelError {
    /// Records `err` for `model`.
    pub fn new(model: &str, err: &Error) -> Self {
        let (expected, computed) = match err {
            Error::Integrity { expected, computed, .. } => (expected.clone(), computed.clone()),
            _ => (None, None),
        };
        Self {
            model: model.to_string(),
            error: err.to_string(),
            hint: err.hint(),
            exit_code: err.exit_code(),
            expected,
            computed,
        }
    }
}

/// Outcome of a command over several models: what worked and what did not.
#[derive(Debug, Serialize)]
pub struct Batch<T> {
    pub models: Vec<T>,
    pub errors: Vec<ModelError>,
}

impl<T> Batch<T> {
    /// The names of `models` that are valid, and a batch holding an error (exit 2) for each
    /// invalid one: one bad name is that model's failure, the others go ahead.
    pub fn valid_names(models: &[String]) -> (Vec<String>, Self) {
        Self::valid(models, |m| crate::names::ModelName::new(m).map(|_| ()))
    }

    /// [`Batch::valid_names`] for references (`Alpha`, `Alpha:prod`, `Alpha@sha256:…`).
    pub fn valid_references(models: &[String]) -> (Vec<String>, Self) {
        Self::valid(models, |m| crate::reference::Reference::parse(m).map(|_| ()))
    }

    fn valid(models: &[String], check: impl Fn(&str) -> Result<()>) -> (Vec<String>, Self) {
        let mut batch = Self { models: Vec::new(), errors: Vec::new() };
        let mut valid = Vec::new();
        for m in models {
            match check(m) {
                Ok(()) => valid.push(m.clone()),
                Err(e) => batch.errors.push(ModelError::new(m, &e)),
            }
        }
        (valid, batch)
    }

    /// The exit code: that of the first failure, or 0.
    pub fn exit_code(&self) -> i32 {
        self.errors.first().map_or(0, |e| e.exit_code)
    }
}
