//! Shared test harness: a sealed environment per test, tree helpers, and a tiny tar writer for
//! hostile archives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A command's stdout, trimmed (a printed path or reference).
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A command's stderr.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the tool in the sandbox.
pub fn run(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    sb.cmd().args(args).output().unwrap()
}

/// Runs the tool, which must succeed; its stdout, trimmed.
pub fn ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = run(sb, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// The directory of a sandbox set up on the local provider with the default config file.
pub fn local_bucket(sb: &Sandbox) -> PathBuf {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path().join("cfg/crowecode/cloud.json")).unwrap()).unwrap();
    PathBuf::from(cfg["config"]["bucket"].as_str().unwrap())
}

/// Reads a variable `scripts/test.sh` sets after starting the test servers. Missing means the
/// servers were not started: the test fails, loudly, instead of skipping a provider.
pub fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the test servers are not running; run the suite with scripts/test.sh, which starts them"
        )
    })
}

/// One test's private world: HOME, config and cache in a temp dir, no project variables.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    extra: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["home", "cfg", "cache", "src"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Self { dir, extra: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The local bucket directory.
    pub fn bucket(&self) -> PathBuf {
        self.path().join("bucket")
    }

    /// Where models to upload are made.
    pub fn src(&self) -> PathBuf {
        self.path().join("src")
    }

    /// The cache root (`CROWECODE_HOME`).
    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    /// Adds an environment variable to every command of this sandbox.
    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.extra.push((k.into(), v.into()));
        self
    }

    /// A variable added with [`Sandbox::env`].
    pub fn get_env(&self, k: &str) -> Option<String> {
        self.extra.iter().rev().find(|(name, _)| name == k).map(|(_, v)| v.clone())
    }

    /// The CLI in the sandbox: only PATH survives from the outer environment.
    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd())
    }

    /// The same as a plain `std::process::Command` (to spawn several at once).
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_crowecode-cloud"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("XDG_CONFIG_HOME", self.path().join("cfg"))
            .env("XDG_CACHE_HOME", self.path().join("home/.cache"))
            .env("CROWECODE_HOME", self.cache())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path().join("no-aws-credentials"))
            .env("CROWECODE_MAX_ATTEMPTS", "3")
            .env("CROWECODE_RETRY_BACKOFF", "0.05")
            // No cgroup memory limit, whatever the machine has: outputs (`tuning`) are the same
            // everywhere. `in_use.rs` gives fake cgroup trees of its own.
            .env("CROWECODE_CGROUP_ROOT", self.path().join("no-cgroup"))
            .current_dir(self.path());
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    /// A CLI configured for the local bucket (flags only, no config file).
    pub fn local(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.local_std())
    }

    /// [`Sandbox::local`] as a plain `std::process::Command`.
    pub fn local_std(&self) -> std::process::Command {
        let mut c = self.std_cmd();
        c.args(["--provider", "local", "--bucket"]).arg(self.bucket()).args(["--prefix", "models/"]);
        c
    }

    /// Replaces the sandbox's temp path and digests in `text`, for snapshots.
    pub fn redact(&self, text: &str) -> String {
        let mut t = text.replace(&self.path().display().to_string(), "[TMP]");
        for (pat, rep) in [
            (r"[0-9a-f]{64}", "[SHA256]"),
            (r"@[0-9a-f]{12}", "@[SHA12]"),
            (r"\b[0-9a-f]{12}\b", "[SHA12]"),
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
            (r"\d{8}T\d{6}Z-[0-9a-f]{8}", "[STAMP]"),
            (r#""seconds": [0-9.e-]+"#, r#""seconds": "[SECS]""#),
            (r"in [0-9.]+s \([^)]*\)", "in [SECS] ([RATE])"),
        ] {
            t = regex_replace(&t, pat, rep);
        }
        t
    }
}

/// A minimal regex replacement for the few patterns above (no regex crate needed in tests).
fn regex_replace(text: &str, pattern: &str, rep: &str) -> String {
    // Patterns are few and simple; a compiled regex from the regex-lite crate keeps this honest.
    regex_lite::Regex::new(pattern).expect("valid pattern").replace_all(text, rep).into_owned()
}

/// Writes `files` (path → content) under `root`, creating directories.
pub fn write_files(root: &Path, files: &[(&str, &[u8])]) {
    for (p, data) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A small model: weights, config, tokenizer in a subdirectory, an empty directory.
pub fn make_model(root: &Path, name: &str, seed: u64) -> PathBuf {
    let dir = root.join(name);
    write_files(
        &dir,
        &[
            ("model-00001-of-00002.safetensors", &noise(300_000, seed)),
            ("model-00002-of-00002.safetensors", &noise(123_457, seed + 1)),
            ("config.json", format!("{{\"name\":\"{name}\",\"seed\":{seed}}}").as_bytes()),
            ("tokenizer/tokenizer.json", &noise(5_000, seed + 2)),
        ],
    );
    std::fs::create_dir_all(dir.join("empty-dir")).unwrap();
    dir
}

/// What a tree is, for comparison: path → (kind, mode, sha256 of content).
pub fn tree(root: &Path) -> BTreeMap<String, (char, u32, String)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let m = e.metadata().unwrap();
        let mode = m.permissions().mode() & 0o777;
        if e.file_type().is_dir() {
            out.insert(rel, ('d', mode, String::new()));
        } else if e.file_type().is_file() {
            let digest = hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap()));
            out.insert(rel, ('f', mode, digest));
        } else {
            out.insert(rel, ('l', 0, String::new()));
        }
    }
    out
}

pub use crowecode_cloud::archive::testing::{tar_header, tar_of};

/// Makes `manifest` the manifest of `model`'s latest version in the bucket directory
/// `models_root` (the prefix's directory), as anyone with write access to the bucket could: a
/// version object named by its digest, `latest` pointed at it, and the `manifest.json` alias.
pub fn plant_latest(models_root: &Path, model: &str, manifest: &[u8]) {
    let id = sha256_hex(manifest);
    let dir = models_root.join(model);
    std::fs::create_dir_all(dir.join("versions")).unwrap();
    std::fs::create_dir_all(dir.join("tags")).unwrap();
    std::fs::write(dir.join("versions").join(format!("{id}.json")), manifest).unwrap();
    let tag = serde_json::json!({"format": 1, "model": model, "tag": "latest", "version": id, "moves": []});
    std::fs::write(dir.join("tags/latest.json"), serde_json::to_vec(&tag).unwrap()).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A tmpfs mounted for one test, unmounted on drop.
pub struct SmallDisk(pub std::path::PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mounting a {size} tmpfs failed: the full-disk test needs root (as scripts/test.sh runs in CI)"
        );
        Self(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `cmd` on a thread after `delay`; join the handle for its output (races between commands).
pub fn run_after(
    mut cmd: std::process::Command,
    delay: std::time::Duration,
) -> std::thread::JoinHandle<std::process::Output> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        cmd.output().unwrap()
    })
}
