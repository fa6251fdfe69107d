//! The default memory budget, sized from the container.
//!
//! A process in a container that exceeds its cgroup's memory limit is killed by the kernel (an
//! `OOMKilled` pod). So when `--max-memory` is not given, the budget is the smaller of
//! [`DEFAULT_MAX_MEMORY`] and half of what the cgroup's limit leaves once [`RESERVE`] is set
//! aside for the process itself (its code, the runtime, the TLS and HTTP stacks, hashing): a
//! 256 MiB container gets 96 MiB, one of 384 MiB or more the usual 160 MiB.
//!
//! Both cgroup layouts are read, from `/proc/self/cgroup` and the hierarchy mounted at
//! `/sys/fs/cgroup` (v2: `memory.max`; v1: `memory/…/memory.limit_in_bytes`), and every
//! ancestor's limit counts, since a parent's limit binds its children. The root of both paths is
//! `CROWECODE_CGROUP_ROOT` when set (tests give a fake tree), `/` otherwise.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use super::tuning::DEFAULT_MAX_MEMORY;

/// Memory set aside for the process itself before the budget is sized from a cgroup limit.
pub const RESERVE: u64 = 64 << 20;
/// The smallest budget a cgroup limit brings it down to.
pub const FLOOR: u64 = 16 << 20;

/// The default budget and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryDefault {
    pub bytes: u64,
    /// `built-in default`, or the cgroup limit it was sized from and the file that said so.
    pub source: String,
}

/// A cgroup's memory limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimit {
    pub bytes: u64,
    /// `v1` or `v2`.
    pub version: u8,
    /// The file the limit was read from.
    pub file: PathBuf,
}

/// The default budget of this process (read once).
pub fn default_memory() -> &'static MemoryDefault {
    static DEFAULT: OnceLock<MemoryDefault> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let root = std::env::var_os("CROWECODE_CGROUP_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from);
        sized(cgroup_limit(&root))
    })
}

/// The budget for a cgroup `limit` (none: the built-in default).
pub fn sized(limit: Option<CgroupLimit>) -> MemoryDefault {
    let builtin = || MemoryDefault { bytes: DEFAULT_MAX_MEMORY, source: "built-in default".into() };
    let Some(limit) = limit else { return builtin() };
    let bytes = (limit.bytes.saturating_sub(RESERVE) / 2).max(FLOOR);
    if bytes >= DEFAULT_MAX_MEMORY {
        return builtin();
    }
    MemoryDefault {
        bytes,
        source: format!(
            "cgroup {} memory limit {} MiB ({}): half of it less {} MiB for the process",
            if limit.version == 1 { "v1" } else { "v2" },
            limit.bytes >> 20,
            limit.file.display(),
            RESERVE >> 20
        ),
    }
}

/// The memory limit of this process's cgroup under `root` (`/` on a real system), the smallest
/// of its own and its ancestors'; `None` when there is none (or no cgroup can be read).
pub fn cgroup_limit(root: &Path) -> Option<CgroupLimit> {
    let text = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mount = root.join("sys/fs/cgroup");
    // v1 when a hierarchy has the memory controller (a hybrid system's v2 tree has none).
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if controllers.split(',').any(|c| c == "memory") {
            return smallest(&mount.join("memory"), path, "memory.limit_in_bytes", 1);
        }
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    smallest(&mount, path, "memory.max", 2)
}

/// The smallest limit in `file` of the cgroup at `path` under `mount` and its ancestors. Inside a
/// container the mount may be the container's own cgroup while `path` is the host's: then the
/// mount's own file is what counts.
fn smallest(mount: &Path, path: &str, file: &str, version: u8) -> Option<CgroupLimit> {
    let relative = path.trim_start_matches('/');
    let mut dir = mount.join(relative);
    if !relative.is_empty() && !dir.is_dir() {
        dir = mount.to_path_buf();
    }
    let mut best: Option<CgroupLimit> = None;
    loop {
        let candidate = dir.join(file);
        if let Some(bytes) = std::fs::read_to_string(&candidate).ok().and_then(|t| limit_value(&t))
            && best.as_ref().is_none_or(|b| bytes < b.bytes)
        {
            best = Some(CgroupLimit { bytes, version, file: candidate });
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            break;
        }
    }
    best
}

/// A limit file's value; `None` for no limit (`max`, or v1's huge page-rounded maximum).
fn limit_value(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v > 0 && v < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(cgroup: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        std::fs::write(root.path().join("proc/self/cgroup"), cgroup).unwrap();
        for (path, value) in files {
            let p = root.path().join("sys/fs/cgroup").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, value).unwrap();
        }
        root
    }

    #[test]
    fn v2_limit_and_its_ancestors() {
        let root = tree(
            "0::/kubepods/pod1/ctr\n",
            &[
                ("kubepods/memory.max", "max\n"),
                ("kubepods/pod1/memory.max", "268435456\n"),
                ("kubepods/pod1/ctr/memory.max", "536870912\n"),
            ],
        );
        let limit = cgroup_limit(root.path()).unwrap();
        assert_eq!((limit.bytes, limit.version), (256 << 20, 2), "the pod's smaller limit binds");
        assert!(limit.file.ends_with("kubepods/pod1/memory.max"));
        let sized = sized(Some(limit));
        assert_eq!(sized.bytes, 96 << 20);
        assert!(sized.source.contains("cgroup v2 memory limit 256 MiB"), "{}", sized.source);
    }

    #[test]
    fn v2_in_a_namespace_reads_the_mount_itself() {
        let root = tree("0::/\n", &[("memory.max", "134217728\n")]);
        let limit = cgroup_limit(root.path()).unwrap();
        assert_eq!(limit.bytes, 128 << 20);
        assert_eq!(sized(Some(limit)).bytes, 32 << 20);
        let unlimited = tree("0::/\n", &[("memory.max", "max\n")]);
        assert_eq!(cgroup_limit(unlimited.path()), None);
        assert_eq!(sized(None).bytes, DEFAULT_MAX_MEMORY);
    }

    #[test]
    fn v1_memory_controller_wins_on_a_hybrid_system() {
        let root = tree(
            "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n",
            &[
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory/docker/abc/memory.limit_in_bytes", "201326592\n"),
                ("unified/docker/abc/memory.max", "max\n"),
            ],
        );
        let limit = cgroup_limit(root.path()).unwrap();
        assert_eq!((limit.bytes, limit.version), (192 << 20, 1));
        assert_eq!(sized(Some(limit)).bytes, 64 << 20);
    }

    #[test]
    fn v1_host_path_inside_a_container_falls_back_to_the_mount() {
        let root = tree("4:memory:/kubepods/burstable/pod9/ctr\n", &[("memory/memory.limit_in_bytes", "1073741824\n")]);
        let limit = cgroup_limit(root.path()).unwrap();
        assert_eq!(limit.bytes, 1 << 30);
        assert_eq!(sized(Some(limit)).source, "built-in default", "a large limit keeps the default");
    }

    #[test]
    fn tiny_limits_keep_a_floor_and_no_cgroup_is_no_limit() {
        let root = tree("0::/\n", &[("memory.max", "67108864\n")]);
        assert_eq!(sized(cgroup_limit(root.path())).bytes, FLOOR);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_limit(empty.path()), None);
    }
}
