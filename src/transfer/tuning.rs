//! How many requests a transfer keeps in flight, and how large each is.
//!
//! One connection to S3, GCS or Azure carries ~50–100 MB/s with tens of milliseconds to the first
//! byte, so a large link fills only with many requests in flight; on loopback or a slow disk more
//! requests gain nothing but memory. So, without `--concurrency`:
//!
//! - a download starts with [`START`] ranges of [`AUTO_RANGE_SIZE`] in flight and, like TCP's slow
//!   start, adds half as many again each time a window of ranges arrived faster than the window
//!   before (by [`GAIN`]); the first window that does not stops the growth, and hands the last
//!   step back if it gained less than [`KEEP`]. Memory does not grow with it: chunks are handed
//!   to the writer as they arrive, and what arrives ahead of it is held within the memory budget
//!   (`--max-memory`, default [`DEFAULT_MAX_MEMORY`]); a receiver whose range would exceed it
//!   stops reading until the writer catches up. So a slow disk stops the growth as surely as a
//!   saturated link: more requests bring no more bytes per second;
//! - an upload keeps as many parts of [`AUTO_PART_SIZE`] in flight as the budget holds (at most
//!   [`UPLOAD_PARTS`]).
//!
//! `--concurrency N` fixes the number (memory stays within the budget); `--part-size` fixes
//! the size. What was chosen, and why, is in `--json` and `-v`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::TransferOptions;

/// The default memory budget for ranges or parts in flight.
pub const DEFAULT_MAX_MEMORY: u64 = 160 << 20;
/// The upload part size when none is given (S3's smallest is 5 MiB; a multiple of GCS's 256 KiB).
pub const AUTO_PART_SIZE: u64 = 6 << 20;
/// The download range size when none is given: large enough that a request's own cost (a round
/// trip, a signature, the server's lookup) is a few percent at most, small enough that the ranges
/// in flight keep within the memory budget. The last ranges are smaller (see [`ranges`]).
pub const AUTO_RANGE_SIZE: u64 = 8 << 20;
/// Ranges in flight when a download starts.
pub const START: usize = 16;
/// The most requests in flight, whatever the budget.
pub const MAX_IN_FLIGHT: usize = 64;
/// Parts in flight for an upload without `--concurrency` (the budget permitting).
pub const UPLOAD_PARTS: usize = 24;
/// A window must be this much faster than the one before for the growth to go on.
pub const GAIN: f64 = 1.15;
/// A last step that gained less than this is handed back: its requests, and the memory their
/// ranges hold, bought too little.
pub const KEEP: f64 = 1.08;
/// A writer that waited for bytes less than this share of a window is the bottleneck.
pub const WRITER_BOUND: f64 = 0.05;
/// The shortest window throughput is measured over.
const WINDOW: Duration = Duration::from_millis(250);

/// What a transfer chose.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tuning {
    pub part_size: u64,
    /// Requests in flight at the start.
    pub start: usize,
    /// The most it may grow to (the memory budget's or `--concurrency`'s).
    pub limit: usize,
    /// The most it reached.
    pub reached: usize,
    /// The most bytes of ranges or parts in memory at once (`--max-memory`).
    pub memory_budget: u64,
    /// Where the budget came from: `--max-memory`, the built-in default, or the container's
    /// cgroup memory limit (see [`super::memory`]).
    pub memory_source: String,
    /// For a download: the most bytes it held received and not yet written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_held: Option<u64>,
    /// Why: the flags given, and what stopped the growth.
    pub why: String,
}

impl Tuning {
    /// What was chosen and why, for `-v`.
    pub fn log(&self, model: &crate::names::ModelName) {
        tracing::debug!(
            %model,
            "memory budget {} ({}); {}",
            mib(self.memory_budget),
            self.memory_source,
            self.why
        );
    }
}

fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}

/// The memory budget of a transfer (`--max-memory`, at least 1 MiB); without it the default,
/// sized from the container's memory limit where there is one ([`super::memory`]).
pub fn memory_budget(opts: &TransferOptions) -> u64 {
    opts.max_memory.unwrap_or_else(|| super::memory::default_memory().bytes).max(1 << 20)
}

/// Where [`memory_budget`] came from.
pub fn memory_source(opts: &TransferOptions) -> String {
    match opts.max_memory {
        Some(_) => "--max-memory".into(),
        None => super::memory::default_memory().source.clone(),
    }
}

/// The plan of a download of `size` bytes from a bucket worth at most `max_reads` reads in flight
/// ([`crate::provider::Limits::max_reads_in_flight`]; `--concurrency` overrides it).
pub fn download_plan(opts: &TransferOptions, size: u64, max_reads: Option<usize>) -> Tuning {
    let budget = memory_budget(opts);
    // Memory is the bytes received ahead of the writer (`held_budget`), whatever the number of
    // requests in flight; a range in flight holds half its bytes on average, so the limit is
    // twice as many ranges as that holds.
    let fits = |p: u64| ((2 * held_budget(budget, p, MAX_IN_FLIGHT) / p.max(1)) as usize).clamp(1, MAX_IN_FLIGHT);
    let (part, start, limit, why) = match (opts.concurrency, opts.part_size) {
        (Some(k), p) => {
            let p = p.unwrap_or(AUTO_RANGE_SIZE);
            (p, k, k, format!("--concurrency {k} given; ranges of {}", mib(p)))
        }
        (None, Some(p)) => {
            let limit = fits(p);
            (p, START.min(limit), limit, format!("--part-size {} given; at most {limit} in flight", mib(p)))
        }
        (None, None) => {
            let limit = fits(AUTO_RANGE_SIZE);
            let why = format!(
                "ranges of {}, {} in flight grown while throughput grows, at most {limit}",
                mib(AUTO_RANGE_SIZE),
                START.min(limit),
            );
            (AUTO_RANGE_SIZE, START.min(limit), limit, why)
        }
    };
    let part = part.clamp(1, size.max(1));
    let (start, limit, why) = match (opts.concurrency, max_reads) {
        (None, Some(most)) => {
            let limit = limit.min(most.max(1));
            let why = format!("ranges of {}, {limit} in flight (a local directory gains nothing from more)", mib(part));
            (start.min(limit), limit, why)
        }
        _ => (start, limit, why),
    };
    let why = format!("{why}; at most {} received ahead of the writer", mib(held_budget(budget, part, limit)));
    Tuning {
        part_size: part,
        start,
        limit,
        reached: start,
        memory_budget: budget,
        memory_source: memory_source(opts),
        peak_held: None,
        why,
    }
}

/// The bytes a download may hold received ahead of its writer with `in_flight` ranges of `part`
/// bytes in flight: what those ranges hold on average when the network is the bottleneck (half
/// of each), within three quarters of the memory budget; the rest is for the HTTP client's
/// buffers and the program itself. Holding more than the ranges in flight need gains nothing when
/// the writer is the bottleneck, and costs cache misses.
pub fn held_budget(budget: u64, part: u64, in_flight: usize) -> u64 {
    let cap = budget / 4 * 3;
    (in_flight as u64 * part / 2).clamp(part.min(cap), cap).max(1 << 20)
}

/// The byte ranges of a download of `start..size` in `part`-byte ranges: the last ones, as many
/// bytes as `tail_ranges` full ranges, are cut into quarters, so that the slowest connection at the
/// end of a download holds up less.
pub fn ranges(start: u64, size: u64, part: u64, tail_ranges: usize) -> Vec<(u64, u64)> {
    let part = part.max(1);
    let small = (part / 4).max(1 << 20).min(part);
    let tail_start = size.saturating_sub(part * tail_ranges as u64).max(start);
    let mut out = Vec::new();
    let mut at = start;
    while at < size {
        let len = if at < tail_start { part.min(tail_start - at) } else { small };
        let end = (at + len).min(size);
        out.push((at, end));
        at = end;
    }
    out
}

/// The number of parts an upload keeps in flight with parts of `part` bytes.
pub fn upload_concurrency(opts: &TransferOptions, part: u64) -> (usize, String) {
    let budget = memory_budget(opts);
    match opts.concurrency {
        Some(k) => (k, format!("--concurrency {k} given")),
        None => {
            // The parts in flight and the one being filled fit the budget.
            let k = ((budget / part.max(1)).saturating_sub(1) as usize).clamp(1, UPLOAD_PARTS);
            (k, format!("parts of {}, {k} in flight within {}", mib(part), mib(budget)))
        }
    }
}

/// Grows a download's ranges in flight (the permits of `in_flight`) while throughput grows.
pub struct Grower {
    in_flight: Arc<Semaphore>,
    part: u64,
    current: usize,
    previous: usize,
    limit: usize,
    window_start: Instant,
    window_bytes: u64,
    window_waited: Duration,
    writer_bound_noted: bool,
    last_rate: f64,
    /// Permits of a step handed back, still held by ranges in flight.
    owed: usize,
    /// The most ranges allowed in flight so far.
    most: usize,
    /// Ranges still to be received before the first window starts.
    warm_up: usize,
    settled: bool,
    model: String,
}

impl Grower {
    /// A grower of `in_flight`, which holds `plan.start` permits; fixed when `plan.limit` is
    /// not above it.
    pub fn new(in_flight: Arc<Semaphore>, plan: &Tuning, model: &str) -> Self {
        Self {
            in_flight,
            part: plan.part_size,
            current: plan.start,
            previous: plan.start,
            limit: plan.limit,
            window_start: Instant::now(),
            window_bytes: 0,
            window_waited: Duration::ZERO,
            writer_bound_noted: false,
            last_rate: 0.0,
            owed: 0,
            most: plan.start,
            warm_up: plan.start,
            settled: plan.limit <= plan.start,
            model: model.to_string(),
        }
    }

    /// The ranges allowed in flight now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The most ranges in flight so far.
    pub fn reached(&self) -> usize {
        self.most
    }

    /// What ended the growth, for [`Tuning::why`].
    pub fn outcome(&self) -> Option<String> {
        // What it settled at: a step handed back counts as given back.
        let now = self.current - self.owed;
        if self.limit <= self.previous && now == self.previous {
            return None;
        }
        Some(if self.settled && self.writer_bound_noted && now == self.previous {
            format!("settled at {now} in flight (the writer, not the network, was the bottleneck)")
        } else if self.settled && now < self.limit {
            format!("settled at {now} in flight (more did not raise throughput by {:.0}%)", (GAIN - 1.0) * 100.0)
        } else if now >= self.limit {
            format!("grew to the limit of {}", self.limit)
        } else {
            format!("{now} in flight when the download ended")
        })
    }

    /// Called as ranges are received, with the bytes the writer wrote since the last call and
    /// how long it waited for them.
    pub fn delivered(&mut self, bytes: u64, writer_waited: Duration) {
        if self.owed > 0 {
            // A step handed back: its permits are taken as the ranges holding them end.
            let back = self.in_flight.forget_permits(self.owed);
            self.owed -= back;
            self.current -= back;
        }
        if self.settled {
            return;
        }
        if self.warm_up > 0 {
            // The first window starts once the first round of ranges is in: before, the time
            // is the connections' set-up and first bytes, and the buffer filling up, which more
            // requests would not shorten. Counted, it makes the second window look faster, and
            // the growth goes on where it gains nothing (on loopback, for one).
            self.warm_up -= 1;
            self.window_start = Instant::now();
            return;
        }
        self.window_bytes += bytes;
        self.window_waited += writer_waited;
        let dt = self.window_start.elapsed();
        if dt < WINDOW || self.window_bytes < self.current as u64 * self.part {
            return;
        }
        let rate = self.window_bytes as f64 / dt.as_secs_f64();
        let grew = self.last_rate == 0.0 || rate > self.last_rate * GAIN;
        // A writer that hardly waited for bytes is the bottleneck (a disk, or the CPU): more
        // requests would only hold more memory.
        let writer_bound = self.window_waited.as_secs_f64() < WRITER_BOUND * dt.as_secs_f64();
        if writer_bound && !self.writer_bound_noted {
            self.writer_bound_noted = true;
            tracing::info!(model = %self.model, "{:.0} MB/s: the writer is the bottleneck", rate / 1e6);
        }
        if grew && !writer_bound && self.current < self.limit {
            let next = (self.current + (self.current / 2).max(2)).min(self.limit);
            tracing::info!(
                model = %self.model,
                "{:.0} MB/s with {} ranges in flight: trying {next}",
                rate / 1e6,
                self.current
            );
            self.in_flight.add_permits(next - self.current);
            self.previous = self.current;
            self.current = next;
            self.most = self.most.max(next);
            self.last_rate = rate;
        } else {
            if rate < self.last_rate * KEEP && self.current > self.previous {
                // The last step bought nothing: give its requests and memory back. Permits in
                // use are taken as their ranges end.
                tracing::info!(
                    model = %self.model,
                    "{:.0} MB/s with {} ranges in flight, no faster: back to {}",
                    rate / 1e6,
                    self.current,
                    self.previous
                );
                self.owed = self.current - self.previous;
                let back = self.in_flight.forget_permits(self.owed);
                self.owed -= back;
                self.current -= back;
            }
            self.settled = true;
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        self.window_waited = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_flags_and_the_budget() {
        let auto = download_plan(&TransferOptions::default(), 1 << 30, None);
        assert_eq!((auto.part_size, auto.start, auto.limit, auto.memory_budget), (8 << 20, 16, 30, 160 << 20));
        let fixed = TransferOptions { concurrency: Some(100), ..Default::default() };
        let p = download_plan(&fixed, 1 << 30, None);
        assert_eq!((p.start, p.limit, p.memory_budget), (100, 100, DEFAULT_MAX_MEMORY), "memory stays the budget");
        let small = TransferOptions { max_memory: Some(32 << 20), ..Default::default() };
        assert_eq!(download_plan(&small, 1 << 30, None).limit, 6);
        assert_eq!(held_budget(DEFAULT_MAX_MEMORY, 8 << 20, 16), 64 << 20);
        assert_eq!(held_budget(DEFAULT_MAX_MEMORY, 8 << 20, 100), 120 << 20, "three quarters of the budget at most");
        assert_eq!(held_budget(DEFAULT_MAX_MEMORY, 8 << 20, 1), 8 << 20);
        let local = download_plan(&TransferOptions::default(), 1 << 30, Some(4));
        assert_eq!((local.start, local.limit), (4, 4), "{local:?}");
        assert_eq!(download_plan(&fixed, 1 << 30, Some(4)).limit, 100, "--concurrency overrides the bucket's hint");
        let both = TransferOptions { concurrency: Some(4), part_size: Some(32 << 20), ..Default::default() };
        assert_eq!(download_plan(&both, 1 << 30, None).part_size, 32 << 20);
        assert_eq!(download_plan(&TransferOptions::default(), 1000, None).part_size, 1000);
        assert_eq!(upload_concurrency(&TransferOptions::default(), 6 << 20).0, 24);
        assert_eq!(upload_concurrency(&TransferOptions::default(), 64 << 20).0, 1);
    }

    #[test]
    fn ranges_cover_the_archive_with_a_finer_tail() {
        let r = ranges(0, 100 << 20, 8 << 20, 4);
        assert_eq!(r.first(), Some(&(0, 8 << 20)));
        assert_eq!(r.last().map(|x| x.1), Some(100 << 20));
        assert!(r.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
        let small = r.iter().filter(|(a, b)| b - a == 2 << 20).count();
        assert_eq!(small, 16, "the last 32 MiB in 2 MiB ranges");
        assert_eq!(ranges(5, 6, 8 << 20, 16), vec![(5, 6)]);
        assert_eq!(ranges(0, 0, 8 << 20, 16), vec![]);
    }

    #[test]
    fn growth_stops_when_throughput_stops_growing() {
        let sem = Arc::new(Semaphore::new(START));
        let plan = download_plan(&TransferOptions::default(), 1 << 30, None);
        let mut g = Grower::new(sem.clone(), &plan, "M");
        let waiting = 2 * WINDOW; // the writer waits for the network
        for _ in 0..START {
            g.delivered(plan.part_size, waiting);
        }
        assert_eq!(g.current, START, "the first round of ranges only starts the first window");
        // A first window, then one no faster: grow once, then give the step back.
        g.window_start -= WINDOW;
        g.delivered(16 * plan.part_size, waiting);
        assert_eq!(g.current, 24);
        g.window_start = Instant::now() - 4 * WINDOW;
        g.delivered(24 * plan.part_size, waiting);
        assert!(g.settled);
        assert_eq!(g.current, 16, "the step that bought nothing is handed back");
        assert!(g.outcome().unwrap().contains("settled at 16"));

        // A writer that never waits is the bottleneck: no growth, however fast the window.
        let sem = Arc::new(Semaphore::new(START));
        let mut g = Grower::new(sem.clone(), &plan, "M");
        g.warm_up = 0;
        g.window_start -= WINDOW;
        g.delivered(16 * plan.part_size, Duration::ZERO);
        assert!(g.settled);
        assert_eq!(g.current, START);
        assert!(g.outcome().unwrap().contains("the writer"), "{:?}", g.outcome());
    }
}
