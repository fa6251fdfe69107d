//! The command-line front end. **Only this module knows clap and the terminal.** It parses,
//! resolves flags and environment into a [`Context`], runs one command, prints its outcome and
//! turns errors into exit codes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cache::Cache;
use crate::commands::{self, Context, EnvReader};
use crate::config::{self, Overrides};
use crate::error::{Error, exit};
use crate::manager::UploadOptions;
use crate::provider::RetryPolicy;
use crate::transfer::TransferOptions;

mod args;
mod printer;

pub use args::parse_size;
use args::{Cli, Command};

pub use printer::{Printer, fmt_bytes};

/// Where `upload MODEL` looks for `<MODEL>/` without `--models-dir`: the project's own `models/`.
const DEFAULT_MODELS_DIR: &str = "models";

/// `path` made absolute against the working directory (printed paths are always absolute).
fn absolute(path: &std::path::Path) -> crate::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("cannot resolve", path, e))
}

/// The process environment; an empty variable counts as unset, except an empty
/// `CROWECODE_CLOUD_CONFIG_B64`, which the configuration warns about (a Secret that lost its value).
fn env_reader() -> EnvReader {
    Arc::new(|k: &str| std::env::var(k).ok().filter(|v| !v.is_empty() || k == config::ENV_CONFIG_B64))
}

/// A bad value in a transfer variable, named as the user set it (exit 2).
fn env_error(var: &str, problem: &str) -> Error {
    Error::usage(format!("{var}: {problem}"), format!("fix or unset {var}; the flag of the same name overrides it"))
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
        Command::Keygen { out, force } => return keygen(out, *force, cli.global.json, cli.global.quiet),
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
fn keygen(out: &std::path::Path, force: bool, json: bool, quiet: bool) -> std::process::ExitCode {
    let printer = Printer::new(json, quiet, true, &|_| None);
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
    if let Command::Run { models, offline, command, .. } = &cli.command {
        // Signals are the child's once it runs; until then they interrupt as above.
        let code = match run_command(models, *offline, command, &ctx, &printer, interrupted).await {
            Ok(code) => code,
            Err(e) => {
                printer.error(&e);
                e.exit_code()
            }
        };
        return code;
    }
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

/// `run`: makes the references ready and holds them (interruptible like `download`), then runs
/// COMMAND, or without one waits for standard input to end; the holds end on return.
async fn run_command(
    models: &[String],
    offline: bool,
    command: &[std::ffi::OsString],
    ctx: &Context,
    printer: &Printer,
    interrupted: impl std::future::Future<Output = (i32, &'static str)>,
) -> crate::Result<i32> {
    let opts = crate::manager::DownloadOptions { offline, ..Default::default() };
    let ready = tokio::select! {
        r = commands::run::prepare(ctx, models, &opts) => r?,
        (code, name) = interrupted => {
            return Err(Error::Interrupted { signal: name, code, cleanup: String::new() });
        }
    };
    if !ready.batch.errors.is_empty() || command.is_empty() {
        // Without COMMAND, the paths on stdout (as `download`), held until stdin ends.
        printer.downloads(&ready.batch);
        if ready.batch.errors.is_empty() {
            commands::run::wait_for_stdin_end().await;
        }
        return Ok(ready.batch.exit_code());
    }
    printer.download_notes(&ready.batch);
    // No errors: every reference was valid and is ready, in the order given.
    let paths: Vec<_> = ready.batch.models.iter().map(|d| (d.model.clone(), d.path.clone())).collect();
    let (words, env) = commands::run::command_line(models, &paths, command)?;
    let code = commands::run::supervise(&words, &env).await?;
    drop(ready.holds);
    Ok(code)
}

fn build_context(cli: &Cli, env: EnvReader, printer: Arc<Printer>) -> crate::Result<Context> {
    let s = &cli.storage;
    // A flag wins over its environment variable; errors name whichever was used.
    let mut from_env = std::collections::BTreeMap::new();
    let mut flag_or_env = |key: &'static str, flag: &Option<String>, var: &'static str| {
        flag.clone().or_else(|| {
            env(var).inspect(|_| {
                from_env.insert(key, var);
            })
        })
    };
    let mirror = flag_or_env("mirror", &s.mirror, "CROWECODE_MIRROR");
    let data_proxy = flag_or_env("data_proxy", &s.data_proxy, "CROWECODE_DATA_PROXY");
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
        mirror,
        data_proxy,
        from_env,
    };
    let config_file = config::file_location(cli.global.config.as_ref().map(|p| absolute(p)).transpose()?, &*env);
    let cache_root = match &cli.global.cache_dir {
        Some(dir) => absolute(dir)?,
        None => Cache::default_root(&*env)?,
    };
    let transfer = match &cli.command {
        Command::Upload { transfer, .. }
        | Command::Download { transfer, .. }
        | Command::Run { transfer, .. }
        | Command::Copy { transfer, .. } => {
            let size = |flag: Option<u64>, var: &str| match flag {
                Some(v) => Ok(Some(v)),
                None => env(var).map(|v| parse_size(&v).map_err(|e| env_error(var, &e))).transpose(),
            };
            let concurrency = match transfer.concurrency {
                Some(n) => Some(usize::from(n)),
                None => env("CROWECODE_CONCURRENCY")
                    .map(|v| match v.trim().parse::<usize>() {
                        Ok(n) if (1..=256).contains(&n) => Ok(n),
                        _ => Err(env_error("CROWECODE_CONCURRENCY", &format!("{v:?} is not a number from 1 to 256"))),
                    })
                    .transpose()?,
            };
            TransferOptions {
                part_size: size(transfer.part_size, "CROWECODE_PART_SIZE")?,
                concurrency,
                limit_rate: size(transfer.limit_rate, "CROWECODE_LIMIT_RATE")?,
                max_memory: size(transfer.max_memory, "CROWECODE_MAX_MEMORY")?,
            }
        }
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
        | Command::Copy { sign, .. }
        | Command::Sign { sign, .. }
        | Command::Tag { sign, .. }
        | Command::Rollback { sign, .. } => (Some(sign), false),
        Command::Download { require, .. } | Command::Verify { require, .. } | Command::Run { require, .. } => {
            (None, require.require_signature)
        }
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
        Command::Upload {
            models, tags, no_latest, models_dir, from, compression, force, signature, format, ..
        } => {
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
            let format = format.unwrap_or(if *compression == crate::archive::Compression::None {
                crate::ops::upload::DEFAULT_FORMAT
            } else {
                1
            });
            if format >= 2 && *compression != crate::archive::Compression::None {
                return Err(Error::usage(
                    format!("--compression {} applies to format 1 archives only", compression.as_str()),
                    format!(
                        "drop --compression with --format {format} (chunks are stored as they are: weights barely compress)"
                    ),
                ));
            }
            let opts = UploadOptions {
                compression: *compression,
                force: *force,
                tags,
                no_latest: *no_latest,
                signature,
                format,
            };
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
        // Handled in `run` before this.
        Command::Run { .. } => Ok(exit::OK),
        Command::Copy {
            models,
            to,
            to_endpoint,
            to_region,
            to_prefix,
            to_profile,
            all_versions,
            tags,
            dry_run,
            ..
        } => {
            let dest = commands::copy::Destination {
                to: to.clone(),
                endpoint: to_endpoint.clone(),
                region: to_region.clone(),
                prefix: to_prefix.clone(),
                profile: to_profile.clone(),
            };
            let opts = crate::manager::CopyOptions { all_versions: *all_versions, tags: *tags, dry_run: *dry_run };
            let report = commands::copy::run(ctx, models, &dest, &opts).await?;
            printer.copy(&report);
            Ok(report.exit_code())
        }
        Command::Prune { models, keep, max_size, remote, min_age, yes, dry_run, repack } => {
            let opts = commands::prune::Options {
                models: models.clone(),
                keep: *keep,
                max_size: *max_size,
                remote: *remote,
                repack: *repack,
                min_age: *min_age,
                yes: *yes,
                dry_run: *dry_run,
            };
            let report = commands::prune::run(ctx, &opts).await?;
            printer.prune(&report);
            // --max-size not met because versions are in use: a conflict with the processes
            // using them, which the report names; it can be met once they end.
            Ok(if report.over_max_size.is_some() { exit::CONFLICT } else { exit::OK })
        }
        // Answered in `main` before any of this is set up.
        Command::Completions { .. } | Command::Man | Command::Keygen { .. } => Ok(exit::OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The words of one shell command, quotes removed; a `$VAR` or `$(...)` word becomes `Alpha`
    /// (every documented variable stands for a model or a reference).
    fn shell_words(text: &str) -> Vec<String> {
        let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
        for c in text.chars() {
            match (quote, c) {
                (None, '\'' | '"') => (quote, any) = (Some(c), true),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if any {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                (_, c) => (word, any) = (word + &c.to_string(), true),
            }
        }
        if any {
            words.push(word);
        }
        words.into_iter().map(|w| if w.starts_with('$') { "Alpha".into() } else { w }).collect()
    }

    /// Every `crowecode-cloud ...` command in the README's shell blocks is one the CLI accepts as
    /// written: its command, flags and values exist (it is parsed, not run).
    #[test]
    fn every_command_in_the_readme_parses() {
        let readme = include_str!("../../README.md");
        let (mut shell, mut in_block, mut checked) = (false, false, 0);
        for line in readme.lines() {
            if let Some(lang) = line.trim_start().strip_prefix("```") {
                in_block = !in_block;
                shell = in_block && matches!(lang.trim(), "" | "sh" | "bash" | "console");
                continue;
            }
            if !shell {
                continue;
            }
            let code = line.split(" #").next().unwrap_or("");
            for (at, _) in code.match_indices("crowecode-cloud ") {
                let before = code[..at].chars().last();
                if before.is_some_and(|c| !matches!(c, ' ' | '(' | '"' | '=')) {
                    continue;
                }
                let rest = &code[at + "crowecode-cloud ".len()..];
                let end = rest.find([')', '|', '&', ';', '>', '<']).unwrap_or(rest.len());
                let args = shell_words(&rest[..end]);
                let parsed = Cli::try_parse_from(std::iter::once("crowecode-cloud".to_string()).chain(args.clone()));
                match parsed {
                    Ok(_) => {}
                    Err(e) if !e.use_stderr() => {} // --help, --version
                    Err(e) => panic!("README: `crowecode-cloud {}` does not parse: {e}", args.join(" ")),
                }
                checked += 1;
            }
        }
        assert!(checked >= 28, "only {checked} README commands found: did the blocks change?");
    }

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
