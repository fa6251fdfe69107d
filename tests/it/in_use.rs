//! A model in use is never pruned: `run` holds the versions it hands to a command for as long
//! as the command runs, `prune` (with `--max-size` too) leaves them and says who holds them, and
//! the hold ends with the process however it ends. Signals reach the command, its exit code comes
//! back, orphans are reaped; the memory budget is sized from the container's cgroup limit.
//! Every store, with and without a prefix, from a fresh home with the documented setup.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::common::{Sandbox, noise, sha256_hex, stderr, stdout, write_files};
use crate::mirror::machine_with_prefix;
use crate::user_paths::Provider;

/// A lazy server: opens one more file of its model every 0.2 s, recording each file's sha256;
/// after its third file it waits for `$2.go` (so the test knows it is mid-way while it prunes).
/// A file gone or unreadable ends it with exit 3.
const SERVER: &str = r#"
dir="$1"; out="$2"
echo started > "$out.started"
n=0
for f in $(cd "$dir" && find . -type f | sort); do
  sleep 0.2
  h=$(sha256sum < "$dir/$f") || exit 3
  echo "${f#./} ${h%% *}" >> "$out"
  n=$((n+1))
  if [ "$n" = 3 ]; then
    i=0
    while [ ! -e "$out.go" ]; do sleep 0.05; i=$((i+1)); [ "$i" -lt 1200 ] || exit 4; done
  fi
done
"#;

fn wait_for(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: {} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

/// A model of six files of different sizes (in a subdirectory too).
fn model(root: &Path, name: &str, seed: u64) -> PathBuf {
    let dir = root.join(name);
    write_files(&dir, &[("config.json", format!("{{\"seed\": {seed}}}").as_bytes()), ("tok/vocab.json", b"{}")]);
    for i in 0..4u64 {
        write_files(&dir, &[(&format!("shard-{i}.bin"), &noise(200_000 + (i as usize) * 50_000, seed * 10 + i))]);
    }
    dir
}

/// The `<file> <sha256>` lines the server must have written for `dir`.
fn expected_reads(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            format!("{rel} {}", sha256_hex(&std::fs::read(e.path()).unwrap()))
        })
        .collect();
    lines.sort();
    lines
}

/// The operator's story: a server runs under `run` on Alpha; meanwhile another shell downloads
/// other models, a new Alpha is published and downloaded, and `prune --max-size 0` runs. The
/// server reads every file; prune reports the held version (exit 8); once the server exits,
/// prune removes it.
fn a_server_in_use_survives_prune(p: Provider, prefix: Option<&str>) {
    let what = format!("{p:?} {prefix:?}");
    let (sb, _bucket) = machine_with_prefix(p, prefix);
    let alpha = model(&sb.src(), "Alpha", 1);
    for (name, seed) in [("Beta", 2), ("Gamma", 3)] {
        model(&sb.src(), name, seed);
    }
    let up = sb.cmd().args(["upload", "Alpha", "Beta", "Gamma", "--models-dir"]).arg(sb.src()).output().unwrap();
    assert!(up.status.success(), "{what}: {}", stderr(&up));
    let want = expected_reads(&alpha);

    let script = sb.path().join("server.sh");
    std::fs::write(&script, SERVER).unwrap();
    let reads = sb.path().join("reads.txt");
    let mut server = sb
        .std_cmd()
        .args(["run", "Alpha", "--", "sh"])
        .arg(&script)
        .arg("{}")
        .arg(&reads)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&reads.with_extension("txt.started"), &what);

    // Another shell: other models, then a new Alpha, which makes the served one not current.
    let other = sb.cmd().args(["download", "Beta", "Gamma"]).output().unwrap();
    assert!(other.status.success(), "{what}: {}", stderr(&other));
    write_files(&alpha, &[("config.json", b"{\"seed\": 100}")]);
    let up = sb.cmd().args(["upload", "Alpha", "--from"]).arg(&alpha).output().unwrap();
    assert!(up.status.success(), "{what}: {}", stderr(&up));
    let new_alpha = sb.cmd().args(["download", "Alpha"]).output().unwrap();
    assert!(new_alpha.status.success(), "{what}: {}", stderr(&new_alpha));
    let new_path = stdout(&new_alpha);

    let pruned = sb.cmd().args(["--json", "prune", "--max-size", "0"]).output().unwrap();
    assert_eq!(pruned.status.code(), Some(8), "{what}: --max-size 0 cannot be met: {}", stderr(&pruned));
    let report = json(&pruned);
    let held = report["held"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{what}: {report}");
    let held_path = held[0]["path"].as_str().unwrap().to_string();
    assert_ne!(held_path, new_path, "{what}: the served version is the old one");
    assert_eq!(held[0]["reason"], "not current", "{what}");
    assert_eq!(held[0]["holders"][0]["pid"].as_u64(), Some(u64::from(server.id())), "{what}: {report}");
    let removed: Vec<&str> = report["local"].as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(removed.len(), 3, "{what}: Beta, Gamma and the new Alpha go: {report}");
    assert!(removed.contains(&new_path.as_str()), "{what}");
    assert!(report["over_max_size"].as_u64().unwrap() > 0, "{what}");
    let text = sb.cmd().args(["prune", "--max-size", "0"]).output().unwrap();
    let says = stderr(&text);
    assert!(says.contains("in use by pid") && says.contains(&held_path), "{what}: {says}");

    // The server reads the rest, and every file was whole.
    std::fs::write(reads.with_extension("txt.go"), "").unwrap();
    let status = wait_exit(&mut server, &what);
    assert!(status.success(), "{what}: the server failed ({status}): {}", {
        let mut e = String::new();
        use std::io::Read as _;
        server.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        e
    });
    let mut got: Vec<String> = std::fs::read_to_string(&reads).unwrap().lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, want, "{what}: the server read every file of the version it was given");

    let after = sb.cmd().args(["--json", "prune", "--max-size", "0"]).output().unwrap();
    assert!(after.status.success(), "{what}: {}", stderr(&after));
    let report = json(&after);
    assert_eq!(report["local"][0]["path"].as_str(), Some(held_path.as_str()), "{what}: {report}");
    assert!(report["held"].as_array().unwrap().is_empty(), "{what}");
    assert!(!Path::new(&held_path).exists(), "{what}");
}

#[test]
fn a_version_in_use_survives_prune_on_the_local_provider() {
    a_server_in_use_survives_prune(Provider::Local, None);
    a_server_in_use_survives_prune(Provider::Local, Some(""));
}

#[cfg(feature = "s3")]
#[test]
fn a_version_in_use_survives_prune_on_moto() {
    a_server_in_use_survives_prune(Provider::S3, None);
    a_server_in_use_survives_prune(Provider::S3, Some(""));
}

#[cfg(feature = "gcs")]
#[test]
fn a_version_in_use_survives_prune_on_fake_gcs() {
    a_server_in_use_survives_prune(Provider::Gcs, None);
    a_server_in_use_survives_prune(Provider::Gcs, Some("team/models/"));
}

#[cfg(feature = "azure")]
#[test]
fn a_version_in_use_survives_prune_on_azurite() {
    a_server_in_use_survives_prune(Provider::Azure, None);
    a_server_in_use_survives_prune(Provider::Azure, Some(""));
}

/// A fresh local machine with Alpha uploaded.
fn machine() -> Sandbox {
    let (sb, _) = machine_with_prefix(Provider::Local, None);
    model(&sb.src(), "Alpha", 7);
    let up = sb.cmd().args(["upload", "Alpha", "--models-dir"]).arg(sb.src()).output().unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    sb
}

/// `run … -- sh -c SCRIPT`, started; waits until the script wrote `ready`.
fn start(sb: &Sandbox, script: &str) -> (Child, PathBuf) {
    let ready = sb.path().join(format!("ready-{}", fastrand::u32(..)));
    let mut c = sb.std_cmd();
    c.env("READY", &ready).args(["run", "Alpha", "--", "sh", "-c", script]);
    let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&ready, script);
    (child, ready)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a process the test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn run_fills_in_paths_and_returns_the_commands_code() {
    let sb = machine();
    let out = sb
        .cmd()
        .args([
            "run",
            "Alpha",
            "--",
            "sh",
            "-c",
            r#"echo "$1|$CROWECODE_MODEL_PATH|$CROWECODE_MODEL_PATH_ALPHA"; exit 7"#,
        ])
        .args(["sh", "--model={}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let path = stdout(&sb.cmd().args(["download", "Alpha"]).output().unwrap());
    assert_eq!(stdout(&out), format!("--model={path}|{path}|{path}"));

    let killed = sb.cmd().args(["run", "Alpha", "--", "sh", "-c", "kill -KILL $$"]).output().unwrap();
    assert_eq!(killed.status.code(), Some(128 + 9), "a command ended by signal N gives 128+N");
    let missing = sb.cmd().args(["run", "Alpha", "--", "no-such-command-here"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot run no-such-command-here"), "{}", stderr(&missing));
    let nobody = sb.cmd().args(["run", "Nobody", "--", "true"]).output().unwrap();
    assert_eq!(nobody.status.code(), Some(5), "a model that is not there: download's code, nothing run");
    let two = sb.cmd().args(["run", "Alpha", "Alpha:latest", "--", "echo", "{}"]).output().unwrap();
    assert_eq!(two.status.code(), Some(2), "{{}} with two references is ambiguous: {}", stderr(&two));
}

#[test]
fn run_forwards_sigterm_and_sighup_and_returns_the_childs_code() {
    let sb = machine();
    for (sig, code) in [(libc::SIGTERM, 42), (libc::SIGHUP, 43), (libc::SIGINT, 44)] {
        let script = format!(
            "trap 'exit {code}' TERM HUP INT; echo > \"$READY\"; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 9"
        );
        let (mut child, _) = start(&sb, &script);
        signal(child.id(), sig);
        let status = wait_exit(&mut child, &script);
        assert_eq!(status.code(), Some(code), "signal {sig} reached the command, whose code came back");
    }
}

/// The hold is a lock the kernel releases: a SIGKILLed `run` frees the version for prune at once,
/// and its command, which would go on unprotected, gets SIGTERM.
#[test]
fn a_sigkilled_run_releases_its_hold_and_its_command() {
    let sb = machine();
    let pidfile = sb.path().join("command.pid");
    let script = format!(
        "echo $$ > {}; echo > \"$READY\"; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        pidfile.display()
    );
    let (mut run, _) = start(&sb, &script);
    let held = sb.cmd().args(["--json", "prune", "--max-size", "0", "--dry-run"]).output().unwrap();
    assert_eq!(held.status.code(), Some(8), "{}", stderr(&held));
    assert_eq!(json(&held)["held"].as_array().unwrap().len(), 1);

    signal(run.id(), libc::SIGKILL);
    let _ = wait_exit(&mut run, "run");
    let command: libc::pid_t = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let start = Instant::now();
    // SAFETY: signal 0 only asks whether the process exists.
    while unsafe { libc::kill(command, 0) } == 0 && !is_zombie(command as u32) {
        assert!(start.elapsed() < Duration::from_secs(10), "the command outlived its killed run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let freed = sb.cmd().args(["--json", "prune", "--max-size", "0"]).output().unwrap();
    assert!(freed.status.success(), "{}", stderr(&freed));
    assert_eq!(json(&freed)["local"].as_array().unwrap().len(), 1);
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

fn is_zombie(pid: u32) -> bool {
    status_field(pid, "State:").is_some_and(|s| s.starts_with('Z'))
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if status_field(p, "PPid:").as_deref() == Some(&pid.to_string()) {
            out.push((p, status_field(p, "State:").unwrap_or_default()));
        }
    }
    out
}

/// As PID 1 does, `run` adopts what its command leaves behind and reaps it: an orphaned process
/// becomes its child, and no zombie stays.
#[test]
fn run_adopts_and_reaps_orphans() {
    let sb = machine();
    let script = "(sleep 1 &); echo > \"$READY\"; sleep 3";
    let (mut run, _) = start(&sb, script);
    std::thread::sleep(Duration::from_millis(300));
    let adopted = children_of(run.id());
    assert!(adopted.len() >= 2, "the command and the orphaned sleep are run's children: {adopted:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let left = children_of(run.id());
    assert_eq!(left.len(), 1, "the orphan ended and was reaped: {left:?}");
    assert!(!left[0].1.starts_with('Z'), "{left:?}");
    assert!(wait_exit(&mut run, script).success());
}

/// A fake cgroup filesystem root with `cgroup` as `/proc/self/cgroup` and `files` under
/// `/sys/fs/cgroup`.
fn cgroup_root(at: &Path, cgroup: &str, files: &[(&str, &str)]) -> PathBuf {
    write_files(at, &[("proc/self/cgroup", cgroup.as_bytes())]);
    for (path, value) in files {
        write_files(&at.join("sys/fs/cgroup"), &[(path, value.as_bytes())]);
    }
    at.to_path_buf()
}

/// Without `--max-memory`, the budget comes from the container's memory limit (v2 and v1), and
/// `--json` and `-v` say so; `--max-memory` wins.
#[test]
fn the_memory_budget_comes_from_the_cgroup_limit() {
    let sb = machine();
    let v2 = cgroup_root(&sb.path().join("cg2"), "0::/\n", &[("memory.max", "268435456\n")]);
    let v1 = cgroup_root(
        &sb.path().join("cg1"),
        "4:memory:/kubepods/pod1\n0::/\n",
        &[("memory/kubepods/pod1/memory.limit_in_bytes", "201326592\n")],
    );
    for (root, budget, says) in
        [(&v2, 96u64 << 20, "cgroup v2 memory limit 256 MiB"), (&v1, 64 << 20, "cgroup v1 memory limit 192 MiB")]
    {
        let cache = sb.path().join(format!("cache-{}", fastrand::u32(..)));
        let out = sb
            .cmd()
            .env("CROWECODE_CGROUP_ROOT", root)
            .env("CROWECODE_HOME", &cache)
            .args(["-v", "--json", "download", "Alpha"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let tuning = &json(&out)["models"][0]["tuning"];
        assert_eq!(tuning["memory_budget"].as_u64(), Some(budget), "{tuning}");
        assert!(tuning["memory_source"].as_str().unwrap().contains(says), "{tuning}");
        assert!(stderr(&out).contains(&format!("memory budget {} MiB ({says}", budget >> 20)), "{}", stderr(&out));
        let up = sb
            .cmd()
            .env("CROWECODE_CGROUP_ROOT", root)
            .args(["--json", "upload", "Alpha", "--force", "--models-dir"])
            .arg(sb.src())
            .output()
            .unwrap();
        assert!(up.status.success(), "{}", stderr(&up));
        assert_eq!(json(&up)["models"][0]["tuning"]["memory_budget"].as_u64(), Some(budget));
    }
    let given = sb
        .cmd()
        .env("CROWECODE_CGROUP_ROOT", &v2)
        .env("CROWECODE_HOME", sb.path().join("cache-given"))
        .args(["--json", "download", "Alpha", "--max-memory", "200M"])
        .output()
        .unwrap();
    let tuning = &json(&given)["models"][0]["tuning"];
    assert_eq!(
        (tuning["memory_budget"].as_u64(), tuning["memory_source"].as_str()),
        (Some(200 << 20), Some("--max-memory"))
    );
}
