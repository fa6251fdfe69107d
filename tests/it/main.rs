//! One integration test binary: CLI behaviour in sealed environments, the provider conformance
//! suite, hostile archives, property tests, and the S3 end-to-end tests against real servers.

#[cfg(feature = "azure")]
mod azure;
mod cli;
mod common;
mod conformance;
mod faults;
mod gcs;
mod hostile;
mod roundtrip;
mod s3;
