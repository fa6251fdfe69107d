//! Fleet fan-out through a mirror: real nginx (`slice`, `proxy_cache`, `proxy_cache_lock`, a
//! cache key without the query) in front of moto, fake-gcs-server and Azurite, started by
//! `scripts/emulators.sh`. Eight machines download one model at once through it; a mirror that
//! flips a byte, and one that is down; and `HTTP_PROXY`/`NO_PROXY` honoured by every provider.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{Sandbox, require_env, write_files};
use crate::user_paths::{Provider, provider_args};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A machine (its own home and cache) set up as the README says, and its bucket's name.
fn machine(p: Provider) -> (Sandbox, String) {
    machine_with_prefix(p, None)
}

/// [`machine`] with `--prefix PREFIX` (`None`: the default prefix).
pub(crate) fn machine_with_prefix(p: Provider, prefix: Option<&str>) -> (Sandbox, String) {
    let mut sb = Sandbox::new();
    let (mut args, bucket) = provider_args(&mut sb, p);
    if let Some(prefix) = prefix {
        args.extend(["--prefix".to_string(), prefix.to_string()]);
    }
    let out = sb.cmd().args(&args).args(["setup", "--create-bucket"]).output().unwrap();
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    (sb, bucket)
}

fn mirror_of(p: Provider) -> String {
    require_env(match p {
        Provider::S3 => "CROWECODE_TEST_MIRROR_S3",
        Provider::Gcs => "CROWECODE_TEST_MIRROR_GCS",
        Provider::Azure => "CROWECODE_TEST_MIRROR_AZURE",
        Provider::Local => unreachable!("the local provider reads files, not URLs"),
    })
}

/// Bytes nginx received from the origin for requests naming `bucket`, from its origin log.
fn origin_bytes(p: Provider, bucket: &str) -> u64 {
    let name = match p {
        Provider::S3 => "s3",
        Provider::Gcs => "gcs",
        Provider::Azure => "azure",
        Provider::Local => unreachable!(),
    };
    let log = Path::new(&require_env("CROWECODE_TEST_MIRROR_LOG_DIR")).join(format!("origin-{name}.log"));
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(bucket))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A model of `mib` MiB (one shard of pseudo-random bytes and a config), made fast.
fn model(root: &Path, name: &str, mib: usize) -> std::path::PathBuf {
    let dir = root.join(name);
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ mib as u64;
    let mut data = vec![0u8; mib << 20];
    for chunk in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    write_files(&dir, &[("model.safetensors", &data), ("config.json", b"{\"fleet\":true}")]);
    dir
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn eight_machines(p: Provider) {
    let (publisher, bucket) = machine(p);
    let src = model(&publisher.src(), "Fleet", 256);
    let out = publisher.cmd().args(["upload", "Fleet", "-q", "--from"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    let config_b64 = {
        let out = publisher.cmd().args(["setup", "--no-write"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("export CROWECODE_CLOUD_CONFIG_B64=")
            .trim_matches('\'')
            .to_string()
    };
    let before = origin_bytes(p, &bucket);
    let mirror = mirror_of(p);
    // Eight machines: their own homes and caches, the pod's config string, the mirror from env.
    let machines: Vec<Sandbox> = (0..8)
        .map(|_| {
            let mut sb = Sandbox::new();
            for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AZURE_STORAGE_CONNECTION_STRING"] {
                if let Some(v) = publisher.get_env(k) {
                    sb.env(k, &v);
                }
            }
            sb.env("CROWECODE_CLOUD_CONFIG_B64", &config_b64).env("CROWECODE_MIRROR", &mirror);
            sb
        })
        .collect();
    let children: Vec<_> = machines
        .iter()
        .map(|sb| {
            sb.std_cmd()
                .args(["download", "Fleet", "--json", "--no-progress"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut archive = None;
    let mut bucket_bytes = 0;
    let mut from_mirror = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        let d = &json(&out)["models"][0];
        assert_eq!(d["status"], "downloaded", "{p:?}");
        let sha = d["sha256"].as_str().unwrap().to_string();
        assert!(archive.get_or_insert(sha.clone()) == &sha, "{p:?}: every machine has the same bytes");
        bucket_bytes += d["traffic"]["bucket_bytes"].as_u64().unwrap();
        from_mirror += d["traffic"]["mirror_bytes"].as_u64().unwrap();
        assert_eq!(d["reread_from_bucket"], false, "{p:?}");
    }
    for sb in &machines {
        let out = sb.cmd().args(["verify", "Fleet"]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let size = src.join("model.safetensors").metadata().unwrap().len();
    let origin = origin_bytes(p, &bucket) - before + bucket_bytes;
    assert!(from_mirror >= 8 * size, "{p:?}: the machines read {from_mirror} bytes from the mirror");
    assert!(
        (origin as f64) <= 1.1 * size as f64,
        "{p:?}: the bucket served {origin} bytes for an archive of {size} (at most 1.1x allowed)"
    );
    eprintln!("{p:?}: 8 machines, archive {size} B, bucket served {origin} B ({:.3}x)", origin as f64 / size as f64);
}

#[cfg(feature = "s3")]
#[test]
fn eight_machines_share_one_read_through_nginx_on_moto() {
    eight_machines(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn eight_machines_share_one_read_through_nginx_on_fake_gcs() {
    eight_machines(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn eight_machines_share_one_read_through_nginx_on_azurite() {
    eight_machines(Provider::Azure);
}

/// A TCP proxy that flips one byte, `at` bytes into the first answer long enough to have it.
struct Flipper {
    addr: SocketAddr,
    flipped: Arc<AtomicBool>,
}

impl Flipper {
    fn start(upstream: &str, at: u64) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let flipped = Arc::new(AtomicBool::new(false));
        let f = flipped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                let (mut s_in, mut c_out, f) = (server, client, f.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if seen <= at && at < seen + n as u64 && !f.swap(true, Ordering::SeqCst) {
                            buf[(at - seen) as usize] ^= 0x01;
                        }
                        seen += n as u64;
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, flipped }
    }
}

fn mirror_failures(p: Provider) {
    // With no prefix: the archive's path on the mirror is the bucket's root.
    let (sb, _) = machine_with_prefix(p, Some(""));
    let src = model(&sb.src(), "M", 40);
    assert!(sb.cmd().args(["upload", "M", "-q", "--from"]).arg(&src).output().unwrap().status.success());
    // A mirror that flips one byte of one range: verified anyway, re-read from the bucket.
    let flipper = Flipper::start(&mirror_of(p), 3 << 20);
    let mirror = format!("http://{}", flipper.addr);
    let out = sb.cmd().args(["download", "M", "--json", "--mirror", &mirror]).output().unwrap();
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    assert!(flipper.flipped.load(Ordering::SeqCst), "{p:?}: the byte was flipped");
    let d = &json(&out)["models"][0];
    assert_eq!(d["reread_from_bucket"], true, "{p:?}: {d}");
    assert!(
        stderr(&out).contains(&mirror) && stderr(&out).contains("again from the bucket"),
        "{p:?}: {}",
        stderr(&out)
    );
    assert!(sb.cmd().args(["verify", "M"]).output().unwrap().status.success(), "{p:?}");
    // A mirror that is down: the bucket serves every byte.
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = sb.cmd().args(["download", "M", "--json", "--force", "--mirror", &down]).output().unwrap();
    assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    let d = &json(&out)["models"][0];
    assert_eq!(d["traffic"]["mirror_bytes"], 0, "{p:?}");
    assert!(d["traffic"]["bucket_bytes"].as_u64().unwrap() >= 40 << 20, "{p:?}: {d}");
    assert!(stderr(&out).contains(&down), "{p:?}: the warning names the mirror: {}", stderr(&out));
    // `status` shows the mirror, and whether it answers.
    let out = sb.cmd().args(["status", "--mirror", &down]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mirror:") && text.contains("NOT answering"), "{p:?}: {text}");
    let out = sb.cmd().args(["status", "--mirror", &mirror_of(p)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mirror:") && text.contains("answers"), "{p:?}: {text}");
}

#[cfg(feature = "s3")]
#[test]
fn a_bad_or_missing_mirror_costs_only_reads_from_the_bucket_on_moto() {
    mirror_failures(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn a_bad_or_missing_mirror_costs_only_reads_from_the_bucket_on_fake_gcs() {
    mirror_failures(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn a_bad_or_missing_mirror_costs_only_reads_from_the_bucket_on_azurite() {
    mirror_failures(Provider::Azure);
}

/// A forward HTTP proxy on loopback that records the target of every request it carries
/// (absolute-form request lines) and forwards the bytes.
struct Recorder {
    addr: SocketAddr,
    targets: Arc<Mutex<BTreeSet<String>>>,
    requests: Arc<AtomicU64>,
    /// Connections whose first request carried X-Dragonfly-Filtered-Query-Params.
    filtered: Arc<AtomicU64>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(BTreeSet::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let filtered = Arc::new(AtomicU64::new(0));
        let (t, r, fq) = (targets.clone(), requests.clone(), filtered.clone());
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let (t, r, fq) = (t.clone(), r.clone(), fq.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                        head.push(byte[0]);
                    }
                    let line = String::from_utf8_lossy(&head).into_owned();
                    if line.to_ascii_lowercase().contains("\r\nx-dragonfly-filtered-query-params: ") {
                        fq.fetch_add(1, Ordering::SeqCst);
                    }
                    let Some(authority) = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|u| u.strip_prefix("http://"))
                        .and_then(|u| u.split('/').next())
                        .map(str::to_string)
                    else {
                        return;
                    };
                    r.fetch_add(1, Ordering::SeqCst);
                    t.lock().unwrap().insert(authority.clone());
                    let Ok(mut server) = TcpStream::connect(&authority) else { return };
                    let _ = server.write_all(&head);
                    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                    let _ = std::io::copy(&mut server, &mut client);
                });
            }
        });
        Self { addr, targets, requests, filtered }
    }
}

/// `HTTP_PROXY` carries every provider's requests (the emulators speak plain http, so
/// `HTTP_PROXY` is the variable that applies; `HTTPS_PROXY` is read the same way for https
/// endpoints), mirror reads included; `NO_PROXY` excludes what it lists.
#[cfg(all(feature = "s3", feature = "gcs", feature = "azure"))]
#[test]
fn every_provider_honours_http_proxy_and_no_proxy() {
    for p in [Provider::S3, Provider::Gcs, Provider::Azure] {
        let (mut sb, _) = machine(p);
        let src = model(&sb.src(), "P", 2);
        assert!(sb.cmd().args(["upload", "P", "-q", "--from"]).arg(&src).output().unwrap().status.success());
        let recorder = Recorder::start();
        let proxy = format!("http://{}", recorder.addr);
        sb.env("HTTP_PROXY", &proxy).env("http_proxy", &proxy).env("NO_PROXY", "").env("no_proxy", "");
        let out = sb.cmd().args(["download", "P", "--json"]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        let seen = recorder.targets.lock().unwrap().clone();
        let endpoint = match p {
            Provider::S3 => require_env("CROWECODE_TEST_S3_ENDPOINT"),
            Provider::Gcs => require_env("CROWECODE_TEST_GCS_ENDPOINT"),
            Provider::Azure => require_env("CROWECODE_TEST_AZURE_ENDPOINT"),
            Provider::Local => unreachable!(),
        };
        let host = endpoint.trim_start_matches("http://").split('/').next().unwrap().to_string();
        assert!(seen.contains(&host), "{p:?}: the proxy saw {seen:?}, not {host}");
        // Mirror reads go through the proxy too.
        let mirror = mirror_of(p);
        let out = sb.cmd().args(["download", "P", "--force", "--mirror", &mirror]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        let mirror_host = mirror.trim_start_matches("http://").to_string();
        assert!(
            recorder.targets.lock().unwrap().contains(&mirror_host),
            "{p:?}: {:?}",
            recorder.targets.lock().unwrap()
        );
        // NO_PROXY: nothing goes through the proxy.
        let before = recorder.requests.load(Ordering::SeqCst);
        sb.env("NO_PROXY", "127.0.0.1").env("no_proxy", "127.0.0.1");
        let out = sb.cmd().args(["download", "P", "--force", "--mirror", &mirror]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        assert_eq!(recorder.requests.load(Ordering::SeqCst), before, "{p:?}: NO_PROXY was ignored");
    }
}

/// `data_proxy` (Dragonfly's dfdaemon): archive reads go through the forward proxy as plain
/// http:// requests for the bucket's own URLs; Azure's carry the SAS parameters to filter.
#[cfg(all(feature = "s3", feature = "gcs", feature = "azure"))]
#[test]
fn a_data_proxy_carries_archive_reads_as_plain_http() {
    for p in [Provider::S3, Provider::Gcs, Provider::Azure] {
        let (sb, _) = machine(p);
        let src = model(&sb.src(), "D", 20);
        assert!(sb.cmd().args(["upload", "D", "-q", "--from"]).arg(&src).output().unwrap().status.success());
        let recorder = Recorder::start();
        let proxy = format!("http://{}", recorder.addr);
        let out = sb.cmd().args(["download", "D", "--json", "--data-proxy", &proxy]).output().unwrap();
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        let d = &json(&out)["models"][0];
        assert!(d["traffic"]["mirror_bytes"].as_u64().unwrap() >= 20 << 20, "{p:?}: {d}");
        assert!(recorder.requests.load(Ordering::SeqCst) >= 1, "{p:?}");
        let filtered = recorder.filtered.load(Ordering::SeqCst);
        assert_eq!(filtered > 0, matches!(p, Provider::Azure), "{p:?}: filtered-query-params header");
        let out = sb.cmd().args(["status", "--data-proxy", &proxy]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("data proxy:"), "{p:?}");
    }
}

#[test]
fn the_local_provider_reads_files_and_ignores_a_mirror_with_a_warning() {
    let (sb, _) = machine(Provider::Local);
    let src = model(&sb.src(), "L", 1);
    assert!(sb.cmd().args(["upload", "L", "-q", "--from"]).arg(&src).output().unwrap().status.success());
    let out = sb.cmd().args(["download", "L", "--mirror", "http://127.0.0.1:9"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--mirror does not apply to provider local"), "{}", stderr(&out));
}
