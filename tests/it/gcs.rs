//! The CLI end to end on fake-gcs-server (started by scripts/emulators.sh). It checks no
//! credentials, so authentication is covered only by the key-file checks done before any request.

use std::path::Path;

use predicates::prelude::*;

use crate::common::{Sandbox, make_model, require_env, tree, write_files};
use crate::conformance::fastrand_u32;

fn gcs(sb: &Sandbox, endpoint: &str, bucket: &str) -> assert_cmd::Command {
    let mut c = sb.cmd();
    c.args([
        "--provider",
        "gcs",
        "--bucket",
        bucket,
        "--endpoint",
        endpoint,
        "--prefix",
        "models/",
        "--project",
        "test-project",
    ]);
    c
}

#[test]
fn fake_gcs_setup_upload_list_download_round_trip() {
    let endpoint = require_env("CROWECODE_TEST_GCS_ENDPOINT");
    let bucket = format!("it-gcs-{:08x}", fastrand_u32());
    let sb = Sandbox::new();
    let alpha = make_model(&sb.src(), "Alpha", 31);
    // Big enough for several resumable chunks of 256 KiB.
    write_files(&alpha, &[("extra.bin", &crate::common::noise(900_000, 5))]);
    let beta = make_model(&sb.src(), "Beta", 32);
    gcs(&sb, &endpoint, &bucket).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = gcs(&sb, &endpoint, &bucket)
        .args(["--json", "upload", "Alpha", "--format", "1", "--part-size", "256K", "--models-dir"])
        .arg(sb.src())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["models"][0]["parts"].as_u64().unwrap() >= 4, "{v}");
    gcs(&sb, &endpoint, &bucket)
        .args(["upload", "Beta", "--compression", "gzip", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success();
    gcs(&sb, &endpoint, &bucket)
        .args(["upload", "Beta", "--compression", "gzip", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success()
        .stderr(predicate::str::contains("up to date"));
    let out = gcs(&sb, &endpoint, &bucket).args(["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 2, "{v}");

    let fresh = Sandbox::new();
    let out =
        gcs(&fresh, &endpoint, &bucket).args(["download", "Alpha", "Beta", "--part-size", "300K"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paths: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(tree(Path::new(&paths[0])), tree(&alpha));
    assert_eq!(tree(Path::new(&paths[1])), tree(&beta));
    gcs(&fresh, &endpoint, &bucket).args(["download", "Gamma"]).assert().code(5);
    let out = gcs(&fresh, &endpoint, &bucket).arg("status").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("anonymous (emulator endpoint)"));
}

#[test]
fn fake_gcs_missing_bucket_exits_3() {
    let endpoint = require_env("CROWECODE_TEST_GCS_ENDPOINT");
    let sb = Sandbox::new();
    gcs(&sb, &endpoint, "no-such-gcs-bucket").args(["download", "Alpha"]).assert().code(3);
}

#[test]
fn a_malformed_service_account_file_exits_4_before_any_request() {
    let mut sb = Sandbox::new();
    let key = sb.path().join("key.json");
    std::fs::write(&key, b"{ this is not a key").unwrap();
    sb.env("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap());
    // No endpoint: the real credential chain, which must stop at the broken file.
    let out = sb.cmd().args(["--provider", "gcs", "--bucket", "some-bucket", "download", "Alpha"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS") && err.contains("hint:"), "{err}");
}
