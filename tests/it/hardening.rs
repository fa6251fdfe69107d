//! The defects of the hostile review, each reproduced the way the review ran it (a fresh home,
//! the documented setup) and shown fixed.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::common::{Sandbox, make_model, tree, write_files};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A sandbox set up as the README says, on the local provider, with the default file.
fn set_up() -> Sandbox {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["setup", "--provider", "local", "--bucket"])
        .arg(sb.bucket())
        .arg("--create-bucket")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    sb
}

fn upload(sb: &Sandbox, model: &str, dir: &Path) {
    let out = sb.cmd().args(["upload", model, "-q", "--from"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The files under `dir`, or `None` when it is gone (also when it went while being counted: a
/// version leaves its path whole, by one rename).
fn file_count(dir: &Path) -> Option<usize> {
    let n = walkdir::WalkDir::new(dir).into_iter().flatten().filter(|e| e.file_type().is_file()).count();
    dir.is_dir().then_some(n)
}

#[test]
fn d1_a_cached_download_never_hands_out_a_version_prune_is_removing() {
    let sb = set_up();
    let src = sb.src().join("A");
    for i in 0..300 {
        write_files(&src, &[(&format!("f{i}"), format!("{i}\n").as_bytes())]);
    }
    upload(&sb, "A", &src);
    assert!(sb.cmd().args(["download", "A", "-q"]).output().unwrap().status.success());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let mut c = sb.std_cmd();
        c.args(["prune", "--max-size", "0", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.status();
                runs += 1;
            }
            runs
        })
    };
    let (mut partial, mut complete) = (Vec::new(), 0);
    for _ in 0..80 {
        let out = sb.cmd().args(["download", "A", "-q"]).output().unwrap();
        if !out.status.success() {
            continue;
        }
        let path = stdout(&out).trim().to_string();
        // Removed since (a prune after this download ended) is fine: whole or gone, never half.
        match file_count(Path::new(&path)) {
            Some(300) => complete += 1,
            None => {}
            Some(n) => partial.push(format!("{path}: {n} of 300")),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let prunes = pruner.join().unwrap();
    assert!(partial.is_empty(), "half-removed versions handed out: {partial:?}");
    assert!(complete > 10 && prunes > 10, "the race ran: {complete} complete downloads, {prunes} prunes");
}

#[test]
fn s1_fallback_links_out_of_dest_are_refused_and_links_inside_are_copied() {
    let sb = set_up();
    let secret = sb.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cmd = format!("mkdir -p {{dest}}; echo w > {{dest}}/w.bin; ln -s {} {{dest}}/tokenizer.json", secret.display());
    let out = sb.cmd().args(["download", "X", "--publish", "--fallback-command", &cmd]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("points outside {dest}"), "{}", stderr(&out));
    assert!(!sb.bucket().join("crowecode-models/X").exists(), "nothing reached the bucket");
    assert!(!sb.cache().join("models/X").exists(), "nothing installed");
    let staged = std::fs::read_dir(sb.cache().join(".staging")).unwrap().count();
    assert_eq!(staged, 0, "staging removed");

    // A link to a file inside {dest} (a Hugging Face snapshot layout) is installed as a copy.
    let cmd = "mkdir -p {dest}/blobs; echo w > {dest}/blobs/b1; ln -s blobs/b1 {dest}/w.bin";
    let out = sb.cmd().args(["download", "Y", "--publish", "--fallback-command", cmd]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = stdout(&out).trim().to_string();
    let meta = std::fs::symlink_metadata(Path::new(&path).join("w.bin")).unwrap();
    assert!(meta.file_type().is_file(), "a copy, not a link");
    assert!(sb.cmd().args(["verify", "Y"]).output().unwrap().status.success());
}

#[test]
fn s2_s3_credentials_in_config_keys_and_endpoints_never_reach_the_file_or_the_export() {
    let sb = Sandbox::new();
    let file = sb.path().join("cfg/crowecode/cloud.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        r#"{"enabled":true,"provider":"azure","config":{"bucket":"models","accountKey":"Eby8-FAKE==","SharedAccessSignature":"sv=2020&sig=FAKESIG","AccessKey":"AKIA-FAKE","api_key":"sk-FAKE","azure_storage_key":"K-FAKE","sig":"S-FAKE","auth":"A-FAKE","colour":"blue"}}"#,
    )
    .unwrap();
    let out = sb.cmd().args(["setup", "--provider", "azure", "--bucket", "models", "--prefix", "p/"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    let all = format!("{}{}{written}", stdout(&out), stderr(&out));
    use base64::Engine as _;
    let b64 = stdout(&out)
        .trim()
        .trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64='")
        .trim_end_matches('\'')
        .to_string();
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    for secret in ["Eby8-FAKE", "FAKESIG", "AKIA-FAKE", "sk-FAKE", "K-FAKE", "S-FAKE", "A-FAKE"] {
        assert!(!all.contains(secret) && !decoded.contains(secret), "{secret} leaked: {all} {decoded}");
    }
    assert!(decoded.contains("colour"), "an unknown harmless key is kept");

    for ep in [
        "http://127.0.0.1:10000/devstoreaccount1?sv=2026-10-06&sr=c&sp=rl&sig=SECRETSIG%3D",
        "http://user:PASSWORDINURL@127.0.0.1:4566",
        "http://h/path#frag",
    ] {
        let out =
            sb.cmd().args(["setup", "--provider", "s3", "--bucket", "models", "--endpoint", ep]).output().unwrap();
        // A bad flag is a usage error naming the flag (the config file is fine).
        assert_eq!(out.status.code(), Some(2), "{ep}");
        assert!(stderr(&out).starts_with("error: --endpoint: invalid endpoint"), "{}", stderr(&out));
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains("SECRETSIG") && !text.contains("PASSWORDINURL"), "{text}");
    }
    let cases: [&[&str]; 3] = [
        &["--bucket", "models", "--region", "us-west-2; rm -rf /"],
        &["--bucket", "models", "--prefix", "a\nb"],
        &["--bucket", "xn--abc"],
    ];
    for args in cases {
        let out = sb.cmd().args(["setup", "--provider", "s3"]).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let flag = if args.len() > 2 { args[2] } else { args[0] };
        assert!(stderr(&out).starts_with(&format!("error: {flag}: invalid")), "{args:?}: {}", stderr(&out));
    }
    let out = sb.cmd().args(["setup", "--provider", "gcs", "--bucket", "goog-bucket"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn s4_installed_models_are_never_group_or_world_writable() {
    let sb = set_up();
    let src = sb.src().join("A");
    write_files(&src, &[("w.bin", b"w"), ("tok/t.json", b"t")]);
    std::fs::set_permissions(src.join("tok"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(src.join("w.bin"), std::fs::Permissions::from_mode(0o666)).unwrap();
    upload(&sb, "A", &src);
    let out = sb.cmd().args(["download", "A", "-q"]).output().unwrap();
    let path = Path::new(stdout(&out).trim()).to_path_buf();
    for p in [path.join("tok"), path.join("w.bin"), path.join("tok/t.json")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0, "{} is {mode:o}", p.display());
    }
    assert!(sb.cmd().args(["verify", "A"]).output().unwrap().status.success(), "verify accepts the installed modes");
}

#[test]
fn s5_a_manifest_naming_another_models_archive_is_refused_with_exit_6() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    upload(&sb, "M", &make_model(&sb.src(), "M", 1));
    upload(&sb, "O", &make_model(&sb.src(), "O", 2));
    let root = sb.bucket().join("crowecode-models");
    let o: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("O/manifest.json")).unwrap()).unwrap();
    let mut m = o.clone();
    m["model"] = "M".into();
    crate::common::plant_latest(&root, "M", &serde_json::to_vec(&m).unwrap());
    let out = sb.cmd().args(["download", "M"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("not one of the model's own archives"), "{}", stderr(&out));
    assert!(!sb.cache().join("models/M").exists());
}

#[test]
fn s6_control_characters_in_file_names_are_escaped_when_printed() {
    let sb = set_up();
    let name = "\u{1b}[31mRED\u{1b}[0m\u{1b}]0;TITLE\u{7}";
    let src = sb.src().join("E");
    write_files(&src, &[(name, b"x")]);
    upload(&sb, "E", &src);
    let out = sb.cmd().args(["download", "E", "--only", "zzz"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(err.contains("\\u{1b}[31mRED"), "{err:?}");
    let path = stdout(&sb.cmd().args(["download", "E", "-q"]).output().unwrap()).trim().to_string();
    std::fs::remove_file(Path::new(&path).join(name)).unwrap();
    let out = sb.cmd().args(["verify", "E"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(!stdout(&out).contains('\u{1b}'), "{:?}", stdout(&out));
}

#[test]
fn w1_two_identical_uploads_at_once_both_succeed() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = sb.src().join("A");
    write_files(&src, &[("w.bin", &crate::common::noise(6 << 20, 9))]);
    let spawn = || {
        let mut c = sb.std_cmd();
        c.args(["upload", "M", "--limit-rate", "12M", "--from"]).arg(&src);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let archives = std::fs::read_dir(sb.bucket().join("crowecode-models/M/archives")).unwrap().count();
    assert_eq!(archives, 1, "the loser's archive was removed");
}

#[test]
fn w3_a_truncated_or_missing_archive_is_exit_6_at_once() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    upload(&sb, "M", &make_model(&sb.src(), "M", 3));
    let dir = sb.bucket().join("crowecode-models/M/archives");
    let archive = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let len = std::fs::metadata(&archive).unwrap().len();
    for cut in [len - 1024, 0] {
        std::fs::OpenOptions::new().write(true).open(&archive).unwrap().set_len(cut).unwrap();
        let started = std::time::Instant::now();
        let out = sb.cmd().args(["download", "M"]).output().unwrap();
        assert_eq!(out.status.code(), Some(6), "{cut}: {}", stderr(&out));
        assert!(stderr(&out).contains("re-upload"), "{}", stderr(&out));
        assert!(started.elapsed().as_secs() < 5, "no retries");
    }
    std::fs::remove_file(&archive).unwrap();
    assert_eq!(sb.cmd().args(["download", "M"]).output().unwrap().status.code(), Some(6));
}

#[test]
fn w5_the_rate_limit_holds_for_a_model_of_one_part() {
    let sb = set_up();
    let src = sb.src().join("S");
    write_files(&src, &[("w.bin", &crate::common::noise(3 << 20, 4))]);
    let t = std::time::Instant::now();
    let out = sb.cmd().args(["upload", "S", "--limit-rate", "2M", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed().as_secs_f64() >= 1.4, "3 MiB at 2 MiB/s took {:?}", t.elapsed());
}

#[test]
fn w6_without_home_the_cache_is_refused_not_put_in_the_working_directory() {
    let sb = set_up();
    upload(&sb, "A", &make_model(&sb.src(), "A", 5));
    use base64::Engine as _;
    let doc = format!(
        r#"{{"enabled":true,"provider":"local","config":{{"bucket":"{}","prefix":"crowecode-models/"}}}}"#,
        sb.bucket().display()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crowecode-cloud"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CROWECODE_CLOUD_CONFIG_B64", base64::engine::general_purpose::STANDARD.encode(doc))
        .current_dir(sb.path())
        .args(["download", "A"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CROWECODE_HOME"), "{}", stderr(&out));
    assert!(!sb.path().join(".cache").exists(), "nothing under the working directory");
    // A relative --cache-dir prints an absolute path.
    let out = sb.cmd().args(["--cache-dir", "rel/cache", "download", "A", "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with('/'), "{}", stdout(&out));
}

#[test]
fn w7_upload_then_download_on_one_machine_with_the_default_models_dir() {
    let sb = set_up();
    let alpha = make_model(&sb.path().join("models"), "Alpha", 6);
    let out = sb.cmd().args(["upload", "Alpha"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.cmd().args(["download", "Alpha"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(Path::new(stdout(&out).trim())), tree(&alpha));
    let out = sb.cmd().args(["upload", "Alpha", "--models-dir"]).arg(sb.cache().join("models")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the cache is no source: {}", stderr(&out));
}

#[test]
fn w8_w10_w11_exit_codes_match_what_happened() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = sb.src().join("A");
    write_files(&src, &[("w.bin", &crate::common::noise(8 << 20, 7))]);
    upload(&sb, "A", &src);
    // W8: --json on SIGINT says 130.
    let mut c = sb.std_cmd();
    c.args(["download", "A", "--json", "--limit-rate", "2M"]).stdout(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 130, "{v}");
    // W10: an invalid name is that model's error; the others are downloaded.
    let out = sb.cmd().args(["download", "A", "bad!", "A"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    // W11: a result that cannot be written is a failure.
    let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
    let status = sb.std_cmd().args(["download", "A"]).stdout(full).status().unwrap();
    assert_eq!(status.code(), Some(1), "/dev/full");
}

#[test]
fn w12_a_signalled_fallback_leaves_nothing_running_or_behind() {
    let sb = set_up();
    let cmd = "mkdir -p {dest}; (sleep 2; mkdir -p {dest}/sub; echo x > {dest}/sub/w.bin) & sleep 30";
    let child = sb.std_cmd().args(["download", "F", "--fallback-command", cmd]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let left: Vec<_> = walkdir::WalkDir::new(sb.cache().join(".staging")).min_depth(1).into_iter().flatten().collect();
    assert!(left.is_empty(), "the fallback's children kept writing: {left:?}");
}

#[test]
fn u2_u3_bad_tuning_values_and_usage_errors_are_exit_2_with_json() {
    let sb = set_up();
    for (var, value) in [
        ("CROWECODE_STALL_TIMEOUT", "inf"),
        ("CROWECODE_REQUEST_TIMEOUT", "1e309"),
        ("CROWECODE_RETRY_BACKOFF", "abc"),
        ("CROWECODE_MAX_ATTEMPTS", "-1"),
        ("CROWECODE_PROGRESS_INTERVAL", "1e20"),
    ] {
        let out = sb.cmd().env(var, value).args(["--json", "status"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["error"].as_str().unwrap().contains(var), "{v}");
    }
    for args in [
        vec!["--json", "download"],
        vec!["--json", "upload", "M", "--part-size", "abc"],
        vec!["--json", "--bogus", "status"],
    ] {
        let out = sb.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(v["exit_code"], 2);
        assert!(!v["error"].as_str().unwrap().ends_with(':'), "the message is whole: {v}");
    }
}

#[test]
fn u6_prune_remote_skips_an_unreadable_manifest_and_prunes_the_rest() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = make_model(&sb.src(), "A", 8);
    for i in 0..3 {
        write_files(&src, &[("config.json", format!("{{\"v\":{i}}}").as_bytes())]);
        upload(&sb, "A", &src);
    }
    let junk = sb.bucket().join("crowecode-models/junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("manifest.json"), "{").unwrap();
    let out = sb.cmd().args(["--json", "prune", "--remote", "--min-age", "0s", "--keep", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Three versions: latest and its previous are kept, the oldest goes with its archive.
    assert_eq!(v["remote"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["remote_versions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["unreadable"], serde_json::json!(["junk"]));
    assert!(!stderr(&out).contains("download of it is in progress"), "{}", stderr(&out));
    assert_eq!(v["freed_bytes"], 0, "a list frees nothing");
    assert!(v["would_free_bytes"].as_u64().unwrap() > 0);
    assert!(stderr(&out).contains("junk"), "{}", stderr(&out));
}

#[test]
fn u11_prune_max_size_0_evicts_everything_not_in_use() {
    let sb = set_up();
    upload(&sb, "A", &make_model(&sb.src(), "A", 9));
    assert!(sb.cmd().args(["download", "A", "-q"]).output().unwrap().status.success());
    let out = sb.cmd().args(["prune", "--max-size", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!sb.cache().join("models/A").exists());
}

#[cfg(feature = "gcs")]
#[test]
fn w9_a_missing_gcs_bucket_is_exit_3_for_every_command() {
    let sb = Sandbox::new();
    let src = make_model(&sb.src(), "M", 10);
    let endpoint = crate::common::require_env("CROWECODE_TEST_GCS_ENDPOINT");
    let gcs = |args: &[&str]| {
        let mut c = sb.cmd();
        c.args(["--provider", "gcs", "--bucket", "nobucket-hardening", "--prefix", "x/", "--endpoint", &endpoint]);
        c.args(args).output().unwrap()
    };
    for args in [&["status"][..], &["list"], &["download", "M"], &["prune", "--remote"]] {
        let out = gcs(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
    }
    let out = gcs(&["upload", "M", "--from", &src.display().to_string()]);
    assert_eq!(out.status.code(), Some(3), "upload: {}", stderr(&out));
}

#[cfg(feature = "s3")]
fn moto_bucket(sb: &mut Sandbox, prefix: &str) -> Vec<String> {
    sb.env("AWS_ACCESS_KEY_ID", "moto-key").env("AWS_SECRET_ACCESS_KEY", "moto-secret").env("AWS_REGION", "us-east-1");
    let bucket = format!("hard-{:08x}", crate::conformance::fastrand_u32());
    let endpoint = crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT");
    let args: Vec<String> = ["--provider", "s3", "--bucket", &bucket, "--endpoint", &endpoint, "--prefix", prefix]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = sb.cmd().args(&args).args(["setup", "--create-bucket", "--no-write"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    args
}

#[cfg(feature = "s3")]
#[test]
fn w13_a_key_with_a_control_character_does_not_break_listing() {
    let mut sb = Sandbox::new();
    let args = moto_bucket(&mut sb, "lst/");
    let bucket = &args[3];
    upload_with(&sb, &args, "A", &make_model(&sb.src(), "A", 11));
    let python = format!("{}/python", crate::common::require_env("CROWECODE_TEST_EMU_BIN"));
    let put = std::process::Command::new(python)
        .arg("-c")
        .arg("import boto3,sys; boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='k',aws_secret_access_key='s').put_object(Bucket=sys.argv[2],Key='lst/\\x1b[31mRED/manifest.json',Body=b'{}')")
        .args([&args[5], bucket])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", stderr(&put));
    let out = sb.cmd().args(&args).arg("list").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains('A'), "{}", stdout(&out));
    assert!(sb.cmd().args(&args).arg("status").output().unwrap().status.success());
}

#[cfg(feature = "s3")]
fn upload_with(sb: &Sandbox, args: &[String], model: &str, dir: &Path) {
    let out = sb.cmd().args(args).args(["upload", model, "-q", "--from"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[cfg(feature = "s3")]
#[test]
fn u5_prune_remote_aborts_the_parts_of_a_killed_upload() {
    let mut sb = Sandbox::new();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let args = moto_bucket(&mut sb, "mpu/");
    let src = sb.src().join("A");
    write_files(&src, &[("w.bin", &crate::common::noise(30 << 20, 12))]);
    let mut c = sb.std_cmd();
    c.args(&args).args(["upload", "M", "--part-size", "5M", "--limit-rate", "10M", "--from"]).arg(&src);
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    upload_with(&sb, &args, "M", &src);
    let status = sb.cmd().args(&args).args(["--json", "status"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["pending_uploads"].as_array().unwrap().len(), 1, "{v}");
    let out = sb.cmd().args(&args).args(["--json", "prune", "--remote", "--min-age", "0s", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unfinished_uploads"].as_array().unwrap().len(), 1, "{v}");
    let status = sb.cmd().args(&args).args(["--json", "status"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["pending_uploads"].as_array().unwrap().len(), 0, "{v}");
}

/// A server on loopback that answers every request with `200` and an HTML page, as a captive
/// portal or a web server at the wrong URL does. Returns its port.
fn html_server() -> u16 {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(200) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut any = false;
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        any = true;
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    if !any {
                        return;
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let page = b"<html>portal</html>";
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n", page.len());
                    if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(page)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[cfg(feature = "s3")]
#[test]
fn w4_an_endpoint_answering_html_is_not_taken_for_success() {
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s").env("AWS_REGION", "us-east-1");
    let endpoint = format!("http://127.0.0.1:{}", html_server());
    let src = make_model(&sb.src(), "M", 13);
    let s3 = |args: &[&str]| {
        let mut c = sb.cmd();
        c.args(["--provider", "s3", "--bucket", "advtest", "--prefix", "h/", "--endpoint", &endpoint]).args(args);
        c.output().unwrap()
    };
    let out = s3(&["upload", "M", "--from", &src.display().to_string()]);
    assert_ne!(out.status.code(), Some(0), "nothing was stored: {}", stderr(&out));
    assert!(stderr(&out).contains("--endpoint"), "{}", stderr(&out));
    let out = s3(&["download", "M"]);
    assert_ne!(out.status.code(), Some(6), "not an integrity failure: {}", stderr(&out));
    assert!(stderr(&out).contains("--endpoint"), "{}", stderr(&out));
}

/// A container (service) SAS for `container`, signed with the account key as Microsoft's SDK
/// signs it (its `generate_container_sas` gives the same signature for the same fields).
#[cfg(feature = "azure")]
fn container_sas(a: &crate::azure::Azurite, container: &str, permissions: &str) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let (version, expiry) = ("2026-10-06", "2099-01-01T00:00:00Z");
    let resource = format!("/blob/{}/{container}", a.account);
    let text = [permissions, "", expiry, &resource, "", "", "", version, "c", "", "", "", "", "", "", ""].join("\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(&a.key).unwrap()).unwrap();
    mac.update(text.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes()).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    format!("se={}&sp={permissions}&sv={version}&sr=c&sig={sig}", expiry.replace(':', "%3A"))
}

#[cfg(feature = "azure")]
#[test]
fn w2_status_is_reachable_with_a_container_sas() {
    let a = crate::azure::azurite();
    let mut sb = Sandbox::new();
    let container = format!("sas-{:08x}", crate::conformance::fastrand_u32());
    let base = [
        "--provider",
        "azure",
        "--bucket",
        &container,
        "--prefix",
        "sasdemo/",
        "--account",
        &a.account,
        "--endpoint",
        &a.endpoint,
    ];
    let out = sb
        .cmd()
        .env("AZURE_STORAGE_CONNECTION_STRING", a.connection_string(&a.key))
        .args(base)
        .args(["setup", "--create-bucket", "--no-write"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for permissions in ["rcwdl", "rl"] {
        sb.env("AZURE_STORAGE_SAS_TOKEN", &container_sas(&a, &container, permissions));
        if permissions == "rcwdl" {
            let src = make_model(&sb.src(), "M", 14);
            let out = sb.cmd().args(base).args(["upload", "M", "-q", "--from"]).arg(&src).output().unwrap();
            assert!(out.status.success(), "the SAS works for upload: {}", stderr(&out));
        }
        let out = sb.cmd().args(base).args(["--json", "status"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{permissions}: {v}");
        assert_eq!(v["reachable"], true, "{v}");
        assert_eq!(v["models_in_bucket"], 1, "{v}");
    }
}

#[test]
fn u7_hints_fit_the_situation() {
    let sb = set_up();
    // A model never downloaded here: verify says to download it.
    let out = sb.cmd().args(["verify", "Nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("crowecode-cloud download Nope"), "{}", stderr(&out));
    // A dangling link in the model directory is named as one.
    let src = make_model(&sb.src(), "D", 15);
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dead")).unwrap();
    let out = sb.cmd().args(["upload", "D", "--from"]).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("dangling symbolic link") && stderr(&out).contains("/nonexistent/target"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(src.join("dead")).unwrap();
    // A backslash in a file name says why it is refused.
    write_files(&src, &[("a\\b.json", b"{}")]);
    let out = sb.cmd().args(["upload", "D", "--from"]).arg(&src).output().unwrap();
    assert!(stderr(&out).contains("backslash is a path separator"), "{}", stderr(&out));
    // An empty CROWECODE_CLOUD_CONFIG_B64 (a Secret that lost its value) is said, not ignored.
    let out = sb.cmd().env("CROWECODE_CLOUD_CONFIG_B64", "").arg("status").output().unwrap();
    assert!(stderr(&out).contains("CROWECODE_CLOUD_CONFIG_B64 is set but empty"), "{}", stderr(&out));
}

#[test]
fn w14_a_file_rewritten_in_place_during_upload_is_refused() {
    let mut sb = set_up();
    sb.env("CROWECODE_UPLOAD_FORMAT", "1"); // archives: bucket format 1
    let src = sb.src().join("G");
    write_files(&src, &[("w.bin", &crate::common::noise(6 << 20, 16))]);
    let path = src.join("w.bin");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(600));
        use std::io::{Seek as _, Write as _};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
    });
    let out = sb
        .cmd()
        .args(["upload", "G", "--limit-rate", "3M", "--part-size", "1M", "--concurrency", "1", "--from"])
        .arg(&src)
        .output()
        .unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("was modified while it was being archived"), "{}", stderr(&out));
    assert!(!sb.bucket().join("crowecode-models/G/manifest.json").exists(), "nothing committed");
}

#[test]
fn u7_a_model_larger_than_the_free_space_fails_before_fetching() {
    let sb = set_up();
    let src = sb.src().join("Big");
    write_files(&src, &[("w.bin", &crate::common::noise(6 << 20, 17))]);
    upload(&sb, "Big", &src);
    let small = sb.path().join("small-cache");
    let _fs = crate::common::SmallDisk::mount(&small, "4m");
    let out = sb.cmd().arg("--cache-dir").arg(&small).args(["download", "Big"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("MiB free") && stderr(&out).contains("prune"), "{}", stderr(&out));
    let staged = walkdir::WalkDir::new(small.join(".staging")).min_depth(1).into_iter().count();
    assert_eq!(staged, 0, "nothing left in staging");
}

#[cfg(feature = "s3")]
#[test]
fn u1_status_against_an_endpoint_that_never_answers_is_quick() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(16) {
            held.push(s);
        }
    });
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s").env("AWS_REGION", "us-east-1");
    let started = std::time::Instant::now();
    let out = sb
        .cmd()
        .env_remove("CROWECODE_MAX_ATTEMPTS")
        .args(["--provider", "s3", "--bucket", "silent", "--endpoint", &format!("http://127.0.0.1:{port}"), "status"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(took.as_secs() < 40, "a health check answers in seconds, took {took:?}");
    assert!(stderr(&out).contains("retrying (1/2)"), "{}", stderr(&out));
}

#[test]
fn u11_download_force_replaces_a_changed_copy_with_a_verified_one() {
    let sb = set_up();
    let alpha = make_model(&sb.src(), "A", 18);
    upload(&sb, "A", &alpha);
    let path = stdout(&sb.cmd().args(["download", "A", "-q"]).output().unwrap()).trim().to_string();
    std::fs::write(Path::new(&path).join("config.json"), "tampered").unwrap();
    let out = sb.cmd().args(["verify", "A"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("download A --force"), "{}", stderr(&out));
    let out = sb.cmd().args(["download", "A", "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), path, "the same version path");
    assert!(sb.cmd().args(["verify", "A"]).output().unwrap().status.success());
    assert_eq!(tree(Path::new(&path)), tree(&alpha));
    let left = walkdir::WalkDir::new(sb.cache().join(".staging")).min_depth(1).into_iter().count();
    assert_eq!(left, 0, "the replaced copy is gone");
}
