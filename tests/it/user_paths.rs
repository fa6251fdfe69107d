//! The commands of the seed document and of the README, run as written: the seed's three `setup`
//! lines byte for byte, then `status`, `list`, `upload Alpha Beta`, `download Alpha Gamma` on every
//! provider, with the default prefix, with none and with another, and with the config in the
//! default file, at a new `--config`/`CROWECODE_CONFIG` path, or only in
//! `CROWECODE_CLOUD_CONFIG_B64`. The only thing added to a documented command is the emulator's
//! endpoint (and its credentials in the environment), as a user of an emulator would.

use std::path::PathBuf;

use crate::common::{Sandbox, make_model, require_env, tree};
use crate::conformance::fastrand_u32;

/// The seed's own example string (what its `setup` line prints).
const SEED_S3_EXPORT: &str = "export CROWECODE_CLOUD_CONFIG_B64='eyJlbmFibGVkIjp0cnVlLCJwcm92aWRlciI6InMzIiwiY29uZmlnIjp7ImJ1Y2tldCI6Im15LWNyb3dlY29kZS1tb2RlbHMiLCJyZWdpb24iOiJ1cy13ZXN0LTIiLCJwcmVmaXgiOiJjcm93ZWNvZGUtbW9kZWxzLyJ9fQ=='\n";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn decode_export(line: &str) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = line.trim().trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64='").trim_end_matches('\'');
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[test]
fn the_seeds_three_setup_lines_print_the_seeds_config() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["setup", "--provider", "s3", "--bucket", "my-crowecode-models", "--region", "us-west-2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), SEED_S3_EXPORT, "byte for byte the seed's string");
    for (args, provider) in [
        (vec!["setup", "--provider", "gcs", "--bucket", "my-crowecode-models"], "gcs"),
        (vec!["setup", "--provider", "azure", "--bucket", "my-crowecode-models", "--account", "myaccount"], "azure"),
    ] {
        let out = sb.cmd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let doc = decode_export(&stdout(&out));
        assert_eq!(doc["provider"], provider);
        assert_eq!(doc["config"]["bucket"], "my-crowecode-models");
        assert_eq!(doc["config"]["prefix"], "crowecode-models/", "the deployments' default prefix on {provider}");
    }
    // An explicit empty prefix still means none, and re-running setup on an existing config
    // (a config without `prefix`, as older releases wrote) keeps meaning none.
    let bucket = sb.bucket().display().to_string();
    let out = sb.cmd().args(["setup", "--provider", "local", "--bucket", &bucket, "--prefix", ""]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(decode_export(&stdout(&out))["config"].get("prefix").is_none());
    let out = sb.cmd().args(["setup", "--provider", "local", "--bucket", &bucket]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(decode_export(&stdout(&out))["config"].get("prefix").is_none(), "{}", stdout(&out));
}

#[test]
fn setup_creates_a_config_at_an_explicit_new_path_and_other_commands_still_require_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::new();
    let bucket = sb.bucket();
    for (how, path) in [("env", sb.path().join("x/env/cloud.json")), ("flag", sb.path().join("y/flag/cloud.json"))] {
        let mut c = sb.cmd();
        match how {
            "env" => c.env("CROWECODE_CONFIG", &path),
            _ => c.arg("--config").arg(&path),
        };
        let out =
            c.args(["setup", "--provider", "local", "--bucket"]).arg(&bucket).arg("--create-bucket").output().unwrap();
        assert!(out.status.success(), "{how}: {}", stderr(&out));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap().parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    let missing = sb.path().join("z/cloud.json");
    let out = sb.cmd().arg("--config").arg(&missing).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not exist") && err.contains("setup --provider"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn setup_replaces_a_broken_config_file_and_keeps_it_aside() {
    let sb = Sandbox::new();
    let file = sb.path().join("cfg/crowecode/cloud.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    for broken in ["{", "{\"enabled\":\"yes\"}", "\u{feff}{"] {
        std::fs::write(&file, broken).unwrap();
        let out = sb.cmd().args(["status"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let out = sb
            .cmd()
            .args(["setup", "--provider", "local", "--create-bucket", "--bucket"])
            .arg(sb.bucket())
            .output()
            .unwrap();
        assert!(out.status.success(), "{broken:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(".bak"), "{}", stderr(&out));
        assert_eq!(std::fs::read_to_string(file.with_extension("json.bak")).unwrap(), broken);
        assert!(sb.cmd().arg("status").output().unwrap().status.success());
    }
    // A broken B64 in the environment does not stop setup from printing a new one.
    let out = sb
        .cmd()
        .env("CROWECODE_CLOUD_CONFIG_B64", "!!!")
        .args(["setup", "--provider", "local", "--no-write", "--bucket"])
        .arg(sb.bucket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("export CROWECODE_CLOUD_CONFIG_B64="));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    Local,
    S3,
    Gcs,
    Azure,
}

#[derive(Clone, Copy, Debug)]
enum Prefix {
    /// No `--prefix`: the documented default.
    Default,
    /// `--prefix ''`.
    None,
    /// `--prefix team/models/`.
    Other,
}

#[derive(Clone, Copy, Debug)]
enum ConfigAt {
    /// The default file.
    DefaultFile,
    /// `CROWECODE_CONFIG` naming a file that does not exist yet.
    EnvPath,
    /// `--config` naming a file that does not exist yet, on every command.
    FlagPath,
    /// Only `CROWECODE_CLOUD_CONFIG_B64`, from `setup --no-write`.
    B64Only,
}

/// The storage flags a user of this provider's emulator adds to the documented `setup`, and the
/// credentials they put in the environment.
pub(crate) fn provider_args(sb: &mut Sandbox, p: Provider) -> (Vec<String>, String) {
    let n = fastrand_u32();
    match p {
        Provider::Local => {
            let b = sb.path().join(format!("bucket-{n:08x}")).display().to_string();
            (vec!["--provider".into(), "local".into(), "--bucket".into(), b.clone()], b)
        }
        Provider::S3 => {
            sb.env("AWS_ACCESS_KEY_ID", "moto-key")
                .env("AWS_SECRET_ACCESS_KEY", "moto-secret")
                .env("AWS_REGION", "us-east-1");
            let b = format!("up-s3-{n:08x}");
            let args = ["--provider", "s3", "--bucket", &b, "--region", "us-east-1", "--endpoint"];
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.push(require_env("CROWECODE_TEST_S3_ENDPOINT"));
            (v, b)
        }
        Provider::Gcs => {
            let b = format!("up-gcs-{n:08x}");
            let endpoint = require_env("CROWECODE_TEST_GCS_ENDPOINT");
            let args = ["--provider", "gcs", "--bucket", &b, "--project", "test-project", "--endpoint", &endpoint];
            (args.iter().map(|s| s.to_string()).collect(), b)
        }
        #[cfg(feature = "azure")]
        Provider::Azure => {
            let a = crate::azure::azurite();
            sb.env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&a.key));
            let b = format!("up-az-{n:08x}");
            (["--provider", "azure", "--bucket", &b].iter().map(|s| s.to_string()).collect(), b)
        }
        #[cfg(not(feature = "azure"))]
        Provider::Azure => unreachable!("azure is not built in"),
    }
}

/// setup, status, upload Alpha Beta (from ./models, the default), list, download Alpha Gamma.
fn seed_flow(p: Provider, prefix: Prefix, at: ConfigAt) {
    let mut sb = Sandbox::new();
    let what = format!("{p:?} {prefix:?} {at:?}");
    let (storage, _bucket) = provider_args(&mut sb, p);
    let config_path = sb.path().join("new/dir/cloud.json");
    match at {
        ConfigAt::EnvPath => {
            sb.env("CROWECODE_CONFIG", &config_path.display().to_string());
        }
        ConfigAt::DefaultFile | ConfigAt::FlagPath | ConfigAt::B64Only => {}
    }
    let base = |sb: &Sandbox| {
        let mut c = sb.cmd();
        if matches!(at, ConfigAt::FlagPath) {
            c.arg("--config").arg(&config_path);
        }
        c
    };
    let mut setup = base(&sb);
    setup.arg("setup").args(&storage).arg("--create-bucket");
    match prefix {
        Prefix::Default => {}
        Prefix::None => {
            setup.args(["--prefix", ""]);
        }
        Prefix::Other => {
            setup.args(["--prefix", "team/models"]);
        }
    }
    if matches!(at, ConfigAt::B64Only) {
        setup.arg("--no-write");
    }
    let out = setup.output().unwrap();
    assert!(out.status.success(), "{what}: setup: {}", stderr(&out));
    let export = stdout(&out);
    let want_prefix = match prefix {
        Prefix::Default => "crowecode-models/",
        Prefix::None => "",
        Prefix::Other => "team/models/",
    };
    assert_eq!(decode_export(&export)["config"]["prefix"].as_str().unwrap_or(""), want_prefix, "{what}");
    match at {
        ConfigAt::B64Only => {
            let value = export.trim().trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64='").trim_end_matches('\'');
            sb.env("CROWECODE_CLOUD_CONFIG_B64", value);
            assert!(!sb.path().join("cfg/crowecode/cloud.json").exists(), "{what}: --no-write wrote a file");
        }
        ConfigAt::EnvPath | ConfigAt::FlagPath => assert!(config_path.is_file(), "{what}"),
        ConfigAt::DefaultFile => assert!(sb.path().join("cfg/crowecode/cloud.json").is_file(), "{what}"),
    }

    let out = base(&sb).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{what}: status: {} {}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["prefix"], want_prefix, "{what}");
    assert_eq!(report["reachable"], true, "{what}");

    // The seed's models live in ./models, where `upload Alpha Beta` looks by default.
    let models: PathBuf = sb.path().join("models");
    let alpha = make_model(&models, "Alpha", 71);
    make_model(&models, "Beta", 72);
    let out = base(&sb).args(["upload", "Alpha", "Beta"]).output().unwrap();
    assert!(out.status.success(), "{what}: upload: {}", stderr(&out));

    let out = base(&sb).args(["list"]).output().unwrap();
    assert!(out.status.success(), "{what}: list: {}", stderr(&out));
    assert!(stdout(&out).contains("Alpha") && stdout(&out).contains("Beta"), "{what}: {}", stdout(&out));
    let out = base(&sb).args(["status"]).output().unwrap();
    assert!(out.status.success(), "{what}: status: {}", stderr(&out));
    assert!(stdout(&out).contains("2 models"), "{what}: {}", stdout(&out));

    let out = base(&sb).args(["download", "Alpha", "Gamma"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{what}: Gamma is missing: {}", stderr(&out));
    let path = stdout(&out);
    let lines: Vec<&str> = path.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: only Alpha's path: {path}");
    assert_eq!(tree(std::path::Path::new(lines[0])), tree(&alpha), "{what}");
    assert!(stderr(&out).contains("Gamma"), "{what}");
}

fn all_ways(p: Provider) {
    seed_flow(p, Prefix::Default, ConfigAt::DefaultFile);
    seed_flow(p, Prefix::None, ConfigAt::EnvPath);
    seed_flow(p, Prefix::Other, ConfigAt::B64Only);
    seed_flow(p, Prefix::None, ConfigAt::FlagPath);
}

#[test]
fn the_seed_flow_on_the_local_provider() {
    all_ways(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn the_seed_flow_on_moto() {
    all_ways(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn the_seed_flow_on_fake_gcs() {
    all_ways(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn the_seed_flow_on_azurite() {
    all_ways(Provider::Azure);
}
