//! Hostile and broken archives planted in the bucket behind a valid-looking manifest: each is
//! refused with exit 6, nothing is written outside the staging area, the ready model is untouched.

use std::path::Path;

use serde_json::json;

use crate::common::{Sandbox, make_model, plant_latest, sha256_hex, tar_header, tar_of, tree};

/// A sandbox with model `Evil` uploaded and downloaded (the ready version to protect).
fn ready_sandbox() -> (Sandbox, String) {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // hostile archives: bucket format 1
    let model = make_model(&sb.src(), "Evil", 42);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Evil", "--from"]).arg(&model).assert().success();
    let out = sb.local().args(["download", "Evil"]).output().unwrap();
    assert!(out.status.success());
    (sb, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// Plants `archive` and a manifest claiming `files` (path, size) for it.
fn plant(sb: &Sandbox, archive: &[u8], files: &[(&str, u64)], sha_override: Option<&str>) {
    let key = "models/Evil/archives/20260101T000000Z-deadbeef.tar";
    std::fs::write(sb.bucket().join(key), archive).unwrap();
    let entries: Vec<_> = files
        .iter()
        .map(|(p, size)| json!({"path": p, "size": size, "sha256": "0".repeat(64), "mode": 420, "offset": 512}))
        .collect();
    let manifest = json!({
        "format": 1,
        "model": "Evil",
        "archive_key": key,
        "archive_sha256": sha_override.map_or_else(|| sha256_hex(archive), str::to_string),
        "archive_size": archive.len(),
        "compression": "none",
        "files": entries,
        "dirs": [],
        "total_size": files.iter().map(|(_, s)| s).sum::<u64>(),
        "created_at": "2026-01-01T00:00:00Z",
        "tool_version": "0.0.0",
    });
    plant_latest(&sb.bucket().join("models"), "Evil", &serde_json::to_vec(&manifest).unwrap());
}

/// Downloads, expects exit 6 with `needle` in stderr, and checks nothing escaped or changed.
fn assert_refused(sb: &Sandbox, ready: &str, needle: &str) {
    let before = tree(Path::new(ready));
    let out = sb.local().args(["download", "Evil"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{needle}: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(err.contains("hint:"), "{err}");
    for entry in walkdir::WalkDir::new(sb.path()).into_iter().flatten() {
        let name = entry.file_name().to_string_lossy();
        assert!(!name.starts_with("escape") && !name.starts_with("pwned"), "{} was written", entry.path().display());
    }
    assert_eq!(
        std::fs::canonicalize(sb.cache().join("models/Evil")).unwrap(),
        std::fs::canonicalize(ready).unwrap(),
        "link unchanged"
    );
    assert_eq!(tree(Path::new(ready)), before, "ready model intact");
    assert_eq!(std::fs::read_dir(sb.cache().join(".staging")).unwrap().count(), 0, "staging removed");
}

fn file(name: &str, data: &[u8]) -> ([u8; 512], Vec<u8>) {
    (tar_header(name, b'0', data.len() as u64, ""), data.to_vec())
}

#[test]
fn absolute_paths_are_refused() {
    let (sb, ready) = ready_sandbox();
    let target = sb.path().join("escape-abs.txt");
    let name = target.display().to_string();
    plant(&sb, &tar_of(&[file(&name, b"x")]), &[("escape-abs.txt", 1)], None);
    assert_refused(&sb, &ready, "absolute path");
}

#[test]
fn parent_directory_traversal_is_refused() {
    let (sb, ready) = ready_sandbox();
    plant(&sb, &tar_of(&[file("../../../escape-dotdot.txt", b"x")]), &[("escape-dotdot.txt", 1)], None);
    assert_refused(&sb, &ready, "\"..\"");
}

#[test]
fn symlinks_and_hardlinks_are_refused() {
    let (sb, ready) = ready_sandbox();
    let link = (tar_header("escape-link", b'2', 0, "/etc"), Vec::new());
    plant(&sb, &tar_of(&[link, file("escape-link/pwned", b"x")]), &[("escape-link", 0)], None);
    assert_refused(&sb, &ready, "symbolic link");

    let hard = (tar_header("escape-hard", b'1', 0, "../../../../etc/passwd"), Vec::new());
    plant(&sb, &tar_of(&[hard]), &[("escape-hard", 0)], None);
    assert_refused(&sb, &ready, "hard link");
}

#[test]
fn devices_and_fifos_are_refused() {
    let (sb, ready) = ready_sandbox();
    plant(&sb, &tar_of(&[(tar_header("escape-dev", b'3', 0, ""), Vec::new())]), &[("escape-dev", 0)], None);
    assert_refused(&sb, &ready, "device file");
    plant(&sb, &tar_of(&[(tar_header("escape-fifo", b'6', 0, ""), Vec::new())]), &[("escape-fifo", 0)], None);
    assert_refused(&sb, &ready, "FIFO");
}

#[test]
fn sizes_and_entries_the_manifest_does_not_promise_are_refused() {
    let (sb, ready) = ready_sandbox();
    plant(&sb, &tar_of(&[file("weights.bin", &[7u8; 4096])]), &[("weights.bin", 10)], None);
    assert_refused(&sb, &ready, "4096 bytes in the archive, 10 in the manifest");

    plant(
        &sb,
        &tar_of(&[file("weights.bin", b"0123456789"), file("pwned.sh", b"rm -rf /")]),
        &[("weights.bin", 10)],
        None,
    );
    assert_refused(&sb, &ready, "pwned.sh is not in the manifest");
}

#[test]
fn a_truncated_stream_is_refused() {
    let (sb, ready) = ready_sandbox();
    // The file's bytes are all there (so the manifest's offsets are plausible) but the stream
    // stops before the end-of-archive marker.
    let full = tar_of(&[file("weights.bin", &[1u8; 1000])]);
    plant(&sb, &full[..1600], &[("weights.bin", 1000)], None);
    assert_refused(&sb, &ready, "truncated");
}

#[test]
fn a_manifest_that_lies_about_the_sha256_is_refused() {
    let (sb, ready) = ready_sandbox();
    let archive = tar_of(&[file("weights.bin", b"0123456789")]);
    let wrong = "f".repeat(64);
    plant(&sb, &archive, &[("weights.bin", 10)], Some(&wrong));
    assert_refused(&sb, &ready, "archive sha256 differs from the manifest");
    let out = sb.local().args(["download", "Evil"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("expected: {wrong}")) && err.contains(&format!("computed: {}", sha256_hex(&archive))),
        "{err}"
    );
}

#[test]
fn a_manifest_with_unsafe_paths_is_refused_before_download() {
    let (sb, ready) = ready_sandbox();
    plant(&sb, &tar_of(&[file("x", b"x")]), &[("../escape-manifest", 1)], None);
    assert_refused(&sb, &ready, "contains \"..\"");
}

#[test]
fn garbage_instead_of_a_tar_is_refused() {
    let (sb, ready) = ready_sandbox();
    let junk = crate::common::noise(4096, 9);
    plant(&sb, &junk, &[("weights.bin", 10)], None);
    assert_refused(&sb, &ready, "corrupt archive");
}
