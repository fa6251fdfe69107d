//! The examples stay true: YAML parses, the Kubernetes Secret's config is one the tool accepts,
//! and the container entrypoint makes the model ready and then runs the server on it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use yaml_rust2::{Yaml, YamlLoader};

use crowecode_cloud::config;

use crate::common::{Sandbox, make_model, tree};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    yaml_files(&repo().join("examples"), &mut files);
    yaml_files(&repo().join(".github"), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let docs = load(f);
        assert!(!docs.is_empty() && docs.iter().all(|d| d.as_hash().is_some()), "{}: not a mapping", f.display());
        if f.starts_with(repo().join("examples/kubernetes")) {
            for d in &docs {
                assert!(d["apiVersion"].as_str().is_some() && d["kind"].as_str().is_some(), "{}", f.display());
            }
        } else {
            assert!(
                docs[0]["jobs"].as_hash().is_some_and(|j| !j.is_empty()),
                "{}: a workflow without jobs",
                f.display()
            );
        }
    }
}

#[test]
fn the_kubernetes_secret_holds_a_config_the_tool_accepts() {
    let docs = load(&repo().join("examples/kubernetes/secret.yaml"));
    let b64 = docs[0]["stringData"]["CROWECODE_CLOUD_CONFIG_B64"].as_str().expect("the key is there");
    let json: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    assert_eq!(json["provider"], "s3");
    // And the tool reads it as such.
    let file = config::FileLocation { path: PathBuf::from("/nonexistent/cloud.json"), explicit: false };
    let env = |k: &str| (k == "CROWECODE_CLOUD_CONFIG_B64").then(|| b64.to_string());
    let resolved = config::resolve(&env, &file, &config::Overrides::default()).unwrap();
    assert_eq!(resolved.config.bucket, "my-crowecode-models");
    assert_eq!(resolved.config.prefix, "crowecode-models/");
}

/// The image's ENTRYPOINT, as the Dockerfile gives it, run with `docker run`'s arguments.
#[test]
fn the_docker_entrypoint_makes_the_model_ready_then_runs_the_server_on_it() {
    let sb = Sandbox::new();
    let alpha = make_model(&sb.src(), "Alpha", 51);
    sb.local().args(["setup", "--create-bucket", "--no-write"]).assert().success();
    sb.local().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).assert().success();
    let config = serde_json::json!({
        "enabled": true, "provider": "local",
        "config": {"bucket": sb.bucket(), "prefix": "models/"}
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_crowecode-cloud")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let dockerfile = std::fs::read_to_string(repo().join("examples/docker/Dockerfile")).unwrap();
    let line = dockerfile.lines().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(line).expect("the exec form");

    let run = |args: &[&str]| {
        std::process::Command::new(&entrypoint[0])
            .args(&entrypoint[1..])
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", sb.path().join("home"))
            .env("CROWECODE_HOME", sb.cache())
            .env("CROWECODE_CLOUD_CONFIG_B64", &b64)
            .output()
            .unwrap()
    };
    let out = run(&[
        "Alpha",
        "--",
        "sh",
        "-c",
        "echo serving && ls \"$1\" && test \"$1\" = \"$CROWECODE_MODEL_PATH\"",
        "sh",
        "{}",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("serving") && stdout.contains("config.json"), "{stdout}");
    assert_eq!(tree(&sb.cache().join("models/Alpha")), tree(&alpha));

    // A failed download stops the container before the server starts, with the tool's exit code.
    let out = run(&["Missing", "--", "sh", "-c", "echo must-not-run"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
}
