//! The CLI on the local provider: setup, config errors, upload/download, JSON shapes, exit codes.

use std::os::unix::fs::PermissionsExt as _;

use predicates::prelude::*;

use crate::common::{Sandbox, make_model, tree, write_files};

const SEED_B64: &str = "eyJlbmFibGVkIjp0cnVlLCJwcm92aWRlciI6InMzIiwiY29uZmlnIjp7ImJ1Y2tldCI6Im15LWNyb3dlY29kZS1tb2RlbHMiLCJyZWdpb24iOiJ1cy13ZXN0LTIiLCJwcmVmaXgiOiJjcm93ZWNvZGUtbW9kZWxzLyJ9fQ==";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_commands_examples_and_exit_codes() {
    let sb = Sandbox::new();
    let out = sb.cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("help", stdout(&out));
    let out = sb.cmd().args(["download", "--help"]).output().unwrap();
    insta::assert_snapshot!("download_help", stdout(&out));
}

#[test]
fn version_names_the_providers_built_in() {
    let out = Sandbox::new().cmd().arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for (name, built) in
        [("s3", cfg!(feature = "s3")), ("gcs", cfg!(feature = "gcs")), ("azure", cfg!(feature = "azure"))]
    {
        assert_eq!(text.contains(name), built, "{name}: {text}");
    }
    assert!(text.contains("local"), "{text}");
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    sb.cmd().arg("--no-such-flag").assert().code(2);
    sb.cmd().arg("download").assert().code(2);
    sb.local()
        .args(["download", "--part-size", "lots", "A"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a size"));
}

#[test]
fn hostile_model_names_are_refused_before_any_io() {
    let sb = Sandbox::new();
    // The bucket does not exist: a name check that came after I/O would fail differently.
    for bad in ["../etc", "a/b", "with space", "a\u{1}b", ".hidden", &"x".repeat(129)] {
        let out = sb
            .cmd()
            .args(["--provider", "local", "--bucket", "/nonexistent/bucket", "download", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid model name"), "{}", stderr(&out));
    }
    assert!(!sb.cache().join("models").exists(), "nothing created in the cache");
}

#[test]
fn setup_prints_the_seed_compatible_export_and_writes_a_private_file() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "setup",
            "--provider",
            "s3",
            "--bucket",
            "my-crowecode-models",
            "--region",
            "us-west-2",
            "--prefix",
            "crowecode-models/",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("export CROWECODE_CLOUD_CONFIG_B64='{SEED_B64}'\n"));
    let file = sb.path().join("cfg/crowecode/cloud.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["provider"], "s3");
    assert_eq!(doc["config"]["prefix"], "crowecode-models/");
    assert!(stderr(&out).contains("wrote"), "hints go to stderr");
}

#[test]
fn setup_normalises_the_prefix_and_validates_bucket_names() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["--json", "setup", "--no-write", "--provider", "gcs", "--bucket", "my_models", "--prefix", "/a/b"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["prefix"], "a/b/");
    assert!(!sb.path().join("cfg/crowecode/cloud.json").exists(), "--no-write writes nothing");
    let out = sb.cmd().args(["setup", "--provider", "s3", "--bucket", "Bad_Bucket"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad flag is a usage error");
    assert!(stderr(&out).contains("--bucket: invalid s3 bucket name"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint:"));
    sb.cmd().arg("setup").assert().code(2).stderr(predicate::str::contains("--provider and --bucket"));
}

#[test]
fn seed_config_from_the_environment_is_used() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_CLOUD_CONFIG_B64", SEED_B64);
    let out = sb.cmd().args(["--json", "setup", "--no-write"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["bucket"], "my-crowecode-models");
    assert_eq!(v["config"]["region"], "us-west-2");
    assert_eq!(v["config_b64"], SEED_B64);
}

#[test]
fn broken_configs_exit_3_naming_their_source() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_CLOUD_CONFIG_B64", "%%%not-base64");
    let out = sb.cmd().arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    insta::assert_snapshot!("bad_b64", sb.redact(&stderr(&out)));

    let sb = Sandbox::new();
    write_files(&sb.path().join("cfg/crowecode"), &[("cloud.json", b"{\"provider\": \"s3\", \"config\": ")]);
    let out = sb.cmd().arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    insta::assert_snapshot!("bad_json_file", sb.redact(&stderr(&out)));

    let sb = Sandbox::new();
    write_files(&sb.path().join("cfg/crowecode"), &[("cloud.json", br#"{"provider":"ftp","config":{"bucket":"x"}}"#)]);
    sb.cmd().arg("list").assert().code(3).stderr(predicate::str::contains("unknown provider \"ftp\""));

    let sb = Sandbox::new();
    let out = sb.cmd().arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    insta::assert_snapshot!("not_configured", sb.redact(&stderr(&out)));

    let sb = Sandbox::new();
    sb.cmd()
        .args(["--config", "/nonexistent/cloud.json", "list"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("/nonexistent/cloud.json"));
}

#[test]
fn upload_then_download_gives_the_same_tree_and_paths_on_stdout() {
    let sb = Sandbox::new();
    let alpha = make_model(&sb.src(), "Alpha", 1);
    std::fs::set_permissions(alpha.join("config.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    make_model(&sb.src(), "Beta", 2);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb.local().args(["--json", "upload", "Alpha", "Beta", "--models-dir"]).arg(sb.src()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!("upload_json", sb.redact(&stdout(&out)));

    let out = sb.local().args(["download", "Alpha", "Beta"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let paths: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(paths.len(), 2);
    assert_eq!(tree(std::path::Path::new(&paths[0])), tree(&alpha));
    assert_eq!(tree(std::path::Path::new(&paths[1])), tree(&sb.src().join("Beta")));
    // The stable link points at the same version.
    assert_eq!(
        std::fs::canonicalize(sb.cache().join("models/Alpha")).unwrap(),
        std::fs::canonicalize(&paths[0]).unwrap()
    );
    assert!(sb.cache().join("CACHEDIR.TAG").exists());

    // Second time: cached, same path, nothing transferred.
    let out = sb.local().args(["--json", "download", "Alpha"]).output().unwrap();
    insta::assert_snapshot!("download_cached_json", sb.redact(&stdout(&out)));
}

#[test]
fn an_unchanged_tree_uploads_nothing_and_force_overrides() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    make_model(&sb.src(), "Alpha", 3);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let up = |extra: &[&str]| {
        let out =
            sb.local().args(["--json", "upload", "Alpha", "--models-dir"]).arg(sb.src()).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["models"][0].clone()
    };
    let first = up(&[]);
    assert_eq!(first["status"], "uploaded");
    let second = up(&[]);
    assert_eq!(second["status"], "up-to-date");
    assert_eq!(second["parts"], 0);
    assert_eq!(second["archive_key"], first["archive_key"]);
    let forced = up(&["--force"]);
    assert_eq!(forced["status"], "uploaded");
    assert_ne!(forced["archive_key"], first["archive_key"]);
    assert_eq!(forced["sha256"], first["sha256"], "deterministic archive: same tree, same bytes");
    // A changed file makes a new version.
    std::fs::write(sb.src().join("Alpha/config.json"), b"{\"changed\":true}").unwrap();
    let changed = up(&[]);
    assert_eq!(changed["status"], "uploaded");
    assert_ne!(changed["sha256"], first["sha256"]);
}

#[test]
fn compressed_archives_round_trip() {
    for compression in ["zstd", "gzip"] {
        let sb = Sandbox::new();
        let model = make_model(&sb.src(), "Zed", 4);
        sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
        sb.local().args(["upload", "Zed", "--compression", compression, "--from"]).arg(&model).assert().success();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sb.bucket().join("models/Zed/manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["compression"], compression);
        assert!(manifest["files"][0].get("offset").is_none(), "offsets only for uncompressed archives");
        let out = sb.local().args(["download", "Zed"]).output().unwrap();
        assert!(out.status.success(), "{compression}: {}", stderr(&out));
        assert_eq!(tree(std::path::Path::new(stdout(&out).trim())), tree(&model), "{compression}");
    }
}

/// Compression is of archives (format 1): asked of a format in chunks, it is a usage error that
/// says what to drop, for 2 and 3 alike, and nothing is written.
#[test]
fn compression_with_a_format_in_chunks_is_refused() {
    let sb = Sandbox::new();
    let model = make_model(&sb.src(), "Zed", 1);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    for format in ["2", "3"] {
        let out = sb
            .local()
            .args(["upload", "Zed", "--format", format, "--compression", "zstd", "--from"])
            .arg(&model)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--format {format}: {}", stderr(&out));
        assert!(stderr(&out).contains("applies to format 1 archives only"), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("drop --compression with --format {format}")), "{}", stderr(&out));
        assert!(!sb.bucket().join("models/Zed").exists(), "nothing written");
    }
}

#[test]
fn small_parts_make_many_parts_and_still_round_trip() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let model = make_model(&sb.src(), "Parts", 5);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb
        .local()
        .args(["--json", "upload", "Parts", "--part-size", "64K", "--concurrency", "3", "--from"])
        .arg(&model)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = v["models"][0]["archive_size"].as_u64().unwrap();
    assert_eq!(v["models"][0]["parts"].as_u64().unwrap(), size.div_ceil(64 << 10));
    let out = sb.local().args(["download", "Parts", "--part-size", "64K", "--concurrency", "5"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(std::path::Path::new(stdout(&out).trim())), tree(&model));
}

#[test]
fn a_missing_model_exits_5_and_a_missing_bucket_exits_3() {
    let sb = Sandbox::new();
    sb.local().args(["download", "Nope"]).assert().code(3).stderr(predicate::str::contains("does not exist"));
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb.local().args(["download", "Nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    insta::assert_snapshot!("model_not_found", sb.redact(&stderr(&out)));
}

#[test]
fn upload_errors_say_what_to_do() {
    let sb = Sandbox::new();
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Ghost", "--models-dir"]).arg(sb.src()).assert().code(2).stderr(
        predicate::str::contains("does not exist")
            .and(predicate::str::contains("hint: pass the directory with --from")),
    );
    sb.local()
        .args(["upload", "A", "B", "--from"])
        .arg(sb.src())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("exactly one model"));
}

#[test]
fn a_corrupted_archive_exits_6_and_leaves_the_ready_model_alone() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let model = make_model(&sb.src(), "Alpha", 6);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    let first = sb.local().args(["download", "Alpha"]).output().unwrap();
    let v1 = stdout(&first).trim().to_string();
    let before = tree(std::path::Path::new(&v1));

    // A new version whose archive is damaged in the bucket after upload.
    std::fs::write(model.join("config.json"), b"{\"v\":2}").unwrap();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.bucket().join("models/Alpha/manifest.json")).unwrap()).unwrap();
    let archive = sb.bucket().join(manifest["archive_key"].as_str().unwrap());
    let mut bytes = std::fs::read(&archive).unwrap();
    let weights_offset = manifest["files"][1]["offset"].as_u64().unwrap() as usize;
    bytes[weights_offset + 1000] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();

    let out = sb.local().args(["download", "Alpha"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("expected: ") && err.contains("computed: "), "{err}");
    assert!(err.contains(manifest["archive_sha256"].as_str().unwrap()), "shows the expected digest: {err}");
    // The ready model is still version 1, intact, and nothing half-installed is left.
    assert_eq!(std::fs::canonicalize(sb.cache().join("models/Alpha")).unwrap(), std::fs::canonicalize(&v1).unwrap());
    assert_eq!(tree(std::path::Path::new(&v1)), before);
    assert_eq!(std::fs::read_dir(sb.cache().join(".staging")).unwrap().count(), 0, "staging cleaned");
    assert_eq!(
        std::fs::read_dir(sb.cache().join("models/.versions"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        1
    );
}

#[test]
fn leftovers_of_a_killed_download_are_cleaned_on_the_next_run() {
    let sb = Sandbox::new();
    let model = make_model(&sb.src(), "Alpha", 7);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    let stale = sb.cache().join(".staging/Alpha@0123456789abcdef");
    write_files(&stale, &[("half-written.bin", b"partial")]);
    std::fs::create_dir_all(sb.cache().join(".staging/Other@0123456789abcdef")).unwrap();
    sb.local().args(["download", "Alpha"]).assert().success();
    assert!(!stale.exists(), "stale staging of this model removed");
    assert!(
        sb.cache().join(".staging/Other@0123456789abcdef").exists(),
        "other models' staging left to their own lock holders"
    );
}

#[test]
fn concurrent_downloads_of_one_model_share_one_transfer() {
    let sb = Sandbox::new();
    let model = make_model(&sb.src(), "Alpha", 8);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut c = sb.local_std();
            c.args(["--json", "download", "Alpha"]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut downloaded = 0;
    let mut paths = std::collections::BTreeSet::new();
    for out in &outs {
        assert!(out.status.success(), "{}", stderr(out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["models"][0]["status"] == "downloaded" {
            downloaded += 1;
        }
        paths.insert(v["models"][0]["path"].as_str().unwrap().to_string());
    }
    assert_eq!(downloaded, 1, "exactly one process transferred the model");
    assert_eq!(paths.len(), 1, "all processes got the same ready path");
    assert_eq!(tree(std::path::Path::new(paths.iter().next().unwrap())), tree(&model));
}

#[test]
fn list_status_and_local_listing_report_in_text_and_json() {
    let sb = Sandbox::new();
    make_model(&sb.src(), "Alpha", 9);
    make_model(&sb.src(), "Beta", 10);
    sb.local().args(["setup", "--create-bucket"]).assert().success();
    // From here on the config file written by setup is used (no flags).
    sb.cmd().args(["upload", "Alpha", "Beta", "--models-dir"]).arg(sb.src()).assert().success();
    sb.cmd().args(["download", "Alpha"]).assert().success();

    let out = sb.cmd().arg("list").output().unwrap();
    insta::assert_snapshot!("list_text", sb.redact(&stdout(&out)));
    let out = sb.cmd().args(["list", "--json"]).output().unwrap();
    insta::assert_snapshot!("list_json", sb.redact(&stdout(&out)));
    let out = sb.cmd().args(["list", "--local"]).output().unwrap();
    assert!(stdout(&out).contains("Alpha") && !stdout(&out).contains("Beta"), "{}", stdout(&out));
    let out = sb.cmd().arg("status").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = sb.redact(&stdout(&out));
    let text = regex_lite::Regex::new(r"\(\d+(\.\d+)? [KMG]?i?B\)").unwrap().replace(&text, "([SIZE])").into_owned();
    insta::assert_snapshot!("status_text", text);
    let out = sb.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reachable"], true);
    assert_eq!(v["models_in_bucket"], 2);
    assert_eq!(v["models_cached"], serde_json::json!(["Alpha"]));
}

#[test]
fn status_of_an_unreachable_bucket_fails_with_its_code() {
    let sb = Sandbox::new();
    let out = sb.local().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("NOT reachable"), "{}", stdout(&out));
}

#[test]
fn json_errors_are_objects_on_stdout() {
    let sb = Sandbox::new();
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb.local().args(["--json", "download", "Nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"][0]["exit_code"], 5);
    assert_eq!(v["errors"][0]["model"], "Nope");
    assert!(v["errors"][0]["hint"].as_str().unwrap().contains("crowecode-cloud list"));
}

#[test]
fn progress_lines_appear_in_logs_when_not_a_terminal() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_PROGRESS_INTERVAL", "0.000001");
    let model = make_model(&sb.src(), "Alpha", 11);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb.local().args(["upload", "Alpha", "--part-size", "64K", "--from"]).arg(&model).output().unwrap();
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("upload Alpha: ") && l.contains("ETA")), "{err}");
    let out = sb.local().args(["--no-progress", "download", "Alpha", "--part-size", "64K"]).output().unwrap();
    assert!(!stderr(&out).contains("ETA"), "--no-progress silences progress: {}", stderr(&out));
    let out = sb.local().args(["--quiet", "download", "Alpha"]).output().unwrap();
    assert_eq!(stderr(&out), "", "--quiet prints nothing on stderr");
}

#[test]
fn a_download_waits_for_the_lock_holder_and_says_so() {
    let sb = Sandbox::new();
    let model = make_model(&sb.src(), "Alpha", 12);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    // Another "process" holds the model's lock.
    std::fs::create_dir_all(sb.cache().join(".locks")).unwrap();
    let lock = std::fs::File::create(sb.cache().join(".locks/Alpha.lock")).unwrap();
    lock.lock().unwrap();
    let child = sb
        .local_std()
        .args(["download", "Alpha"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!sb.cache().join("models/Alpha").exists(), "nothing installed while the lock is held");
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("another process is downloading this model; waiting for it"), "{}", stderr(&out));
    assert_eq!(tree(std::path::Path::new(stdout(&out).trim())), tree(&model));
}

#[test]
fn verify_reports_missing_changed_and_extra_files_and_exits_6() {
    let sb = Sandbox::new();
    let model = make_model(&sb.src(), "Alpha", 13);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--from"]).arg(&model).assert().success();
    let out = sb.local().args(["download", "Alpha"]).output().unwrap();
    let path = std::path::PathBuf::from(stdout(&out).trim());

    // Verification needs no bucket access: plain `verify` with no storage flags.
    sb.cmd().args(["verify", "Alpha"]).assert().success().stdout(predicate::str::contains("Alpha: ok, 4 files match"));

    std::fs::write(path.join("config.json"), b"tampered").unwrap();
    std::fs::remove_file(path.join("tokenizer/tokenizer.json")).unwrap();
    std::fs::write(path.join("stray.txt"), b"?").unwrap();
    let out = sb.cmd().args(["--json", "verify", "Alpha"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["models"][0];
    assert_eq!(r["ok"], false);
    assert_eq!(r["changed"], serde_json::json!(["config.json"]));
    assert_eq!(r["missing"], serde_json::json!(["tokenizer/tokenizer.json"]));
    assert_eq!(r["extra"], serde_json::json!(["stray.txt"]));

    // Removing the damaged version and downloading again gives a clean copy.
    std::fs::remove_dir_all(&path).unwrap();
    sb.local().args(["download", "Alpha"]).assert().success();
    sb.cmd().args(["verify", "Alpha"]).assert().success();
    sb.cmd().args(["verify", "Nope"]).assert().code(5);
}

#[test]
fn config_warnings_reach_every_command_and_never_show_secret_values() {
    let sb = Sandbox::new();
    let bucket = sb.bucket();
    std::fs::create_dir_all(&bucket).unwrap();
    let doc = serde_json::json!({
        "enabled": true,
        "provider": "local",
        "config": {"bucket": bucket, "colour": "blue", "secret_access_key": "VALUE-THAT-MUST-NOT-PRINT"}
    });
    write_files(&sb.path().join("cfg/crowecode"), &[("cloud.json", doc.to_string().as_bytes())]);
    for args in [&["list"][..], &["download", "Nope"], &["status"]] {
        let out = sb.cmd().args(args).output().unwrap();
        let err = stderr(&out);
        assert!(err.contains("warning:") && err.contains("unknown config key \"colour\""), "{args:?}: {err}");
        assert_eq!(err.matches("unknown config key \"colour\"").count(), 1, "{args:?} warns once: {err}");
        assert!(!err.contains("VALUE-THAT-MUST-NOT-PRINT") && !stdout(&out).contains("VALUE-THAT-MUST-NOT-PRINT"));
    }
}

#[test]
fn completions_and_man_page_come_from_the_definitions() {
    let sb = Sandbox::new();
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef crowecode-cloud"), ("fish", "complete -c crowecode-cloud")]
    {
        let out = sb.cmd().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker) && text.contains("download") && text.contains("part-size"), "{shell}: {text}");
    }
    sb.cmd().args(["completions", "tcsh"]).assert().code(2);
    let out = sb.cmd().arg("man").output().unwrap();
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.starts_with(".ie") || man.contains(".TH crowecode-cloud"), "{man}");
    assert!(man.contains("upload") && man.contains("CROWECODE_CONFIG"), "{man}");
}

#[test]
fn download_only_fetches_matching_files_verified_and_apart_from_the_model() {
    let sb = Sandbox::new();
    let alpha = make_model(&sb.src(), "Alpha", 61);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    let out =
        sb.local().args(["--json", "download", "Alpha", "--only", "*.json", "--only", "tokenizer/*"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = std::path::PathBuf::from(v["models"][0]["path"].as_str().unwrap());
    let got = tree(&path);
    let files: Vec<&String> = got.keys().filter(|k| got[*k].0 == 'f').collect();
    assert_eq!(files, ["config.json", "tokenizer/tokenizer.json"], "{got:?}");
    let full = tree(&alpha);
    for f in files {
        assert_eq!(got[f], full[f], "{f}");
    }
    assert_eq!(v["models"][0]["files"], 2);
    // Never mistaken for the model: the full model is not installed by this.
    assert!(!sb.cache().join("models/Alpha").exists());
    // The same selection again is already there.
    let out =
        sb.local().args(["--json", "download", "Alpha", "--only", "tokenizer/*", "--only", "*.json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"][0]["status"], "cached", "{v}");

    // Nothing matches: a usage error naming some files.
    let out = sb.local().args(["download", "Alpha", "--only", "*.gguf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn download_only_refuses_compressed_archives_and_tampered_files() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    make_model(&sb.src(), "Zed", 62);
    make_model(&sb.src(), "Tam", 63);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Zed", "--compression", "zstd", "--models-dir"]).arg(sb.src()).assert().success();
    sb.local().args(["upload", "Tam", "--models-dir"]).arg(sb.src()).assert().success();
    let out = sb.local().args(["download", "Zed", "--only", "*.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--compression none"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Flip a byte inside config.json's range of the archive: that file is refused (exit 6).
    let archives = sb.bucket().join("models/Tam/archives");
    let archive = std::fs::read_dir(&archives).unwrap().next().unwrap().unwrap().path();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.bucket().join("models/Tam/manifest.json")).unwrap()).unwrap();
    let entry = manifest["files"].as_array().unwrap().iter().find(|f| f["path"] == "config.json").unwrap();
    let offset = entry["offset"].as_u64().unwrap() as usize;
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[offset] ^= 0x20;
    std::fs::write(&archive, bytes).unwrap();
    let out = sb.local().args(["download", "Tam", "--only", "config.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!sb.cache().join("models/.partial").read_dir().is_ok_and(|mut d| d.next().is_some()), "nothing kept");
}

#[test]
fn limit_rate_holds_a_transfer_to_the_rate() {
    let sb = Sandbox::new();
    let model = sb.src().join("Big");
    write_files(&model, &[("w.bin", &crate::common::noise(3 << 20, 64))]);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let t = std::time::Instant::now();
    sb.local()
        .args(["upload", "Big", "--part-size", "1M", "--limit-rate", "2M", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success();
    let up = t.elapsed();
    let t = std::time::Instant::now();
    sb.local().args(["download", "Big", "--part-size", "1M", "--limit-rate", "2M"]).assert().success();
    let down = t.elapsed();
    // 3 MiB at 2 MiB/s: at least about a second each way (the first MiB may go at once).
    assert!(up.as_secs_f64() >= 0.9, "upload took {up:?}");
    assert!(down.as_secs_f64() >= 0.9, "download took {down:?}");
    sb.local().args(["download", "Big", "--limit-rate", "fast"]).assert().code(2);
}

fn versions(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sb.cache().join("models/.versions"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prune_removes_old_versions_and_least_recently_used_models() {
    let sb = Sandbox::new();
    let alpha = make_model(&sb.src(), "Alpha", 71);
    make_model(&sb.src(), "Beta", 72);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "Beta", "--models-dir"]).arg(sb.src()).assert().success();
    sb.local().args(["download", "Beta", "Alpha"]).assert().success();
    write_files(&alpha, &[("config.json", b"{\"v\": 2}")]);
    sb.local().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    sb.local().args(["download", "Alpha"]).assert().success();
    assert_eq!(versions(&sb).len(), 3);

    // --dry-run and --keep 2 remove nothing.
    let out = sb.local().args(["prune", "--dry-run"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("would remove"), "{}", String::from_utf8_lossy(&out.stdout));
    sb.local().args(["prune", "--keep", "2"]).assert().success();
    assert_eq!(versions(&sb).len(), 3);

    let out = sb.local().args(["--json", "prune"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["local"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["local"][0]["reason"], "not current");
    assert!(v["freed_bytes"].as_u64().unwrap() > 0);
    assert_eq!(versions(&sb).len(), 2);
    sb.local().args(["verify", "Alpha", "Beta"]).assert().success();

    // Over --max-size: Beta was used least recently and goes whole; Alpha stays.
    sb.local().args(["download", "Alpha"]).assert().success(); // a cached use refreshes Alpha
    let out = sb.local().args(["--json", "prune", "--max-size", "600K"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gone: Vec<&str> = v["local"].as_array().unwrap().iter().map(|p| p["model"].as_str().unwrap()).collect();
    assert_eq!(gone, ["Beta"], "{v}");
    assert!(!sb.cache().join("models/Beta").exists());
    sb.local().args(["verify", "Alpha"]).assert().success();
}

#[test]
fn prune_leaves_a_model_whose_lock_is_held() {
    let sb = Sandbox::new();
    make_model(&sb.src(), "Alpha", 73);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    sb.local().args(["download", "Alpha"]).assert().success();
    let cache = crowecode_cloud::cache::Cache::new(sb.cache());
    let model = crowecode_cloud::names::ModelName::new("Alpha").unwrap();
    let lock = cache.lock(&model, || {}).unwrap();
    sb.local().args(["prune", "--max-size", "1"]).assert().success();
    assert!(sb.cache().join("models/Alpha").exists(), "a model in use is not evicted");
    drop(lock);
    sb.local().args(["prune", "--max-size", "1"]).assert().success();
    assert!(!sb.cache().join("models/Alpha").exists());
}

#[test]
fn prune_remote_lists_then_deletes_unreferenced_archives() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let alpha = make_model(&sb.src(), "Alpha", 74);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    for i in 0..3 {
        write_files(&alpha, &[("config.json", format!("{{\"v\": {i}}}").as_bytes())]);
        sb.local().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    }
    let archives = || std::fs::read_dir(sb.bucket().join("models/Alpha/archives")).unwrap().count();
    assert_eq!(archives(), 3);
    // Everything is younger than the default --min-age of a day.
    let out = sb.local().args(["--json", "prune", "--remote", "--yes"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["remote"].as_array().unwrap().len(), 0, "{v}");
    // Without --yes: a list, nothing deleted.
    let out = sb.local().args(["--json", "prune", "--remote", "--min-age", "0s"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["remote"].as_array().unwrap().len(), 1, "the current one and the newest old one are kept: {v}");
    assert_eq!(archives(), 3);
    sb.local().args(["prune", "--remote", "--min-age", "0s", "--yes"]).assert().success();
    assert_eq!(archives(), 2);
    sb.local().args(["download", "Alpha"]).assert().success();
}

#[test]
fn a_missing_model_is_made_by_the_fallback_command_and_published() {
    let sb = Sandbox::new();
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let make = "mkdir -p {dest}/tok && printf '{\"m\": \"{model}\"}' > {dest}/config.json && echo w > {dest}/tok/v.txt && echo making {model}";
    let fb = |sb: &Sandbox| {
        let mut c = sb.local();
        c.args(["--fallback-command", make]);
        c
    };
    let out = fb(&sb).args(["download", "Gamma"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "only the path on stdout: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("making Gamma"), "its output is streamed to stderr");
    let path = std::path::PathBuf::from(stdout.trim());
    assert_eq!(std::fs::read_to_string(path.join("config.json")).unwrap(), "{\"m\": \"Gamma\"}");
    sb.local().args(["verify", "Gamma"]).assert().success();
    // Not published: the bucket still lacks it, and the next download reuses what was made.
    assert!(!sb.bucket().join("models/Gamma/manifest.json").exists());
    let out = fb(&sb).args(["--json", "download", "Gamma"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"][0]["status"], "cached", "{v}");

    // --publish uploads it; another machine then gets it from the bucket, byte for byte.
    let out = fb(&sb).args(["--json", "download", "Delta", "--publish"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"][0]["status"], "published", "{v}");
    let made = std::path::PathBuf::from(v["models"][0]["path"].as_str().unwrap());
    let other = Sandbox::new();
    let mut c = other.std_cmd();
    c.args(["--provider", "local", "--bucket"]).arg(sb.bucket()).args(["--prefix", "models/", "download", "Delta"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(std::path::Path::new(String::from_utf8(out.stdout).unwrap().trim())), tree(&made));
}

#[test]
fn a_failing_or_empty_fallback_installs_nothing() {
    let sb = Sandbox::new();
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let out = sb
        .local()
        .args(["--fallback-command", "echo trying {model} >&2; exit 3", "download", "Gamma"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit code 3") && err.contains("trying Gamma"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(!sb.cache().join("models/Gamma").exists());
    let out = sb.local().args(["--fallback-command", "true", "download", "Gamma"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left no files"));
    assert!(!sb.cache().join("models/Gamma").exists());
    // Without a fallback, a missing model is still exit 5.
    sb.local().args(["download", "Gamma"]).assert().code(5);
}

/// SIGKILL at random points of a download, many times: the ready version is always complete
/// (the old one, or the new one if the kill came after the switch), and the next run finishes
/// and leaves no staging behind. Not in the default run: `scripts/reliability.sh`.
#[test]
#[ignore = "long: run with scripts/reliability.sh"]
fn sigkill_trials_never_leave_a_half_installed_model() {
    let trials: u32 = std::env::var("CROWECODE_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let sb = Sandbox::new();
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let trees: Vec<_> = (0..2)
        .map(|i| {
            let dir = sb.path().join(format!("v{i}")).join("Model");
            write_files(&dir, &[("weights.bin", &crate::common::noise(24 << 20, 100 + i)), ("config.json", b"{}")]);
            dir
        })
        .collect();
    let wanted: Vec<_> = trees.iter().map(|t| tree(t)).collect();
    sb.local().args(["upload", "Model", "--force", "--from"]).arg(&trees[0]).assert().success();
    sb.local().args(["download", "Model"]).assert().success();
    let mut seed = 0x9e37_79b9_u64 ^ u64::from(std::process::id());
    let (mut killed_before, mut killed_after) = (0, 0);
    for trial in 0..trials {
        let next = trial.is_multiple_of(2);
        let new = usize::from(next);
        sb.local().args(["upload", "Model", "--force", "--from"]).arg(&trees[new]).assert().success();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis((seed >> 33) % 1100);
        let mut child = sb
            .local_std()
            .args(["download", "Model", "--limit-rate", "24M"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let ready = tree(&sb.cache().join("models/Model"));
        if ready == wanted[new] {
            killed_after += 1;
        } else {
            assert_eq!(ready, wanted[1 - new], "trial {trial} ({status}): the ready model is neither version, whole");
            killed_before += 1;
        }
        sb.local().args(["download", "Model"]).assert().success();
        assert_eq!(tree(&sb.cache().join("models/Model")), wanted[new], "trial {trial}: the rerun finished the job");
        assert_eq!(
            std::fs::read_dir(sb.cache().join(".staging")).unwrap().count(),
            0,
            "trial {trial}: leftovers removed"
        );
        // Drop the old version so the next trial transfers again.
        sb.local().args(["prune"]).assert().success();
    }
    println!("kill trials: {trials} ({killed_before} killed before the switch, {killed_after} after), all recovered");
    eprintln!("kill trials: {trials} ({killed_before} killed before the switch, {killed_after} after), all recovered");
}

#[test]
fn a_download_killed_midway_resumes_keeping_the_verified_files() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let model = sb.src().join("Model");
    let files: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("shard-{i}.bin"), crate::common::noise(3 << 20, 200 + i))).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    write_files(&model, &refs);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Model", "--models-dir"]).arg(sb.src()).assert().success();

    // Kill it once about half of the files are on disk.
    let mut child = sb
        .local_std()
        .args(["download", "Model", "--limit-rate", "12M", "--part-size", "1M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staged = || -> u64 {
        walkdir::WalkDir::new(sb.cache().join(".staging"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while staged() < 10 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!sb.cache().join("models/Model").exists(), "nothing installed yet");

    // The leading run of complete, matching files is what a resume may keep.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.bucket().join("models/Model/manifest.json")).unwrap()).unwrap();
    let archive_size = manifest["archive_size"].as_u64().unwrap();
    let staging =
        std::fs::read_dir(sb.cache().join(".staging")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let mut kept = 0u64;
    for f in manifest["files"].as_array().unwrap() {
        let p = staging.join(f["path"].as_str().unwrap());
        match std::fs::read(&p) {
            Ok(d) if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&d)) == f["sha256"].as_str().unwrap() => {
                kept += d.len() as u64
            }
            _ => break,
        }
    }
    assert!(kept >= 3 << 20, "the kill left at least one complete file ({kept} bytes)");

    let out = sb.local().args(["--json", "download", "Model", "--part-size", "1M"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming an interrupted download"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let transferred = v["models"][0]["transferred"].as_u64().unwrap();
    assert!(
        transferred <= archive_size - kept + (1 << 20),
        "resumed transfer {transferred} exceeds the remainder {} plus one part",
        archive_size - kept
    );
    assert_eq!(tree(&sb.cache().join("models/Model")), tree(&model));
    sb.local().args(["verify", "Model"]).assert().success();
    assert_eq!(std::fs::read_dir(sb.cache().join(".staging")).unwrap().count(), 0, "no leftovers");
}

#[test]
fn a_download_begun_on_version_1_finishes_on_it_while_version_2_is_uploaded() {
    let sb = Sandbox::new();
    let v1 = sb.path().join("v1/Model");
    let v2 = sb.path().join("v2/Model");
    write_files(&v1, &[("w.bin", &crate::common::noise(16 << 20, 301)), ("config.json", b"{\"v\":1}")]);
    write_files(&v2, &[("w.bin", &crate::common::noise(16 << 20, 302)), ("config.json", b"{\"v\":2}")]);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Model", "--from"]).arg(&v1).assert().success();
    // About two seconds of download; version 2 is committed in the middle of it.
    let slow = sb
        .local_std()
        .args(["download", "Model", "--limit-rate", "8M", "--part-size", "1M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    sb.local().args(["upload", "Model", "--from"]).arg(&v2).assert().success();
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(tree(&first), tree(&v1), "the running download finished on version 1");
    let out = sb.local().args(["download", "Model"]).output().unwrap();
    let second = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_ne!(first, second);
    assert_eq!(tree(&second), tree(&v2), "the next download moved to version 2");
    assert_eq!(tree(&sb.cache().join("models/Model")), tree(&v2));
    assert_eq!(tree(&first), tree(&v1), "version 1's files stay readable where the first run said");
}
