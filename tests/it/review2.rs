//! The second hostile review (versions, signatures, mirrors, transfer flags): each defect
//! reproduced as the review ran it, from a fresh home with the documented setup, on more than
//! one provider, and shown fixed. Races run many rounds; failure paths are read for secrets.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{Sandbox, local_bucket, ok, run, run_after, stderr, stdout, write_files};
use crate::conformance::fastrand_u32;
use crate::mirror::machine_with_prefix;
use crate::user_paths::Provider;

/// Uploads a one-file model whose file says `text`; the pinned reference.
pub(crate) fn up(sb: &Sandbox, model: &str, text: &str, extra: &[&str]) -> String {
    let dir = sb.src().join(model);
    let _ = std::fs::remove_dir_all(&dir);
    write_files(&dir, &[("w.bin", format!("{text}\n").as_bytes())]);
    let out = sb.cmd().args(["upload", model, "-q", "--from"]).arg(&dir).args(extra).output().unwrap();
    assert!(out.status.success(), "upload {model} {text}: {}", stderr(&out));
    stdout(&out)
}

/// What the version a reference names holds.
fn content(sb: &Sandbox, reference: &str) -> String {
    let dir = ok(sb, &["download", reference, "-q"]);
    std::fs::read_to_string(Path::new(&dir).join("w.bin")).unwrap().trim().to_string()
}

// ---------------------------------------------------------------- DL1: prune against tag moves

/// Rounds of: versions nobody references, then `tag V0 prod` and an `upload` of a new tree, each
/// started at a varying moment while `prune --remote --yes --min-age 0s` sweeps them. Whatever
/// the interleaving, a move or upload that reports success names a version that downloads, one
/// that fails leaves no dangling tag, and latest always downloads.
fn prune_races_tag_moves(p: Provider, prefix: Option<&str>, rounds: usize) {
    let (mut sb, _) = machine_with_prefix(p, prefix);
    // A sweep refuses to delete when reading the roots took over half the window; against a
    // shared emulator on a loaded 2-core machine that read can take a second.
    sb.env("CROWECODE_SWEEP_WINDOW_MS", if matches!(p, Provider::Local) { "800" } else { "2400" });
    let (mut moved, mut undone, mut gone, mut uploads_undone) = (0, 0, 0, 0);
    for round in 0..rounds {
        let _ = run(&sb, &["delete", "A", "--all", "--yes", "-q"]);
        let mut v = Vec::new();
        for i in 0..6 {
            v.push(up(&sb, "A", &format!("r{round}-v{i}"), &[]));
        }
        let delay = Duration::from_millis((round as u64 * 23) % 160);
        let mut tag = sb.std_cmd();
        tag.args(["tag", &v[0], "prod", "-q"]).stdout(Stdio::null()).stderr(Stdio::piped());
        let mover = run_after(tag, delay);
        // And an upload of a new tree, whose version the sweep may find before latest names it.
        let dir = sb.src().join(format!("new-{round}"));
        write_files(&dir, &[("w.bin", format!("r{round}-new\n").as_bytes())]);
        let mut upload = sb.std_cmd();
        upload.args(["upload", "A", "-q", "--from"]).arg(&dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        let up_delay = Duration::from_millis((round as u64 * 41) % 160);
        let uploader = run_after(upload, up_delay);
        let prune = run(&sb, &["prune", "--remote", "--yes", "--min-age", "0s", "-q"]);
        let tagged = mover.join().unwrap();
        let uploaded = uploader.join().unwrap();
        match uploaded.status.code() {
            Some(0) => assert_eq!(content(&sb, &stdout(&uploaded)), format!("r{round}-new"), "{p:?} round {round}"),
            Some(8) => uploads_undone += 1,
            other => panic!("{p:?} round {round}: upload exited {other:?}: {}", stderr(&uploaded)),
        }
        // Whatever happened, latest names something that downloads.
        let latest = run(&sb, &["download", "A", "-q", "--force"]);
        assert!(latest.status.success(), "{p:?} round {round}: latest: {}", stderr(&latest));
        assert!(prune.status.success(), "{p:?} round {round}: prune: {}", stderr(&prune));
        let got = run(&sb, &["download", "A:prod", "-q"]);
        match tagged.status.code() {
            Some(0) => {
                moved += 1;
                assert!(
                    got.status.success(),
                    "{p:?} round {round}: the tag move succeeded but A:prod does not download: {}",
                    stderr(&got)
                );
                let dir = stdout(&got);
                let text = std::fs::read_to_string(Path::new(&dir).join("w.bin")).unwrap();
                assert_eq!(text.trim(), format!("r{round}-v0"), "{p:?} round {round}");
            }
            // Resolved after the sweep deleted it: nothing was moved.
            Some(5) => {
                gone += 1;
                assert_eq!(got.status.code(), Some(5), "{p:?} round {round}: {}", stderr(&got));
            }
            Some(8) => {
                undone += 1;
                assert!(stderr(&tagged).contains("prune --remote"), "{p:?}: {}", stderr(&tagged));
                assert_eq!(got.status.code(), Some(5), "{p:?} round {round}: the undone tag is gone: {}", stderr(&got));
            }
            other => panic!("{p:?} round {round}: tag exited {other:?}: {}", stderr(&tagged)),
        }
        // Nothing a tag names is ever missing: `history` reads every tag and version.
        assert!(run(&sb, &["history", "A"]).status.success(), "{p:?} round {round}");
    }
    assert_eq!(moved + undone + gone, rounds);
    eprintln!(
        "{p:?} {prefix:?}: {moved} moves made, {undone} undone, {gone} found the version gone; {uploads_undone} uploads undone"
    );
}

#[test]
fn dl1_a_tag_moved_during_a_prune_never_lands_on_a_deleted_version_on_the_local_provider() {
    prune_races_tag_moves(Provider::Local, None, 12);
    prune_races_tag_moves(Provider::Local, Some(""), 4);
}

#[cfg(feature = "s3")]
#[test]
fn dl1_a_tag_moved_during_a_prune_never_lands_on_a_deleted_version_on_moto() {
    prune_races_tag_moves(Provider::S3, None, 5);
    prune_races_tag_moves(Provider::S3, Some(""), 3);
}

#[cfg(feature = "gcs")]
#[test]
fn dl1_a_tag_moved_during_a_prune_never_lands_on_a_deleted_version_on_fake_gcs() {
    prune_races_tag_moves(Provider::Gcs, Some("team/models/"), 4);
}

#[cfg(feature = "azure")]
#[test]
fn dl1_a_tag_moved_during_a_prune_never_lands_on_a_deleted_version_on_azurite() {
    prune_races_tag_moves(Provider::Azure, None, 3);
    prune_races_tag_moves(Provider::Azure, Some(""), 3);
}

// ---------------------------------------------------------------- DL2, DL3

#[test]
fn dl2_delete_all_removes_only_what_the_tool_wrote() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    up(&sb, "A", "v1", &[]);
    let root = local_bucket(&sb).join("crowecode-models");
    write_files(&root.join("A/docs"), &[("README.md", b"model card\n")]);
    let mut other = sb.cmd();
    other.args(["--prefix", "crowecode-models/A/", "upload", "X", "-q", "--from"]).arg(sb.src().join("A"));
    assert!(other.output().unwrap().status.success());
    let out = run(&sb, &["delete", "A", "--all", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("left alone") && stderr(&out).contains("docs/README.md"), "{}", stderr(&out));
    assert!(root.join("A/docs/README.md").is_file());
    assert!(root.join("A/X/manifest.json").is_file(), "another prefix's model survives");
    assert!(!root.join("A/manifest.json").exists() && !root.join("A/tags").join("latest.json").exists());
    let x = sb.cmd().args(["--prefix", "crowecode-models/A/", "download", "X", "-q"]).output().unwrap();
    assert!(x.status.success(), "{}", stderr(&x));
}

#[cfg(feature = "s3")]
#[test]
fn dl2_delete_all_on_moto_leaves_a_nested_prefix_alone() {
    let (sb, _) = machine_with_prefix(Provider::S3, Some(""));
    up(&sb, "A", "v1", &[]);
    up(&sb, "X", "x1", &["--prefix", "A/"]);
    let out = run(&sb, &["delete", "A", "--all", "--yes", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(j["left_alone"].as_array().unwrap().iter().any(|k| k.as_str().unwrap().starts_with("A/X/")), "{j}");
    assert_eq!(run(&sb, &["download", "A", "-q"]).status.code(), Some(5));
    assert!(run(&sb, &["--prefix", "A/", "download", "X", "-q"]).status.success());
}

#[test]
fn dl3_a_version_from_an_uploader_with_a_slow_clock_is_young_by_the_stores_clock() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    up(&sb, "A", "v1", &[]);
    let c = up(&sb, "A", "candidate", &["--no-latest"]);
    // The same candidate as an uploader whose clock is two days behind writes it.
    let versions = local_bucket(&sb).join("crowecode-models/A/versions");
    let old = versions.join(format!("{}.json", c.trim_start_matches("A@sha256:")));
    let text = std::fs::read_to_string(&old).unwrap();
    let at = text.find("\"created_at\": \"").unwrap() + 15;
    let skewed = format!("{}2026-01-01T08:00:00Z{}", &text[..at], &text[at + 20..]);
    let id = crate::common::sha256_hex(skewed.as_bytes());
    std::fs::write(versions.join(format!("{id}.json")), &skewed).unwrap();
    std::fs::remove_file(&old).unwrap();
    ok(&sb, &["prune", "--remote", "--yes"]);
    assert_eq!(content(&sb, &format!("A@sha256:{id}")), "candidate");
    // Old by the store's clock, it goes.
    let f = std::fs::File::options().write(true).open(versions.join(format!("{id}.json"))).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3 * 86400)).unwrap();
    ok(&sb, &["prune", "--remote", "--yes"]);
    assert_eq!(run(&sb, &["download", &format!("A@sha256:{id}"), "-q", "--force"]).status.code(), Some(5));
}

// ---------------------------------------------------------------- S1, S2: no credential printed

/// What no output may contain: a presigned URL's or a SAS's credential parts.
fn assert_no_credential(what: &str, text: &str) {
    for needle in
        ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig=", "se=20", "session-token-value"]
    {
        assert!(!text.contains(needle), "{what}: {needle} printed:\n{text}");
    }
}

fn mirror_down() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn failing_mirrors_print_no_credential(p: Provider, prefix: Option<&str>) {
    let (mut sb, _) = machine_with_prefix(p, prefix);
    sb.env("AWS_SESSION_TOKEN", "session-token-value");
    let dir = sb.src().join("M");
    write_files(&dir, &[("w.bin", &crate::common::noise(3 << 20, 7))]);
    let out = sb.cmd().args(["upload", "M", "-q", "--from"]).arg(&dir).output().unwrap();
    // moto accepts any session token; the point is what the failure paths print.
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    for flag in ["--mirror", "--data-proxy"] {
        for json in [false, true] {
            let down = mirror_down();
            let mut c = sb.cmd();
            c.args(["download", "M", "--force", flag, &down, "-vv"]);
            if json {
                c.arg("--json");
            }
            let out = c.output().unwrap();
            let text = format!("{}{}", stdout(&out), stderr(&out));
            assert!(out.status.success(), "{p:?} {flag}: {text}");
            assert!(
                text.contains(&down[7..]) || matches!(p, Provider::Local),
                "{p:?} {flag}: the failure is reported: {text}"
            );
            assert_no_credential(&format!("{p:?} {flag} json={json}"), &text);
        }
    }
}

#[cfg(feature = "s3")]
#[test]
fn s1_failing_mirrors_and_proxies_print_no_presigned_url_on_moto() {
    failing_mirrors_print_no_credential(Provider::S3, None);
    failing_mirrors_print_no_credential(Provider::S3, Some(""));
}

#[cfg(feature = "azure")]
#[test]
fn s1_failing_mirrors_and_proxies_print_no_sas_on_azurite() {
    failing_mirrors_print_no_credential(Provider::Azure, None);
    failing_mirrors_print_no_credential(Provider::Azure, Some(""));
}

#[cfg(feature = "gcs")]
#[test]
fn s1_failing_mirrors_and_proxies_print_no_credential_on_fake_gcs() {
    failing_mirrors_print_no_credential(Provider::Gcs, None);
}

#[test]
fn s1_failing_mirrors_print_nothing_secret_on_the_local_provider() {
    failing_mirrors_print_no_credential(Provider::Local, Some(""));
}

/// A mirror that counts the requests it receives and keeps their first lines.
#[cfg(feature = "azure")]
fn recording_mirror() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string());
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

#[cfg(feature = "azure")]
#[test]
fn s2_a_sas_credential_is_never_sent_to_a_mirror() {
    for prefix in [None, Some("")] {
        let mut sb = Sandbox::new();
        let a = crate::azure::azurite();
        let container = format!("sas-{:08x}", fastrand_u32());
        // Made with the key, then used only as a SAS, as a user holding just a SAS would.
        let admin = sb
            .cmd()
            .env("AZURE_STORAGE_CONNECTION_STRING", a.connection_string(&a.key))
            .args([
                "--provider",
                "azure",
                "--bucket",
                &container,
                "--account",
                &a.account,
                "--endpoint",
                &a.endpoint,
                "setup",
                "--create-bucket",
                "-q",
            ])
            .output()
            .unwrap();
        assert!(admin.status.success(), "{}", stderr(&admin));
        sb.env("AZURE_STORAGE_SAS_TOKEN", &a.account_sas("rwdlac"));
        let mut args: Vec<String> =
            ["--provider", "azure", "--bucket", &container, "--account", &a.account, "--endpoint", &a.endpoint]
                .iter()
                .map(|s| s.to_string())
                .collect();
        if let Some(p) = prefix {
            args.extend(["--prefix".into(), p.into()]);
        }
        assert!(sb.cmd().args(&args).args(["setup", "-q"]).output().unwrap().status.success());
        up(&sb, "M", "sas", &[]);
        let (mirror, seen) = recording_mirror();
        let out = run(&sb, &["download", "M", "--mirror", &mirror, "-q"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(seen.lock().unwrap().is_empty(), "the mirror received: {:?}", seen.lock().unwrap());
        assert_no_credential("azure sas", &stderr(&out));
        let out = run(&sb, &["download", "M", "--force", "--mirror", &mirror]);
        assert!(stderr(&out).contains("SAS"), "the user is told why: {}", stderr(&out));
    }
}

// ---------------------------------------------------------------- S3, S4, S5: signed tag moves

fn keygen(sb: &Sandbox) -> (String, String) {
    let key = sb.path().join(format!("ci-{:08x}.key", fastrand_u32()));
    ok(sb, &["keygen", "--out", key.to_str().unwrap(), "-q"]);
    (key.display().to_string(), format!("{}.pub", key.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(e.path(), dest).unwrap();
    }
}

#[test]
fn s3_a_signed_tag_move_copied_from_another_prefix_or_bucket_is_refused() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    let (key, public) = keygen(&sb);
    sb.env("CROWECODE_TRUSTED_KEYS", &public);
    let root = local_bucket(&sb);
    for env in ["prod/", "staging/"] {
        for i in 1..=(if env == "prod/" { 2 } else { 4 }) {
            up(&sb, "A", &format!("{env}{i}"), &["--prefix", env, "--sign-key", &key]);
        }
    }
    let prod = |sb: &Sandbox, args: &[&str]| {
        let mut c = sb.cmd();
        c.env("CROWECODE_REQUIRE_SIGNATURE", "1").args(["--prefix", "prod/"]).args(args);
        c.output().unwrap()
    };
    assert!(prod(&sb, &["download", "A", "-q"]).status.success());
    // A bucket writer without a key copies staging's signed objects over prod's.
    copy_dir(&root.join("staging/A/versions"), &root.join("prod/A/versions"));
    copy_dir(&root.join("staging/A/archives"), &root.join("prod/A/archives"));
    copy_dir(&root.join("staging/_pieces"), &root.join("prod/_pieces"));
    std::fs::copy(root.join("staging/A/tags/latest.json"), root.join("prod/A/tags/latest.json")).unwrap();
    let out = prod(&sb, &["download", "A", "-q"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("staging/"), "{}", stderr(&out));
    // Another bucket, same prefix: refused too; a machine given the scope it was signed for accepts it.
    let other = sb.path().join("other-bucket");
    copy_dir(&root.join("staging"), &other.join("staging"));
    let bucket = ["--bucket", other.to_str().unwrap(), "--prefix", "staging/"];
    let out =
        sb.cmd().env("CROWECODE_REQUIRE_SIGNATURE", "1").args(bucket).args(["download", "A", "-q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    // The genuine owner re-signs in place: prod moves on.
    let v = ok(&sb, &["--prefix", "prod/", "resolve", "A"]);
    let out = sb.cmd().args(["--prefix", "prod/", "tag", &v, "latest", "--sign-key", &key]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(prod(&sb, &["download", "A", "-q"]).status.success());
}

#[test]
fn s4_move_numbers_never_go_back_after_untag_or_delete() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    let (key, public) = keygen(&sb);
    sb.env("CROWECODE_TRUSTED_KEYS", &public).env("CROWECODE_REQUIRE_SIGNATURE", "1");
    for v in ["v1", "v2", "v3-VULNERABLE"] {
        up(&sb, "A", v, &["--sign-key", &key]);
    }
    let node1 = sb.path().join("node1");
    let node = |home: &Path, args: &[&str]| sb.cmd().env("CROWECODE_HOME", home).args(args).output().unwrap();
    assert!(node(&node1, &["download", "A", "-q"]).status.success());
    let p = local_bucket(&sb).join("crowecode-models");
    let kept = sb.path().join("kept-copy");
    copy_dir(&p.join("A"), &kept);
    ok(&sb, &["delete", "A", "--all", "--yes", "-q"]);
    up(&sb, "A", "v4-fixed", &["--sign-key", &key]);
    // (a) a machine that verified the old history accepts the new one.
    let out = node(&node1, &["download", "A", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let node2 = sb.path().join("node2");
    assert!(node(&node2, &["download", "A", "-q"]).status.success());
    // (b) the deleted version's objects put back: refused as a replay.
    copy_dir(&kept, &p.join("A"));
    let out = node(&node2, &["download", "A", "-q"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("replayed"), "{}", stderr(&out));
    // untag then tag again: the new move outranks the old one.
    let fixed = ok(&sb, &["resolve", "A"]);
    ok(&sb, &["tag", &fixed, "prod", "--sign-key", &key, "-q"]);
    assert!(node(&node2, &["download", "A:prod", "-q"]).status.success());
    ok(&sb, &["untag", "A:prod", "-q"]);
    ok(&sb, &["tag", &fixed, "prod", "--sign-key", &key, "-q"]);
    let out = node(&node2, &["download", "A:prod", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn s5_a_tag_whose_move_time_is_not_a_time_is_refused_and_nothing_raw_is_printed() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let v = up(&sb, "A", "v1", &[]);
    ok(&sb, &["tag", &v, "prod", "-q"]);
    let path = local_bucket(&sb).join("crowecode-models/A/tags/prod.json");
    let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    t["moves"][0]["at"] = "\u{1b}]0;owned\u{7}\u{1b}[2J2026-12-03T08:00:00Z".into();
    std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    for args in [&["history", "A:prod"][..], &["download", "A:prod", "-q"]] {
        let out = run(&sb, args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains('\u{1b}') && !stdout(&out).contains('\u{1b}'), "{args:?}");
    }
}

// ---------------------------------------------------------------- W1–W10, U1

#[test]
fn w1_a_multi_tag_if_current_moves_all_or_nothing() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let v1 = up(&sb, "A", "v1", &[]);
    let v2 = up(&sb, "A", "v2", &[]);
    ok(&sb, &["tag", &v1, "prod", "-q"]);
    let out = run(&sb, &["tag", &v2, "prod", "latest", "--if-current", &v1]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert_eq!(ok(&sb, &["resolve", "A:prod"]), v1, "prod did not move");
}

#[test]
fn w2_tag_on_a_bucket_of_the_previous_release_stores_the_version_first() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    up(&sb, "A", "v1", &[]);
    let p = local_bucket(&sb).join("crowecode-models/A");
    std::fs::remove_dir_all(p.join("tags")).unwrap();
    std::fs::remove_dir_all(p.join("versions")).unwrap();
    ok(&sb, &["tag", "A", "prod", "-q"]);
    assert_eq!(content(&sb, "A:prod"), "v1");
}

#[test]
fn w3_rollback_twice_steps_back_twice() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    for v in ["v1", "v2", "v3-bad"] {
        up(&sb, "A", v, &[]);
    }
    ok(&sb, &["rollback", "A", "-q"]);
    assert_eq!(content(&sb, "A"), "v2");
    ok(&sb, &["rollback", "A", "-q"]);
    assert_eq!(content(&sb, "A"), "v1");
    let out = run(&sb, &["rollback", "A"]);
    assert_ne!(out.status.code(), Some(0));
    assert_ne!(out.status.code(), Some(2), "a state, not a usage error: {}", stderr(&out));
    assert_eq!(content(&sb, "A"), "v1");
}

#[test]
fn w5_a_signature_of_another_version_is_refused_before_anything_is_uploaded() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let (key, _) = keygen(&sb);
    let v1 = up(&sb, "A", "v1", &["--sign-key", &key]);
    let versions = local_bucket(&sb).join("crowecode-models/A/versions");
    let sig = std::fs::read_dir(&versions)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sig"))
        .unwrap();
    let before = std::fs::read_dir(&versions).unwrap().count();
    let mut c = sb.cmd();
    c.args(["upload", "A", "--force", "--no-latest", "--signature"]).arg(&sig).arg("--from").arg(sb.src().join("A"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains(&v1[9..21]), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&versions).unwrap().count(), before, "nothing was uploaded");
}

#[test]
fn w6_deleting_a_rollback_target_needs_force_and_w7_no_latest_contradictions_are_usage_errors() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let v1 = up(&sb, "A", "v1", &[]);
    up(&sb, "A", "v2", &[]);
    let out = run(&sb, &["delete", &v1]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));
    ok(&sb, &["delete", &v1, "--force", "-q"]);
    let out = run(&sb, &["rollback", "A"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let dir = sb.src().join("A");
    for extra in [&["--tag", "latest"][..], &[]] {
        let model = if extra.is_empty() { "A:latest" } else { "A" };
        let mut c = sb.cmd();
        c.args(["upload", model, "--no-latest", "--from"]).arg(&dir).args(extra);
        assert_eq!(c.output().unwrap().status.code(), Some(2), "{model} {extra:?}");
    }
}

#[test]
fn w8_history_lists_versions_of_the_same_second_newest_first() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    for _ in 0..3 {
        up(&sb, "A", "old", &[]);
        let new = up(&sb, "A", "new", &[]);
        let h: serde_json::Value = serde_json::from_str(&ok(&sb, &["history", "A", "--json"])).unwrap();
        assert_eq!(format!("A@{}", h["versions"][0]["version"].as_str().unwrap()), new, "{h}");
    }
}

#[test]
fn w10_u1_part_sizes_outside_the_memory_budget_or_tiny_are_usage_errors() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    up(&sb, "A", "v1", &[]);
    for args in [
        &["download", "A", "--part-size", "1"][..],
        &["download", "A", "--part-size", "63K"],
        &["download", "A", "--part-size", "256M"],
        &["download", "A", "--part-size", "64M", "--max-memory", "32M"],
    ] {
        let out = run(&sb, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("hint:"), "{args:?}");
    }
    let mut c = sb.cmd();
    c.args(["upload", "A", "--force", "--part-size", "256M", "--from"]).arg(sb.src().join("A"));
    assert_eq!(c.output().unwrap().status.code(), Some(2));
    ok(&sb, &["download", "A", "--force", "--part-size", "16M", "--max-memory", "32M", "-q"]);
}
