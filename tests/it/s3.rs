//! The CLI end to end on real S3 servers started by scripts/emulators.sh: moto (multipart,
//! conditional writes, IAM-enforced read-only keys) and rclone `serve s3` (SigV4 enforced,
//! ranged GETs answered with 200).

use std::path::Path;

use predicates::prelude::*;

use crate::common::{Sandbox, make_model, require_env, tree};
use crate::conformance::fastrand_u32;

/// A sandbox whose AWS credentials are `key`/`secret`.
fn sandbox(key: &str, secret: &str) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", key).env("AWS_SECRET_ACCESS_KEY", secret).env("AWS_REGION", "us-east-1");
    sb
}

fn moto() -> (Sandbox, String) {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    (sandbox("moto-key", "moto-secret"), endpoint)
}

/// The CLI pointed at `bucket` on `endpoint`.
fn s3(sb: &Sandbox, endpoint: &str, bucket: &str) -> assert_cmd::Command {
    let mut c = sb.cmd();
    c.args(["--provider", "s3", "--bucket", bucket, "--endpoint", endpoint, "--prefix", "models/"]);
    c
}

fn bucket(name: &str) -> String {
    format!("it-{name}-{:08x}", fastrand_u32())
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn moto_setup_upload_list_download_round_trip() {
    let (sb, endpoint) = moto();
    let b = bucket("e2e");
    let alpha = make_model(&sb.src(), "Alpha", 21);
    let beta = make_model(&sb.src(), "Beta", 22);
    s3(&sb, &endpoint, &b)
        .args(["setup", "--create-bucket"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("export CROWECODE_CLOUD_CONFIG_B64="));
    // The config file now carries bucket and endpoint.
    sb.cmd().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    sb.cmd().args(["upload", "Beta", "--compression", "zstd", "--models-dir"]).arg(sb.src()).assert().success();
    let out = sb.cmd().args(["list", "--json"]).output().unwrap();
    let listed: Vec<String> =
        json(&out)["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, ["Alpha", "Beta"]);

    // A fresh machine: new cache, configuration from the environment only.
    let b64 = String::from_utf8(s3(&sb, &endpoint, &b).args(["setup", "--no-write"]).output().unwrap().stdout).unwrap();
    let b64 = b64.trim().trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64='").trim_end_matches('\'').to_string();
    let mut fresh = sandbox("moto-key", "moto-secret");
    fresh.env("CROWECODE_CLOUD_CONFIG_B64", &b64);
    let out = fresh.cmd().args(["download", "Alpha", "Beta"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paths: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(tree(Path::new(&paths[0])), tree(&alpha));
    assert_eq!(tree(Path::new(&paths[1])), tree(&beta));
    fresh.cmd().args(["download", "Gamma"]).assert().code(5);
}

#[test]
fn moto_upload_of_more_than_100_parts_round_trips() {
    let (mut sb, endpoint) = moto();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let b = bucket("parts");
    let model = sb.src().join("Big");
    std::fs::create_dir_all(&model).unwrap();
    // 101 parts of 5 MiB and a bit: sparse, so the test machine writes little.
    let f = std::fs::File::create(model.join("weights.safetensors")).unwrap();
    f.set_len(101 * (5 << 20) + 12_345).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    s3(&sb, &endpoint, &b).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = s3(&sb, &endpoint, &b)
        .args(["--json", "upload", "Big", "--part-size", "5MiB", "--concurrency", "8", "--from"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let up = &json(&out)["models"][0];
    let size = up["archive_size"].as_u64().unwrap();
    let parts = up["parts"].as_u64().unwrap();
    assert!(parts > 100, "{parts} parts");
    assert_eq!(parts, size.div_ceil(5 << 20));
    let out = s3(&sb, &endpoint, &b).args(["download", "Big", "--part-size", "8MiB"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(Path::new(String::from_utf8(out.stdout).unwrap().trim())), tree(&model));
}

#[test]
fn moto_list_finds_models_past_a_thousand_keys() {
    let (sb, endpoint) = moto();
    let b = bucket("many");
    s3(&sb, &endpoint, &b).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    // 1,001 archives of another model sort before Zulu's manifest: listing must page.
    let junk = sb.src().join("Aaa-junk");
    std::fs::create_dir_all(&junk).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        use crowecode_cloud::provider::{Provider as _, PutMode};
        use futures::{StreamExt as _, TryStreamExt as _};
        let overrides = crowecode_cloud::config::Overrides {
            provider: Some("s3".into()),
            bucket: Some(b.clone()),
            endpoint: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let file = crowecode_cloud::config::FileLocation { path: sb.path().join("none"), explicit: false };
        let cfg = crowecode_cloud::config::resolve(&|_| None, &file, &overrides).unwrap().config;
        let p = crowecode_cloud::provider::s3::S3Provider::new(&cfg).await.unwrap();
        let p = &p;
        futures::stream::iter(0..1001)
            .map(|i| async move {
                p.put(
                    &format!("models/Aaa-junk/archives/{i:05}.tar"),
                    bytes::Bytes::from_static(b"x"),
                    PutMode::Overwrite,
                )
                .await
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    });
    make_model(&sb.src(), "Zulu", 23);
    s3(&sb, &endpoint, &b).args(["upload", "Zulu", "--models-dir"]).arg(sb.src()).assert().success();
    let out = s3(&sb, &endpoint, &b).args(["list", "--json"]).output().unwrap();
    let names: Vec<String> =
        json(&out)["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["Zulu"]);
}

fn rclone() -> (String, String, String) {
    (
        require_env("CROWECODE_TEST_S3_RCLONE_ENDPOINT"),
        require_env("CROWECODE_TEST_S3_RCLONE_KEY"),
        require_env("CROWECODE_TEST_S3_RCLONE_SECRET"),
    )
}

#[test]
fn rclone_enforces_signatures_wrong_secret_exits_4_missing_model_exits_5() {
    let (endpoint, key, secret) = rclone();
    let b = bucket("rc");
    let sb = sandbox(&key, &secret);
    s3(&sb, &endpoint, &b).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    s3(&sb, &endpoint, &b).args(["download", "Missing"]).assert().code(5);

    let bad = sandbox(&key, "not-the-secret");
    let out = s3(&bad, &endpoint, &b).args(["download", "Missing"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SignatureDoesNotMatch") && err.contains("hint:"), "{err}");
    assert!(!err.contains("not-the-secret"), "the secret never appears");
    let out = s3(&bad, &endpoint, &b).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn rclone_ranged_reads_answered_with_200_still_download_correctly() {
    let (endpoint, key, secret) = rclone();
    let b = bucket("rcr");
    let sb = sandbox(&key, &secret);
    let model = make_model(&sb.src(), "Ranged", 24);
    s3(&sb, &endpoint, &b).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    // rclone ignores conditional writes: moving a tag there is refused unless accepted as unsafe.
    let out = s3(&sb, &endpoint, &b).args(["upload", "Ranged", "--from"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CROWECODE_UNSAFE_TAG_MOVES=1"));
    // Small enough for one PUT (rclone cannot take this SDK's multipart uploads).
    s3(&sb, &endpoint, &b)
        .env("CROWECODE_UNSAFE_TAG_MOVES", "1")
        .args(["upload", "Ranged", "--from"])
        .arg(&model)
        .assert()
        .success();
    let out = s3(&sb, &endpoint, &b)
        .args(["download", "Ranged", "--part-size", "64K", "--concurrency", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(Path::new(String::from_utf8(out.stdout).unwrap().trim())), tree(&model));
}

#[test]
fn a_read_only_key_can_list_status_and_download_but_not_upload() {
    let endpoint = require_env("CROWECODE_TEST_S3_IAM_ENDPOINT");
    let b = require_env("CROWECODE_TEST_S3_IAM_BUCKET");
    let (admin_key, admin_secret) =
        (require_env("CROWECODE_TEST_S3_IAM_ADMIN_KEY"), require_env("CROWECODE_TEST_S3_IAM_ADMIN_SECRET"));
    let (ro_key, ro_secret) =
        (require_env("CROWECODE_TEST_S3_IAM_READER_KEY"), require_env("CROWECODE_TEST_S3_IAM_READER_SECRET"));
    let prefix = format!("ro-{:08x}/", fastrand_u32());
    let with = |sb: &Sandbox| {
        let mut c = sb.cmd();
        c.args(["--provider", "s3", "--bucket", &b, "--endpoint", &endpoint, "--prefix", &prefix]);
        c
    };
    let admin = sandbox(&admin_key, &admin_secret);
    let model = make_model(&admin.src(), "Shared", 25);
    let out = with(&admin).args(["upload", "Shared", "--from"]).arg(&model).output().unwrap();
    assert!(out.status.success(), "admin upload: {}", String::from_utf8_lossy(&out.stderr));

    let reader = sandbox(&ro_key, &ro_secret);
    let mut outputs = Vec::new();
    let out = with(&reader).arg("status").output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stdout));
    outputs.push(out);
    let out = with(&reader).args(["list", "--json"]).output().unwrap();
    assert_eq!(json(&out)["models"][0]["model"], "Shared");
    outputs.push(out);
    let out = with(&reader).args(["download", "Shared"]).output().unwrap();
    assert!(out.status.success(), "download: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(Path::new(String::from_utf8_lossy(&out.stdout).trim())), tree(&model));
    outputs.push(out);

    let out = with(&reader).args(["upload", "Shared", "--force", "--from"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("AccessDenied")
            && (err.contains("PutObject") || err.contains("UploadPart") || err.contains("CreateMultipartUpload")),
        "names the denied action: {err}"
    );
    outputs.push(out);

    let wrong = sandbox(&ro_key, "wrong-secret-value");
    let out = with(&wrong).args(["download", "Shared"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    outputs.push(out);
    let unknown = sandbox("AKIAUNKNOWNUNKNOWN00", "whatever-secret");
    let out = with(&unknown).args(["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidAccessKeyId"));
    outputs.push(out);

    for out in &outputs {
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            for secret in [&ro_secret, &admin_secret, "wrong-secret-value"] {
                assert!(!text.contains(secret), "a secret leaked into output: {text}");
            }
        }
    }
}

#[test]
fn an_unreachable_endpoint_exits_7_after_retries() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sb = sandbox("key-id", "secret");
    let out = s3(&sb, &format!("http://127.0.0.1:{port}"), "any-bucket").args(["download", "Alpha"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still failing after 3 attempts") && err.contains("hint:"), "{err}");
}

#[test]
fn a_missing_bucket_exits_3_with_a_hint() {
    let (sb, endpoint) = moto();
    let out = s3(&sb, &endpoint, "no-such-bucket-here").args(["download", "Alpha"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--create-bucket"));
    let out = s3(&sb, &endpoint, "no-such-bucket-here").arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist"));
}

#[test]
fn server_side_encryption_is_sent_on_every_write() {
    let (sb, endpoint) = moto();
    let b = bucket("sse");
    let model = make_model(&sb.src(), "Secret", 26);
    s3(&sb, &endpoint, &b).args(["setup", "--create-bucket", "--no-write", "--sse", "AES256"]).assert().success();
    // Small parts, so the archive goes up as a multipart upload.
    let big = model.join("weights.bin");
    std::fs::File::create(&big).unwrap().set_len(11 << 20).unwrap();
    s3(&sb, &endpoint, &b)
        .args(["--sse", "AES256", "upload", "Secret", "--format", "1", "--part-size", "5MiB", "--from"])
        .arg(&model)
        .assert()
        .success();
    // And a model in bucket format 2: its packs, locations and file indexes.
    let other = make_model(&sb.src(), "Other", 27);
    s3(&sb, &endpoint, &b).args(["--sse", "AES256", "upload", "Other", "--from"]).arg(&other).assert().success();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new("k", "s", None, None, "test"))
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        let listed = client.list_objects_v2().bucket(&b).send().await.unwrap();
        let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect();
        // Format 1: the archive, the version, the tag `latest` and the manifest.json alias.
        assert_eq!(keys.iter().filter(|k| k.starts_with("models/Secret/")).count(), 4, "{keys:?}");
        assert!(keys.iter().any(|k| k.contains("/_pieces/packs/")), "{keys:?}");
        for key in keys {
            let head = client.head_object().bucket(&b).key(&key).send().await.unwrap();
            assert_eq!(head.server_side_encryption().map(|s| s.as_str()), Some("AES256"), "{key}");
        }
    });
}
