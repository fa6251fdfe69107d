//! A fault-injecting TCP proxy on loopback, between the CLI and moto: connections reset after
//! some bytes, or stall. Downloads and uploads must still finish with the right bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Sandbox, require_env, tree, write_files};
use crate::conformance::fastrand_u32;

/// What the proxy does to the bytes flowing one way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Reset the connection once this many bytes went through it.
    ResetAfter(u64),
    /// Stop forwarding (without closing) once this many bytes went through it.
    StallAfter(u64),
}

struct Plan {
    fault: Fault,
    /// Faults still to inject; taken by the first connections that cross the threshold.
    left: AtomicU32,
    /// Whether the fault hits responses (server → client) or requests (client → server).
    downstream: bool,
    injected: AtomicU32,
    bytes: AtomicU64,
}

/// A running proxy; dropped with its runtime at the end of the test.
struct Proxy {
    addr: SocketAddr,
    plan: Arc<Plan>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: &str, fault: Fault, count: u32, downstream: bool) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().expect("upstream host:port");
        assert!(upstream.ip().is_loopback(), "the proxy only forwards to loopback");
        let plan = Arc::new(Plan {
            fault,
            left: AtomicU32::new(count),
            downstream,
            injected: AtomicU32::new(0),
            bytes: AtomicU64::new(0),
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let p = plan.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let plan = p.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    pump(client, server, plan).await;
                });
            }
        });
        Self { addr, plan, _rt: rt }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn injected(&self) -> u32 {
        self.plan.injected.load(Ordering::SeqCst)
    }
}

async fn pump(client: TcpStream, server: TcpStream, plan: Arc<Plan>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (p1, p2) = (plan.clone(), plan);
    let up = async move { relay(&mut cr, &mut sw, &p1, !p1.downstream).await };
    let down = async move { relay(&mut sr, &mut cw, &p2, p2.downstream).await };
    // Whichever side ends (or faults) first ends the connection: both halves are dropped,
    // and a reset fault drops them with unread data, which the kernel turns into RST.
    tokio::select! { () = up => {}, () = down => {} }
}

async fn relay(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    plan: &Plan,
    faulty: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    let mut armed = faulty;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if armed {
            let (limit, stall) = match plan.fault {
                Fault::ResetAfter(n) => (n, false),
                Fault::StallAfter(n) => (n, true),
            };
            if sent + n as u64 > limit
                && plan.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1)).is_err()
            {
                armed = false; // no faults left: this connection carries on untouched
            } else if sent + n as u64 > limit {
                let keep = (limit - sent) as usize;
                let _ = to.write_all(&buf[..keep]).await;
                plan.injected.fetch_add(1, Ordering::SeqCst);
                if stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        sent += n as u64;
        plan.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn sandbox() -> Sandbox {
    let mut sb = Sandbox::new();
    sb.env("AWS_ACCESS_KEY_ID", "faults").env("AWS_SECRET_ACCESS_KEY", "faults-secret").env("AWS_REGION", "us-east-1");
    sb.env("CROWECODE_MAX_ATTEMPTS", "6").env("CROWECODE_STALL_TIMEOUT", "1.5");
    sb
}

fn s3(sb: &Sandbox, endpoint: &str, bucket: &str) -> assert_cmd::Command {
    let mut c = sb.cmd();
    c.args(["--provider", "s3", "--bucket", bucket, "--endpoint", endpoint, "--prefix", "m/"]);
    c
}

/// A 24 MiB model in the bucket, uploaded without faults.
fn seeded(sb: &Sandbox, endpoint: &str) -> (String, std::path::PathBuf) {
    let bucket = format!("faults-{:08x}", fastrand_u32());
    let model = sb.src().join("Model");
    write_files(&model, &[("weights.bin", &crate::common::noise(24 << 20, 77)), ("config.json", b"{}")]);
    s3(sb, endpoint, &bucket).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    s3(sb, endpoint, &bucket).args(["upload", "Model", "--from"]).arg(&model).assert().success();
    (bucket, model)
}

fn download_through(proxy: &Proxy, sb: &Sandbox, bucket: &str, model: &Path) {
    let out = s3(sb, &proxy.endpoint(), bucket)
        .args(["download", "Model", "--part-size", "8MiB", "--concurrency", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(Path::new(String::from_utf8_lossy(&out.stdout).trim())), tree(model));
}

#[test]
fn downloads_resume_after_connection_resets() {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let sb = sandbox();
    let (bucket, model) = seeded(&sb, &endpoint);
    let proxy = Proxy::start(&endpoint, Fault::ResetAfter(3 << 20), 4, true);
    download_through(&proxy, &sb, &bucket, &model);
    assert_eq!(proxy.injected(), 4, "every planned reset happened");
}

#[test]
fn downloads_resume_after_a_stalled_connection() {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let sb = sandbox();
    let (bucket, model) = seeded(&sb, &endpoint);
    let proxy = Proxy::start(&endpoint, Fault::StallAfter(2 << 20), 1, true);
    download_through(&proxy, &sb, &bucket, &model);
    assert_eq!(proxy.injected(), 1);
}

#[test]
fn uploads_retry_parts_after_connection_resets() {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let sb = sandbox();
    let bucket = format!("faults-up-{:08x}", fastrand_u32());
    let model = sb.src().join("Up");
    write_files(&model, &[("weights.bin", &crate::common::noise(18 << 20, 78)), ("config.json", b"{}")]);
    s3(&sb, &endpoint, &bucket).args(["setup", "--create-bucket", "--no-write"]).assert().success();
    let proxy = Proxy::start(&endpoint, Fault::ResetAfter(1 << 20), 3, false);
    let out = s3(&sb, &proxy.endpoint(), &bucket)
        .args(["upload", "Up", "--part-size", "5MiB", "--from"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.injected(), 3);
    // Read back without the proxy: the archive is whole and verified.
    let out = s3(&sb, &endpoint, &bucket).args(["download", "Up"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(Path::new(String::from_utf8_lossy(&out.stdout).trim())), tree(&model));
}

#[test]
fn resets_that_still_make_progress_never_exhaust_the_attempts() {
    // Every connection dies after 512 KiB: about fifty resets for this model, each resumed from
    // the last byte received. The attempt budget counts attempts without progress, so it finishes.
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let mut sb = sandbox();
    sb.env("CROWECODE_MAX_ATTEMPTS", "3");
    let (bucket, model) = seeded(&sb, &endpoint);
    let proxy = Proxy::start(&endpoint, Fault::ResetAfter(512 << 10), 1000, true);
    download_through(&proxy, &sb, &bucket, &model);
    assert!(proxy.injected() >= 40, "{} resets", proxy.injected());
}

#[test]
fn persistent_faults_give_up_with_exit_7_naming_the_fault() {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    let mut sb = sandbox();
    sb.env("CROWECODE_MAX_ATTEMPTS", "3");
    let (bucket, _model) = seeded(&sb, &endpoint);
    // Connections die before the first byte of any answer: no attempt makes progress.
    let proxy = Proxy::start(&endpoint, Fault::ResetAfter(0), 1000, true);
    let out = s3(&sb, &proxy.endpoint(), &bucket).args(["download", "Model", "--part-size", "8MiB"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still failing after 3 attempts"), "{err}");
    assert!(
        err.contains("connection") || err.contains("dispatch failure") || err.contains("closed"),
        "names the fault: {err}"
    );
    assert!(!sb.cache().join("models/Model").exists(), "nothing installed");
    let staging = sb.cache().join(".staging");
    assert!(!staging.exists() || std::fs::read_dir(&staging).unwrap().count() == 0, "nothing left in staging");
}
