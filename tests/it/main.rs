//! One integration test binary: CLI behaviour in sealed environments, the provider conformance
//! suite, hostile archives, property tests, and the end-to-end tests against real servers.
//! Provider modules are built with their cargo feature, so a one-provider build tests itself.

#[cfg(feature = "azure")]
mod azure;
mod cli;
mod common;
mod compat;
mod conformance;
mod copy;
mod examples;
#[cfg(feature = "s3")]
mod faults;
#[cfg(feature = "gcs")]
mod gcs;
mod hardening;
mod hostile;
mod in_use;
mod incremental;
mod mirror;
mod review2;
mod review2_ux;
mod roundtrip;
#[cfg(feature = "s3")]
mod s3;
mod signing;
mod tuning;
mod user_paths;
mod versions;
