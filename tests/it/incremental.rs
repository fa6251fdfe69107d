//! Bucket format 2, incremental versions, as a user meets them: a changed file costs that file, a
//! changed part of a shard costs that part, a second name costs nothing, a machine that holds the
//! previous version fetches only what changed and keeps shared files once, and `prune --remote`
//! never removes a pack a version or a running upload needs. Every store, with and without a
//! prefix, from a fresh home with the documented setup.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{Sandbox, noise, stderr, stdout, tree, write_files};
use crate::mirror::machine_with_prefix;
use crate::user_paths::Provider;

const MIB: u64 = 1 << 20;

/// The first model of a `--json` output.
fn first(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)));
    v["models"][0].clone()
}

/// Runs the CLI as another machine of the same bucket: the same config, its own cache.
fn on(sb: &Sandbox, cache: &Path, args: &[&str]) -> Output {
    let mut c = sb.cmd();
    c.env("CROWECODE_HOME", cache).args(args);
    c.output().unwrap()
}

fn upload(sb: &Sandbox, model: &str, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let out = sb.cmd().args(["--json", "upload", model, "--from"]).arg(dir).args(extra).output().unwrap();
    first(&out)
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"))
}

/// A model of three 3 MiB shards, a config and a tokenizer in a subdirectory.
fn small_model(root: &Path) -> PathBuf {
    let dir = root.join("Alpha");
    write_files(
        &dir,
        &[("config.json", b"{\"layers\": 32}\n"), ("sub/tokenizer.json", b"{\"vocab\": 1}\n"), ("sub/empty", b"")],
    );
    for i in 0..3u64 {
        write_files(&dir, &[(&format!("model-{i}.safetensors"), &noise(3 << 20, 40 + i))]);
    }
    dir
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// One file changed: upload and a machine holding the previous version move that file only;
/// the machine's cache holds the shards once; a second name costs nothing; `--only` reads only
/// its files' chunks; a byte changed in a shared file is caught and repaired.
fn changed_file_costs_that_file(p: Provider, prefix: Option<&str>) {
    let (sb, _) = machine_with_prefix(p, prefix);
    let dir = small_model(&sb.src());
    let total = 9 * MIB + 28;
    let v1 = upload(&sb, "Alpha", &dir, &[]);
    assert_eq!(n(&v1, "format"), 3, "{p:?}: format 3 is the default: {v1}");
    assert!(n(&v1, "sent") >= 9 * MIB && n(&v1, "sent") <= total, "{p:?}: {v1}");
    let node = sb.path().join("node-b");
    let got1 = first(&on(&sb, &node, &["--json", "download", "Alpha"]));
    assert_eq!(tree(Path::new(got1["path"].as_str().unwrap())), tree(&dir), "{p:?}");
    assert!(n(&got1, "transferred") >= 9 * MIB, "{p:?}: a fresh machine fetches it all: {got1}");

    // Eight bytes of config.
    write_files(&dir, &[("config.json", b"{\"layers\": 33}\n")]);
    let v2 = upload(&sb, "Alpha", &dir, &[]);
    assert!(n(&v2, "sent") < 64 << 10, "{p:?}: one config change sends the config: {v2}");
    assert!(n(&v2, "reused") >= 9 * MIB, "{p:?}: {v2}");
    let got2 = first(&on(&sb, &node, &["--json", "download", "Alpha"]));
    assert!(n(&got2, "transferred") < 64 << 10, "{p:?}: the machine fetches the config: {got2}");
    assert!(n(&got2, "local_bytes") >= 9 * MIB, "{p:?}: {got2}");
    let (d1, d2) = (PathBuf::from(got1["path"].as_str().unwrap()), PathBuf::from(got2["path"].as_str().unwrap()));
    assert_ne!(d1, d2);
    assert_eq!(tree(&d2), tree(&dir), "{p:?}");
    assert_eq!(
        inode(&d1.join("model-0.safetensors")),
        inode(&d2.join("model-0.safetensors")),
        "{p:?}: the cache holds a shared shard once"
    );
    let ok = on(&sb, &node, &["verify", "Alpha"]);
    assert!(ok.status.success(), "{p:?}: {}", stderr(&ok));

    // A second name in the same bucket: no data bytes.
    let beta = upload(&sb, "Beta", &dir, &[]);
    assert_eq!(n(&beta, "sent"), 0, "{p:?}: the same files under another name: {beta}");
    let got_beta = first(&on(&sb, &node, &["--json", "download", "Beta"]));
    assert_eq!(n(&got_beta, "transferred"), 0, "{p:?}: {got_beta}");
    assert_eq!(tree(Path::new(got_beta["path"].as_str().unwrap())), tree(&dir), "{p:?}");

    // --only on a fresh machine: the config's chunks only.
    let fresh = sb.path().join("node-c");
    let only = first(&on(&sb, &fresh, &["--json", "download", "Alpha", "--only", "config.json"]));
    assert!(n(&only, "transferred") < 64 << 10, "{p:?}: {only}");
    let sel = PathBuf::from(only["path"].as_str().unwrap());
    assert_eq!(std::fs::read(sel.join("config.json")).unwrap(), b"{\"layers\": 33}\n");
    assert!(!sel.join("model-0.safetensors").exists());

    // A byte changed in a shared shard shows in every version holding it, and a forced
    // download repairs the current one without trusting the changed copy.
    let shard = d2.join("model-1.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[12345] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    let bad = on(&sb, &node, &["verify", "Alpha"]);
    assert_eq!(bad.status.code(), Some(6), "{p:?}: {}", stderr(&bad));
    let pinned_v1 = format!("Alpha@{}", &v1["version"].as_str().unwrap()["sha256:".len()..][..12]);
    let bad_v1 = on(&sb, &node, &["verify", &pinned_v1]);
    assert_eq!(bad_v1.status.code(), Some(6), "{p:?}: the earlier version shares it: {}", stderr(&bad_v1));
    let fixed = on(&sb, &node, &["download", "Alpha", "--force", "-q"]);
    assert!(fixed.status.success(), "{p:?}: {}", stderr(&fixed));
    assert_eq!(tree(Path::new(&stdout(&fixed))), tree(&dir), "{p:?}");
    let ok = on(&sb, &node, &["verify", "Alpha"]);
    assert!(ok.status.success(), "{p:?}: {}", stderr(&ok));
}

#[test]
fn a_changed_file_costs_that_file_on_the_local_provider() {
    changed_file_costs_that_file(Provider::Local, None);
    changed_file_costs_that_file(Provider::Local, Some(""));
}

#[cfg(feature = "s3")]
#[test]
fn a_changed_file_costs_that_file_on_moto() {
    changed_file_costs_that_file(Provider::S3, None);
    changed_file_costs_that_file(Provider::S3, Some(""));
}

#[cfg(feature = "gcs")]
#[test]
fn a_changed_file_costs_that_file_on_fake_gcs() {
    changed_file_costs_that_file(Provider::Gcs, None);
    changed_file_costs_that_file(Provider::Gcs, Some("team/models/"));
}

#[cfg(feature = "azure")]
#[test]
fn a_changed_file_costs_that_file_on_azurite() {
    changed_file_costs_that_file(Provider::Azure, None);
    changed_file_costs_that_file(Provider::Azure, Some(""));
}

/// Bytes of the files under `dir`.
fn size_of(dir: &Path) -> u64 {
    walk(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

type Edit = dyn Fn(&mut Vec<u8>);

/// In a 64 MiB shard: 1 MiB overwritten in the middle, 1 MiB appended, 4 KiB inserted at the
/// start. Each new version costs at most 8 MiB of upload, of bucket growth and of download for a
/// machine holding the previous one.
#[test]
fn a_changed_part_of_a_shard_costs_that_part() {
    let (sb, bucket) = machine_with_prefix(Provider::Local, None);
    let dir = sb.src().join("Big");
    let shard = dir.join("model.safetensors");
    let mut data = noise(64 << 20, 7);
    write_files(&dir, &[("model.safetensors", &data), ("config.json", b"{}")]);
    upload(&sb, "Big", &dir, &[]);
    let node = sb.path().join("node-b");
    first(&on(&sb, &node, &["--json", "download", "Big"]));
    let edits: [(&str, Box<Edit>); 3] = [
        (
            "1 MiB overwritten in the middle",
            Box::new(|d: &mut Vec<u8>| d[32 << 20..33 << 20].copy_from_slice(&noise(1 << 20, 8))),
        ),
        ("1 MiB appended", Box::new(|d: &mut Vec<u8>| d.extend(noise(1 << 20, 9)))),
        ("4 KiB inserted at the start", Box::new(|d: &mut Vec<u8>| d.splice(0..0, noise(4096, 10)).for_each(drop))),
    ];
    for (what, edit) in edits {
        edit(&mut data);
        std::fs::write(&shard, &data).unwrap();
        let before = size_of(Path::new(&bucket));
        let up = upload(&sb, "Big", &dir, &[]);
        let grown = size_of(Path::new(&bucket)) - before;
        assert!(n(&up, "sent") <= 8 * MIB, "{what}: sent {}", n(&up, "sent"));
        assert!(grown <= 9 * MIB, "{what}: the bucket grew by {grown}");
        let got = first(&on(&sb, &node, &["--json", "download", "Big"]));
        assert!(n(&got, "transferred") <= 8 * MIB, "{what}: fetched {}", n(&got, "transferred"));
        assert_eq!(std::fs::read(Path::new(got["path"].as_str().unwrap()).join("model.safetensors")).unwrap(), data);
    }
}

/// Garbage collection never loses a piece a version needs: in each round `prune --remote`
/// sweeps an unreferenced version whose packs an upload starting at a random moment reuses
/// (the same content uploaded again). The upload either commits a version whose every pack is
/// there, or fails with exit 8 and succeeds when run again; a fresh machine always gets the
/// model whole.
fn pack_sweeps_race_uploads(p: Provider, prefix: &str, rounds: u64) {
    let (mut sb, bucket) = machine_with_prefix(p, Some(prefix));
    sb.env("CROWECODE_SWEEP_WINDOW_MS", "2000").env("CROWECODE_TEST_PACK_SWEEP_PAUSE_MS", "600");
    let marker = SweepMarker::new(p, &bucket, prefix, sb.path());
    let dir = sb.src().join("R");
    let (mut committed, mut undone) = (0, 0);
    for round in 0..rounds {
        let x = noise(1 << 20, 1000 + round);
        write_files(&dir, &[("w.bin", &noise(1 << 20, 2000 + round))]);
        upload(&sb, "R", &dir, &[]);
        write_files(&dir, &[("w.bin", &x)]);
        upload(&sb, "R", &dir, &["--no-latest"]);
        let mut prune = sb.std_cmd();
        prune.args(["prune", "--remote", "--keep", "0", "--min-age", "0s", "--yes", "-q"]);
        let prune = prune.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // The upload starts once the pack sweep is up, at a different moment of it each round:
        // before its read of the roots, or in the gap between that read and its deletes.
        assert!(marker.wait(), "{p:?} round {round}: the pack sweep never raised its marker");
        std::thread::sleep(std::time::Duration::from_millis(fastrand_ms(400)));
        let mut up = sb.std_cmd();
        up.args(["upload", "R", "-q", "--from"]).arg(&dir);
        let up = up.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let (prune, up) = (prune.wait_with_output().unwrap(), up.wait_with_output().unwrap());
        assert!(prune.status.success(), "{p:?} round {round}: prune: {}", stderr(&prune));
        let pinned = match up.status.code() {
            Some(0) => {
                committed += 1;
                stdout(&up)
            }
            Some(8) => {
                undone += 1;
                assert!(stderr(&up).contains("run the upload of R again"), "{p:?}: {}", stderr(&up));
                let again = sb.cmd().args(["upload", "R", "-q", "--from"]).arg(&dir).output().unwrap();
                assert!(again.status.success(), "{p:?} round {round}: run again: {}", stderr(&again));
                stdout(&again)
            }
            other => panic!("{p:?} round {round}: upload exited {other:?}: {}", stderr(&up)),
        };
        for r in ["R", pinned.as_str()] {
            let fresh = sb.path().join(format!("fresh-{round}-{}", r.len()));
            let got = on(&sb, &fresh, &["download", r, "-q"]);
            assert!(got.status.success(), "{p:?} round {round}: {r}: {}", stderr(&got));
            assert_eq!(std::fs::read(Path::new(&stdout(&got)).join("w.bin")).unwrap(), x, "{p:?} round {round}");
        }
    }
    eprintln!("{p:?}: {committed} uploads committed, {undone} undone and run again");
    assert!(undone > 0, "{p:?}: no round raced the sweep's deletes; the test proves nothing");
}

/// Watches for a pack sweep's marker (`_pieces/pruning-*.json`) in the bucket.
pub(crate) struct SweepMarker {
    p: Provider,
    prefix: String,
    bucket: String,
    store: Option<(tokio::runtime::Runtime, std::sync::Arc<dyn crowecode_cloud::provider::Provider>)>,
}

impl SweepMarker {
    pub(crate) fn new(p: Provider, bucket: &str, prefix: &str, dir: &Path) -> Self {
        let store = match p {
            Provider::Local => None,
            _ => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let overrides = crowecode_cloud::config::Overrides {
                    provider: Some("s3".into()),
                    bucket: Some(bucket.into()),
                    endpoint: Some(crate::common::require_env("CROWECODE_TEST_S3_ENDPOINT")),
                    region: Some("us-east-1".into()),
                    prefix: Some(prefix.into()),
                    ..Default::default()
                };
                let store = rt.block_on(crate::conformance::provider_for(overrides, dir));
                Some((rt, store))
            }
        };
        Self { p, prefix: prefix.into(), bucket: bucket.into(), store }
    }

    /// Whether the marker appeared within 20 s.
    pub(crate) fn wait(&self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let up = match (&self.store, self.p) {
                (None, _) => std::fs::read_dir(Path::new(&self.bucket).join(&self.prefix).join("_pieces"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("pruning-")),
                (Some((rt, store)), _) => {
                    let markers = format!("{}_pieces/pruning-", self.prefix);
                    rt.block_on(store.list(&markers)).is_ok_and(|l| !l.is_empty())
                }
            };
            if up {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }
}

fn fastrand_ms(max: u64) -> u64 {
    u64::from(crate::conformance::fastrand_u32()) % max
}

#[test]
fn pack_sweeps_racing_uploads_lose_nothing_on_the_local_provider() {
    pack_sweeps_race_uploads(Provider::Local, "crowecode-models/", 6);
}

#[cfg(feature = "s3")]
#[test]
fn pack_sweeps_racing_uploads_lose_nothing_on_moto() {
    pack_sweeps_race_uploads(Provider::S3, "", 4);
}

/// `prune --remote` reports packs no version names and deletes them only with `--yes`; a dry
/// run counts the versions it would delete as deleted.
#[test]
fn prune_remote_removes_the_packs_only_pruned_versions_named() {
    let (sb, bucket) = machine_with_prefix(Provider::Local, None);
    let dir = sb.src().join("P");
    write_files(&dir, &[("w.bin", &noise(2 << 20, 1))]);
    upload(&sb, "P", &dir, &[]);
    write_files(&dir, &[("w.bin", &noise(2 << 20, 2))]);
    upload(&sb, "P", &dir, &["--no-latest"]);
    let packs = || walk(&Path::new(&bucket).join("crowecode-models/_pieces/packs")).len();
    assert_eq!(packs(), 2);
    let dry = sb.cmd().args(["--json", "prune", "--remote", "--keep", "0", "--min-age", "0s"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(v["packs"]["deleted"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(packs(), 2, "a dry run deletes nothing");
    let out = sb.cmd().args(["prune", "--remote", "--keep", "0", "--min-age", "0s", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed 1 pack(s) no version names"), "{}", stdout(&out));
    assert_eq!(packs(), 1);
    let markers = walk(&Path::new(&bucket).join("crowecode-models/_pieces"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("pruning"))
        .count();
    assert_eq!(markers, 0, "the sweep removed its marker");
    let fresh = sb.path().join("fresh");
    let got = on(&sb, &fresh, &["download", "P", "-q"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(Path::new(&stdout(&got)).join("w.bin")).unwrap(), noise(2 << 20, 1));

    // `delete MODEL@VERSION` of a format 2 version removes it and its locations; its packs wait
    // for the next sweep, which keeps those another version names.
    write_files(&dir, &[("w.bin", &noise(2 << 20, 1)), ("extra.bin", &noise(1 << 20, 3))]);
    let v3 = upload(&sb, "P", &dir, &["--no-latest"]);
    let reference = v3["reference"].as_str().unwrap().to_string();
    let out = sb.cmd().args(["delete", &reference]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = reference.split("sha256:").nth(1).unwrap();
    let versions = Path::new(&bucket).join("crowecode-models/P/versions");
    assert!(!versions.join(format!("{id}.json")).exists() && !versions.join(format!("{id}.loc.json")).exists());
    assert_eq!(packs(), 2, "the packs stay until a sweep");
    let out = sb.cmd().args(["prune", "--remote", "--min-age", "0s", "--yes", "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(packs(), 1, "the pack only the deleted version named is gone, the shared one stays");
    let again = on(&sb, &sb.path().join("fresh-2"), &["download", "P", "-q"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

/// A format 2 download holds at most its memory budget of ranges, with any `--concurrency`,
/// and says so in `--json`.
fn memory_bounded(p: Provider) {
    let (sb, _) = machine_with_prefix(p, Some("team/models/"));
    let dir = sb.src().join("Mem");
    write_files(&dir, &[("a.bin", &noise(12 << 20, 5)), ("b.bin", &noise(6 << 20, 6)), ("c.json", b"{}")]);
    upload(&sb, "Mem", &dir, &[]);
    let fresh = sb.path().join("fresh");
    let got = first(&on(&sb, &fresh, &["--json", "download", "Mem", "--concurrency", "64", "--max-memory", "8M"]));
    let t = &got["tuning"];
    let held = t["peak_held"].as_u64().unwrap_or_else(|| panic!("{p:?}: {t}"));
    assert!(held > 0 && held <= 8 * MIB, "{p:?}: held {held} with an 8 MiB budget: {t}");
    assert_eq!(t["memory_budget"], 8 * MIB, "{t}");
    assert_eq!(tree(Path::new(got["path"].as_str().unwrap())), tree(&dir), "{p:?}");
}

#[test]
fn memory_is_bounded_in_format_2_on_the_local_provider() {
    memory_bounded(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn memory_is_bounded_in_format_2_on_moto() {
    memory_bounded(Provider::S3);
}

/// The most memory (peak RSS, bytes) any child of this test process used so far.
fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

/// An upload in chunks reads each pack from the files as it is sent: the packs in flight are
/// not in memory. Gathered, 16 packs of 8 MiB (moto) or 4 of 32 MiB (a directory) would be
/// 128 MiB; read as they are sent, a piece of about 1 MiB each.
fn upload_memory_bounded(p: Provider, mib: usize, limit: u64) {
    let (sb, _) = machine_with_prefix(p, Some("team/models/"));
    let dir = sb.src().join("Big");
    write_files(&dir, &[("c.json", b"{}")]);
    // Written 4 MiB at a time: a child's peak counts the peak of this process when it forked.
    let mut file = std::fs::File::create(dir.join("a.bin")).unwrap();
    for i in 0..mib / 4 {
        std::io::Write::write_all(&mut file, &noise(4 << 20, 41 + i as u64)).unwrap();
    }
    drop(file);
    let up = upload(&sb, "Big", &dir, &[]);
    // The largest child so far: the upload (the setup before it holds no data).
    let peak = children_peak_rss();
    assert!(peak > 8 * MIB, "{p:?}: {peak} bytes: no usage measured");
    let packs = n(&up, "parts");
    assert!(packs >= 4, "{p:?}: {packs} packs: {up}");
    assert_eq!(up["tuning"]["reached"], if p == Provider::Local { 4 } else { 16 }, "{p:?}: {up}");
    assert!(peak < limit, "{p:?}: an upload of {mib} MiB peaked at {} MiB (limit {} MiB)", peak >> 20, limit >> 20);
    let fresh = sb.path().join("fresh");
    let got = first(&on(&sb, &fresh, &["--json", "download", "Big"]));
    assert_eq!(tree(Path::new(got["path"].as_str().unwrap())), tree(&dir), "{p:?}");
}

#[test]
fn an_upload_holds_no_pack_whole_on_the_local_provider() {
    upload_memory_bounded(Provider::Local, 256, 64 * MIB);
}

#[cfg(feature = "s3")]
#[test]
fn an_upload_holds_no_pack_whole_on_moto() {
    upload_memory_bounded(Provider::S3, 128, 80 * MIB);
}

/// A download killed (SIGKILL: no cleanup) midway resumes per piece: the next run checks the
/// chunks the killed one wrote, in place, and fetches only the others.
fn killed_download_resumes(p: Provider) {
    let (sb, _) = machine_with_prefix(p, None);
    let dir = sb.src().join("K");
    write_files(&dir, &[("a.bin", &noise(12 << 20, 21)), ("b.bin", &noise(4 << 20, 22))]);
    upload(&sb, "K", &dir, &[]);
    let node = sb.path().join("node");
    let mut c = sb.std_cmd();
    c.env("CROWECODE_HOME", &node).args(["download", "K", "--limit-rate", "4M", "--max-memory", "8M", "-q"]);
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!node.join("models/K").exists(), "{p:?}: nothing half-made is visible");
    let again = on(&sb, &node, &["--json", "download", "K"]);
    let said = stderr(&again);
    let got = first(&again);
    assert!(said.contains("resuming an interrupted download"), "{p:?}: {said}");
    let fetched = n(&got, "transferred");
    assert!(fetched < 12 * MIB, "{p:?}: fetched {fetched} of 16 MiB again: {got}");
    assert!(n(&got, "local_bytes") >= 4 * MIB, "{p:?}: {got}");
    assert_eq!(tree(Path::new(got["path"].as_str().unwrap())), tree(&dir), "{p:?}");
}

#[test]
fn a_killed_download_resumes_per_piece_on_the_local_provider() {
    killed_download_resumes(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn a_killed_download_resumes_per_piece_on_moto() {
    killed_download_resumes(Provider::S3);
}

/// `prune --remote --repack` reclaims packs that are mostly dead: their live chunks move to new
/// packs, the versions naming them are rewritten (their ids unchanged), and the next sweep
/// removes the old packs; every kept version still downloads, pinned or by tag.
#[test]
fn repack_reclaims_mostly_dead_packs() {
    let (sb, bucket) = machine_with_prefix(Provider::Local, Some(""));
    let dir = sb.src().join("Q");
    let packs_bytes = || size_of(&Path::new(&bucket).join("_pieces/packs"));
    // v1: a and b in one pack; v2: a replaced whole. Deleting v1 leaves half of its pack dead.
    write_files(&dir, &[("a.bin", &noise(4 << 20, 31)), ("b.bin", &noise(4 << 20, 32))]);
    let v1 = upload(&sb, "Q", &dir, &[]);
    write_files(&dir, &[("a.bin", &noise(4 << 20, 33))]);
    let v2 = upload(&sb, "Q", &dir, &[]);
    let out = sb.cmd().args(["delete", v1["reference"].as_str().unwrap(), "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(packs_bytes() >= 12 * MIB);

    let dry = sb.cmd().args(["--json", "prune", "--remote", "--min-age", "0s", "--repack"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(v["repack"]["packs"], 1, "{v}");
    assert_eq!(v["packs"]["dead_bytes"], 4 * MIB, "{v}");
    let before = packs_bytes();
    let out = sb.cmd().args(["prune", "--remote", "--min-age", "0s", "--repack", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("repack: copied 4.0 MiB"), "{}", stdout(&out));
    assert!(packs_bytes() > before, "the old pack stays until the next sweep");
    let out = sb.cmd().args(["prune", "--remote", "--min-age", "0s", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(packs_bytes(), 8 * MIB, "a and b once each: {}", stdout(&out));
    for r in ["Q", v2["reference"].as_str().unwrap()] {
        let fresh = sb.path().join(format!("fresh-{}", r.len()));
        let got = on(&sb, &fresh, &["download", r, "-q"]);
        assert!(got.status.success(), "{r}: {}", stderr(&got));
        assert_eq!(tree(Path::new(&stdout(&got))), tree(&dir), "{r}");
    }
}
