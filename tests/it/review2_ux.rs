//! The second review's wrong results and rough edges in what the tool prints: cache directories
//! named by version (W4, U4), settings named by where they came from (U2, U7), and the smaller
//! messages of U7. Each run from a fresh home with the documented setup.

use std::path::Path;

use crate::common::{local_bucket, ok, run, run_after, stderr, stdout, write_files};
use crate::mirror::machine_with_prefix;
use crate::review2::up;
use crate::user_paths::Provider;

fn short(pinned: &str) -> &str {
    &pinned.split_once("@sha256:").expect("a pinned reference").1[..12]
}

fn base(dir: &str) -> String {
    Path::new(dir).file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- W4, U4: directories by version

/// Two versions of one tree (a signed one, and `upload --force` of it again) keep apart in the
/// cache; each directory is named by the version id that `download` takes back; the lines say
/// "version", label by reference, and `--offline` under `require_signature` serves the signed one.
fn twins_keep_apart(p: Provider, prefix: Option<&str>) {
    let (mut sb, _) = machine_with_prefix(p, prefix);
    let key = sb.path().join("ci.key");
    let out = sb.cmd().args(["keygen", "-q", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success() && stderr(&out).is_empty(), "keygen -q is quiet: {}", stderr(&out));
    sb.env("CROWECODE_TRUSTED_KEYS", &format!("{}.pub", key.display()));
    let dir = sb.src().join("A");
    write_files(&dir, &[("w.bin", b"same tree\n")]);
    let mut c = sb.cmd();
    let signed = c.args(["upload", "A", "--sign-key"]).arg(&key).arg("--from").arg(&dir).output().unwrap();
    assert!(signed.status.success(), "{p:?}: {}", stderr(&signed));
    let v1 = stdout(&signed);
    let said = stderr(&signed);
    assert!(said.contains(&format!("as version {}", short(&v1))), "{p:?}: {said}");
    // The default format (3, chunks) says what it sent in packs and prints no other digest
    // (format 1 names its archive's).
    assert!(said.contains("new pack") && !said.contains("archive sha256 "), "{p:?}: {said}");
    let mut c = sb.cmd();
    let twin = c.args(["upload", "A", "--force", "--no-latest", "-q", "--from"]).arg(&dir).output().unwrap();
    let v2 = stdout(&twin);
    assert_ne!(v1, v2, "{p:?}: --force makes a second version");

    let got = run(&sb, &["download", "A", "--require-signature"]);
    assert!(got.status.success(), "{p:?}: {}", stderr(&got));
    let latest_dir = stdout(&got);
    assert_eq!(base(&latest_dir), format!("A@{}", short(&v1)), "{p:?}: the path names the version");
    assert!(stderr(&got).contains(&format!("version {}", short(&v1))), "{p:?}: {}", stderr(&got));
    // The printed name is a reference.
    assert_eq!(ok(&sb, &["download", &base(&latest_dir), "-q"]), latest_dir);

    let twin_got = run(&sb, &["download", &v2]);
    assert!(twin_got.status.success(), "{p:?}: {}", stderr(&twin_got));
    let twin_dir = stdout(&twin_got);
    assert_eq!(base(&twin_dir), format!("A@{}", short(&v2)), "{p:?}");
    let label = format!("A@{}: downloaded and verified", short(&v2));
    assert!(stderr(&twin_got).lines().any(|l| l.starts_with(&label)), "labelled by reference: {}", stderr(&twin_got));
    // Of chunks: what came from the bucket, in how many requests, and what this machine had.
    assert!(stderr(&twin_got).contains("were on this machine already"), "{p:?}: {}", stderr(&twin_got));

    // A storage outage: both serve from the cache, each as itself.
    let mut off = sb.cmd();
    off.env("CROWECODE_REQUIRE_SIGNATURE", "1").args(["download", "A", "--offline", "-q"]);
    let off = off.output().unwrap();
    assert!(off.status.success(), "{p:?}: offline latest: {}", stderr(&off));
    assert_eq!(stdout(&off), latest_dir);
    assert_eq!(ok(&sb, &["download", &v2, "--offline", "-q"]), twin_dir);
    ok(&sb, &["tag", &v2, "prod", "-q"]);
    let prod = run(&sb, &["download", "A:prod"]);
    assert!(stderr(&prod).contains("A:prod: already in the cache"), "{p:?}: {}", stderr(&prod));
}

#[test]
fn w4_u4_twins_keep_apart_and_paths_name_versions_on_the_local_provider() {
    twins_keep_apart(Provider::Local, None);
}

#[test]
#[cfg(feature = "s3")]
fn w4_u4_twins_keep_apart_and_paths_name_versions_on_moto() {
    twins_keep_apart(Provider::S3, Some(""));
}

#[test]
#[cfg(feature = "gcs")]
fn w4_u4_twins_keep_apart_and_paths_name_versions_on_fake_gcs() {
    twins_keep_apart(Provider::Gcs, None);
}

#[test]
#[cfg(feature = "azure")]
fn w4_u4_twins_keep_apart_and_paths_name_versions_on_azurite() {
    twins_keep_apart(Provider::Azure, Some(""));
}

/// A cache of an earlier release named version directories by archive digest: such a directory,
/// recorded as holding the version, is used where it is, not downloaded again.
#[test]
fn a_cache_directory_named_by_an_earlier_release_is_still_used() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    up(&sb, "A", "v1", &[]);
    let dir = ok(&sb, &["download", "A", "-q"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}.manifest.json")).unwrap()).unwrap();
    let archive = manifest["archive_sha256"].as_str().unwrap().to_string();
    let old = Path::new(&dir).with_file_name(format!("A@{}", &archive[..12]));
    for suffix in ["", ".manifest.json", ".version"] {
        std::fs::rename(format!("{dir}{suffix}"), format!("{}{suffix}", old.display())).unwrap();
    }
    let link = sb.cache().join("models/A");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(Path::new(".versions").join(old.file_name().unwrap()), &link).unwrap();
    let again = run(&sb, &["download", "A"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), old.display().to_string());
    assert!(stderr(&again).contains("already current"), "{}", stderr(&again));
}

// ---------------------------------------------------------------- U2, U7: settings by source

#[test]
#[cfg(feature = "s3")]
fn u2_bad_mirror_and_proxy_urls_are_named_by_their_source() {
    let (sb, _) = machine_with_prefix(Provider::S3, Some("u2/"));
    let mut c = sb.cmd();
    let out = c.env("CROWECODE_MIRROR", "ftp://cache.local").arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CROWECODE_MIRROR: invalid mirror URL"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("cloud.json"), "the config file is fine: {}", stderr(&out));

    let out = run(&sb, &["list", "--data-proxy", "http://127.0.0.1:3128/?sig=SECRET"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--data-proxy: invalid data proxy URL"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("SECRET"));

    let out = run(&sb, &["list", "--mirror", "http://127.0.0.1:99999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("port \"99999\""), "{}", stderr(&out));

    // In the config file, it is the file's error (exit 3), naming the setting.
    let conf = sb.path().join("bad.json");
    std::fs::write(&conf, r#"{"provider":"local","config":{"bucket":"/tmp/x","mirror":"http://h:0"}}"#).unwrap();
    let out = sb.cmd().arg("--config").arg(&conf).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.json") && stderr(&out).contains("invalid mirror URL"), "{}", stderr(&out));
}

#[test]
fn u7_transfer_variables_are_named_and_empty_means_unset() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    up(&sb, "A", "v1", &[]);
    for (var, value) in [
        ("CROWECODE_PART_SIZE", "abc"),
        ("CROWECODE_MAX_MEMORY", "lots"),
        ("CROWECODE_LIMIT_RATE", "5X"),
        ("CROWECODE_CONCURRENCY", "0"),
    ] {
        let out = sb.cmd().env(var, value).args(["download", "A", "-q"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}: {}", stderr(&out));
        assert!(stderr(&out).starts_with(&format!("error: {var}: ")), "{var}: {}", stderr(&out));
        assert!(!stderr(&out).contains("'--"), "{var}: not the flag's name: {}", stderr(&out));
    }
    let out = sb.cmd().env("CROWECODE_PART_SIZE", "").args(["download", "A", "-q"]).output().unwrap();
    assert!(out.status.success(), "an empty variable is unset: {}", stderr(&out));
    // The flag wins over the variable.
    let out = sb.cmd().env("CROWECODE_PART_SIZE", "abc").args(["download", "A", "-q", "--part-size", "8M"]).output();
    assert!(out.unwrap().status.success());
}

#[test]
fn u7_missing_tags_and_versions_of_an_existing_model_point_at_history() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    up(&sb, "A", "v1", &[]);
    for (reference, what) in [("A:nosuch", "tag nosuch of model A"), ("A@000000000000", "version A@000000000000")] {
        let out = run(&sb, &["download", reference]);
        assert_eq!(out.status.code(), Some(5), "{reference}");
        assert!(stderr(&out).contains(&format!("{what} not found")), "{}", stderr(&out));
        assert!(stderr(&out).contains("crowecode-cloud history A"), "{}", stderr(&out));
    }
}

#[test]
fn u7_an_oversized_signature_is_called_too_large_and_verify_hints_at_signing() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    let key = sb.path().join("ci.key");
    assert!(sb.cmd().args(["keygen", "-q", "--out"]).arg(&key).output().unwrap().status.success());
    sb.env("CROWECODE_TRUSTED_KEYS", &format!("{}.pub", key.display()));
    let v = up(&sb, "A", "v1", &[]);
    let hex = v.split_once("@sha256:").unwrap().1;
    let sig = local_bucket(&sb).join(format!("crowecode-models/A/versions/{hex}.0123456789abcdef.sig"));
    // Sparse: its size is over the cap without writing 64 MiB.
    std::fs::File::create(sig).unwrap().set_len((64 << 20) + 1).unwrap();
    let out = run(&sb, &["download", &v, "--require-signature"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("too large"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("it is not signed"), "{}", stderr(&out));

    // Installed unsigned, then checked under require_signature: the hint is to sign, since a
    // fresh copy (`download --force`) would be refused the same way.
    ok(&sb, &["download", "A", "-q"]);
    let out = run(&sb, &["verify", "A", "--require-signature"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stdout(&out).contains("REFUSED"), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("crowecode-cloud sign A@{}", &hex[..12])), "{}", stderr(&out));
}

// ---------------------------------------------------------------- U6: a stray version object

/// An object in `versions/` whose content is not what its name says (stray, half-copied) is
/// skipped with a warning: it makes no prefix ambiguous, and `history` and `prune` go on.
#[test]
fn u6_a_stray_version_object_is_skipped_with_a_warning() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let v = up(&sb, "A", "v1", &[]);
    let hex = v.split_once("@sha256:").unwrap().1;
    let stray = format!("{}{}", &hex[..20], "f".repeat(44));
    std::fs::write(local_bucket(&sb).join(format!("crowecode-models/A/versions/{stray}.json")), b"{}").unwrap();
    let out = run(&sb, &["download", &format!("A@{}", &hex[..12])]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("skipped crowecode-models/A/versions/{stray}.json")), "{}", stderr(&out));
    let out = run(&sb, &["history", "A"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&hex[..12]) && !stdout(&out).contains(&stray[..24]), "{}", stdout(&out));
    let out = run(&sb, &["prune", "--remote", "A"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---------------------------------------------------------------- delete --all against writers

/// Rounds of `delete A --all --yes` racing a `tag` and an `upload` of A, started at varying
/// moments. Whatever the interleaving, no tag is left naming something missing: every tag that
/// remains downloads, and a move or upload that reports success names a version that downloads
/// (or the model was deleted after it, with its tags).
fn delete_all_races_writers(p: Provider, prefix: Option<&str>, rounds: usize) {
    let (mut sb, _) = machine_with_prefix(p, prefix);
    sb.env("CROWECODE_SWEEP_WINDOW_MS", "800");
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..rounds {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(up(&sb, "A", &format!("r{round}-v{i}"), &[]));
        }
        let mut tag = sb.std_cmd();
        tag.args(["tag", &v[0], "prod", "-q"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let delay = std::time::Duration::from_millis((round as u64 * 29) % 120);
        let mover = run_after(tag, delay);
        let dir = sb.src().join(format!("new-{round}"));
        write_files(&dir, &[("w.bin", format!("r{round}-new\n").as_bytes())]);
        let mut upload = sb.std_cmd();
        upload.args(["upload", "A", "-q", "--from"]).arg(&dir);
        let up_delay = std::time::Duration::from_millis((round as u64 * 47) % 120);
        let uploader = run_after(upload, up_delay);
        let deleted = run(&sb, &["delete", "A", "--all", "--yes", "-q"]);
        let (tagged, uploaded) = (mover.join().unwrap(), uploader.join().unwrap());
        for (what, out) in [("delete", &deleted), ("tag", &tagged), ("upload", &uploaded)] {
            let code = out.status.code();
            assert!(matches!(code, Some(0 | 5 | 8)), "{p:?} round {round}: {what} exited {code:?}: {}", stderr(out));
            *outcomes.entry(format!("{what} {code:?}")).or_insert(0) += 1;
        }
        // Every tag that is left names a whole version.
        for t in ["latest", "prod"] {
            let got = run(&sb, &["download", &format!("A:{t}"), "-q", "--force"]);
            assert!(
                matches!(got.status.code(), Some(0 | 5)),
                "{p:?} round {round}: A:{t} names something missing: {}",
                stderr(&got)
            );
            if t == "latest" && got.status.success() && uploaded.status.success() {
                let text = std::fs::read_to_string(Path::new(&stdout(&got)).join("w.bin")).unwrap();
                assert!(text.starts_with(&format!("r{round}-")), "{p:?} round {round}: {text}");
            }
        }
        let _ = run(&sb, &["delete", "A", "--all", "--yes", "-q"]);
    }
    eprintln!("{p:?} {prefix:?}: {outcomes:?}");
}

#[test]
fn delete_all_racing_tag_moves_and_uploads_leaves_no_dangling_tag_on_the_local_provider() {
    delete_all_races_writers(Provider::Local, None, 10);
}

#[test]
#[cfg(feature = "s3")]
fn delete_all_racing_tag_moves_and_uploads_leaves_no_dangling_tag_on_moto() {
    delete_all_races_writers(Provider::S3, None, 5);
    delete_all_races_writers(Provider::S3, Some(""), 3);
}

#[test]
#[cfg(feature = "gcs")]
fn delete_all_racing_tag_moves_and_uploads_leaves_no_dangling_tag_on_fake_gcs() {
    delete_all_races_writers(Provider::Gcs, Some(""), 3);
}

#[test]
#[cfg(feature = "azure")]
fn delete_all_racing_tag_moves_and_uploads_leaves_no_dangling_tag_on_azurite() {
    delete_all_races_writers(Provider::Azure, None, 4);
}

// ---------------------------------------------------------------- DL3 on a cloud store

/// A version written by an uploader whose clock is two days behind is young by the store's clock
/// on S3 too: the default prune keeps it.
#[tokio::test(flavor = "multi_thread")]
#[cfg(feature = "s3")]
async fn dl3_a_version_with_a_skewed_created_at_survives_the_default_prune_on_moto() {
    let (mut sb, bucket) = machine_with_prefix(Provider::S3, Some("dl3/"));
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // the skewed copy is of a format 1 version
    up(&sb, "A", "v1", &[]);
    let c = up(&sb, "A", "candidate", &["--no-latest"]);
    let overrides = crowecode_cloud::config::Overrides {
        provider: Some("s3".into()),
        bucket: Some(bucket),
        endpoint: Some(crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT")),
        region: Some("us-east-1".into()),
        prefix: Some("dl3/".into()),
        ..Default::default()
    };
    let store = crate::conformance::provider_for(overrides, sb.path()).await;
    let old = format!("dl3/A/versions/{}.json", c.trim_start_matches("A@sha256:"));
    let text =
        String::from_utf8(crowecode_cloud::provider::ProviderExt::get_bytes(&*store, &old).await.unwrap().to_vec())
            .unwrap();
    let at = text.find("\"created_at\": \"").unwrap() + 15;
    let skewed = format!("{}2026-01-01T08:00:00Z{}", &text[..at], &text[at + 20..]);
    let id = crate::common::sha256_hex(skewed.as_bytes());
    let new_key = format!("dl3/A/versions/{id}.json");
    store.put(&new_key, skewed.into(), crowecode_cloud::provider::PutMode::Create).await.unwrap();
    store.delete(&old).await.unwrap();
    let sb2 = &sb;
    tokio::task::block_in_place(|| {
        ok(sb2, &["prune", "--remote", "--yes"]);
        let dir = ok(sb2, &["download", &format!("A@sha256:{id}"), "-q"]);
        assert_eq!(std::fs::read_to_string(Path::new(&dir).join("w.bin")).unwrap().trim(), "candidate");
    });
}
