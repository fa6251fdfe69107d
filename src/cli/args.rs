//! The command line's grammar: every command, flag and help text, as clap reads them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::archive::Compression;

pub(super) const EXAMPLES: &str = "\
Examples:
  crowecode-cloud setup --provider s3 --bucket my-models --region us-west-2
  eval \"$(crowecode-cloud setup --provider gcs --bucket my-models)\"
  crowecode-cloud upload Alpha Beta --models-dir ./models
  MODEL=$(crowecode-cloud download Alpha) && exec server --model \"$MODEL\"
  crowecode-cloud run Alpha:prod -- server --model {}
  crowecode-cloud copy Alpha:prod --to s3://models-eu/crowecode-models/
  crowecode-cloud list --json

Exit codes: 0 ok, 1 other failure, 2 usage, 3 not configured, 4 credentials or permission,
5 model not found, 6 integrity or signature failure, 7 network still failing after retries,
8 conflict (a tag moved meanwhile, a version pruned under a move, prune --max-size not met
because versions are in use), 126/127 run: COMMAND not executable/not found, 130 interrupted
(SIGINT), 143 terminated (SIGTERM). `run` exits with COMMAND's code.";

/// Keep ML model directories in one S3, GCS or Azure bucket; download them once per machine,
/// fast and verified.
#[derive(Debug, Parser)]
#[command(name = "crowecode-cloud", version = version_text(), after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub(super) global: GlobalArgs,
    #[command(flatten)]
    pub(super) storage: StorageArgs,
    #[command(subcommand)]
    pub(super) command: Command,
}

fn version_text() -> &'static str {
    let built = [("s3", cfg!(feature = "s3")), ("gcs", cfg!(feature = "gcs")), ("azure", cfg!(feature = "azure"))];
    let mut providers: Vec<&str> = built.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    providers.push("local");
    // Leaked once: clap wants a 'static str and this runs once per process.
    Box::leak(format!("{} (providers: {})", env!("CARGO_PKG_VERSION"), providers.join(", ")).into_boxed_str())
}

#[derive(Debug, Args)]
pub(super) struct GlobalArgs {
    /// Config file [default: $XDG_CONFIG_HOME/crowecode/cloud.json]
    #[arg(long, global = true, env = "CROWECODE_CONFIG", value_name = "PATH", hide_env_values = true)]
    pub(super) config: Option<PathBuf>,
    /// Cache directory [default: $XDG_CACHE_HOME/crowecode]
    #[arg(long, global = true, env = "CROWECODE_HOME", value_name = "DIR", hide_env_values = true)]
    pub(super) cache_dir: Option<PathBuf>,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub(super) quiet: bool,
    /// More detail on stderr (-vv for the storage SDKs too)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Print one JSON object on stdout
    #[arg(long, global = true)]
    pub(super) json: bool,
    /// No progress bars or progress lines
    #[arg(long, global = true)]
    pub(super) no_progress: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Storage (overrides the config)")]
pub(super) struct StorageArgs {
    /// Storage provider
    #[arg(long, global = true, value_name = "NAME", value_parser = ["s3", "gcs", "azure", "local"])]
    pub(super) provider: Option<String>,
    /// Bucket (S3, GCS), container (Azure) or directory (local)
    #[arg(long, global = true, value_name = "NAME")]
    pub(super) bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. crowecode-models/
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(super) prefix: Option<String>,
    /// AWS region
    #[arg(long, global = true, value_name = "REGION")]
    pub(super) region: Option<String>,
    /// Endpoint URL (S3-compatible stores, emulators)
    #[arg(long, global = true, value_name = "URL")]
    pub(super) endpoint: Option<String>,
    /// Azure storage account
    #[arg(long, global = true, value_name = "NAME")]
    pub(super) account: Option<String>,
    /// GCP project (bucket creation)
    #[arg(long, global = true, value_name = "ID")]
    pub(super) project: Option<String>,
    /// S3 server-side encryption
    #[arg(long, global = true, value_name = "MODE", value_parser = ["AES256", "aws:kms"])]
    pub(super) sse: Option<String>,
    /// S3 KMS key id (with --sse aws:kms)
    #[arg(long, global = true, value_name = "ID")]
    pub(super) kms_key_id: Option<String>,
    /// GCS customer-managed encryption key
    #[arg(long, global = true, value_name = "NAME")]
    pub(super) kms_key: Option<String>,
    /// Azure encryption scope
    #[arg(long, global = true, value_name = "NAME")]
    pub(super) encryption_scope: Option<String>,
    /// Command that provides a model missing from the bucket; {model} and {dest} are filled in
    #[arg(long, global = true, value_name = "CMD")]
    pub(super) fallback_command: Option<String>,
    /// Read archives through this mirror (an HTTP cache or CDN in front of the bucket), verified
    /// [env: CROWECODE_MIRROR]
    #[arg(long, global = true, value_name = "URL")]
    pub(super) mirror: Option<String>,
    /// Send archive reads as plain http:// to this forward proxy (Dragonfly dfdaemon), verified
    /// [env: CROWECODE_DATA_PROXY]
    #[arg(long, global = true, value_name = "URL")]
    pub(super) data_proxy: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct TransferArgs {
    /// Requests in flight [default: downloads start at 16 and grow while throughput grows, uploads 24, within --max-memory] [env: CROWECODE_CONCURRENCY]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(super) concurrency: Option<u16>,
    /// Part size, e.g. 16MiB, 64M [default: downloads 8MiB, uploads 6MiB, grown for huge models] [env: CROWECODE_PART_SIZE]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(super) part_size: Option<u64>,
    /// Memory for the data in flight, e.g. 512M [default: 160MiB; downloads hold at most 3/4 of it ahead of the writer] [env: CROWECODE_MAX_MEMORY]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(super) max_memory: Option<u64>,
    /// Average transfer rate limit in bytes per second, e.g. 50M (= 50 MiB/s) [env: CROWECODE_LIMIT_RATE]
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub(super) limit_rate: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// Sign with this private key (PEM, ECDSA P-256; repeatable: during a rotation sign with old
    /// and new) [env: CROWECODE_SIGNING_KEY, a path or several separated by `:`]
    #[arg(long = "sign-key", value_name = "PATH")]
    pub(super) sign_keys: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct RequireArgs {
    /// Refuse what no trusted key signed (exit 6, nothing installed) [env: CROWECODE_REQUIRE_SIGNATURE=1]
    #[arg(long)]
    pub(super) require_signature: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
        /// Bucket format of the new version: 3 (the default: content-defined chunks in packs
        /// shared by every model, so a version costs what changed), 2 (the same with sha256 chunk
        /// digests, for machines of earlier builds) or 1 (one archive)
        #[arg(long, value_name = "N", env = "CROWECODE_UPLOAD_FORMAT", value_parser = clap::value_parser!(u32).range(1..=3))]
        format: Option<u32>,
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
        /// Models (their current version), or references: Alpha:prod (as last resolved here),
        /// Alpha@<version>
        #[arg(required = true, value_name = "REF")]
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
    /// Copy versions, with their pieces, signatures and tags, to another bucket or a directory
    #[command(after_help = "\
DEST: s3://bucket/prefix/, gs://bucket/prefix/, az://account/container/prefix/, file:///dir (a
local-provider bucket: a disk to carry to an air-gapped site), a config file, or a
CROWECODE_CLOUD_CONFIG_B64 value. A URL without a path after the bucket (and a file:// URL) gets
setup's default prefix, crowecode-models/ (--to-prefix sets another).
At DEST, pieces are written first, then the version, its signatures, then tags by compare-and-swap:
a reader there sees the old state or the new. Only what DEST lacks is sent; run again after a
failure, it finishes. Between buckets of one S3 endpoint, objects are copied inside the service.

Examples:
  crowecode-cloud copy Alpha:prod --to s3://models-eu/crowecode-models/ --to-region eu-west-1
  crowecode-cloud copy Alpha --all-versions --tags --to file:///mnt/disk")]
    Copy {
        /// References: Alpha (latest, moved at DEST too), Alpha:prod (the tag moves too), Alpha@<version>
        #[arg(required = true, value_name = "REF")]
        models: Vec<String>,
        /// Where to: a URL, a config file or a config string (see below)
        #[arg(long, value_name = "DEST")]
        to: String,
        /// DEST's endpoint (S3-compatible stores, emulators)
        #[arg(long, value_name = "URL")]
        to_endpoint: Option<String>,
        /// DEST's region (S3)
        #[arg(long, value_name = "REGION")]
        to_region: Option<String>,
        /// DEST's prefix, overriding the URL's ("" for none)
        #[arg(long, value_name = "PREFIX")]
        to_prefix: Option<String>,
        /// S3 DEST: the AWS profile (~/.aws/config, ~/.aws/credentials) whose credentials write
        /// it, when they are not the source's
        #[arg(long, value_name = "NAME")]
        to_profile: Option<String>,
        /// Every version of each model, not only the one REF names
        #[arg(long)]
        all_versions: bool,
        /// Every tag pointing at a version copied
        #[arg(long)]
        tags: bool,
        /// Say what would be sent, and how many bytes; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Sign the tags moved at DEST (a signed tag claim is bound to where it was signed)
        #[command(flatten)]
        sign: SignArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Run a command on models made ready (as download), holding them in use while it runs
    #[command(after_help = "\
{} in COMMAND's arguments is the model's directory (one REF), {Alpha} or {Alpha:prod} name one of
several; CROWECODE_MODEL_PATH (the first REF) and CROWECODE_MODEL_PATH_<MODEL> are set.
While COMMAND runs, no prune removes these versions; the hold ends with this process, however it
ends (COMMAND gets SIGTERM if this process is killed). SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
SIGUSR2 and SIGWINCH are passed on; the exit code is COMMAND's (128+N if signal N ended it), or
this tool's own when a model could not be made ready (127/126: COMMAND cannot be started).
As a container's PID 1 it reaps orphaned processes.
Without COMMAND: prints the paths, holds them until standard input ends.

Examples:
  crowecode-cloud run Alpha:prod -- vllm serve {}
  crowecode-cloud run Alpha Beta -- python serve.py --model {Alpha} --draft {Beta}")]
    Run {
        /// Model references (Alpha, Alpha:prod, Alpha@<version>)
        #[arg(required = true, value_name = "REF")]
        models: Vec<String>,
        /// No request to the bucket: a version from the cache, a tag as this machine last resolved it
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        require: RequireArgs,
        #[command(flatten)]
        transfer: TransferArgs,
        /// The command to run, after --
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
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
        /// With --remote: also copy the live chunks of packs at least half dead into new packs
        /// (the old ones go in the next prune --remote --yes)
        #[arg(long, requires = "remote")]
        repack: bool,
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

/// [`parse_size`], also taking `0` (for `prune --max-size 0`: evict everything not in use).
pub(super) fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim().parse::<f64>().is_ok_and(|v| v == 0.0) { Ok(0) } else { parse_size(s) }
}
