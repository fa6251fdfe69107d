//! `run REF... -- COMMAND ARGS...`: make each reference ready (as `download`), then run COMMAND
//! with the version directories held in use for as long as it runs, so that no `prune` removes
//! them under it.
//!
//! - The hold is a shared `flock` per version ([`crate::cache::Hold`]): the kernel ends it when
//!   this process ends, however it ends, a SIGKILL included. So that COMMAND never goes on
//!   unprotected, it is started with a parent-death signal (SIGTERM) that the kernel sends it if
//!   this process dies first.
//! - SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are passed on to COMMAND
//!   (those a terminal sends its whole foreground group, COMMAND included, are not sent twice);
//!   COMMAND's exit code is returned, 128 + N when signal N ended it.
//! - It reaps every process that ends up as its child: as a container's PID 1, and elsewhere as a
//!   child subreaper (what COMMAND's processes leave behind is adopted by `run`), as `tini -s` does.
//! - Without COMMAND it prints the paths (as `download`) and holds them until its standard input
//!   reaches its end: Python's `CloudManager.use` is built on that.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::PathBuf;

use super::{Batch, Context, ModelError};
use crate::cache::{Cache, Hold};
use crate::error::{Error, Result};
use crate::manager::{DownloadOptions, Downloaded};
use crate::names::ModelName;

/// How many times a version removed between its download and its hold is made ready again.
const ATTEMPTS: usize = 3;

/// The references made ready and held.
pub struct Ready {
    pub batch: Batch<Downloaded>,
    /// One per model in `batch.models`; dropping them ends the holds.
    pub holds: Vec<Hold>,
}

/// Makes each reference ready and holds its version in use. A failure of one is recorded in the
/// batch; the caller runs nothing unless all succeeded.
pub async fn prepare(ctx: &Context, references: &[String], opts: &DownloadOptions) -> Result<Ready> {
    let (valid, mut batch) = Batch::valid_references(references);
    let mut holds = Vec::new();
    if valid.is_empty() {
        return Ok(Ready { batch, holds });
    }
    let manager = ctx.manager().await?;
    let cache = Cache::new(&ctx.cache_root);
    'refs: for r in &valid {
        for _ in 0..ATTEMPTS {
            let d = match manager.download(r, opts).await {
                Ok(d) => d,
                Err(e) => {
                    batch.errors.push(ModelError::new(r, &manager.explain(e).await));
                    continue 'refs;
                }
            };
            let (c, model, path) = (cache.clone(), d.model.clone(), d.path.clone());
            let hold = tokio::task::spawn_blocking(move || c.hold(&model, &path))
                .await
                .map_err(|e| Error::other(format!("hold task failed: {e}"), None))??;
            if let Some(hold) = hold {
                holds.push(hold);
                batch.models.push(d);
                continue 'refs;
            }
            // A prune removed it between the download and the hold: make it ready again.
            tracing::info!(reference = %r, "removed before it could be held; making it ready again");
        }
        let e = Error::Conflict {
            message: format!("{r}: a prune removed the version each time before it could be held ({ATTEMPTS} tries)"),
            hint: Some("stop the prune that runs in a loop on this cache, or run this again".into()),
        };
        batch.errors.push(ModelError::new(r, &e));
    }
    Ok(Ready { batch, holds })
}

/// A variable set for the command: name and value.
pub type EnvVar = (String, OsString);

/// COMMAND's words with `{}` (the path, when one reference was given), `{REF}` (the reference
/// as given: `{Alpha:prod}`) and `{MODEL}` (`{Alpha}`, when one version of it was given)
/// replaced, and the variables to set: `CROWECODE_MODEL_PATH` (the first reference's path) and
/// `CROWECODE_MODEL_PATH_<MODEL>` (upper case, other than letters and digits as `_`).
pub fn command_line(
    references: &[String],
    ready: &[(ModelName, PathBuf)],
    command: &[OsString],
) -> Result<(Vec<OsString>, Vec<EnvVar>)> {
    let mut names: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for (r, (_, path)) in references.iter().zip(ready) {
        names.insert(r.clone(), Some(path.clone()));
    }
    for (model, path) in ready {
        let model = model.to_string();
        if references.contains(&model) {
            continue;
        }
        // Two versions of one model: `{Alpha}` would be ambiguous.
        let entry = names.entry(model).or_insert_with(|| Some(path.clone()));
        if entry.as_ref() != Some(path) {
            *entry = None;
        }
    }
    if ready.len() == 1 {
        names.insert(String::new(), Some(ready[0].1.clone()));
    }
    let mut words = Vec::with_capacity(command.len());
    for word in command {
        words.push(substitute(word, &names)?);
    }
    let mut env = Vec::new();
    if let Some((_, first)) = ready.first() {
        env.push(("CROWECODE_MODEL_PATH".to_string(), first.clone().into_os_string()));
    }
    for (model, path) in ready {
        let key: String = model
            .as_str()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        let key = format!("CROWECODE_MODEL_PATH_{key}");
        if !env.iter().any(|(k, _)| k == &key) {
            env.push((key, path.clone().into_os_string()));
        }
    }
    Ok((words, env))
}

/// `word` with each `{NAME}` that names a reference replaced by its path; other braces stay.
fn substitute(word: &OsStr, names: &BTreeMap<String, Option<PathBuf>>) -> Result<OsString> {
    let bytes = word.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{'
            && let Some(len) = bytes[i + 1..].iter().position(|&b| b == b'}')
            && let Ok(name) = std::str::from_utf8(&bytes[i + 1..i + 1 + len])
            && let Some(path) = names.get(name)
        {
            let Some(path) = path else {
                return Err(Error::usage(
                    format!("{{{name}}} is ambiguous: more than one version of {name} was given"),
                    "name the reference as given, e.g. {Alpha:prod}",
                ));
            };
            out.extend_from_slice(path.as_os_str().as_bytes());
            i += len + 2;
            continue;
        }
        if bytes[i..].starts_with(b"{}") {
            return Err(Error::usage(
                "{} stands for the path of the one reference given, but several were given",
                "name each one: {Alpha}, {Beta:prod}",
            ));
        }
        out.push(bytes[i]);
        i += 1;
    }
    Ok(OsString::from_vec(out))
}

/// Waits until standard input reaches its end (or fails), in a blocking thread.
pub async fn wait_for_stdin_end() {
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    })
    .await;
}

/// Signals passed on to the child.
const FORWARDED: [libc::c_int; 7] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

/// Runs `program` with `args` and `env` added, forwarding signals and reaping children, and
/// returns its exit code (128 + N for signal N). Must be called from a thread that outlives the
/// child (the parent-death signal follows the thread that started it): the runtime's own.
pub async fn supervise(words: &[OsString], env: &[EnvVar]) -> Result<i32> {
    use std::os::unix::process::CommandExt as _;
    use tokio::signal::unix::{SignalKind, signal};
    let (program, args) = words.split_first().ok_or_else(|| Error::usage("no COMMAND after --", "give one"))?;
    // Registered before the child starts, so that none sent meanwhile is lost.
    let mut streams = Vec::new();
    for sig in FORWARDED {
        let stream = signal(SignalKind::from_raw(sig))
            .map_err(|e| Error::other(format!("cannot handle signal {sig}: {e}"), None))?;
        streams.push((sig, stream));
    }
    // A terminal sends SIGINT, SIGQUIT and SIGWINCH to its whole foreground group, the child
    // included: passing them on too would deliver them twice.
    // SAFETY: plain queries of this process's state.
    let terminal_group = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
    // What the command leaves behind (a daemon's first fork, a shell's background job) becomes
    // this process's child when its parent ends, as it would become PID 1's: reaped below.
    // SAFETY: a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let parent = std::process::id() as libc::pid_t;
    let mut command = std::process::Command::new(program);
    command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the line above: nobody would send the signal.
            if libc::getppid() != parent {
                libc::_exit(143);
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        let shown = program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::CommandNotRunnable {
                message: format!("cannot run {shown}: no such command"),
                hint: "check the name and PATH after --".into(),
                code: 127,
            },
            _ => Error::CommandNotRunnable {
                message: format!("cannot run {shown}: {e}"),
                hint: "check that it is an executable file".into(),
                code: 126,
            },
        }
    })?;
    let pid = child.id() as libc::pid_t;
    // Reaps every child (as PID 1, orphans are ours too) until COMMAND itself ends.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<i32>();
    std::thread::spawn(move || {
        let mut done = Some(done_tx);
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid pointer.
            let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
            if reaped < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break;
            }
            if reaped == pid
                && let Some(tx) = done.take()
            {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    1
                };
                let _ = tx.send(code);
            }
        }
    });
    drop(child);
    loop {
        let forwarded = futures::future::select_all(
            streams.iter_mut().map(|(sig, s)| Box::pin(async move { s.recv().await.map(|_| *sig) })),
        );
        tokio::select! {
            code = &mut done_rx => return Ok(code.unwrap_or(1)),
            (sig, _, _) = forwarded => {
                let Some(sig) = sig else { continue };
                let from_terminal = terminal_group && matches!(sig, libc::SIGINT | libc::SIGQUIT | libc::SIGWINCH);
                if !from_terminal {
                    // SAFETY: sending a signal to our own child.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(model: &str, path: &str) -> (ModelName, PathBuf) {
        (ModelName::new(model).unwrap(), PathBuf::from(path))
    }

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn one_reference_fills_braces_and_names() {
        let refs = vec!["Alpha:prod".to_string()];
        let (words, env) = command_line(
            &refs,
            &[ready("Alpha", "/c/A")],
            &os(&["serve", "--model={}", "{Alpha}", "{Alpha:prod}", "{x}"]),
        )
        .unwrap();
        assert_eq!(words, os(&["serve", "--model=/c/A", "/c/A", "/c/A", "{x}"]));
        assert_eq!(env[0], ("CROWECODE_MODEL_PATH".to_string(), OsString::from("/c/A")));
        assert_eq!(env[1], ("CROWECODE_MODEL_PATH_ALPHA".to_string(), OsString::from("/c/A")));
    }

    #[test]
    fn several_references_need_names() {
        let refs = vec!["Alpha".to_string(), "beta-2".to_string()];
        let got = [ready("Alpha", "/c/A"), ready("beta-2", "/c/B")];
        let (words, env) = command_line(&refs, &got, &os(&["x", "{Alpha}:{beta-2}"])).unwrap();
        assert_eq!(words, os(&["x", "/c/A:/c/B"]));
        assert!(env.contains(&("CROWECODE_MODEL_PATH_BETA_2".to_string(), OsString::from("/c/B"))));
        let err = command_line(&refs, &got, &os(&["x", "{}"])).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }

    #[test]
    fn two_versions_of_a_model_are_named_by_reference() {
        let refs = vec!["Alpha:prod".to_string(), "Alpha:canary".to_string()];
        let got = [ready("Alpha", "/c/P"), ready("Alpha", "/c/C")];
        let (words, _) = command_line(&refs, &got, &os(&["{Alpha:prod}", "{Alpha:canary}"])).unwrap();
        assert_eq!(words, os(&["/c/P", "/c/C"]));
        assert!(command_line(&refs, &got, &os(&["{Alpha}"])).is_err());
    }
}
