//! Output of transfers: upload and download results, and progress as bars or periodic lines.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::*;
use crate::progress::{Direction, Event, Reporter};

pub(super) struct Transfer {
    direction: Direction,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

impl Printer {
    /// Output of `upload`.
    pub fn uploads(&self, batch: &Batch<Uploaded>) {
        for u in &batch.models {
            match u.status {
                UploadStatus::UpToDate => {
                    self.note(&format!("{}: up to date (version {}), nothing uploaded", u.model, u.version.short()))
                }
                UploadStatus::Uploaded if u.format >= 2 => self.note(&format!(
                    "{}: uploaded {}, sent {} in {} new pack{} in {} ({}), {} were in the bucket already, as version {}",
                    u.model,
                    files(u.files),
                    fmt_bytes(u.sent),
                    u.parts,
                    if u.parts == 1 { "" } else { "s" },
                    fmt_secs(u.seconds),
                    rate(u.sent, u.seconds),
                    fmt_bytes(u.reused),
                    u.version.short(),
                )),
                UploadStatus::Uploaded => self.note(&format!(
                    "{}: uploaded {}, {} in {} part{} in {} ({}) as version {} (archive sha256 {})",
                    u.model,
                    files(u.files),
                    fmt_bytes(u.archive_size),
                    u.parts,
                    if u.parts == 1 { "" } else { "s" },
                    fmt_secs(u.seconds),
                    rate(u.archive_size, u.seconds),
                    u.version.short(),
                    u.sha256.short()
                )),
            }
            if !u.signed_by.is_empty() {
                self.note(&format!("{}: signed {} by {}", u.model, u.version.short(), u.signed_by.join(", ")));
            }
            if !u.tags.is_empty() {
                let tags: Vec<String> = u.tags.iter().map(ToString::to_string).collect();
                self.note(&format!("{}: {} → {}", u.model, tags.join(", "), u.version.short()));
            }
        }
        self.model_errors(batch);
        if self.json {
            self.json_out(batch);
        } else {
            // The pinned reference, for the deploy step: REF=$(crowecode-cloud upload Alpha).
            for u in &batch.models {
                self.out(&u.reference);
            }
        }
    }

    /// Output of `download`: paths on stdout, one per line.
    pub fn downloads(&self, batch: &Batch<Downloaded>) {
        self.download_notes(batch);
        if self.json {
            self.json_out(batch);
        } else {
            for d in &batch.models {
                self.out(&d.path.display().to_string());
            }
        }
    }

    /// The lines on stderr about each download, and its errors; nothing on stdout.
    pub fn download_notes(&self, batch: &Batch<Downloaded>) {
        for d in &batch.models {
            let who = safe(&d.reference);
            // What a user may copy into a reference: the version id; the archive digest is only
            // shown, so named, for what has no version (a fallback's model).
            let which = match &d.version {
                Some(v) => format!(
                    "version {}",
                    crate::reference::VersionId::parse(v).map_or(v.clone(), |id| id.short().to_string())
                ),
                None => format!("archive sha256 {}", d.sha256.short()),
            };
            match d.status {
                DownloadStatus::Cached if d.reference == d.model.as_str() => {
                    self.note(&format!("{who}: already current ({which})"))
                }
                DownloadStatus::Cached if d.reference.contains('@') => {
                    self.note(&format!("{who}: already in the cache"))
                }
                DownloadStatus::Cached => self.note(&format!("{who}: already in the cache ({which})")),
                DownloadStatus::Downloaded if d.format >= 2 => self.note(&format!(
                    "{who}: downloaded and verified {}, {} fetched in {} request{} in {} ({}), {} were on this machine already, {which}",
                    files(d.files),
                    fmt_bytes(d.transferred),
                    d.requests.unwrap_or(0),
                    if d.requests == Some(1) { "" } else { "s" },
                    fmt_secs(d.seconds),
                    rate(d.transferred, d.seconds),
                    fmt_bytes(d.local_bytes.unwrap_or(0)),
                )),
                DownloadStatus::Downloaded => self.note(&format!(
                    "{who}: downloaded and verified {}, {} in {} ({}), {which}",
                    files(d.files),
                    fmt_bytes(d.transferred),
                    fmt_secs(d.seconds),
                    rate(d.transferred, d.seconds),
                )),
                DownloadStatus::Fallback | DownloadStatus::Published => self.note(&format!(
                    "{who}: made by the fallback command ({}, {}){}, {which}",
                    files(d.files),
                    fmt_bytes(d.size),
                    if d.status == DownloadStatus::Published { " and uploaded to the bucket" } else { "" },
                )),
            }
            if let Some(key) = &d.signed_by {
                self.note(&format!("{who}: signed by trusted key {}", safe(key)));
            }
        }
        self.model_errors(batch);
    }

    fn progress_line(&self, model: &str, t: &Transfer) {
        let secs = t.started.elapsed().as_secs_f64();
        let pct = if t.total > 0 { t.done as f64 * 100.0 / t.total as f64 } else { 100.0 };
        let speed = if secs > 0.0 { t.done as f64 / secs } else { 0.0 };
        let eta =
            if speed > 0.0 && t.total > t.done { fmt_secs((t.total - t.done) as f64 / speed) } else { "-".into() };
        eprintln!(
            "{} {model}: {} / {} ({pct:.0}%), {}, ETA {eta}",
            t.direction.as_str(),
            fmt_bytes(t.done),
            fmt_bytes(t.total),
            rate(t.done, secs)
        );
    }
}

impl Reporter for Printer {
    fn report(&self, event: Event<'_>) {
        match event {
            Event::Info { model, message } => self.note(&format!("{model}: {message}")),
            Event::Warning { message } => self.warn(&message),
            Event::Started { model, direction, total } => {
                let bar = match &self.mode {
                    Mode::Off => return,
                    Mode::Bars(mp) => {
                        let bar = mp.add(ProgressBar::new(total));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{} {model}", direction.as_str()));
                        Some(bar)
                    }
                    Mode::Lines(_) => None,
                };
                let now = Instant::now();
                let t = Transfer { direction, total, done: 0, started: now, last_line: now, bar };
                self.transfers.lock().expect("progress lock").insert(model.to_string(), t);
            }
            Event::Advanced { model, bytes } => {
                let mut map = self.transfers.lock().expect("progress lock");
                let Some(t) = map.get_mut(model) else { return };
                t.done += bytes;
                if let Some(bar) = &t.bar {
                    bar.inc(bytes);
                } else if let Mode::Lines(every) = self.mode
                    && t.last_line.elapsed() >= every
                {
                    t.last_line = Instant::now();
                    self.progress_line(model, t);
                }
            }
            Event::Finished { model } => {
                if let Some(t) = self.transfers.lock().expect("progress lock").remove(model)
                    && let Some(bar) = t.bar
                {
                    bar.finish_and_clear();
                }
            }
        }
    }
}
