//! Everything the user sees: results on stdout (text or `--json`), notes, warnings, errors and
//! progress on stderr. Progress is a bar on a terminal and a plain line every few seconds
//! elsewhere (container logs, CI).

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressDrawTarget};
use serde::Serialize;

use crate::commands::Batch;
use crate::commands::list::{Local, Remote};
use crate::commands::setup::SetupOutcome;
use crate::error::Error;
use crate::manager::{DownloadStatus, Downloaded, StatusReport, UploadStatus, Uploaded};

mod transfer;
mod versions;

use transfer::Transfer;
use versions::signers;

enum Mode {
    Off,
    Bars(MultiProgress),
    Lines(Duration),
}

/// The one place that writes to the terminal.
pub struct Printer {
    json: bool,
    quiet: bool,
    mode: Mode,
    transfers: Mutex<HashMap<String, Transfer>>,
    stdout_failed: std::sync::atomic::AtomicBool,
}

/// `text` with control characters (C0, DEL, C1) escaped as `\n`, `\u{1b}`…, so a file or key
/// name from a bucket cannot move the cursor, recolour the terminal or set its title.
pub fn safe(text: &str) -> String {
    let text = &crate::redact::text(text);
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

/// `1 file`, `3 files`.
fn files(n: usize) -> String {
    if n == 1 { "1 file".into() } else { format!("{n} files") }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn fmt_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let s = s.round() as u64;
        if s < 3600 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) }
    }
}

fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 { "-".into() } else { format!("{}/s", fmt_bytes((bytes as f64 / secs) as u64)) }
}

impl Printer {
    /// A printer for the given output options; `env` is read for `CROWECODE_PROGRESS_INTERVAL`.
    pub fn new(json: bool, quiet: bool, no_progress: bool, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let mode = if quiet || no_progress {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)))
        } else {
            let secs = env("CROWECODE_PROGRESS_INTERVAL")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0)
                .unwrap_or(5.0);
            Mode::Lines(Duration::from_secs_f64(secs))
        };
        Self { json, quiet, mode, transfers: Mutex::new(HashMap::new()), stdout_failed: Default::default() }
    }

    fn out(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
        match written {
            Ok(()) => {}
            // `crowecode-cloud list | head` is fine.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => {
                if !self.stdout_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("error: cannot write the result to stdout: {e}");
                }
            }
        }
    }

    /// Whether some result could not be written to stdout (the command then exits 1: a script
    /// reading `MODEL=$(crowecode-cloud download …)` must not get an empty value and success).
    pub fn stdout_failed(&self) -> bool {
        self.stdout_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn json_out<T: Serialize>(&self, value: &T) {
        self.out(&serde_json::to_string_pretty(value).expect("output serialises"));
    }

    /// A note on stderr (not with `--quiet`).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            self.err_line(text);
        }
    }

    fn err_line(&self, text: &str) {
        let text = &crate::redact::text(text);
        match &self.mode {
            Mode::Bars(mp) => {
                let _ = mp.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    /// A warning on stderr.
    pub fn warn(&self, text: &str) {
        if !self.quiet {
            self.err_line(&format!("warning: {text}"));
        }
    }

    /// An error: the message, its causes and a hint on stderr; with `--json` also an object on stdout.
    pub fn error(&self, e: &Error) {
        let mut text = format!("error: {}", safe(&e.to_string()));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let line = safe(&s.to_string());
            if !text.contains(&line) {
                text.push_str(&format!("\n  caused by: {line}"));
            }
            source = s.source();
        }
        if let Error::Integrity { expected: Some(x), computed: Some(c), .. } = e {
            text.push_str(&format!("\n  expected: {x}\n  computed: {c}"));
        }
        if let Some(h) = e.hint() {
            text.push_str(&format!("\nhint: {}", safe(&h)));
        }
        self.err_line(&text);
        if self.json {
            #[derive(Serialize)]
            struct JsonError<'a> {
                error: String,
                hint: Option<String>,
                exit_code: i32,
                #[serde(skip_serializing_if = "Option::is_none")]
                expected: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                computed: Option<&'a str>,
            }
            let (expected, computed) = match e {
                Error::Integrity { expected, computed, .. } => (expected.as_deref(), computed.as_deref()),
                _ => (None, None),
            };
            self.json_out(&JsonError {
                error: crate::redact::text(&e.to_string()),
                hint: e.hint().map(|h| crate::redact::text(&h)),
                exit_code: e.exit_code(),
                expected,
                computed,
            });
        }
    }

    fn model_errors<T>(&self, batch: &Batch<T>) {
        self.model_errors_of(&batch.errors);
    }

    fn model_errors_of(&self, errors: &[crate::commands::ModelError]) {
        for e in errors {
            let mut text = format!("error: {}: {}", e.model, safe(&e.error));
            if let (Some(x), Some(c)) = (&e.expected, &e.computed) {
                text.push_str(&format!("\n  expected: {x}\n  computed: {c}"));
            }
            if let Some(h) = &e.hint {
                text.push_str(&format!("\nhint: {}", safe(h)));
            }
            self.err_line(&text);
        }
    }

    /// Output of `setup`.
    pub fn setup(&self, out: &SetupOutcome) {
        for w in &out.warnings {
            self.warn(w);
        }
        if self.json {
            return self.json_out(out);
        }
        self.out(&format!("export CROWECODE_CLOUD_CONFIG_B64='{}'", out.config_b64));
        if let Some(created) = out.bucket_created {
            let what = if created { "created bucket" } else { "bucket already exists:" };
            self.note(&format!("{what} {}", out.config.bucket));
        }
        match &out.config_file {
            Some(p) => self.note(&format!("wrote {} ({} bucket {})", p.display(), out.provider, out.config.location())),
            None => self.note("config file not written (--no-write)"),
        }
        self.note("next: `crowecode-cloud status` checks credentials and access; in containers set CROWECODE_CLOUD_CONFIG_B64 to the value above");
    }

    /// Output of `status`.
    pub fn status(&self, r: &StatusReport) {
        // Config warnings were already printed when the configuration was read.
        if self.json {
            return self.json_out(r);
        }
        let mut lines = vec![
            format!("config:       {}", r.config_source),
            format!("provider:     {}", r.provider),
            format!("location:     {}", r.location),
        ];
        if let Some(region) = &r.region {
            lines.push(format!("region:       {region}"));
        }
        if let Some(endpoint) = &r.endpoint {
            lines.push(format!("endpoint:     {endpoint}"));
        }
        lines.push(format!("credentials:  {}", r.credentials));
        match &r.error {
            None => lines.push(format!(
                "bucket:       reachable{}",
                r.models_in_bucket.map(|n| format!(", {n} model{}", if n == 1 { "" } else { "s" })).unwrap_or_default()
            )),
            Some(e) => lines.push(format!("bucket:       NOT reachable: {e}")),
        }
        match r.conditional_writes {
            Some(true) => lines.push("tags:         moved by compare-and-swap (conditional writes honoured)".into()),
            Some(false) => lines.push(
                "tags:         CANNOT be moved safely: this storage ignores conditional writes (CROWECODE_UNSAFE_TAG_MOVES=1 accepts last-writer-wins)"
                    .into(),
            ),
            None if r.reachable => lines.push("tags:         conditional writes not checked (no permission to write)".into()),
            None => {}
        }
        if let Some(m) = &r.mirror {
            let answer = match (m.answers, m.status, &m.error) {
                (true, Some(code), _) => format!("answers (HTTP {code})"),
                (true, None, _) => "answers (accepts connections)".into(),
                (false, _, Some(e)) => format!("NOT answering: {}", safe(e)),
                (false, _, None) => "NOT answering".into(),
            };
            let reads = if m.presigned_urls {
                "archive reads go through it on presigned URLs, verified"
            } else {
                "this credential cannot presign URLs, so archive reads go to the bucket directly"
            };
            let label = if m.forward_proxy { "data proxy: " } else { "mirror:     " };
            lines.push(format!("{label}  {} {answer}; {reads}", safe(&m.url)));
        }
        let sig = &r.signatures;
        if sig.trusted_keys.is_empty() {
            lines.push("signatures:   not checked (no trusted_keys / CROWECODE_TRUSTED_KEYS)".into());
        } else {
            lines.push(format!(
                "signatures:   {} (trusted: {})",
                if sig.require_signature { "REQUIRED" } else { "checked, not required" },
                sig.trusted_keys.iter().map(|k| safe(k)).collect::<Vec<_>>().join(", ")
            ));
            for (model, verdict) in &sig.cached {
                lines.push(format!("  {model}: {}", safe(verdict)));
            }
        }
        if !sig.signing_keys.is_empty() {
            lines.push(format!("signing with: {}", sig.signing_keys.join(", ")));
        }
        if !r.pending_uploads.is_empty() {
            let keys: Vec<String> = r.pending_uploads.iter().map(|k| safe(k)).collect();
            lines.push(format!("unfinished uploads: {} ({})", r.pending_uploads.len(), keys.join(", ")));
            lines.push(
                "  (a killed upload's parts; `crowecode-cloud prune --remote --yes` aborts those older than --min-age)"
                    .into(),
            );
        }
        lines.push(format!("cache:        {} ({})", r.cache_dir.display(), fmt_bytes(r.cache_bytes)));
        lines.push(format!(
            "cached:       {}",
            if r.models_cached.is_empty() { "no models".to_string() } else { r.models_cached.join(", ") }
        ));
        self.out(&lines.join("\n"));
    }

    /// Output of `list`.
    pub fn list_remote(&self, out: &Remote) {
        if self.json {
            return self.json_out(out);
        }
        if out.models.is_empty() {
            self.note(&format!("no models in {}", out.location));
            return;
        }
        let mut rows = vec![
            ["MODEL", "VERSION", "SIZE", "FILES", "UPLOADED", "TAGS", "CACHED", "SIGNED BY"].map(String::from).to_vec(),
        ];
        for m in &out.models {
            let tags: Vec<String> = m
                .tags
                .iter()
                .map(|(t, v)| if Some(v) == m.version.as_ref() { t.to_string() } else { format!("{t}={}", v.short()) })
                .collect();
            if let Some(err) = &m.error {
                // The whole reason is in `--json`; a table row stays a row.
                let short: String = safe(err).chars().take(60).collect();
                let cut = if short.len() < err.len() { "…" } else { "" };
                rows.push(vec![
                    m.model.to_string(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    format!("unreadable: {short}{cut}"),
                    tags.join(" "),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
            let cached = match (&m.cached, m.cached_current) {
                (Some(_), true) => "yes".to_string(),
                (Some(v), false) => format!("older ({v})"),
                (None, _) => "no".to_string(),
            };
            rows.push(vec![
                m.model.to_string(),
                m.version.as_ref().map(|v| v.short().to_string()).unwrap_or_default(),
                m.size.map(fmt_bytes).unwrap_or_default(),
                m.files.map(|n| n.to_string()).unwrap_or_default(),
                m.uploaded_at.clone().unwrap_or_default(),
                tags.join(" "),
                cached,
                m.signatures.as_ref().map(signers).unwrap_or_else(|| "?".into()),
            ]);
        }
        self.out(&table(&rows));
    }

    /// Output of `list --local`.
    pub fn list_local(&self, out: &Local) {
        if self.json {
            return self.json_out(out);
        }
        if out.models.is_empty() {
            self.note(&format!("no models cached in {}", out.cache_dir.display()));
            return;
        }
        let mut rows = vec![["MODEL", "SIZE", "FILES", "SHA256", "CURRENT", "PATH"].map(String::from).to_vec()];
        for v in &out.models {
            rows.push(vec![
                v.model.to_string(),
                v.size.map(fmt_bytes).unwrap_or_else(|| "?".into()),
                v.files.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                v.sha256.as_ref().map(|s| s.short().to_string()).unwrap_or_else(|| "?".into()),
                if v.current { "yes".into() } else { "no".into() },
                v.path.display().to_string(),
            ]);
        }
        self.out(&table(&rows));
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations_read_well() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(15 << 30), "15.0 GiB");
        assert_eq!(fmt_secs(3.25), "3.2s");
        assert_eq!(fmt_secs(77.0), "1m17s");
        assert_eq!(fmt_secs(7300.0), "2h01m");
    }

    #[test]
    fn tables_align() {
        let t = table(&[vec!["A".into(), "BB".into()], vec!["ccc".into(), "d".into()]]);
        assert_eq!(t, "A    BB\nccc  d");
    }
}
