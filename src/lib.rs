//! `crowecode_cloud`: keep ML model directories in one S3, GCS or Azure bucket, and make them
//! ready on every machine once, fast and verified.
//!
//! ```no_run
//! # async fn run() -> Result<(), crowecode_cloud::Error> {
//! let manager = crowecode_cloud::CloudManager::from_env().await?;
//! let path = manager.ensure_model("Alpha").await?;
//! println!("model ready at {}", path.display());
//! # Ok(()) }
//! ```
//!
//! Layers, top to bottom (nothing calls upward): [`cli`] → [`commands`] → [`CloudManager`] → [`ops`] →
//! [`transfer`] → [`archive`] / [`cache`] → [`provider`] → [`config`]. See ARCHITECTURE.md.

pub mod archive;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod manager;
pub mod manifest;
pub mod names;
pub mod ops;
pub mod pack;
pub mod progress;
pub mod provider;
pub mod redact;
pub mod reference;
pub mod select;
pub mod signing;
pub mod transfer;

pub use error::{Error, Result};
pub use manager::{CloudManager, Downloaded, UploadOptions, Uploaded};
pub use names::{ModelName, Sha256Hex};
