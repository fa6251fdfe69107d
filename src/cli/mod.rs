//! The command-line front end. **Only this module knows clap and the terminal.** It parses,
//! resolves flags and environment into a [`Context`], runs one command, prints its outcome and
//! turns errors into exit codes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::archive::Compression;
use crate::cache::Cache;
use crate::commands::{self, Context, EnvReader};
use crate::config::{self, Overrides};
use crate::error::{Error, exit};
use crate::manager::UploadOptions;
use crate::provider::RetryPolicy;
use crate::transfer::TransferOptions;

mod printer;

pub use printer::{Printer, fmt_bytes};

const EXAMPLES: &str = "\
Examples:
  crowecode-cloud setup --provider s3 --bucket my-models --region us-west-2
  eval \"$(crowecode-cloud setup --provider gcs --bucket my-models)\"
  crowecode-cloud upload Alpha Beta --models-dir ./models
  MODEL=$(crowecode-cloud download Alpha) && exec server --model \"$MODEL\"
  crowecode-cloud list --json

Exit codes: 0 ok, 1 other failure, 2 usage, 3 not configured, 4 credentials or permission,
5 model not found, 6 integrity or signature failure, 7 network still failing after retries,
8 conflict (a tag moved meanwhile, or a version pruned under a move), 130 interrupted (SIGINT),
143 terminated (SIGTERM).";

/// Keep ML model directories in one S3, GCS or Azure bucket; download them once per machine,
/// fast and verified.
#[derive(Debug, Parser)]
#[command(name = "crowecode-cloud", version = version_text(), after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(subcommand)]
    command: Command,
}

fn version_text() -> &'static str {
    let built = [("s3", cfg!(feature = "s3")), ("gcs", cfg!(feature = "gcs")), ("azure", cfg!(feature = "azure"))];
    let mut providers: Vec<&str> = built.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    providers.push("local");
    // Leaked once: clap wants a 'static str and this runs once per process.
    Box::leak(format!("{} (providers: {})", env!("CARGO_PKG_VERSION"), providers.join(", ")).into_boxed_str())
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Config file [default: $XDG_CONFIG_HOME/crowecode/cloud.json]
    #[arg(long, global = true, env = "CROWECODE_CONFIG", value_name = "PATH", hide_env_values = true)]
    config: Option<PathBuf>,
    /// Cache directory [default: $XDG_CACHE_HOME/crowecode]
    #[arg(long, global = true, env = "CROWECODE_HOME", value_name = "DIR", hide_env_values = true)]
    cache_dir: Option<PathBuf>,
    /// Print only errors
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More detail on stderr (-vv for the storage SDKs too)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print one JSON object on stdout
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars or progress lines
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Storage (overrides the config)")]
struct StorageArgs {
    /// Storage provider
    #[arg(long, global = true, value_name = "NAME", value_parser = ["s3", "gcs", "azure", "local"])]
    provider: Option<String>,
    /// Bucket (S3, GCS), container (Azure) or directory (local)
    #[arg(long, global = true, value_name = "NAME")]
    bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. crowecode-models/
    #[arg(long, global = true, value_name = "PREFIX")]
    prefix: Option<String>,
    /// AWS region
    #[arg(long, global = true, value_name = "REGION")]
    region: Option<String>,
    /// Endpoint URL (S3-compatible stores, emulators)
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// Azure storage account
    #[arg(long, global = true, value_name = "NAME")]
    account: Option<String>,
    /// GCP project (bucket creation)
    #[arg(long, global = true, value_name = "ID")]
    project: Option<String>,
    /// S3 server-side encryption
    #[arg(long, global = true, value_name = "MODE", value_parser = ["AES256", "aws:kms"])]
    sse: Option<String>,
    /// S3 KMS key id (with --sse aws:kms)
    #[arg(long, global = true, value_name = "ID")]
    kms_key_id: Option<String>,
    /// GCS customer-managed encryption key
    #[arg(long, global = true, value_name = "NAME")]
    kms_key: Option<String>,
    /// Azure encryption scope
    #[arg(long, global = true, value_name = "NAME")]
    encryption_scope: Option<String>,
    /// Command that provides a model missing from the bucket; {model} and {dest} are filled in
    #[arg(long, global = true, value_name = "CMD")]
    fallback_command: Option<String>,
    /// Read archives through this mirror (an HTTP cache or CDN in front of the bucket), verified
    #[arg(long, global = true, value_name = "URL", env = "CROWECODE_MIRROR", hide_env_values = true)]
    mirror: Option<String>,
    /// Send archive reads as plain http:// to this forward proxy (Dragonfly dfdaemon), verified
    #[arg(long, global = true, value_name = "URL", env = "CROWECODE_DATA_PROXY", hide_env_values = true)]
    data_proxy: Option<String>,
}

#[derive(Debug, Args)]
struct TransferArgs {
    /// Requests in flight [default: downloads start at 16 and grow while throughput grows, uploads 24, within --max-memory]
    #[arg(long, value_name = "N", env = "CROWECODE_CONCURRENCY", hide_env_values = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: Option<u16>,
    /// Part size, e.g. 16MiB, 64M [default: downloads 8MiB, uploads 6MiB, grown for huge models]
    #[arg(long, value_name = "SIZE", env = "CROWECODE_PART_SIZE", hide_env_values = true, value_parser = parse_size)]
    part_size: Option<u64>,
    /// Memory for the data in flight, e.g. 512M [default: 160MiB; downloads hold at most 3/4 of it ahead of the writer]
    #[arg(long, value_name = "SIZE", env = "CROWECODE_MAX_MEMORY", hide_env_values = true, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Average transfer rate limit in bytes per second, e.g. 50M (= 50 MiB/s)
    #[arg(long, value_name = "RATE", env = "CROWECODE_LIMIT_RATE", hide_env_values = true, value_parser = parse_size)]
    limit_rate: Option<u64>,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// Sign with this private key (PEM, ECDSA P-256; repeatable: during a rotation sign with old
    /// and new) [env: CROWECODE_SIGNING_KEY, a path or several separated by `:`]
    #[arg(long = "sign-key", value_name = "PATH")]
    sign_keys: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct RequireArgs {
    /// Refuse what no trusted key signed (exit 6, nothing installed) [env: CROWECODE_REQUIRE_SIGNATURE=1]
    #[arg(long)]
    require_signature: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and save the bucket configuration; print the CROWECODE_CLOUD_CONFIG_B64 export
    #[command(
        after_help = "Writes the config file (mode 0600) and prints `export CROWECODE_CLOUD_CONFIG_B64='...'` on stdout,\nso `eval \"$(crowecode-cloud setup ...)\"` works. Credentials never go into the config."
    )]
    Setup {
        /// Create the bucket if it does not exist
        #[arg(long)]
        create_bucket: bool,
        /// Do not write the config file; only print the export line
        #[arg(long)]
        no_write: bool,
        /// Trust signatures by this public key (a PATH.pub or PEM; repeatable); stored in the
        /// config as PEM, so the export line carries it
        #[arg(long = "trusted-key", value_name = "PATH")]
        trusted_keys: Vec<String>,
        /// Refuse what no trusted key signed, on every machine that uses this config
        #[arg(long)]
        require_signature: bool,
    },
    /// Show configuration, credentials, bucket reachability and the local cache
    Status,
    /// List the models in the bucket
    List {
        /// List the local cache instead (no bucket access)
        #[arg(long)]
        local: bool,
    },
    /// Upload model directories to the bucket
    #[command(
        after_help = "Uploads <models-dir>/<MODEL> for each MODEL, or --from DIR for one model, as a new immutable\nversion, then moves `latest` (unless --no-latest) and each tag to it, and prints the pinned\nreference MODEL@sha256:... A tree identical to `latest` uploads nothing (--force uploads anyway)."
    )]
    Upload {
        /// Model names, each optionally with a tag to move to the new version: Alpha:prod
        #[arg(required = true, value_name = "MODEL[:TAG]")]
        models: Vec<String>,
        /// Also move TAG to the uploaded version (repeatable)
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Leave `latest` where it is: upload a candidate to test and promote with `tag`
        #[arg(long)]
        no_latest: bool,
        /// Folder holding one directory per model [default: ./models]
        #[arg(long, value_name = "DIR", env = "CROWECODE_MODELS_DIR", hide_env_values = true, conflicts_with = "from")]
        models_dir: Option<PathBuf>,
        /// The directory to upload, for a single MODEL
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// Archive compression: none (fastest, allows --only and resume), zstd or gzip
        #[arg(long, value_enum, default_value_t = Compression::None, hide_possible_values = true)]
        compression: Compression,
        /// Upload even if the bucket already holds this exact tree
        #[arg(long)]
        force: bool,
        /// An OMS signature of the tree made by its publisher (`model_signing sign`), checked
        /// against the tree before upload and stored with the version (a single MODEL)
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        #[command(flatten)]
        sign: SignArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Add a signature to a version in the bucket (a second signer, e.g. a security team)
    #[command(
        after_help = "Signs what the bucket's manifest of the version says (every file's sha256), in the OpenSSF\nModel Signing format, bound to this model and version. Check the model first: download and verify it."
    )]
    Sign {
        /// The version: Alpha@sha256:..., Alpha:TAG or Alpha
        #[arg(value_name = "REF")]
        reference: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Make an ECDSA P-256 key pair for signing: PATH (private, PKCS#8 PEM, mode 0600) and PATH.pub
    #[command(
        after_help = "The key type of the OpenSSF Model Signing `key` method, AWS KMS and GCP KMS.\nKeep PATH secret (a CI secret); give PATH.pub to every machine as a trusted key."
    )]
    Keygen {
        /// Where to write the private key (the public key goes to PATH.pub)
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Replace an existing key pair
        #[arg(long)]
        force: bool,
    },
    /// Print the pinned reference (MODEL@sha256:...) of each reference, one per line
    #[command(
        after_help = "References: Alpha (= Alpha:latest), Alpha:TAG, Alpha@sha256:HEX, Alpha@HEX (a unique prefix of 12+).\nA CI job resolves once and hands the pinned reference to the deploy: every pod then gets the same bytes."
    )]
    Resolve {
        /// References
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Point tags at the version a reference names (compare-and-swap: concurrent moves cannot clobber)
    Tag {
        /// The version: Alpha@sha256:..., Alpha:TAG or Alpha
        #[arg(value_name = "REF")]
        reference: String,
        /// Tags to move
        #[arg(required = true, value_name = "TAG")]
        tags: Vec<String>,
        /// Move only if the tag points where REF2 does now (as `git update-ref NEW OLD`)
        #[arg(long, value_name = "REF2")]
        if_current: Option<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Remove a tag (MODEL:TAG)
    Untag {
        /// MODEL:TAG
        #[arg(value_name = "MODEL:TAG")]
        reference: String,
    },
    /// Move a tag (default latest) back to the version it pointed at before its last move
    Rollback {
        /// MODEL or MODEL:TAG
        #[arg(value_name = "MODEL[:TAG]")]
        reference: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// A model's versions (newest first) with their tags, and a tag's moves (who, when)
    History {
        /// MODEL or MODEL:TAG
        #[arg(value_name = "MODEL[:TAG]")]
        reference: String,
    },
    /// Delete a version (MODEL@VERSION) from the bucket, or with --all --yes a whole model
    Delete {
        /// MODEL@VERSION, or MODEL with --all
        #[arg(value_name = "REF")]
        reference: String,
        /// Remove the tags pointing at the version first (never latest)
        #[arg(long)]
        force: bool,
        /// Every version, tag and archive of the model
        #[arg(long)]
        all: bool,
        /// Really delete the whole model (with --all)
        #[arg(long)]
        yes: bool,
    },
    /// Re-hash installed models against their manifests; exit 6 on any difference
    Verify {
        /// Model names
        #[arg(required = true, value_name = "MODEL")]
        models: Vec<String>,
        #[command(flatten)]
        require: RequireArgs,
    },
    /// Download models (any reference: Alpha, Alpha:prod, Alpha@sha256:...) into the cache, verified; print their paths
    #[command(
        after_help = "Prints each ready model's directory on stdout: MODEL=$(crowecode-cloud download Alpha)\nConcurrent downloads of one model on a machine wait for the first; a cached current model costs one manifest read."
    )]
    Download {
        /// Model names
        #[arg(required = true, value_name = "MODEL")]
        models: Vec<String>,
        /// Only files matching PATTERN (repeatable): `*.json` matches names at any depth,
        /// `tokenizer/*` paths; kept apart from the full model (uncompressed uploads only)
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
        /// Upload what the fallback command made, so the next machine gets it from the bucket
        #[arg(long, conflicts_with = "only")]
        publish: bool,
        /// Fetch and verify again even when the cached version is current, replacing it (after
        /// `verify` found it changed)
        #[arg(long, conflicts_with = "only")]
        force: bool,
        /// No request to the bucket: a version from the cache, a tag as this machine last resolved it
        #[arg(long, conflicts_with_all = ["only", "publish", "force"])]
        offline: bool,
        #[command(flatten)]
        require: RequireArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Free space: cached versions that are not current, or with --remote unreferenced archives
    #[command(
        after_help = "In the cache: keeps --keep versions per model (the current one first), removes selections of\nold versions, then with --max-size evicts least recently used models. A model being downloaded\nis left alone.\nWith --remote: lists versions no tag points at (keeping each tag's previous one, the --keep newest\nand any younger than --min-age) and the archives no kept version references; deletes them only\nwith --yes."
    )]
    Prune {
        /// Only these models [default: all]
        #[arg(value_name = "MODEL")]
        models: Vec<String>,
        /// Versions to keep per model (in the cache: the current one first; with --remote: the newest)
        #[arg(long, value_name = "N", default_value_t = 1)]
        keep: usize,
        /// Evict least recently used models until the cache is at most SIZE, e.g. 200G
        #[arg(long, value_name = "SIZE", value_parser = parse_size_or_zero, conflicts_with = "remote")]
        max_size: Option<u64>,
        /// Prune old archives in the bucket instead of the cache
        #[arg(long)]
        remote: bool,
        /// With --remote: never archives younger than this
        #[arg(long, value_name = "AGE", default_value = "1d", value_parser = humantime::parse_duration)]
        min_age: std::time::Duration,
        /// With --remote: really delete (otherwise only list)
        #[arg(long)]
        yes: bool,
        /// Show what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "crowecode-cloud completions bash > /etc/bash_completion.d/crowecode-cloud")]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): crowecode-cloud man > crowecode-cloud.1
    Man,
}

/// Parses a byte size: `123`, `64K`, `16M`, `16MiB`, `1.5G`, `2GB` (K/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (try 16MiB, 64M or 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    let bytes = value * mult as f64;
    if !(1.0..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Where `upload MODEL` looks for `<MODEL>/` without `--models-dir`: the project's own `models/`.
const DEFAULT_MODELS_DIR: &str = "models";

/// `path` made absolute against the working directory (printed paths are always absolute).
fn absolute(path: &std::path::Path) -> crate::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("cannot resolve", path, e))
}

/// [`parse_size`], also taking `0` (for `prune --max-size 0`: evict everything not in use).
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim().parse::<f64>().is_ok_and(|v| v == 0.0) { Ok(0) } else { parse_size(s) }
}

/// The process environment; an empty variable counts as unset, except an empty
/// `CROWECODE_CLOUD_CONFIG_B64`, which the configuration warns about (a Secret that lost its value).
fn env_reader() -> EnvReader {
    Arc::new(|k: &str| std::env::var(k).ok().filter(|v| !v.is_empty() || k == config::ENV_CONFIG_B64))
}

/// Keeps large transfer buffers out of glibc's heap arenas.
///
/// glibc raises its mmap threshold each time a large block is freed, after which 16 MiB part
/// buffers come from per-thread arenas and are never returned: peak RSS then grows with the
/// number of threads and the model's size. A fixed threshold keeps every buffer of 1 MiB and more
/// in its own mapping, unmapped when dropped, so RSS stays at the buffers actually alive.
fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called once, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Runs the CLI with the process's arguments and environment; returns the exit code.
pub fn main() -> std::process::ExitCode {
    bound_allocator();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    // Generated from the definitions above; no config, no runtime.
    match &cli.command {
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "crowecode-cloud", &mut text);
            return print_generated(&text, "the completion script");
        }
        Command::Keygen { out, force } => return keygen(out, *force, cli.global.json),
        Command::Man => {
            let mut text = Vec::new();
            // Rendering into memory cannot fail.
            let _ = clap_mangen::Man::new(Cli::command()).render(&mut text);
            return print_generated(&text, "the man page");
        }
        _ => {}
    }
    init_tracing(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::FAILURE as u8);
        }
    };
    let code = runtime.block_on(run(cli));
    // Do not wait for lingering blocking tasks (a stalled read) once the answer is known.
    runtime.shutdown_background();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// A command line clap refused: its message on stderr, and with `--json` anywhere before `--`
/// the usual error object on stdout too, so a script reading JSON gets JSON. Exit 2.
fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    let _ = e.print();
    let json = std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
    if json {
        let rendered = e.render().to_string();
        // The text before the usage block, on one line.
        let message: String = rendered
            .split("\nUsage:")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let message = if message.is_empty() { "invalid command line".to_string() } else { message };
        let object = serde_json::json!({
            "error": message,
            "hint": "run `crowecode-cloud --help` (or `crowecode-cloud COMMAND --help`) for the usage",
            "exit_code": exit::USAGE,
        });
        println!("{}", serde_json::to_string_pretty(&object).expect("serialises"));
    }
    std::process::ExitCode::from(exit::USAGE as u8)
}

/// `keygen`: needs no config and no runtime.
fn keygen(out: &std::path::Path, force: bool, json: bool) -> std::process::ExitCode {
    let printer = Printer::new(json, false, true, &|_| None);
    let out = match absolute(out) {
        Ok(p) => p,
        Err(e) => {
            printer.error(&e);
            return std::process::ExitCode::from(e.exit_code() as u8);
        }
    };
    match crate::signing::keygen(&out, force) {
        Ok(public) => {
            printer.keygen(&out, &crate::signing::pub_path(&out), &public);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            printer.error(&e);
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error.
fn print_generated(text: &[u8], what: &str) -> std::process::ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            std::process::ExitCode::from(exit::FAILURE as u8)
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "crowecode_cloud=warn",
        (_, 1) => "crowecode_cloud=debug",
        _ => "debug",
    };
    let filter = std::env::var("CROWECODE_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| default.to_string());
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_writer(|| crate::redact::Stderr)
        .with_ansi(colour)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(verbose > 1)
        .without_time()
        .try_init();
}

/// `--part-size` within what a transfer can use: at least 64 KiB (below that a transfer is all
/// request overhead: one request per byte would never end), and at most half of `--max-memory`
/// (which bounds the parts and ranges held at once). Uploads raise it to the store's minimum part.
fn check_transfer(t: &TransferOptions) -> crate::Result<()> {
    let Some(part) = t.part_size else { return Ok(()) };
    if part < 64 << 10 {
        return Err(Error::usage(
            format!("--part-size {part} bytes is below the minimum of 64 KiB"),
            "give --part-size 8M, say (or leave it out: the tool chooses)",
        ));
    }
    let budget = crate::transfer::tuning::memory_budget(t);
    if part > budget / 2 {
        return Err(Error::usage(
            format!(
                "--part-size {} MiB does not fit --max-memory {} MiB{}: a transfer holds at least two parts",
                part >> 20,
                budget >> 20,
                if t.max_memory.is_none() { " (the default)" } else { "" }
            ),
            format!("give --max-memory {}M or more, or a smaller --part-size", (2 * part).div_ceil(1 << 20)),
        ));
    }
    Ok(())
}

/// The command was stopped by a signal: exit code and signal name.
struct Interrupted(i32, &'static str);

async fn run(cli: Cli) -> i32 {
    let env = env_reader();
    let printer = Arc::new(Printer::new(cli.global.json, cli.global.quiet, cli.global.no_progress, &*env));
    let ctx = match build_context(&cli, env, printer.clone()) {
        Ok(ctx) => ctx,
        Err(e) => {
            printer.error(&e);
            return e.exit_code();
        }
    };
    // SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends a pod it stops) end the command
    // cleanly: dropping it removes its staging directory and queues its multipart upload, which
    // is aborted here before exiting.
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => (exit::SIGINT, "SIGINT"),
            () = sigterm => (exit::SIGTERM, "SIGTERM"),
        }
    };
    // The command's future is dropped when this select! ends, before any cleanup below.
    let outcome = tokio::select! {
        r = dispatch(&cli.command, &ctx, &printer) => Ok(r),
        (code, name) = interrupted => Err(Interrupted(code, name)),
    };
    let result = match outcome {
        Err(Interrupted(code, name)) => {
            let aborted = tokio::time::timeout(std::time::Duration::from_secs(10), crate::transfer::abort_abandoned())
                .await
                .unwrap_or(0);
            let cleanup = if aborted > 0 { format!("; aborted {aborted} unfinished upload(s)") } else { String::new() };
            printer.error(&Error::Interrupted { signal: name, code, cleanup });
            return code;
        }
        Ok(r) => r,
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            printer.error(&e);
            e.exit_code()
        }
    };
    if code == exit::OK && printer.stdout_failed() { exit::FAILURE } else { code }
}

fn build_context(cli: &Cli, env: EnvReader, printer: Arc<Printer>) -> crate::Result<Context> {
    let s = &cli.storage;
    let overrides = Overrides {
        provider: s.provider.clone(),
        bucket: s.bucket.clone(),
        prefix: s.prefix.clone(),
        region: s.region.clone(),
        endpoint: s.endpoint.clone(),
        account: s.account.clone(),
        project: s.project.clone(),
        sse: s.sse.clone(),
        kms_key_id: s.kms_key_id.clone(),
        kms_key: s.kms_key.clone(),
        encryption_scope: s.encryption_scope.clone(),
        fallback_command: s.fallback_command.clone(),
        mirror: s.mirror.clone(),
        data_proxy: s.data_proxy.clone(),
    };
    let config_file = config::file_location(cli.global.config.as_ref().map(|p| absolute(p)).transpose()?, &*env);
    let cache_root = match &cli.global.cache_dir {
        Some(dir) => absolute(dir)?,
        None => Cache::default_root(&*env)?,
    };
    let transfer = match &cli.command {
        Command::Upload { transfer, .. } | Command::Download { transfer, .. } => TransferOptions {
            part_size: transfer.part_size,
            concurrency: transfer.concurrency.map(usize::from),
            limit_rate: transfer.limit_rate,
            max_memory: transfer.max_memory,
        },
        _ => TransferOptions::default(),
    };
    check_transfer(&transfer)?;
    let mut retry = RetryPolicy::from_env(&*env)?;
    if matches!(cli.command, Command::Status) {
        retry = retry.for_health_check(&*env);
    }
    if let Some(v) = env("CROWECODE_PROGRESS_INTERVAL")
        && !v.trim().parse::<f64>().is_ok_and(|s| s.is_finite() && s > 0.0 && s <= 86_400.0)
    {
        return Err(Error::usage(
            format!("CROWECODE_PROGRESS_INTERVAL={v:?} is not a number of seconds between 0 and 86400"),
            "set it to a value like 5, or unset it for the default",
        ));
    }
    let (sign, require) = match &cli.command {
        Command::Upload { sign, .. }
        | Command::Sign { sign, .. }
        | Command::Tag { sign, .. }
        | Command::Rollback { sign, .. } => (Some(sign), false),
        Command::Download { require, .. } | Command::Verify { require, .. } => (None, require.require_signature),
        _ => (None, false),
    };
    let trust = crate::signing::TrustSources {
        require_flag: require,
        sign_keys: sign.map(|a| a.sign_keys.iter().map(|p| p.display().to_string()).collect()).unwrap_or_default(),
        ..Default::default()
    };
    Ok(Context { env, config_file, overrides, cache_root, transfer, retry, reporter: printer, trust })
}

async fn dispatch(command: &Command, ctx: &Context, printer: &Printer) -> crate::Result<i32> {
    match command {
        Command::Setup { create_bucket, no_write, trusted_keys, require_signature } => {
            let trusted_keys = trusted_keys
                .iter()
                .map(|k| {
                    if k.contains("-----BEGIN") {
                        Ok(k.clone())
                    } else {
                        absolute(std::path::Path::new(k)).map(|p| p.display().to_string())
                    }
                })
                .collect::<crate::Result<Vec<_>>>()?;
            let opts = commands::setup::SetupOptions {
                create_bucket: *create_bucket,
                write: !*no_write,
                trusted_keys,
                require_signature: *require_signature,
            };
            let out = commands::setup::run(ctx, &opts).await?;
            printer.setup(&out);
            Ok(exit::OK)
        }
        Command::Status => {
            let report = commands::status::run(ctx).await?;
            printer.status(&report);
            Ok(report.exit_code)
        }
        Command::List { local: true } => {
            let out = commands::list::local(ctx)?;
            printer.list_local(&out);
            Ok(exit::OK)
        }
        Command::List { local: false } => {
            let out = commands::list::remote(ctx).await?;
            printer.list_remote(&out);
            Ok(exit::OK)
        }
        Command::Upload { models, tags, no_latest, models_dir, from, compression, force, signature, .. } => {
            let source = match (from, models_dir) {
                (Some(dir), _) => commands::upload::Source::Dir(absolute(dir)?),
                (None, dir) => {
                    let dir = absolute(dir.as_deref().unwrap_or(std::path::Path::new(DEFAULT_MODELS_DIR)))?;
                    if dir == Cache::new(&ctx.cache_root).models_dir() {
                        return Err(Error::usage(
                            format!(
                                "{} is the cache's own directory of downloaded models, not a source to upload",
                                dir.display()
                            ),
                            "put the models to upload in another directory and pass --models-dir DIR (or --from DIR for one model)",
                        ));
                    }
                    commands::upload::Source::ModelsDir(dir)
                }
            };
            let tags = tags.iter().map(|t| crate::reference::TagName::new(t)).collect::<crate::Result<Vec<_>>>()?;
            if *no_latest && (tags.iter().any(|t| t.is_latest()) || models.iter().any(|m| m.ends_with(":latest"))) {
                return Err(Error::usage(
                    "--no-latest contradicts moving latest (--tag latest, or MODEL:latest)",
                    "drop --no-latest to make this upload latest, or drop the latest tag to keep latest where it is",
                ));
            }
            let signature = match signature {
                Some(_) if models.len() > 1 => {
                    return Err(Error::usage(
                        "--signature signs one model's tree, but several models were given",
                        "upload each signed model with its own command",
                    ));
                }
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    Error::usage(
                        format!("cannot read the signature {}: {e}", path.display()),
                        "give the signature file `model_signing sign` wrote (model.sig)",
                    )
                })?),
                None => None,
            };
            let opts =
                UploadOptions { compression: *compression, force: *force, tags, no_latest: *no_latest, signature };
            let batch = commands::upload::run(ctx, models, &source, &opts).await?;
            printer.uploads(&batch);
            Ok(batch.exit_code())
        }
        Command::Resolve { references } => {
            let batch = commands::versions::resolve(ctx, references).await?;
            printer.resolutions(&batch);
            Ok(batch.exit_code())
        }
        Command::Sign { reference, .. } => {
            let signed = commands::versions::sign(ctx, reference).await?;
            printer.signed(&signed);
            Ok(exit::OK)
        }
        Command::Tag { reference, tags, if_current, .. } => {
            let (model, moved) = commands::versions::tag(ctx, reference, tags, if_current.as_deref()).await?;
            printer.moves(&model, &moved);
            Ok(exit::OK)
        }
        Command::Untag { reference } => {
            let removed = commands::versions::untag(ctx, reference).await?;
            printer.untagged(reference, removed);
            Ok(if removed { exit::OK } else { exit::NOT_FOUND })
        }
        Command::Rollback { reference, .. } => {
            let (model, moved) = commands::versions::rollback(ctx, reference).await?;
            printer.moves(&model, &[moved]);
            Ok(exit::OK)
        }
        Command::History { reference } => {
            let history = commands::versions::history(ctx, reference).await?;
            printer.history(&history);
            Ok(exit::OK)
        }
        Command::Delete { reference, force, all, yes } => {
            let deleted = commands::versions::delete(ctx, reference, *force, *all, *yes).await?;
            printer.deleted(&deleted);
            Ok(exit::OK)
        }
        Command::Verify { models, .. } => {
            let batch = commands::verify::run(ctx, models).await?;
            printer.verify(&batch);
            let differs = batch.models.iter().any(|r| !r.ok);
            Ok(if differs { exit::INTEGRITY } else { batch.exit_code() })
        }
        Command::Download { models, only, publish, force, offline, .. } => {
            let opts = crate::manager::DownloadOptions { publish: *publish, force: *force, offline: *offline };
            let batch = commands::download::run(ctx, models, only, &opts).await?;
            printer.downloads(&batch);
            Ok(batch.exit_code())
        }
        Command::Prune { models, keep, max_size, remote, min_age, yes, dry_run } => {
            let opts = commands::prune::Options {
                models: models.clone(),
                keep: *keep,
                max_size: *max_size,
                remote: *remote,
                min_age: *min_age,
                yes: *yes,
                dry_run: *dry_run,
            };
            let report = commands::prune::run(ctx, &opts).await?;
            printer.prune(&report);
            Ok(exit::OK)
        }
        // Answered in `main` before any of this is set up.
        Command::Completions { .. } | Command::Man | Command::Keygen { .. } => Ok(exit::OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
