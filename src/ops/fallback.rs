//! The fallback command: when the bucket has no such model, a configured command makes it in a
//! staging directory (`{dest}`); the result is checked (no links out of it), hashed like an upload,
//! installed like a download, and with `--publish` uploaded so the next machine finds it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::downloaded::{DownloadStatus, Downloaded};
use super::upload::{self, CONFLICT, UploadOptions};
use super::versions::Found;
use super::{Session, blocking};
use crate::archive::{self, Compression};
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::transfer;

/// What the fallback came to.
pub(crate) enum Fallback {
    /// The command made the model (and with `--publish` uploaded it).
    Made(Downloaded),
    /// Another machine published the model while this one waited for its lock: download that.
    InBucket(Found),
}

/// Makes `model` with the fallback `command` (the bucket has no manifest for it).
pub(crate) async fn run(
    s: &Session,
    model: &ModelName,
    command: &str,
    publish: bool,
    started: Instant,
) -> Result<Fallback> {
    let lock = s.lock(model).await?;
    // Someone may have published it while this process waited for the lock.
    if let Some(found) = super::versions::resolve(s, &crate::reference::Reference::parse(model.as_str())?).await? {
        drop(lock);
        return Ok(Fallback::InBucket(found));
    }
    // Made here by an earlier fallback (and never published): that is the model.
    if !publish
        && let Some(path) = s.cache.current(model)?
        && let Some(m) = s.cache.read_manifest_copy(&path, model)
        && m.archive_key == FALLBACK_KEY
    {
        s.cache.touch(&path);
        return Ok(Fallback::Made(Downloaded::whole(path, DownloadStatus::Cached, &m, 0, started)));
    }
    // What a killed fallback of this model left behind is never resumed: remove it.
    s.cache.clean_leftovers(&lock)?;
    let staging = s.cache.begin_empty(lock)?;
    s.info(model, format!("not in {}; running the fallback command", s.config.location()));
    run_command(command, model, staging.dir()).await?;
    let dir = staging.dir().to_path_buf();
    blocking(move || resolve_links_inside(&dir)).await?;
    let has_files = walkdir::WalkDir::new(staging.dir()).into_iter().flatten().any(|e| !e.file_type().is_dir());
    if !has_files {
        return Err(Error::other(
            format!("the fallback command for {model} exited 0 but left no files in its {{dest}} directory"),
            Some("the command must write the model's files into the directory given as {dest}".into()),
        ));
    }
    let dir = staging.dir().to_path_buf();
    let up = blocking(move || {
        let plan = archive::scan_tree(&dir)?;
        transfer::hash_archive(plan).map_err(|e| Error::io("cannot read", &dir, e))
    })
    .await?;
    let manifest = upload::build_manifest(model, FALLBACK_KEY, Compression::None, &up);
    let mut status = DownloadStatus::Fallback;
    if publish {
        // The staging tree is what gets uploaded; it is moved into the cache afterwards.
        let opts = UploadOptions { compression: Compression::None, ..Default::default() };
        match upload::run(s, model.as_str(), staging.dir(), &opts).await {
            Ok(_) => status = DownloadStatus::Published,
            // Another machine published a different tree first: theirs is the bucket's
            // version now; this machine still has a complete model of its own.
            Err(Error::Conflict { message, .. }) if message.contains(CONFLICT) => s.info(
                model,
                "another machine published a different tree of this model first; this machine installs its own copy, the next download takes the bucket's".into(),
            ),
            Err(e) => return Err(e),
        }
    }
    // Made here, never in the bucket: no version id, so the archive digest names it.
    let digest = manifest.content_digest();
    let path = staging.commit(&manifest, digest.short(), true)?;
    Ok(Fallback::Made(Downloaded::whole(path, status, &manifest, 0, started)))
}

/// Makes the tree a fallback command left at `dir` safe to install and upload: a symbolic link
/// to a file inside `dir` is replaced by a copy of that file; any other link (out of `dir`, to a
/// directory, dangling) is refused, so nothing from elsewhere on the machine is installed or
/// published, and the installed version holds no link. Blocking.
fn resolve_links_inside(dir: &Path) -> Result<()> {
    let root = std::fs::canonicalize(dir).map_err(|e| Error::io("cannot resolve", dir, e))?;
    let links: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.path_is_symlink())
        .map(|e| e.path().to_path_buf())
        .collect();
    for link in links {
        let rel = link.strip_prefix(dir).unwrap_or(&link).display().to_string();
        let refuse = |why: String| {
            Error::other(
                format!("the fallback command left a symbolic link {rel} {why}; nothing was installed or uploaded"),
                Some("have the command copy files into {dest} (e.g. `cp -rL`, or `git clone` then remove links); links out of {dest} are never followed".into()),
            )
        };
        let target = match std::fs::canonicalize(&link) {
            Ok(t) => t,
            Err(_) => {
                return Err(refuse(format!(
                    "that points nowhere (-> {:?})",
                    std::fs::read_link(&link).unwrap_or_default()
                )));
            }
        };
        if !target.starts_with(&root) {
            return Err(refuse("that points outside {dest}".to_string()));
        }
        if !target.is_file() {
            return Err(refuse("to a directory".to_string()));
        }
        let tmp = link.with_file_name(format!(".{}.link-copy", link.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::copy(&target, &tmp).map_err(|e| Error::io("cannot copy", &target, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| Error::io("cannot replace", &link, e))?;
    }
    Ok(())
}

/// The archive key recorded for a version the fallback command made (it has no archive).
pub(crate) const FALLBACK_KEY: &str = "(fallback command)";

/// Runs a fallback command with `{model}` and `{dest}` filled in, its output on stderr (stdout
/// carries only model paths).
async fn run_command(template: &str, model: &ModelName, dest: &Path) -> Result<()> {
    use std::os::fd::AsFd as _;
    let quoted = format!("'{}'", dest.display().to_string().replace('\'', "'\\''"));
    let command = template.replace("{model}", model.as_str()).replace("{dest}", &quoted);
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Io { context: "cannot pass stderr to the fallback command".into(), source: e })?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stdout))
        .env("CROWECODE_MODEL", model.as_str())
        .env("CROWECODE_DEST", dest)
        // Its own process group, so everything it starts can be stopped with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Io { context: format!("cannot run the fallback command `{command}`"), source: e })?;
    // Kills the whole group when this future ends, however it ends (finished, failed, or dropped
    // by SIGINT/SIGTERM): nothing the command started may go on writing into the cache.
    let _group = child.id().map(ProcessGroup);
    let status = child
        .wait()
        .await
        .map_err(|e| Error::Io { context: format!("cannot wait for the fallback command `{command}`"), source: e })?;
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => "a signal".to_string(),
        };
        return Err(Error::other(
            format!("the fallback command for {model} failed with {how}: {command}"),
            Some("its output is above; fix the command (config `fallback_command`) or upload the model".into()),
        ));
    }
    Ok(())
}

/// A process group, killed (SIGKILL) on drop.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}
