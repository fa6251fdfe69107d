//! Versions, tags and pinned references, on every provider: a pinned download stays on its
//! version while `latest` moves; rollback; concurrent tag moves with exactly one winner; tampering
//! detected; offline starts; reference-based prune; buckets of the previous release.

use std::path::{Path, PathBuf};

use crate::common::{Sandbox, local_bucket, make_model, ok, run, stderr, stdout, tree, write_files};
use crate::user_paths::{Provider, provider_args};

/// A sandbox set up (as the README says) on provider `p`, and the storage flags for its commands.
fn set_up(p: Provider) -> (Sandbox, Vec<String>) {
    let mut sb = Sandbox::new();
    let (args, _) = provider_args(&mut sb, p);
    let out = sb.cmd().args(&args).args(["setup", "--create-bucket"]).output().unwrap();
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    (sb, args)
}

/// Uploads `dir` as `model` with extra args; returns the pinned reference printed.
fn upload(sb: &Sandbox, model: &str, dir: &Path, extra: &[&str]) -> String {
    let mut c = sb.cmd();
    c.args(["upload", model, "-q", "--from"]).arg(dir).args(extra);
    let out = c.output().unwrap();
    assert!(out.status.success(), "upload {model}: {}", stderr(&out));
    let pinned = stdout(&out);
    assert!(pinned.contains("@sha256:"), "{pinned}");
    pinned
}

fn pinned_and_rollback(p: Provider) {
    let (sb, _) = set_up(p);
    let src = make_model(&sb.src(), "A", 1);
    let v1_tree = tree(&src);
    let v1 = upload(&sb, "A", &src, &[]);
    let path1 = ok(&sb, &["download", &v1]);
    assert_eq!(tree(Path::new(&path1)), v1_tree, "{p:?}");
    write_files(&src, &[("config.json", b"{\"v\":2}")]);
    let v2 = upload(&sb, "A", &src, &[]);
    write_files(&src, &[("config.json", b"{\"v\":3}")]);
    let v3 = upload(&sb, "A", &src, &[]);
    let v3_tree = tree(&src);
    assert!(v1 != v2 && v2 != v3);
    assert_eq!(ok(&sb, &["resolve", "A"]), v3, "{p:?}");
    // The pin stays where it was, byte for byte, while latest moved twice.
    assert_eq!(ok(&sb, &["download", &v1]), path1);
    assert_eq!(tree(Path::new(&path1)), v1_tree);
    assert_eq!(tree(Path::new(&ok(&sb, &["download", "A"]))), v3_tree);
    // A bad upload is rolled back: new machines get the previous version, nothing re-uploaded.
    ok(&sb, &["rollback", "A"]);
    assert_eq!(ok(&sb, &["resolve", "A"]), v2, "{p:?}");
    let mut fresh = Sandbox::new();
    provider_args(&mut fresh, p);
    let out = fresh.cmd().args(cfg_of(&sb)).args(["download", "A", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(format!("A@{}", v["models"][0]["version"].as_str().unwrap()), v2);
    assert_eq!(v["models"][0]["tag"], "latest");
    let h: serde_json::Value = serde_json::from_str(&ok(&sb, &["--json", "history", "A"])).unwrap();
    assert_eq!(h["versions"].as_array().unwrap().len(), 3, "{h}");
    assert_eq!(h["moves"].as_array().unwrap().len(), 4, "three uploads and a rollback: {h}");
}

/// The config file of `sb`, for a second machine of the same bucket.
fn cfg_of(sb: &Sandbox) -> Vec<String> {
    vec!["--config".into(), sb.path().join("cfg/crowecode/cloud.json").display().to_string()]
}

#[test]
fn pinned_downloads_and_rollback_on_the_local_provider() {
    pinned_and_rollback(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn pinned_downloads_and_rollback_on_moto() {
    pinned_and_rollback(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn pinned_downloads_and_rollback_on_fake_gcs() {
    pinned_and_rollback(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn pinned_downloads_and_rollback_on_azurite() {
    pinned_and_rollback(Provider::Azure);
}

fn concurrent_tag_moves(p: Provider) {
    let (sb, _) = set_up(p);
    let src = make_model(&sb.src(), "T", 2);
    let a = upload(&sb, "T", &src, &["--tag", "prod"]);
    write_files(&src, &[("config.json", b"{\"b\":1}")]);
    let b = upload(&sb, "T", &src, &["--no-latest"]);
    let mut current = a.clone();
    for round in 0..3 {
        let target = if current == a { b.clone() } else { a.clone() };
        let children: Vec<_> = (0..8)
            .map(|_| {
                let mut c = sb.std_cmd();
                c.args(["tag", &target, "prod", "--if-current", &current]);
                c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
            })
            .collect();
        let codes: Vec<Option<i32>> =
            children.into_iter().map(|c| c.wait_with_output().unwrap().status.code()).collect();
        assert_eq!(codes.iter().filter(|c| **c == Some(0)).count(), 1, "{p:?} round {round}: {codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == Some(8)).count(), 7, "{p:?} round {round}: {codes:?}");
        assert_eq!(ok(&sb, &["resolve", "T:prod"]), target, "{p:?} round {round}");
        current = target;
    }
    let h: serde_json::Value = serde_json::from_str(&ok(&sb, &["--json", "history", "T:prod"])).unwrap();
    assert_eq!(h["moves"].as_array().unwrap().len(), 4, "the creation and one winner a round: {h}");
    // A move against a stale expectation names who moved the tag.
    let out = run(&sb, &["tag", &current, "prod", "--if-current", &if current == a { b.clone() } else { a.clone() }]);
    assert_eq!(out.status.code(), Some(8));
    assert!(stderr(&out).contains("moved by"), "{}", stderr(&out));
}

#[test]
fn concurrent_tag_moves_have_one_winner_on_the_local_provider() {
    concurrent_tag_moves(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn concurrent_tag_moves_have_one_winner_on_moto() {
    concurrent_tag_moves(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn concurrent_tag_moves_have_one_winner_on_fake_gcs() {
    concurrent_tag_moves(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn concurrent_tag_moves_have_one_winner_on_azurite() {
    concurrent_tag_moves(Provider::Azure);
}

fn bucket_dir(sb: &Sandbox) -> PathBuf {
    local_bucket(sb).join("crowecode-models")
}

fn flip_a_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tampering_with_a_version_or_its_archive_is_refused_for_a_pinned_reference() {
    let (mut sb, _) = set_up(Provider::Local);
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = make_model(&sb.src(), "P", 3);
    let pinned = upload(&sb, "P", &src, &[]);
    let id = pinned.split("sha256:").nth(1).unwrap().to_string();
    let version = bucket_dir(&sb).join(format!("P/versions/{id}.json"));
    flip_a_byte(&version, 40);
    let out = run(&sb, &["download", &pinned]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not hash to its id"), "{}", stderr(&out));
    flip_a_byte(&version, 40);
    let archive = std::fs::read_dir(bucket_dir(&sb).join("P/archives")).unwrap().next().unwrap().unwrap().path();
    flip_a_byte(&archive, 600);
    let out = run(&sb, &["download", &pinned]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(!sb.cache().join("models/P").exists(), "nothing installed");
    assert_eq!(walkdir::WalkDir::new(sb.cache().join(".staging")).min_depth(1).into_iter().count(), 0);
    // A tag moved by hand to a version that is not there is refused too.
    let tag = bucket_dir(&sb).join("P/tags/latest.json");
    let text = std::fs::read_to_string(&tag).unwrap().replace(&id, &"0".repeat(64));
    std::fs::write(&tag, text).unwrap();
    assert_eq!(run(&sb, &["download", "P"]).status.code(), Some(6));
}

#[test]
fn offline_downloads_use_only_what_this_machine_has() {
    let (sb, _) = set_up(Provider::Local);
    let src = make_model(&sb.src(), "O", 4);
    let pinned = upload(&sb, "O", &src, &["--tag", "prod"]);
    let path = ok(&sb, &["download", "O:prod"]);
    ok(&sb, &["download", "O"]);
    let never = {
        write_files(&src, &[("config.json", b"{\"never\":1}")]);
        upload(&sb, "O", &src, &["--no-latest"])
    };
    // The storage is gone (an outage): the bucket directory moves away.
    let bucket = bucket_dir(&sb);
    let away = bucket.with_file_name("away");
    std::fs::rename(&bucket, &away).unwrap();
    for r in ["O:prod", "O", pinned.as_str()] {
        assert_eq!(ok(&sb, &["download", "--offline", r]), path, "{r}");
    }
    // A pinned version this machine has costs no request, even without --offline.
    assert_eq!(ok(&sb, &["download", &pinned]), path);
    let out = run(&sb, &["download", "--offline", &never]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("--offline uses only what this machine has"), "{}", stderr(&out));
    std::fs::rename(&away, &bucket).unwrap();
}

#[test]
fn prune_keeps_tagged_previous_and_recent_versions() {
    let (mut sb, _) = set_up(Provider::Local);
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = make_model(&sb.src(), "K", 5);
    let mut pins = Vec::new();
    for i in 0..4 {
        write_files(&src, &[("config.json", format!("{{\"v\":{i}}}").as_bytes())]);
        pins.push(upload(&sb, "K", &src, if i == 0 { &["--tag", "prod"] } else { &[] }));
    }
    // Young versions are kept (the default --min-age is a day).
    let v: serde_json::Value = serde_json::from_str(&ok(&sb, &["--json", "prune", "--remote", "--yes"])).unwrap();
    assert_eq!(v["remote_versions"].as_array().unwrap().len(), 0, "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&sb, &["--json", "prune", "--remote", "--min-age", "0s", "--yes"])).unwrap();
    let gone: Vec<&str> = v["remote_versions"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    let id = |pin: &str| pin.split("sha256:").nth(1).unwrap().to_string();
    assert_eq!(gone.len(), 1, "{v}");
    assert!(gone[0].contains(&id(&pins[1])), "only the untagged old one goes: {v}");
    assert_eq!(v["remote"].as_array().unwrap().len(), 1, "with its archive: {v}");
    for (i, pin) in pins.iter().enumerate() {
        let code = run(&sb, &["resolve", pin]).status.code();
        assert_eq!(code, Some(if i == 1 { 5 } else { 0 }), "{pin}");
    }
    // In the cache: what tags resolved to is kept beside the current version.
    let prod = ok(&sb, &["download", "K:prod"]);
    let latest = ok(&sb, &["download", "K"]);
    ok(&sb, &["prune"]);
    assert!(Path::new(&prod).is_dir() && Path::new(&latest).is_dir());
    // delete refuses a tagged version, and removes an untagged one.
    let out = run(&sb, &["delete", &pins[0]]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    ok(&sb, &["delete", &pins[0], "--force"]);
    assert_eq!(run(&sb, &["resolve", "K:prod"]).status.code(), Some(5));
    assert_eq!(run(&sb, &["delete", "K", "--all"]).status.code(), Some(2), "needs --yes");
    ok(&sb, &["delete", "K", "--all", "--yes"]);
    assert_eq!(run(&sb, &["download", "K"]).status.code(), Some(5));
}

#[test]
fn a_model_copied_to_another_prefix_downloads_from_its_new_place() {
    let (sb, _) = set_up(Provider::Local);
    let src = make_model(&sb.src(), "C", 6);
    let pinned = upload(&sb, "C", &src, &[]);
    let root = bucket_dir(&sb);
    let copy = root.with_file_name("elsewhere");
    std::fs::create_dir_all(&copy).unwrap();
    // The model's directory, and the packs every model of the prefix shares (bucket format 2).
    for dir in ["C", "_pieces"] {
        let status = std::process::Command::new("cp").arg("-r").arg(root.join(dir)).arg(&copy).status().unwrap();
        assert!(status.success());
    }
    let mut fresh = Sandbox::new();
    provider_args(&mut fresh, Provider::Local);
    let bucket = root.parent().unwrap().display().to_string();
    let args = ["--provider", "local", "--bucket", &bucket, "--prefix", "elsewhere/"];
    for r in ["C", pinned.as_str()] {
        let out = fresh.cmd().args(args).args(["download", r]).output().unwrap();
        assert!(out.status.success(), "{r}: {}", stderr(&out));
        assert_eq!(tree(Path::new(&stdout(&out))), tree(&src));
    }
}

#[test]
fn upload_with_a_tag_in_the_reference_and_without_latest() {
    let (sb, _) = set_up(Provider::Local);
    let src = make_model(&sb.src(), "U", 7);
    let first = upload(&sb, "U:stable", &src, &[]);
    assert_eq!(ok(&sb, &["resolve", "U:stable", "U"]), format!("{first}\n{first}"));
    write_files(&src, &[("config.json", b"{\"rc\":1}")]);
    let candidate = upload(&sb, "U", &src, &["--no-latest", "--tag", "rc"]);
    assert_eq!(ok(&sb, &["resolve", "U"]), first, "latest did not move");
    assert_eq!(ok(&sb, &["resolve", "U:rc"]), candidate);
    // A unique prefix of 12 hex digits names a version.
    let short = &candidate[..candidate.find("sha256:").unwrap() + 7 + 12].replace("sha256:", "");
    assert_eq!(ok(&sb, &["resolve", short]), candidate);
    let list = ok(&sb, &["list"]);
    assert!(list.contains("latest") && list.contains("rc="), "{list}");
    // Promote what was tested, only if stable is still where the test saw it.
    ok(&sb, &["tag", &candidate, "stable", "--if-current", &first]);
    assert_eq!(ok(&sb, &["resolve", "U:stable"]), candidate);
    let out = run(&sb, &["untag", "U"]);
    assert_eq!(out.status.code(), Some(2), "latest is not removed");
    ok(&sb, &["untag", "U:rc"]);
    assert_eq!(run(&sb, &["resolve", "U:rc"]).status.code(), Some(5));
}

/// Rewrites an object on moto with boto3 (from the test servers' virtual environment), as someone
/// with write access to the bucket could.
#[cfg(feature = "s3")]
fn moto_flip(bucket: &str, key: &str, at: usize) {
    let python = format!("{}/python", crate::common::require_env("CROWECODE_TEST_EMU_BIN"));
    let script = "import boto3,sys\n\
        c=boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='k',aws_secret_access_key='s')\n\
        b=bytearray(c.get_object(Bucket=sys.argv[2],Key=sys.argv[3])['Body'].read())\n\
        b[int(sys.argv[4])]^=0x20\n\
        c.put_object(Bucket=sys.argv[2],Key=sys.argv[3],Body=bytes(b))";
    let endpoint = crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT");
    let out = std::process::Command::new(python)
        .args(["-c", script, &endpoint, bucket, key, &at.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[cfg(feature = "s3")]
#[test]
fn tampering_on_moto_is_refused_for_a_pinned_reference() {
    let (sb, args) = set_up(Provider::S3);
    let bucket = args[args.iter().position(|a| a == "--bucket").unwrap() + 1].clone();
    let src = make_model(&sb.src(), "P", 8);
    let pinned = upload(&sb, "P", &src, &[]);
    let id = pinned.split("sha256:").nth(1).unwrap().to_string();
    let version = format!("crowecode-models/P/versions/{id}.json");
    moto_flip(&bucket, &version, 40);
    let out = run(&sb, &["download", &pinned]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not hash to its id"), "{}", stderr(&out));
    moto_flip(&bucket, &version, 40);
    // Restored, it downloads: nothing of the refused attempt was kept.
    let v: serde_json::Value = serde_json::from_str(&ok(&sb, &["--json", "download", &pinned])).unwrap();
    assert_eq!(v["models"][0]["status"], "downloaded", "{v}");
    assert_eq!(tree(Path::new(v["models"][0]["path"].as_str().unwrap())), tree(&src));
}
