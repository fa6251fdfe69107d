//! A TCP proxy that makes loopback look like a real network path to an object store, for the
//! benchmark's shaped mode (`bench/compare.sh --shape`); not part of the product.
//!
//! Model, per direction of every connection: bytes enter a delay line (each chunk leaves
//! `rtt / 2` after it arrived, so the delay adds latency without limiting throughput, as a long
//! path does), then pass two token buckets: the connection's (`--conn-rate`, what one TCP
//! connection to S3, GCS or Azure carries) and one shared by all connections (`--total-rate`,
//! the machine's NIC). At most `--window` bytes per direction are in the delay line, like a TCP
//! window. The first byte of a connection also pays one round trip (the handshake).
//!
//!   cargo run --release --example shaper -- --listen 127.0.0.1:0 --upstream 127.0.0.1:9000 \
//!       --conn-rate 12.5M --total-rate 200M --rtt-ms 20
//!
//! Prints `listening on ADDR` once ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

/// A token bucket: `rate` bytes per second, bursts of at most `burst` bytes.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let burst = (rate / 100.0).max(64.0 * 1024.0);
        Self { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// How long to wait before `n` bytes may pass (taking them now, so callers queue fairly).
    fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.rate) }
    }
}

#[derive(Clone)]
struct Shape {
    conn_rate: f64,
    total: Arc<[Mutex<Bucket>; 2]>,
    one_way: Duration,
    window: usize,
}

fn parse_rate(s: &str) -> f64 {
    let (num, mult) = match s.trim_end_matches(['B', 'b']).strip_suffix(['M', 'm']) {
        Some(n) => (n, 1e6),
        None => match s.strip_suffix(['G', 'g']) {
            Some(n) => (n, 1e9),
            None => (s, 1.0),
        },
    };
    num.parse::<f64>().expect("a rate like 12.5M (bytes per second)") * mult
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shape: Shape,
    dir: usize,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let window = Arc::new(tokio::sync::Semaphore::new(shape.window));
    let w = window.clone();
    let one_way = shape.one_way;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(permit) = w.acquire_many(n as u32).await else { break };
            permit.forget();
            if tx.send((Instant::now() + one_way, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    let mut conn = Bucket::new(shape.conn_rate);
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due.into()).await;
        let wait_conn = conn.take(chunk.len());
        let wait_total = shape.total[dir].lock().await.take(chunk.len());
        let wait = wait_conn.max(wait_total);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        window.add_permits(chunk.len());
    }
    let _ = to.shutdown().await;
    reader.abort();
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut upstream = String::new();
    let (mut conn_rate, mut total_rate, mut rtt_ms, mut window) = (12.5e6, 200e6, 20.0, 4usize << 20);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value after each flag");
        match a.as_str() {
            "--listen" => listen = v(),
            "--upstream" => upstream = v(),
            "--conn-rate" => conn_rate = parse_rate(&v()),
            "--total-rate" => total_rate = parse_rate(&v()),
            "--rtt-ms" => rtt_ms = v().parse().expect("milliseconds"),
            "--window" => window = parse_rate(&v()) as usize,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!upstream.is_empty(), "--upstream HOST:PORT is required");
    let shape = Shape {
        conn_rate,
        total: Arc::new([Mutex::new(Bucket::new(total_rate)), Mutex::new(Bucket::new(total_rate))]),
        one_way: Duration::from_secs_f64(rtt_ms / 2000.0),
        window,
    };
    let listener = TcpListener::bind(&listen).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let (shape, upstream) = (shape.clone(), upstream.clone());
        tokio::spawn(async move {
            // The handshake's round trip.
            tokio::time::sleep(shape.one_way * 2).await;
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = tokio::spawn(pipe(cr, sw, shape.clone(), 0));
            pipe(sr, cw, shape, 1).await;
            let _ = up.await;
        });
    }
}
