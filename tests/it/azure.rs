//! The CLI end to end on Azurite (started by scripts/emulators.sh), which enforces SharedKey and
//! SAS signatures: a connection string with the account key, a SAS, a wrong key.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use predicates::prelude::*;
use sha2::Sha256;

use crate::common::{Sandbox, make_model, noise, require_env, tree, write_files};
use crate::conformance::fastrand_u32;

pub struct Azurite {
    pub endpoint: String,
    pub account: String,
    pub key: String,
}

pub fn azurite() -> Azurite {
    Azurite {
        endpoint: require_env("CROWECODE_TEST_AZURE_ENDPOINT"),
        account: require_env("CROWECODE_TEST_AZURE_ACCOUNT"),
        key: require_env("CROWECODE_TEST_AZURE_KEY"),
    }
}

impl Azurite {
    pub fn connection_string(&self, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={key};BlobEndpoint={}/;",
            self.account, self.endpoint
        )
    }

    /// An account SAS (service version 2020-08-04 layout) for blobs, signed with the account key.
    pub fn account_sas(&self, permissions: &str) -> String {
        let (version, expiry) = ("2020-08-04", "2099-01-01T00:00:00Z");
        let text = format!("{}\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n", self.account);
        let mut mac = Hmac::<Sha256>::new_from_slice(&B64.decode(&self.key).unwrap()).unwrap();
        mac.update(text.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        let sig: String = sig
            .chars()
            .map(|c| match c {
                '+' => "%2B".into(),
                '/' => "%2F".into(),
                '=' => "%3D".into(),
                c => c.to_string(),
            })
            .collect();
        format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={}&spr=https,http&sig={sig}", expiry.replace(':', "%3A"))
    }
}

fn az(sb: &Sandbox, container: &str) -> assert_cmd::Command {
    let mut c = sb.cmd();
    c.args(["--provider", "azure", "--bucket", container, "--prefix", "models/"]);
    if let Some(endpoint) = sb.get_env("CROWECODE_TEST_ENDPOINT_FLAG") {
        c.args(["--endpoint", &endpoint]);
    }
    c
}

/// setup, two uploads (one in several blocks), list, download into a fresh home: byte-identical.
fn round_trip(mut sb: Sandbox, mut fresh: Sandbox, creds: &[(&str, &str)], secret: &str, source: &str) {
    for (k, v) in creds {
        sb.env(k, v);
        fresh.env(k, v);
    }
    let container = format!("it-az-{:08x}", fastrand_u32());
    let alpha = make_model(&sb.src(), "Alpha", 41);
    write_files(&alpha, &[("extra.bin", &noise(3_500_000, 6))]);
    let beta = make_model(&sb.src(), "Beta", 42);
    let out = az(&sb, &container).args(["setup", "--create-bucket", "--no-write"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = az(&sb, &container)
        .args(["--json", "upload", "Alpha", "--format", "1", "--part-size", "1M", "--models-dir"])
        .arg(sb.src())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["models"][0]["parts"].as_u64().unwrap() >= 4, "{v}");
    az(&sb, &container)
        .args(["upload", "Beta", "--compression", "zstd", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success();
    az(&sb, &container)
        .args(["upload", "Beta", "--compression", "zstd", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success()
        .stderr(predicate::str::contains("up to date"));
    let out = az(&sb, &container).args(["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["Alpha", "Beta"], "{v}");

    let out = az(&fresh, &container).args(["download", "Alpha", "Beta", "--part-size", "1M"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paths: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(tree(Path::new(&paths[0])), tree(&alpha));
    assert_eq!(tree(Path::new(&paths[1])), tree(&beta));
    let out = az(&fresh, &container).args(["download", "Gamma"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));

    let out = az(&fresh, &container).arg("status").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(source), "{text}");
    assert!(!text.contains(secret), "the secret leaked into status: {text}");
}

#[test]
fn azurite_round_trip_with_a_connection_string() {
    let a = azurite();
    let cs = a.connection_string(&a.key);
    round_trip(
        Sandbox::new(),
        Sandbox::new(),
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
        &a.key,
        "connection string (AZURE_STORAGE_CONNECTION_STRING), account key",
    );
}

#[test]
fn azurite_round_trip_with_a_sas_token() {
    let a = azurite();
    let sas = a.account_sas("rwdlac");
    let sig = sas.split("sig=").nth(1).unwrap().to_string();
    round_trip(
        Sandbox::new(),
        Sandbox::new(),
        // A SAS names no endpoint: the emulator's comes from the flag.
        &[("AZURE_STORAGE_SAS_TOKEN", &sas), ("CROWECODE_TEST_ENDPOINT_FLAG", &a.endpoint)],
        &sig,
        "SAS token (AZURE_STORAGE_SAS_TOKEN)",
    );
}

#[test]
fn azurite_account_key_with_endpoint_in_config() {
    // AZURE_STORAGE_KEY plus `account` and `endpoint` from flags: the third way in.
    let a = azurite();
    let mut sb = Sandbox::new();
    sb.env("AZURE_STORAGE_KEY", &a.key);
    let container = format!("it-az-{:08x}", fastrand_u32());
    let args = ["--account", &a.account, "--endpoint", &a.endpoint];
    az(&sb, &container).args(args).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    make_model(&sb.src(), "Alpha", 43);
    az(&sb, &container).args(args).args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    az(&sb, &container).args(args).args(["download", "Alpha"]).assert().success();
}

#[test]
fn azurite_wrong_key_exits_4_without_echoing_it() {
    let a = azurite();
    let wrong = B64.encode(noise(64, 77));
    let mut sb = Sandbox::new();
    sb.env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&wrong));
    let out = az(&sb, "models").args(["download", "Alpha"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("AuthenticationFailed") || err.contains("AuthorizationFailure"), "{err}");
    assert!(err.contains("hint:") && err.contains("AZURE_STORAGE_CONNECTION_STRING"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(&a.key), "{err}");
}

#[test]
fn azurite_read_only_sas_cannot_upload() {
    let a = azurite();
    let mut admin = Sandbox::new();
    admin.env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&a.key));
    let container = format!("it-az-{:08x}", fastrand_u32());
    az(&admin, &container).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let mut reader = Sandbox::new();
    let sas = a.account_sas("rl");
    reader.env("AZURE_STORAGE_SAS_TOKEN", &sas).env("AZURE_STORAGE_ACCOUNT", &a.account);
    make_model(&reader.src(), "Alpha", 44);
    let out = az(&reader, &container)
        .args(["--endpoint", &a.endpoint, "upload", "Alpha", "--models-dir"])
        .arg(reader.src())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(!err.contains(sas.split("sig=").nth(1).unwrap()), "{err}");
}

#[test]
fn azurite_missing_container_exits_3_and_malformed_credentials_exit_4() {
    let a = azurite();
    let mut sb = Sandbox::new();
    sb.env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&a.key));
    az(&sb, "no-such-container").args(["download", "Alpha"]).assert().code(3);

    let mut bad = Sandbox::new();
    bad.env("AZURE_STORAGE_CONNECTION_STRING", "AccountName=devstoreaccount1;AccountKey=%%%notbase64");
    let out = az(&bad, "models").args(["download", "Alpha"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not valid base64") && !err.contains("%%%notbase64"), "{err}");
}

/// A loopback proxy that forwards to `upstream` and keeps a copy of every request byte.
fn recording_proxy(upstream: &str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    let upstream = upstream.to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = TcpStream::connect(&upstream).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 << 10];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn azurite_every_write_carries_the_encryption_scope() {
    let a = azurite();
    let upstream = a.endpoint.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let (proxy, seen) = recording_proxy(&upstream);
    let endpoint = a.endpoint.replace(&upstream, &proxy);
    let mut sb = Sandbox::new();
    sb.env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&a.key));
    let container = format!("it-az-{:08x}", fastrand_u32());
    let args = ["--endpoint", &endpoint, "--encryption-scope", "crowecode-scope"];
    az(&sb, &container).args(args).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let alpha = make_model(&sb.src(), "Alpha", 45);
    write_files(&alpha, &[("extra.bin", &noise(2_500_000, 8))]);
    seen.lock().unwrap().clear();
    az(&sb, &container)
        .args(args)
        .args(["upload", "Alpha", "--format", "1", "--part-size", "1M", "--models-dir"])
        .arg(sb.src())
        .assert()
        .success();
    // Bucket format 2 too: packs, locations and file indexes.
    make_model(&sb.src(), "Beta", 46);
    az(&sb, &container).args(args).args(["upload", "Beta", "--models-dir"]).arg(sb.src()).assert().success();
    let log = seen.lock().unwrap().clone();
    assert!(count(&log, b"_pieces") >= 1, "format 2 wrote packs");
    let puts = count(&log, b"PUT /");
    let blocks = count(&log, b"blockid=");
    assert!(blocks >= 3 && puts > blocks, "{puts} PUTs, {blocks} blocks");
    assert_eq!(count(&log, b"x-ms-encryption-scope: crowecode-scope\r\n"), puts, "every write names the scope");
}

/// Every command, in text and `--json`, verbose, with credentials of two clouds in the
/// environment: no key, secret, session token or SAS signature appears in any output.
#[cfg(feature = "s3")]
#[test]
fn no_command_prints_a_secret() {
    let a = azurite();
    let s3_endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let secret = "s3cr3t-Wj9kXq2vLmN8pR4tY6uB1cD5";
    let token = "T0ken-FQoGZXIvYXdzEBcaDHh1bW9yb3VzLXNlc3Npb24";
    let sas = a.account_sas("rl");
    let sig = sas.split("sig=").nth(1).unwrap().to_string();
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", token)
        .env("AWS_REGION", "us-east-1")
        .env("AZURE_STORAGE_CONNECTION_STRING", &a.connection_string(&a.key))
        .env("AZURE_STORAGE_SAS_TOKEN", &sas);
    make_model(&sb.src(), "Alpha", 81);
    let container = format!("it-sec-{:08x}", fastrand_u32());
    let clouds: [Vec<String>; 2] = [
        ["--provider", "s3", "--bucket", &container, "--endpoint", &s3_endpoint].map(String::from).to_vec(),
        ["--provider", "azure", "--bucket", &container].map(String::from).to_vec(),
    ];
    let src = sb.src().display().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["setup", "--create-bucket", "--no-write"],
        vec!["status"],
        vec!["upload", "Alpha", "--models-dir", &src],
        vec!["list"],
        vec!["download", "Alpha"],
        vec!["download", "Alpha", "--only", "*.json"],
        vec!["download", "Missing"],
        vec!["verify", "Alpha"],
        vec!["list", "--local"],
        vec!["prune", "--dry-run"],
        vec!["prune", "--remote", "--min-age", "0s"],
    ];
    let mut runs = 0;
    for cloud in &clouds {
        for command in &commands {
            for mode in [&["-v"][..], &["--json"][..]] {
                let out = sb.cmd().args(cloud).args(mode).args(command).output().unwrap();
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                for (what, value) in
                    [("secret key", secret), ("session token", token), ("account key", &a.key), ("SAS signature", &sig)]
                {
                    assert!(!text.contains(value), "{what} printed by {cloud:?} {mode:?} {command:?}:\n{text}");
                }
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 44);
}
