//! `copy`, as an operator uses it: a model carried to another bucket on another cloud, or to a
//! directory for an air-gapped site, then downloaded there byte-identical, pinned and by tag. A
//! second copy sends nothing, an incremental version sends its new pieces only, two buckets of
//! one S3 endpoint copy inside the service, a signed model installs on a `require_signature`
//! fleet at the destination, a reader polling the destination never sees a tag naming something
//! missing, and a copy killed at any moment finishes when run again without sending twice.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{Sandbox, noise, stderr, stdout, tree, write_files};
use crate::mirror::machine_with_prefix;
use crate::user_paths::{Provider, provider_args};

/// A model of a config and four shards, uploaded in small packs (several objects to copy).
fn model(root: &Path) -> PathBuf {
    let dir = root.join("Alpha");
    write_files(&dir, &[("config.json", b"{\"layers\": 2}\n"), ("tok/vocab.json", b"{\"a\": 1}\n")]);
    for i in 0..4u64 {
        write_files(&dir, &[(&format!("shard-{i}.bin"), &noise(1_500_000, 90 + i))]);
    }
    dir
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

/// A destination bucket, made: the `--to` arguments, and the storage flags a machine there uses.
struct Dest {
    to: Vec<String>,
    reader: Vec<String>,
    /// The directory, for a local destination.
    dir: Option<PathBuf>,
}

fn dest(sb: &mut Sandbox, p: Provider, prefix: Option<&str>) -> Dest {
    let (args, bucket) = provider_args(sb, p);
    if p != Provider::Local {
        let out = sb.cmd().args(&args).args(["setup", "--create-bucket", "--no-write"]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    }
    let path = prefix.unwrap_or("");
    let url = match p {
        Provider::S3 => format!("s3://{bucket}/{path}"),
        Provider::Gcs => format!("gs://{bucket}/{path}"),
        Provider::Azure => {
            format!("az://{}/{bucket}/{path}", crate::common::require_env("CROWECODE_TEST_AZURE_ACCOUNT"))
        }
        Provider::Local => format!("file://{bucket}"),
    };
    let mut to = vec!["--to".to_string(), url];
    // No prefix: an empty one, said outright (a URL without a path gets setup's default).
    if prefix.is_none() || p == Provider::Local {
        to.extend(["--to-prefix".to_string(), path.to_string()]);
    }
    let endpoint = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    if let Some(e) = endpoint("--endpoint") {
        to.extend(["--to-endpoint".to_string(), e]);
    }
    if let Some(r) = endpoint("--region") {
        to.extend(["--to-region".to_string(), r]);
    }
    let mut reader = args.clone();
    reader.extend(["--prefix".to_string(), path.to_string()]);
    Dest { to, reader, dir: (p == Provider::Local).then(|| PathBuf::from(&bucket)) }
}

/// Runs the CLI as a machine at the destination: its storage flags, its own cache.
fn at_dest(sb: &Sandbox, d: &Dest, cache: &Path, args: &[&str]) -> Output {
    let mut c = sb.cmd();
    c.env("CROWECODE_HOME", cache).env("XDG_CONFIG_HOME", sb.path().join("dest-cfg"));
    c.args(&d.reader).args(args).output().unwrap()
}

fn copy(sb: &Sandbox, d: &Dest, args: &[&str]) -> serde_json::Value {
    let out = sb.cmd().args(["--json", "copy"]).args(args).args(&d.to).output().unwrap();
    assert!(out.status.success(), "copy {args:?}: {}", stderr(&out));
    json(&out)
}

fn sent(report: &serde_json::Value) -> u64 {
    report["totals"]["through_machine_bytes"].as_u64().unwrap()
        + report["totals"]["server_side_bytes"].as_u64().unwrap()
}

fn copy_between(src: Provider, src_prefix: Option<&str>, dst: Provider, dst_prefix: Option<&str>) {
    let what = format!("{src:?} {src_prefix:?} -> {dst:?} {dst_prefix:?}");
    let (mut sb, _) = machine_with_prefix(src, src_prefix);
    let dir = model(&sb.src());
    let up =
        sb.cmd().args(["--json", "upload", "Alpha:prod", "--max-memory", "10M", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{what}: {}", stderr(&up));
    let pinned = json(&up)["models"][0]["reference"].as_str().unwrap().to_string();
    let d = dest(&mut sb, dst, dst_prefix);

    let dry = copy(&sb, &d, &["Alpha:prod", "--dry-run"]);
    assert!(dry["missing_bytes"].as_u64().unwrap() > 6_000_000, "{what}: {dry}");
    assert_eq!(sent(&dry), 0, "{what}: a dry run sends nothing");

    let first = copy(&sb, &d, &["Alpha:prod"]);
    assert_eq!(first["versions"][0]["status"], "copied", "{what}: {first}");
    assert_eq!(first["versions"][0]["pinned"].as_str(), Some(pinned.as_str()), "{what}");
    assert!(first["versions"][0]["objects"].as_u64().unwrap() >= 3, "{what}: several packs: {first}");
    assert_eq!(first["tags"][0]["tag"], "prod", "{what}");
    assert!(sent(&first) >= 6_000_000, "{what}: {first}");

    // A machine at the destination, with only its own storage flags: by tag and pinned.
    let cache = sb.path().join("dest-cache");
    for r in ["Alpha:prod", pinned.as_str()] {
        let got = at_dest(&sb, &d, &cache, &["download", r]);
        assert!(got.status.success(), "{what}: download {r} at the destination: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir), "{what}: {r} byte-identical");
    }

    let again = copy(&sb, &d, &["Alpha:prod"]);
    assert_eq!(sent(&again), 0, "{what}: a second copy sends nothing: {again}");
    assert_eq!(again["totals"]["objects"].as_u64(), Some(0), "{what}");
    assert_eq!(again["versions"][0]["status"], "present", "{what}");

    // An incremental version: only its new pieces travel.
    write_files(&dir, &[("config.json", b"{\"layers\": 3}\n")]);
    let up = sb.cmd().args(["upload", "Alpha:prod", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{what}: {}", stderr(&up));
    let next = copy(&sb, &d, &["Alpha:prod"]);
    assert!(sent(&next) > 0 && sent(&next) < 64 << 10, "{what}: a changed config costs its chunk: {next}");
    let got = at_dest(&sb, &d, &cache, &["download", "Alpha:prod"]);
    assert!(got.status.success(), "{what}: {}", stderr(&got));
    assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir), "{what}: the new version at the destination");
}

#[cfg(all(feature = "s3", feature = "azure"))]
#[test]
fn moto_to_azurite() {
    copy_between(Provider::S3, None, Provider::Azure, None);
    copy_between(Provider::S3, Some("team/"), Provider::Azure, Some("fleet/models/"));
}

#[cfg(all(feature = "s3", feature = "gcs"))]
#[test]
fn fake_gcs_to_moto() {
    copy_between(Provider::Gcs, None, Provider::S3, None);
    copy_between(Provider::Gcs, Some("team/"), Provider::S3, Some("eu/models/"));
}

#[cfg(feature = "s3")]
#[test]
fn local_to_moto() {
    copy_between(Provider::Local, None, Provider::S3, None);
    copy_between(Provider::Local, Some("crowecode-models/"), Provider::S3, Some("crowecode-models/"));
}

#[cfg(feature = "s3")]
#[test]
fn moto_to_a_local_directory() {
    copy_between(Provider::S3, None, Provider::Local, None);
    copy_between(Provider::S3, Some("team/"), Provider::Local, Some("crowecode-models/"));
}

#[test]
fn local_to_a_local_directory_as_the_air_gap_does() {
    // The site sets up on the carried disk with the documented defaults only.
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let disk = sb.path().join("disk");
    let out = sb.cmd().args(["copy", "Alpha:prod", "--to"]).arg(format!("file://{}", disk.display())).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let site = Sandbox::new();
    let setup = site.cmd().args(["setup", "--provider", "local", "--bucket"]).arg(&disk).output().unwrap();
    assert!(setup.status.success(), "{}", stderr(&setup));
    let got = site.cmd().args(["download", "Alpha:prod"]).output().unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
}

/// Two buckets of one service: the objects are copied inside it (S3 CopyObject, GCS rewrite,
/// Azure Put Blob From URL), no data byte passes through the client; the archive of a format 1
/// version too.
fn copies_inside_the_service(p: Provider) {
    for prefix in [None, Some("other/")] {
        let what = format!("{p:?} {prefix:?}");
        let (mut sb, _) = machine_with_prefix(p, prefix);
        let dir = model(&sb.src());
        let up = sb.cmd().args(["upload", "Alpha:prod", "--max-memory", "10M", "--from"]).arg(&dir).output().unwrap();
        assert!(up.status.success(), "{what}: {}", stderr(&up));
        let d = dest(&mut sb, p, prefix);
        let report = copy(&sb, &d, &["Alpha:prod"]);
        let totals = &report["totals"];
        assert_eq!(totals["through_machine_bytes"].as_u64(), Some(0), "{what}: {report}");
        assert!(totals["server_side_bytes"].as_u64().unwrap() >= 6_000_000, "{what}: {report}");
        assert!(report["versions"][0]["checked"].as_str().unwrap().contains("inside the service"), "{report}");
        let got = at_dest(&sb, &d, &sb.path().join("c2"), &["download", "Alpha:prod"]);
        assert!(got.status.success(), "{what}: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir), "{what}");

        let v1 = sb.src().join("Old");
        write_files(&v1, &[("w.bin", &noise(300_000, 8))]);
        let up = sb.cmd().args(["upload", "Old", "--format", "1", "--from"]).arg(&v1).output().unwrap();
        assert!(up.status.success(), "{what}: {}", stderr(&up));
        let report = copy(&sb, &d, &["Old"]);
        assert_eq!(report["totals"]["through_machine_bytes"].as_u64(), Some(0), "{what}: {report}");
        assert!(report["totals"]["server_side_bytes"].as_u64().unwrap() > 300_000, "{what}: {report}");
        let got = at_dest(&sb, &d, &sb.path().join("c3"), &["download", "Old"]);
        assert!(got.status.success(), "{what}: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&v1), "{what}");
    }
}

#[cfg(feature = "s3")]
#[test]
fn moto_to_another_moto_bucket_copies_inside_the_service() {
    copies_inside_the_service(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn fake_gcs_to_another_bucket_copies_inside_the_service() {
    copies_inside_the_service(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn azurite_to_another_container_copies_inside_the_service() {
    copies_inside_the_service(Provider::Azure);
}

/// A format 1 version (one archive) copies too, its archive checked against its sha256.
#[cfg(feature = "s3")]
#[test]
fn a_format_1_version_copies_verified() {
    let (mut sb, _) = machine_with_prefix(Provider::S3, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha", "--format", "1", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let d = dest(&mut sb, Provider::Local, None);
    let report = copy(&sb, &d, &["Alpha"]);
    assert_eq!(report["versions"][0]["format"].as_u64(), Some(1));
    assert!(report["totals"]["through_machine_bytes"].as_u64().unwrap() > 6_000_000, "{report}");
    let got = at_dest(&sb, &d, &sb.path().join("c2"), &["download", "Alpha"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
    assert_eq!(sent(&copy(&sb, &d, &["Alpha"])), 0);
}

/// A signed model copied to a fleet that requires signatures installs there, pinned and by
/// tag (the tag re-signed for the destination with --sign-key); without a trusted signature,
/// copying makes nothing acceptable.
#[test]
fn a_signed_model_installs_on_a_require_signature_fleet_at_the_destination() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    let keys = sb.path().join("keys");
    let out = sb.cmd().args(["keygen", "--out"]).arg(keys.join("ci")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = model(&sb.src());
    let up = sb
        .cmd()
        .args(["upload", "Alpha:prod", "--sign-key"])
        .arg(keys.join("ci"))
        .arg("--from")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let unsigned = sb.src().join("Beta");
    write_files(&unsigned, &[("w.bin", &noise(10_000, 5))]);
    let up = sb.cmd().args(["upload", "Beta:prod", "--from"]).arg(&unsigned).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));

    let d = dest(&mut sb, Provider::Local, None);
    let out = sb
        .cmd()
        .args(["--json", "copy", "Alpha:prod", "Beta:prod", "--sign-key"])
        .arg(keys.join("ci"))
        .args(&d.to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["versions"][0]["signatures"].as_u64(), Some(1), "{report}");
    assert_eq!(report["tags"][0]["signed"], true, "{report}");

    let trusted = keys.join("ci.pub").display().to_string();
    let fleet = |cache: &str, args: &[&str]| {
        let mut c = sb.cmd();
        c.env("CROWECODE_HOME", sb.path().join(cache))
            .env("XDG_CONFIG_HOME", sb.path().join("dest-cfg"))
            .env("CROWECODE_TRUSTED_KEYS", &trusted)
            .env("CROWECODE_REQUIRE_SIGNATURE", "1");
        c.args(&d.reader).args(args).output().unwrap()
    };
    let pinned = report["versions"][0]["pinned"].as_str().unwrap().to_string();
    for (cache, r) in [("f1", "Alpha:prod"), ("f2", pinned.as_str()), ("f3", "Alpha")] {
        let got = fleet(cache, &["download", r]);
        assert!(got.status.success(), "{r}: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
    }
    let refused = fleet("f4", &["download", "Beta:prod"]);
    assert_eq!(refused.status.code(), Some(6), "an unsigned model stays unacceptable: {}", stderr(&refused));
}

/// A reader polls the destination while a copy runs: a tag it can see always downloads.
#[cfg(feature = "s3")]
#[test]
fn a_reader_polling_the_destination_never_sees_a_tag_naming_something_missing() {
    let (mut sb, _) = machine_with_prefix(Provider::S3, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--max-memory", "10M", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let d = dest(&mut sb, Provider::Local, None);
    let mut copier = sb.std_cmd();
    copier.args(["copy", "Alpha:prod"]).args(&d.to);
    let mut copier = copier.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    // `resolve` is cheap, so the destination is polled many times while the copy runs; a tag
    // it can see must download.
    let (mut missing, mut polls) = (0, 0);
    let start = Instant::now();
    loop {
        let done = copier.try_wait().unwrap().is_some();
        let seen = at_dest(&sb, &d, &sb.path().join("poll"), &["resolve", "Alpha:prod"]);
        polls += 1;
        match seen.status.code() {
            Some(0) => {
                let cache = sb.path().join(format!("poll-{polls}"));
                let got = at_dest(&sb, &d, &cache, &["download", &stdout(&seen)]);
                assert!(got.status.success(), "poll {polls}: a visible tag did not download: {}", stderr(&got));
                assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
                let by_tag = at_dest(&sb, &d, &cache, &["download", "Alpha:prod"]);
                assert!(by_tag.status.success(), "poll {polls}: {}", stderr(&by_tag));
                break;
            }
            Some(5) | Some(3) => missing += 1,
            other => panic!("poll {polls}: exit {other:?}: {}", stderr(&seen)),
        }
        assert!(!done || missing < polls, "the copy ended and the tag is not there");
        assert!(start.elapsed() < Duration::from_secs(120), "the copy did not finish");
    }
    assert!(copier.wait().unwrap().success());
    assert!(missing >= 2, "the reader polled while the copy ran ({polls} polls)");
}

/// A copy killed at random moments and run again finishes, and never sends a pack twice: the
/// packs written before the kill are not sent again.
#[cfg(feature = "s3")]
#[test]
fn a_killed_copy_finishes_when_run_again_without_sending_twice() {
    let (mut sb, _) = machine_with_prefix(Provider::S3, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--max-memory", "10M", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let mut partial = 0;
    for round in 0..6u64 {
        let d = dest(&mut sb, Provider::Local, None);
        let mut copier = sb.std_cmd();
        // One pack of 2 MiB at a time at 8 MiB/s: about a quarter of a second each.
        copier.args(["copy", "Alpha:prod", "--max-memory", "3M", "--limit-rate", "8M"]).args(&d.to);
        let mut copier =
            copier.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + round * 120 + fastrand::u64(..60)));
        let _ = copier.kill();
        let _ = copier.wait();
        let packs_before = count_packs(d.dir.as_ref().unwrap());
        let report = copy(&sb, &d, &["Alpha:prod"]);
        let v = &report["versions"][0];
        let total = v["present_objects"].as_u64().unwrap() + v["objects"].as_u64().unwrap();
        partial += usize::from(packs_before > 0 && packs_before < total);
        assert_eq!(
            v["present_objects"].as_u64(),
            Some(packs_before),
            "round {round}: the packs the killed copy wrote are not sent again: {report}"
        );
        let got = at_dest(&sb, &d, &sb.path().join(format!("k{round}")), &["download", "Alpha:prod"]);
        assert!(got.status.success(), "round {round}: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir), "round {round}");
    }
    assert!(partial >= 1, "at least one kill landed between two packs");
}

fn count_packs(bucket: &Path) -> u64 {
    walkdir::WalkDir::new(bucket)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "pack"))
        .count() as u64
}

#[test]
fn bad_destinations_are_usage_errors_with_a_hint() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    for to in ["ftp://x/y", "s3://", "file://relative/dir", "not-a-config-or-url"] {
        let out = sb.cmd().args(["copy", "Alpha", "--to", to]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{to}: {}", stderr(&out));
        assert!(stderr(&out).contains("hint:"), "{to}: {}", stderr(&out));
    }
    let bucket = crate::common::local_bucket(&sb);
    let same = sb.cmd().args(["copy", "Alpha", "--to"]).arg(format!("file://{}", bucket.display())).output().unwrap();
    assert_eq!(same.status.code(), Some(2), "{}", stderr(&same));
}

/// Two S3 accounts: the source read with the environment's (read-only) key, the destination
/// written with a profile's key. Without `--to-profile` the read-only key cannot write (exit 4).
#[cfg(feature = "s3")]
#[test]
fn two_s3_accounts_the_source_from_the_environment_the_destination_from_a_profile() {
    use crate::common::require_env;
    let endpoint = require_env("CROWECODE_TEST_S3_IAM_ENDPOINT");
    let bucket = require_env("CROWECODE_TEST_S3_IAM_BUCKET");
    let (admin_key, admin_secret) =
        (require_env("CROWECODE_TEST_S3_IAM_ADMIN_KEY"), require_env("CROWECODE_TEST_S3_IAM_ADMIN_SECRET"));
    let (ro_key, ro_secret) =
        (require_env("CROWECODE_TEST_S3_IAM_READER_KEY"), require_env("CROWECODE_TEST_S3_IAM_READER_SECRET"));
    let n = fastrand::u32(..);
    let (src_prefix, dst_prefix) = (format!("cp-src-{n:08x}/"), format!("cp-dst-{n:08x}/"));
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", &admin_key).env("AWS_SECRET_ACCESS_KEY", &admin_secret).env("AWS_REGION", "us-east-1");
    let storage = ["--provider", "s3", "--bucket", &bucket, "--endpoint", &endpoint];
    let dir = model(&sb.src());
    let up = sb
        .cmd()
        .args(storage)
        .args(["--prefix", &src_prefix, "upload", "Alpha:prod", "--from"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", stderr(&up));

    // From now on this machine's environment holds the read-only key; the destination's key is
    // in a profile.
    sb.env("AWS_ACCESS_KEY_ID", &ro_key).env("AWS_SECRET_ACCESS_KEY", &ro_secret);
    let credentials = sb.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        format!("[dest]\naws_access_key_id = {admin_key}\naws_secret_access_key = {admin_secret}\n"),
    )
    .unwrap();
    sb.env("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap());
    let to = format!("s3://{bucket}/{dst_prefix}");
    let copy = |extra: &[&str]| {
        sb.cmd()
            .args(storage)
            .args(["--prefix", &src_prefix, "copy", "Alpha:prod", "--to", &to, "--to-endpoint", &endpoint])
            .args(extra)
            .output()
            .unwrap()
    };
    let denied = copy(&[]);
    assert_eq!(denied.status.code(), Some(4), "the read-only key cannot write: {}", stderr(&denied));
    assert!(!stderr(&denied).contains(&admin_secret) && !stderr(&denied).contains(&ro_secret));
    let done = copy(&["--to-profile", "dest"]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(!stderr(&done).contains(&admin_secret), "no secret in the output");
    let got = sb
        .cmd()
        .env("CROWECODE_HOME", sb.path().join("c2"))
        .args(storage)
        .args(["--prefix", &dst_prefix, "download", "Alpha:prod"])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
    let wrong = sb.cmd().args(["copy", "Alpha", "--to", "gs://b/", "--to-profile", "dest"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
}

/// A loopback proxy to `upstream` (`host:port`) counting the bytes that pass, both ways.
fn counting_proxy(upstream: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let upstream = upstream.to_string();
    let bytes = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counted = bytes.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = TcpStream::connect(&upstream).unwrap();
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server.try_clone().unwrap(), client.try_clone().unwrap()),
            ] {
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let n = std::io::copy(&mut from, &mut to).unwrap_or(0);
                    counted.fetch_add(n, Ordering::Relaxed);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, bytes)
}

/// What the client's connections carried, counted outside the tool: a copy between two moto
/// buckets moves the model's 6 MB without them passing through the client, and a copy to a
/// directory (for contrast) carries them all.
#[cfg(feature = "s3")]
#[test]
fn a_copy_inside_s3_carries_no_data_bytes_through_the_client_by_an_outside_count() {
    use std::sync::atomic::Ordering;
    let endpoint = crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT");
    let (proxy, bytes) = counting_proxy(endpoint.trim_start_matches("http://"));
    let via = format!("http://{proxy}");
    let (mut sb, _) = machine_with_prefix(Provider::S3, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let d = dest(&mut sb, Provider::S3, None);
    let to: Vec<String> = d.to.iter().map(|a| if *a == endpoint { via.clone() } else { a.clone() }).collect();
    let before = bytes.load(Ordering::Relaxed);
    let out = sb.cmd().args(["--endpoint", &via, "--json", "copy", "Alpha:prod"]).args(&to).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(200));
    let carried = bytes.load(Ordering::Relaxed) - before;
    assert!(json(&out)["totals"]["server_side_bytes"].as_u64().unwrap() >= 6_000_000);
    assert!(carried < 200_000, "{carried} bytes passed through the client for a 6 MB model");

    let d2 = dest(&mut sb, Provider::Local, None);
    let before = bytes.load(Ordering::Relaxed);
    let out = sb.cmd().args(["--endpoint", &via, "copy", "Alpha:prod"]).args(&d2.to).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(200));
    let carried = bytes.load(Ordering::Relaxed) - before;
    assert!(carried >= 6_000_000, "the proxy counts what does pass: {carried}");
}

/// DEST as a config file, and as a `CROWECODE_CLOUD_CONFIG_B64` string, as `setup` prints them.
#[test]
fn a_destination_given_as_a_config_file_or_a_config_string() {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    for (i, as_string) in [false, true].into_iter().enumerate() {
        let bucket = sb.path().join(format!("site-{i}"));
        let site = sb.path().join(format!("site-cfg-{i}"));
        let setup = sb
            .cmd()
            .env("XDG_CONFIG_HOME", &site)
            .args(["setup", "--provider", "local", "--prefix", "fleet/", "--create-bucket", "--bucket"])
            .arg(&bucket)
            .output()
            .unwrap();
        assert!(setup.status.success(), "{}", stderr(&setup));
        let file = site.join("crowecode/cloud.json");
        let to = if as_string {
            let printed = stdout(&setup);
            printed.split('\'').nth(1).expect("export CROWECODE_CLOUD_CONFIG_B64='…'").to_string()
        } else {
            file.display().to_string()
        };
        let out = sb.cmd().args(["copy", "Alpha:prod", "--to", &to]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let got = sb
            .cmd()
            .env("XDG_CONFIG_HOME", &site)
            .env("CROWECODE_HOME", sb.path().join(format!("site-cache-{i}")))
            .args(["download", "Alpha:prod"])
            .output()
            .unwrap();
        assert!(got.status.success(), "{}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir));
        assert!(bucket.join("fleet/Alpha/tags/prod.json").is_file(), "under the config's prefix");
    }
}

/// A byte changed in a pack at the source is caught on the way (exit 6): the destination gets
/// no version and no tag naming it.
#[test]
fn a_damaged_pack_at_the_source_is_refused_and_nothing_is_named_at_the_destination() {
    let (mut sb, _) = machine_with_prefix(Provider::Local, None);
    let dir = model(&sb.src());
    let up = sb.cmd().args(["upload", "Alpha:prod", "--from"]).arg(&dir).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let bucket = crate::common::local_bucket(&sb);
    let pack = walkdir::WalkDir::new(&bucket)
        .into_iter()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .unwrap()
        .into_path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();
    let d = dest(&mut sb, Provider::Local, None);
    let out = sb.cmd().args(["copy", "Alpha:prod"]).args(&d.to).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not match its digest"), "{}", stderr(&out));
    let dest_dir = d.dir.clone().unwrap();
    let named: Vec<_> = walkdir::WalkDir::new(&dest_dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("/Alpha/"))
        .map(|e| e.into_path())
        .collect();
    assert!(named.is_empty(), "no version or tag at the destination: {named:?}");
    let got = at_dest(&sb, &d, &sb.path().join("c9"), &["download", "Alpha:prod"]);
    assert_eq!(got.status.code(), Some(5), "{}", stderr(&got));
}

/// A copy racing a `prune --remote` at the destination: the destination holds an unreferenced
/// version of the same content, whose packs the copy finds there and reuses while the sweep is
/// deleting them (a test-only pause widens the gap between its read of the roots and its
/// deletes). The copy either commits a version whose every pack is there, or is undone with
/// exit 8 and finishes when run again; a fresh machine at the destination always gets the model.
fn copies_race_pack_sweeps(p: Provider, rounds: u64) {
    let prefix = "crowecode-models/";
    let (mut src, _) = machine_with_prefix(Provider::Local, None);
    let (mut dst, bucket) = machine_with_prefix(p, Some(prefix));
    for sb in [&mut src, &mut dst] {
        sb.env("CROWECODE_SWEEP_WINDOW_MS", "2000").env("CROWECODE_TEST_PACK_SWEEP_PAUSE_MS", "600");
        if p == Provider::S3 {
            sb.env("AWS_ACCESS_KEY_ID", "moto-key")
                .env("AWS_SECRET_ACCESS_KEY", "moto-secret")
                .env("AWS_REGION", "us-east-1");
        }
    }
    let mut to = match p {
        Provider::Local => vec![format!("--to=file://{bucket}"), format!("--to-prefix={prefix}")],
        _ => vec![format!("--to=s3://{bucket}/{prefix}"), "--to-region=us-east-1".into()],
    };
    if p == Provider::S3 {
        to.push(format!("--to-endpoint={}", crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT")));
    }
    let marker = crate::incremental::SweepMarker::new(p, &bucket, prefix, dst.path());
    let (mut committed, mut undone) = (0, 0);
    for round in 0..rounds {
        let x = noise(1 << 20, 3000 + round);
        // At the destination: latest elsewhere, and x's content in a version no tag names.
        let dir = dst.src().join("R");
        write_files(&dir, &[("w.bin", &noise(1 << 20, 4000 + round))]);
        let up = dst.cmd().args(["upload", "R", "-q", "--from"]).arg(&dir).output().unwrap();
        assert!(up.status.success(), "{}", stderr(&up));
        write_files(&dir, &[("w.bin", &x)]);
        let up = dst.cmd().args(["upload", "R", "-q", "--no-latest", "--from"]).arg(&dir).output().unwrap();
        assert!(up.status.success(), "{}", stderr(&up));
        // At the source: x as the new latest, to be copied.
        let sdir = src.src().join("R");
        write_files(&sdir, &[("w.bin", &x)]);
        let up = src.cmd().args(["upload", "R", "-q", "--from"]).arg(&sdir).output().unwrap();
        assert!(up.status.success(), "{}", stderr(&up));

        let mut prune = dst.std_cmd();
        prune.args(["prune", "--remote", "--keep", "0", "--min-age", "0s", "--yes", "-q"]);
        let prune = prune.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        assert!(marker.wait(), "{p:?} round {round}: the pack sweep never raised its marker");
        std::thread::sleep(Duration::from_millis(u64::from(fastrand::u32(..400))));
        let mut copier = src.std_cmd();
        copier.args(["copy", "R", "-q"]).args(&to);
        let copier = copier.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let (prune, copied) = (prune.wait_with_output().unwrap(), copier.wait_with_output().unwrap());
        assert!(prune.status.success(), "{p:?} round {round}: prune: {}", stderr(&prune));
        match copied.status.code() {
            Some(0) => committed += 1,
            Some(8) => {
                undone += 1;
                assert!(stderr(&copied).contains("run the copy of R again"), "{p:?}: {}", stderr(&copied));
                let again = src.cmd().args(["copy", "R", "-q"]).args(&to).output().unwrap();
                assert!(again.status.success(), "{p:?} round {round}: run again: {}", stderr(&again));
            }
            other => panic!("{p:?} round {round}: copy exited {other:?}: {}", stderr(&copied)),
        }
        let fresh = dst.path().join(format!("fresh-{round}"));
        let got = dst.cmd().env("CROWECODE_HOME", &fresh).args(["download", "R", "-q"]).output().unwrap();
        assert!(got.status.success(), "{p:?} round {round}: {}", stderr(&got));
        assert_eq!(std::fs::read(Path::new(&stdout(&got)).join("w.bin")).unwrap(), x, "{p:?} round {round}");
    }
    eprintln!("{p:?}: {committed} copies committed, {undone} undone and run again");
    assert!(undone > 0, "{p:?}: no round raced the sweep's deletes; the test proves nothing");
}

#[test]
fn copies_racing_pack_sweeps_at_a_local_destination_lose_nothing() {
    copies_race_pack_sweeps(Provider::Local, 6);
}

#[cfg(feature = "s3")]
#[test]
fn copies_racing_pack_sweeps_at_a_moto_destination_lose_nothing() {
    copies_race_pack_sweeps(Provider::S3, 4);
}
