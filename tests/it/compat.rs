//! Compatibility both ways with release 0.1.0 (before versions and tags): a bucket it wrote
//! (committed under `tests/fixtures/bucket-0.1.0`) downloads with this release and gets versions on
//! its next upload; and 0.1.0 itself (built from git history by `scripts/test-env.sh`) downloads
//! the newest version from a bucket this release wrote, through the `manifest.json` alias.

use std::path::{Path, PathBuf};

use crate::common::{Sandbox, require_env, tree, write_files};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The tree release 0.1.0 uploaded as `Old` into the fixture bucket.
fn old_tree(root: &Path) -> PathBuf {
    let dir = root.join("Old");
    let weights: Vec<u8> = (0..3000u32).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    write_files(
        &dir,
        &[
            ("config.json", b"{\"architectures\":[\"OldForCausalLM\"],\"hidden_size\":64}\n"),
            ("tokenizer/tokenizer.json", b"{\"vocab\":[\"a\",\"b\"]}\n"),
            ("weights.bin", &weights),
        ],
    );
    dir
}

/// A copy of the fixture bucket, set up as the README says.
fn fixture_bucket(sb: &Sandbox) -> PathBuf {
    let bucket = sb.path().join("bucket-0.1.0");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bucket-0.1.0"))
        .arg(&bucket)
        .status()
        .unwrap();
    assert!(status.success());
    let out = sb.cmd().args(["setup", "--provider", "local", "--bucket"]).arg(&bucket).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    bucket
}

#[test]
fn a_bucket_of_the_previous_release_downloads_and_gets_versions_on_its_next_upload() {
    let sb = Sandbox::new();
    let bucket = fixture_bucket(&sb);
    let src = old_tree(&sb.src());
    let out = sb.cmd().args(["download", "Old"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(Path::new(&stdout(&out))), tree(&src));
    // Its version is the digest of its manifest: a pin works before any new upload.
    let pinned = stdout(&sb.cmd().args(["resolve", "Old"]).output().unwrap());
    let manifest = std::fs::read(bucket.join("crowecode-models/Old/manifest.json")).unwrap();
    assert_eq!(pinned, format!("Old@sha256:{}", crate::common::sha256_hex(&manifest)));
    assert!(sb.cmd().args(["download", &pinned]).output().unwrap().status.success());
    // The next upload of the same tree uploads nothing and gives it a version and latest.
    let out = sb.cmd().args(["upload", "Old", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), pinned);
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));
    let root = bucket.join("crowecode-models/Old");
    assert!(root.join("tags/latest.json").is_file());
    assert!(root.join(format!("versions/{}.json", pinned.split("sha256:").nth(1).unwrap())).is_file());
    assert_eq!(std::fs::read(root.join("manifest.json")).unwrap(), manifest, "the old manifest is untouched");
    let h: serde_json::Value =
        serde_json::from_slice(&sb.cmd().args(["--json", "history", "Old"]).output().unwrap().stdout).unwrap();
    assert_eq!(h["versions"].as_array().unwrap().len(), 1, "{h}");
}

#[test]
fn the_previous_release_downloads_the_newest_version_from_a_bucket_this_one_wrote() {
    let sb = local_machine();
    let src = old_tree(&sb.src());
    for v in 0..2 {
        write_files(&src, &[("config.json", format!("{{\"v\":{v}}}").as_bytes())]);
        // Bucket format 1: what 0.1.0 reads (a fleet with 0.1.0 machines uploads so).
        let out =
            sb.cmd().args(["upload", "Old", "--format", "1", "--tag", "prod", "--from"]).arg(&src).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (out, _) = old_download(&sb, "Old");
    assert!(out.status.success(), "release 0.1.0: {}", stderr(&out));
    assert_eq!(tree(Path::new(&stdout(&out))), tree(&src), "the newest version");
}

/// A machine set up as the README says, on a local bucket (`sb.bucket()`).
fn local_machine() -> Sandbox {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["setup", "--provider", "local", "--create-bucket", "--bucket"])
        .arg(sb.bucket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    sb
}

/// `download MODEL` by release 0.1.0, from its own home, on the bucket of `sb`; and that home.
fn old_download(sb: &Sandbox, model: &str) -> (std::process::Output, PathBuf) {
    let old = require_env("CROWECODE_TEST_OLD_BIN");
    let home = sb.path().join("old-home");
    let out = std::process::Command::new(&old)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CROWECODE_HOME", home.join("cache"))
        .args(["--provider", "local", "--bucket"])
        .arg(sb.bucket())
        .args(["--prefix", "crowecode-models/", "download", model])
        .output()
        .unwrap();
    (out, home)
}

/// Models uploaded in bucket format 3 (the default) and format 2: release 0.1.0 refuses each
/// with a clear message and exit 1, installing nothing; it never gets a wrong model.
#[test]
fn the_previous_release_refuses_a_format_2_or_3_model_and_installs_nothing() {
    let sb = local_machine();
    let src = old_tree(&sb.src());
    for (model, format) in [("New", None), ("Mid", Some("2"))] {
        let mut cmd = sb.cmd();
        cmd.args(["upload", model, "--from"]).arg(&src);
        if let Some(f) = format {
            cmd.args(["--format", f]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let (out, home) = old_download(&sb, model);
        assert_eq!(out.status.code(), Some(1), "release 0.1.0: {}", stderr(&out));
        let newer = format!("manifest format {} is newer", format.unwrap_or("3"));
        assert!(stderr(&out).contains(&newer), "{}", stderr(&out));
        assert!(stderr(&out).contains("upgrade crowecode-cloud"), "{}", stderr(&out));
        assert!(stdout(&out).is_empty(), "no path is printed: {}", stdout(&out));
        assert!(!home.join(format!("cache/models/{model}")).exists(), "nothing installed");
    }
}

/// A bucket written in format 2 (sha256 chunk digests) keeps downloading, and its next version,
/// uploaded in format 3 (BLAKE3), sends only what changed: the upload finds the earlier chunks
/// by their sha256. A machine holding the format 2 version fetches only the changed file.
#[test]
fn a_format_2_bucket_keeps_working_and_its_next_version_costs_what_changed() {
    let sb = local_machine();
    let src = sb.src().join("Shift");
    let shard = crate::common::noise(6 << 20, 5);
    write_files(&src, &[("weights.bin", &shard), ("config.json", b"{\"v\": 1}")]);
    let out = sb.cmd().args(["--json", "upload", "Shift", "--format", "2", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"][0]["format"], 2, "{v}");
    let old_reference = v["models"][0]["reference"].as_str().unwrap().to_string();
    let out = sb.cmd().args(["--json", "download", "Shift"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tree(Path::new(got["models"][0]["path"].as_str().unwrap())), tree(&src));

    // 1 MiB overwritten in the shard: format 3 reuses the format 2 chunks around it.
    let mut edited = shard.clone();
    edited[(3 << 20)..(4 << 20)].copy_from_slice(&crate::common::noise(1 << 20, 6));
    write_files(&src, &[("weights.bin", &edited), ("config.json", b"{\"v\": 2}")]);
    let out = sb.cmd().args(["--json", "upload", "Shift", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let up = &v["models"][0];
    assert_eq!(up["format"], 3, "{up}");
    let sent = up["sent"].as_u64().unwrap();
    assert!((1 << 20..=5 << 20).contains(&sent), "only the chunks around the edit: {up}");
    // The version names its chunks by BLAKE3; its files keep their sha256.
    let version = std::fs::read_dir(sb.bucket().join("crowecode-models/Shift/versions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json") && !p.to_string_lossy().ends_with(".loc.json"))
        .map(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap())
        .find(|m| m["format"] == 3)
        .expect("a format 3 version");
    let weights = version["files"].as_array().unwrap().iter().find(|f| f["path"] == "weights.bin").unwrap();
    assert_eq!(weights["sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&edited)));
    let first = &weights["chunks"][0];
    let len = first[1].as_u64().unwrap() as usize;
    assert_eq!(first[0], hex::encode(blake3::hash(&edited[..len]).as_bytes()), "{first}");

    // The machine holding the format 2 version: the config is new, the shard changed.
    let out = sb.cmd().args(["--json", "download", "Shift"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = &got["models"][0];
    assert_eq!(tree(Path::new(got["path"].as_str().unwrap())), tree(&src));
    assert!(got["transferred"].as_u64().unwrap() <= 7 << 20, "{got}");
    // And a fresh machine gets both versions whole, each checked by its own hash.
    let fresh = sb.path().join("fresh-home");
    for reference in ["Shift", old_reference.as_str()] {
        let out = sb.cmd().env("CROWECODE_HOME", &fresh).args(["--json", "download", reference]).output().unwrap();
        assert!(out.status.success(), "{reference}: {}", stderr(&out));
    }
}

/// The chunk sha256s that reuse of format 2 chunks needs are computed only when a format 2
/// source is there: a second model of the same files, uploaded in format 3 after a format 2
/// upload of the first, finds them through the file index and sends nothing; a tag still on a
/// format 2 version, once the latest is in format 3, lends its chunks to the next version.
#[test]
fn format_2_chunks_are_found_by_sha256_through_the_file_index_and_a_tag() {
    let sb = local_machine();
    let up = |model: &str, dir: &Path, extra: &[&str]| {
        let out = sb.cmd().args(["--json", "upload", model, "--from"]).arg(dir).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["models"][0].clone()
    };
    let shard = crate::common::noise(6 << 20, 15);
    let src = sb.src().join("One");
    write_files(&src, &[("weights.bin", &shard), ("config.json", b"{}")]);
    assert_eq!(up("One", &src, &["--format", "2", "--tag", "keep"])["format"], 2);
    // Another name, the same files, the default format: every chunk is in the bucket already.
    let two = up("Two", &src, &[]);
    assert_eq!((two["format"].as_u64(), two["sent"].as_u64()), (Some(3), Some(0)), "{two}");

    // One: a format 3 version of other bytes becomes the latest; `keep` stays on format 2.
    let other = sb.src().join("Other");
    write_files(&other, &[("weights.bin", &crate::common::noise(2 << 20, 16))]);
    assert_eq!(up("One", &other, &[])["format"], 3);
    // Then the first shard with 1 MiB changed: its other chunks come from `keep`'s, by sha256.
    let mut edited = shard.clone();
    edited[(2 << 20)..(3 << 20)].copy_from_slice(&crate::common::noise(1 << 20, 17));
    write_files(&src, &[("weights.bin", &edited)]);
    let three = up("One", &src, &[]);
    let sent = three["sent"].as_u64().unwrap();
    assert!((1 << 20..=5 << 20).contains(&sent), "only the chunks around the edit: {three}");
    let fresh = sb.path().join("fresh-home");
    for (reference, bytes) in [("One", &edited), ("Two", &shard)] {
        let out = sb.cmd().env("CROWECODE_HOME", &fresh).args(["download", reference]).output().unwrap();
        assert!(out.status.success(), "{reference}: {}", stderr(&out));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(std::fs::read(Path::new(&path).join("weights.bin")).unwrap() == *bytes, "{reference}");
    }
}

/// A machine holding a version installed from bucket format 1 fetches only what changed of the
/// next version in format 3: its files are found by their sha256 (and hashed before use).
#[test]
fn a_format_1_install_is_reused_by_the_next_version_in_chunks() {
    let sb = local_machine();
    let src = sb.src().join("Mixed");
    write_files(&src, &[("weights.bin", &crate::common::noise(4 << 20, 3)), ("config.json", b"{\"v\": 1}")]);
    let out = sb.cmd().args(["upload", "Mixed", "--format", "1", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sb.cmd().args(["download", "Mixed", "-q"]).output().unwrap().status.success());
    write_files(&src, &[("config.json", b"{\"v\": 2}")]);
    assert!(sb.cmd().args(["upload", "Mixed", "-q", "--from"]).arg(&src).output().unwrap().status.success());
    let out = sb.cmd().args(["--json", "download", "Mixed"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = &v["models"][0];
    assert_eq!(got["format"], 3, "{got}");
    assert!(got["transferred"].as_u64().unwrap() < 64 << 10, "only the config: {got}");
    assert_eq!(tree(Path::new(got["path"].as_str().unwrap())), tree(&src));
}
