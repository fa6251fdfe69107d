//! Signed models, as a publisher and a fleet use them: `keygen`, `upload --sign-key`, trusted keys
//! on the machines, `download --require-signature`; and what someone with write access to the
//! bucket but without the key can try (re-upload, move a tag, copy a signature, edit or replay a
//! tag). Every provider, with and without a prefix. Interoperability with the reference
//! `model_signing` tool is tested in `python/tests/test_signing.py`.

use std::path::{Path, PathBuf};

use crate::common::{Sandbox, make_model, write_files};
use crate::user_paths::Provider;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh machine set up as the README says, on `p`, with `prefix` (`None`: the default).
fn set_up(p: Provider, prefix: Option<&str>) -> Sandbox {
    crate::mirror::machine_with_prefix(p, prefix).0
}

/// Every output of a flow, to check that no private key ever shows.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn run(&mut self, sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let mut c = sb.cmd();
        c.args(args).arg("-v");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        self.0.push_str(&String::from_utf8_lossy(&out.stdout));
        self.0.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    }

    fn ok(&mut self, sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.run(sb, env, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    }
}

/// A stretch of a PEM private key's base64 that holds secret bytes (the first ~50 characters
/// are the ASN.1 header every P-256 key shares): what must never leak.
fn secret_of(path: &Path) -> String {
    let body: String = std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.starts_with("-----")).collect();
    body[52..92].to_string()
}

fn link_target(sb: &Sandbox, model: &str) -> PathBuf {
    std::fs::canonicalize(sb.cache().join("models").join(model)).unwrap()
}

fn signed_flow(p: Provider, prefix: Option<&str>) {
    let what = format!("{p:?} prefix {prefix:?}");
    let sb = set_up(p, prefix);
    let mut seen = Seen::default();
    let keys = sb.path().join("keys");
    let ci = keys.join("ci");
    seen.ok(&sb, &[], &["keygen", "--out", ci.to_str().unwrap()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ci).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{what}");
    let trusted = keys.join("ci.pub").display().to_string();
    let ci_key = ci.display().to_string();
    let trust = [("CROWECODE_TRUSTED_KEYS", trusted.as_str())];
    let require = [("CROWECODE_TRUSTED_KEYS", trusted.as_str()), ("CROWECODE_REQUIRE_SIGNATURE", "1")];
    let signing = [("CROWECODE_SIGNING_KEY", ci_key.as_str())];

    // The publisher signs at upload; a machine that requires signatures installs it.
    let src = make_model(&sb.src(), "A", 1);
    let v1 = seen.ok(&sb, &signing, &["upload", "A", "--from", src.to_str().unwrap()]);
    let out = seen.ok(&sb, &require, &["download", "A", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let installed = PathBuf::from(json["models"][0]["path"].as_str().unwrap());
    let sig = PathBuf::from(json["models"][0]["signature"].as_str().unwrap());
    assert_eq!(sig, PathBuf::from(format!("{}.sig", installed.display())), "{what}: beside the version directory");
    assert!(sig.is_file() && !installed.join(sig.file_name().unwrap()).exists(), "{what}");
    assert!(json["models"][0]["signed_by"].as_str().unwrap().contains("ci.pub"), "{what}: {out}");
    let v1_dir = link_target(&sb, "A");

    // Someone with bucket access but not the key uploads another A: refused, v1 stays.
    write_files(&src, &[("config.json", b"{\"poisoned\":true}")]);
    let v2 = seen.ok(&sb, &[], &["upload", "A", "--from", src.to_str().unwrap()]);
    let out = seen.run(&sb, &require, &["download", "A"]);
    assert_eq!(out.status.code(), Some(6), "{what}: {}", stderr(&out));
    assert!(stderr(&out).contains("A:latest") && stderr(&out).contains("not signed"), "{what}: {}", stderr(&out));
    assert_eq!(stderr(&out).lines().filter(|l| l.starts_with("error:")).count(), 1, "{what}: one line");
    assert_eq!(link_target(&sb, "A"), v1_dir, "{what}: the previous version is untouched");
    let out = seen.run(&sb, &require, &["download", &v2]);
    assert_eq!(out.status.code(), Some(6), "{what}: {}", stderr(&out));
    assert!(stderr(&out).contains("it is not signed"), "{what}: {}", stderr(&out));
    let out = seen.run(&sb, &require, &["download", &v2, "--only", "*.json"]);
    assert_eq!(out.status.code(), Some(6), "{what}: a selection is refused too: {}", stderr(&out));
    // ... and moving the tag back to the signed v1 without the key is no better.
    seen.ok(&sb, &[], &["tag", &v1, "latest"]);
    let out = seen.run(&sb, &require, &["download", "A"]);
    assert_eq!(out.status.code(), Some(6), "{what}: an unsigned move: {}", stderr(&out));
    // The pinned, signed v1 is fine whatever the tags say.
    assert_eq!(seen.ok(&sb, &require, &["download", &v1]), v1_dir.display().to_string(), "{what}");

    // Without the requirement but with trusted keys: installed, with a warning.
    let out = seen.run(&sb, &trust, &["download", &v2]);
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    assert!(stderr(&out).contains("not signed"), "{what}: a warning: {}", stderr(&out));
    // Without trusted keys nothing is said about signatures.
    let plain = seen.ok(&sb, &[], &["upload", "Plain", "--from", make_model(&sb.src(), "Plain", 2).to_str().unwrap()]);
    let out = seen.run(&sb, &[], &["download", &plain]);
    assert!(out.status.success() && !stderr(&out).contains("sign"), "{what}: {}", stderr(&out));

    // A security team signs v2 after review, and the publisher moves latest with the key.
    let sec = keys.join("security");
    seen.ok(&sb, &[], &["keygen", "--out", sec.to_str().unwrap()]);
    seen.ok(&sb, &[], &["sign", &v2, "--sign-key", sec.to_str().unwrap()]);
    let sec_pub = keys.join("security.pub").display().to_string();
    let only_sec = [("CROWECODE_TRUSTED_KEYS", sec_pub.as_str()), ("CROWECODE_REQUIRE_SIGNATURE", "1")];
    seen.ok(&sb, &[], &["tag", &v2, "latest", "--sign-key", sec.to_str().unwrap()]);
    let v2_dir = seen.ok(&sb, &only_sec, &["download", "A"]);
    assert_ne!(PathBuf::from(&v2_dir), v1_dir, "{what}");
    let history = seen.ok(&sb, &only_sec, &["history", "A"]);
    assert!(history.contains("(trusted)") && history.contains("signed by"), "{what}: {history}");
    let listed = seen.ok(&sb, &only_sec, &["list"]);
    assert!(listed.contains("SIGNED BY") && listed.contains("(trusted)"), "{what}: {listed}");
    let status = seen.ok(&sb, &only_sec, &["status"]);
    assert!(status.contains("signatures:   REQUIRED"), "{what}: {status}");

    // A legitimate rollback is a new signed move.
    seen.ok(&sb, &signing, &["rollback", "A"]);
    assert_eq!(seen.ok(&sb, &require, &["download", "A"]), v1_dir.display().to_string(), "{what}");

    // Rotation: signed with old and new, trusted by either.
    let new = keys.join("ci-2027");
    seen.ok(&sb, &[], &["keygen", "--out", new.to_str().unwrap()]);
    write_files(&src, &[("config.json", b"{\"v\":3}")]);
    let v3 = seen.ok(
        &sb,
        &[],
        &["upload", "A", "--from", src.to_str().unwrap(), "--sign-key", &ci_key, "--sign-key", new.to_str().unwrap()],
    );
    let new_pub = keys.join("ci-2027.pub").display().to_string();
    for pubkey in [trusted.clone(), new_pub.clone()] {
        let env = [("CROWECODE_TRUSTED_KEYS", pubkey.as_str()), ("CROWECODE_REQUIRE_SIGNATURE", "1")];
        let dir = seen.ok(&sb, &env, &["download", "A", "--force"]);
        assert_eq!(seen.ok(&sb, &env, &["resolve", "A"]), v3, "{what}");
        assert!(Path::new(&format!("{dir}.sig")).is_file(), "{what}");
    }

    // `verify` checks the installed signature (the one the trusted key of the last download
    // made), and the files against what was signed.
    let require = [("CROWECODE_TRUSTED_KEYS", new_pub.as_str()), ("CROWECODE_REQUIRE_SIGNATURE", "1")];
    let out = seen.ok(&sb, &require, &["verify", "A", "--require-signature"]);
    assert!(out.contains("signed by trusted key"), "{what}: {out}");
    let current = link_target(&sb, "A");
    let f = current.join("config.json");
    std::fs::write(&f, b"{\"v\":666}").unwrap();
    let out = seen.run(&sb, &require, &["verify", "A"]);
    assert_eq!(out.status.code(), Some(6), "{what}: {}", stdout(&out));
    std::fs::remove_file(format!("{}.sig", current.display())).unwrap();
    std::fs::write(&f, b"{\"v\":3}").unwrap();
    let out = seen.run(&sb, &require, &["verify", "A"]);
    assert_eq!(out.status.code(), Some(6), "{what}: no signature installed: {}", stdout(&out));
    let out = seen.run(&sb, &require, &["download", "A", "--offline"]);
    assert_eq!(out.status.code(), Some(6), "{what}: offline needs the installed signature: {}", stderr(&out));

    // Trusted keys without a file: the config string `setup --trusted-key` prints carries them.
    let out = seen.ok(&sb, &[], &["setup", "--no-write", "--trusted-key", &trusted, "--require-signature"]);
    let b64 = out.trim().trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64=").trim_matches('\'').to_string();
    std::fs::remove_file(keys.join("ci.pub")).unwrap();
    let out = seen.run(&sb, &[("CROWECODE_CLOUD_CONFIG_B64", &b64)], &["download", &v2]);
    assert_eq!(out.status.code(), Some(6), "{what}: v2 is signed by security only: {}", stderr(&out));
    seen.ok(&sb, &[("CROWECODE_CLOUD_CONFIG_B64", &b64)], &["download", &v3]);

    for key in [&ci, &sec, &new] {
        assert!(!seen.0.contains(&secret_of(key)), "{what}: a private key was printed");
    }
}

#[test]
fn signed_models_on_the_local_provider() {
    signed_flow(Provider::Local, None);
    signed_flow(Provider::Local, Some(""));
}

#[cfg(feature = "s3")]
#[test]
fn signed_models_on_moto() {
    signed_flow(Provider::S3, None);
    signed_flow(Provider::S3, Some(""));
}

#[cfg(feature = "gcs")]
#[test]
fn signed_models_on_fake_gcs() {
    signed_flow(Provider::Gcs, None);
    signed_flow(Provider::Gcs, Some("team/models/"));
}

#[cfg(feature = "azure")]
#[test]
fn signed_models_on_azurite() {
    signed_flow(Provider::Azure, None);
    signed_flow(Provider::Azure, Some(""));
}

/// What someone with write access to the bucket's files can do by hand, on the local provider.
#[test]
fn hand_made_signatures_and_tags_are_refused() {
    let sb = set_up(Provider::Local, None);
    let mut seen = Seen::default();
    let key = sb.path().join("keys/ci");
    seen.ok(&sb, &[], &["keygen", "--out", key.to_str().unwrap()]);
    let trusted = sb.path().join("keys/ci.pub").display().to_string();
    let require = [("CROWECODE_TRUSTED_KEYS", trusted.as_str()), ("CROWECODE_REQUIRE_SIGNATURE", "1")];
    let signing = [("CROWECODE_SIGNING_KEY", key.to_str().unwrap())];
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path().join("cfg/crowecode/cloud.json")).unwrap()).unwrap();
    let bucket = PathBuf::from(cfg["config"]["bucket"].as_str().unwrap()).join("crowecode-models");

    // A validly signed Beta copied over Alpha: same files, signature and all.
    let beta = make_model(&sb.src(), "Beta", 5);
    let b = seen.ok(&sb, &signing, &["upload", "Beta", "--from", beta.to_str().unwrap()]);
    let alpha = seen.ok(&sb, &[], &["upload", "Alpha", "--from", beta.to_str().unwrap()]);
    let (b_id, a_id) = (b.split("sha256:").nth(1).unwrap(), alpha.split("sha256:").nth(1).unwrap());
    let b_sig = std::fs::read_dir(bucket.join("Beta/versions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".sig"))
        .unwrap();
    let name = b_sig.file_name().unwrap().to_string_lossy().replace(b_id, a_id);
    std::fs::copy(&b_sig, bucket.join("Alpha/versions").join(name)).unwrap();
    let out = seen.run(&sb, &require, &["download", &alpha]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("signed for model Beta"), "{}", stderr(&out));
    assert!(!sb.cache().join("models/Alpha").exists());

    // An old Alpha: a signature of v1 copied onto a version with v1's files but another id.
    let src = make_model(&sb.src(), "A", 6);
    let v1 = seen.ok(&sb, &signing, &["upload", "A", "--from", src.to_str().unwrap()]);
    let copy = seen.ok(&sb, &[], &["upload", "A", "--from", src.to_str().unwrap(), "--force", "--no-latest"]);
    assert_ne!(v1, copy);
    let (v1_id, copy_id) = (v1.split("sha256:").nth(1).unwrap(), copy.split("sha256:").nth(1).unwrap());
    for e in std::fs::read_dir(bucket.join("A/versions")).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with(v1_id) && n.ends_with(".sig") {
            std::fs::copy(&p, bucket.join("A/versions").join(n.replace(v1_id, copy_id))).unwrap();
        }
    }
    let out = seen.run(&sb, &require, &["download", &copy]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("signed for another version"), "{}", stderr(&out));

    // A signed tag edited by hand to point at an older signed version.
    write_files(&src, &[("config.json", b"{\"v\":2}")]);
    let tag = bucket.join("A/tags/latest.json");
    let v1_record = std::fs::read(&tag).unwrap();
    let v2 = seen.ok(&sb, &signing, &["upload", "A", "--from", src.to_str().unwrap()]);
    let v2_dir = seen.ok(&sb, &require, &["download", "A"]);
    let v2_id = v2.split("sha256:").nth(1).unwrap();
    let edited = std::fs::read_to_string(&tag).unwrap().replacen(
        &format!("\"version\": \"sha256:{v2_id}\""),
        &format!("\"version\": \"sha256:{v1_id}\""),
        1,
    );
    assert!(edited.contains(&format!("\"version\": \"sha256:{v1_id}\"")));
    std::fs::write(&tag, edited).unwrap();
    let out = seen.run(&sb, &require, &["download", "A"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("edited by hand"), "{}", stderr(&out));
    // The whole signed record of v1 put back: this machine has seen a later move.
    std::fs::write(&tag, &v1_record).unwrap();
    let out = seen.run(&sb, &require, &["download", "A"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("replayed"), "{}", stderr(&out));
    assert_eq!(link_target(&sb, "A"), PathBuf::from(&v2_dir));

    // A publisher's signature for another model, given at upload.
    let out =
        seen.run(&sb, &[], &["upload", "A", "--from", src.to_str().unwrap(), "--signature", b_sig.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("signature is for model Beta"), "{}", stderr(&out));

    // The bucket never holds the private key.
    let secret = secret_of(&key);
    for e in walkdir::WalkDir::new(&bucket).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()) {
        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        assert!(!text.contains(&secret), "{} holds the private key", e.path().display());
    }
    assert!(!seen.0.contains(&secret));
}

#[test]
fn bad_keys_and_policies_get_one_line_and_an_exit_code() {
    let sb = set_up(Provider::Local, None);
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = sb.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Required without a trusted key: nothing could pass, so it is a config error.
    let out = run(&[("CROWECODE_REQUIRE_SIGNATURE", "1")], &["download", "A"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no trusted key"), "{}", stderr(&out));
    // A private key given as a trusted key.
    let key = sb.path().join("k");
    assert!(run(&[], &["keygen", "--out", key.to_str().unwrap()]).status.success());
    let out = run(&[("CROWECODE_TRUSTED_KEYS", key.to_str().unwrap())], &["download", "A"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a private key") && !stderr(&out).contains(&secret_of(&key)));
    // keygen never overwrites.
    let out = run(&[], &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // An RSA or missing signing key.
    let rsa = sb.path().join("rsa.pem");
    std::fs::write(
        &rsa,
        "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let src = make_model(&sb.src(), "A", 1);
    for k in [rsa.to_str().unwrap(), "/no/such/key"] {
        let out = run(&[], &["upload", "A", "--from", src.to_str().unwrap(), "--sign-key", k]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("signing key"), "{}", stderr(&out));
    }
    assert_eq!(run(&[], &["resolve", "A"]).status.code(), Some(5), "nothing was uploaded");
    // `sign` without a key says how to get one.
    let out = run(&[], &["sign", "A"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("keygen"), "{}", stderr(&out));
    // A key made by openssl's default (SEC1 "EC PRIVATE KEY") works as it is.
    let sec1 = sb.path().join("sec1.pem");
    let openssl = std::process::Command::new("openssl")
        .args(["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out"])
        .arg(&sec1)
        .status()
        .unwrap();
    assert!(openssl.success());
    let out = run(&[], &["upload", "A", "--from", src.to_str().unwrap(), "--sign-key", sec1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("signed"), "{}", stderr(&out));
}
