//! Garbage collection of packs (bucket format 2), part of `prune --remote`: packs are shared by
//! every model under the prefix, so the roots are the locations of every stored version of every
//! model, and the sweep is bucket-wide. It runs after the versions were pruned, on the protocol
//! of the tag-move sweep (ARCHITECTURE.md, "Garbage collection of packs"): its own marker up
//! before its first read of the roots and removed after its last delete, every delete ending
//! within the sweep window of a fresh read of the roots, nothing younger than `--min-age` by the
//! store's clock. An upload checks its packs after writing its version ([`super::pieces::packs_survive`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::Session;
use super::versions;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::names::ModelName;
use crate::reference::VersionId;

/// A pack `prune --remote` deleted (or would delete), or one it reports.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedPack {
    pub key: String,
    pub bytes: u64,
}

/// What the pack sweep found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PackReport {
    /// Packs no stored version names (deleted when applied).
    pub deleted: Vec<PrunedPack>,
    /// Packs kept, and their bytes.
    pub packs: usize,
    pub bytes: u64,
    /// Bytes of kept packs that no stored version reads any more (space a repack would
    /// reclaim).
    pub dead_bytes: u64,
    /// Locations objects of versions that were never committed (a killed upload), removed.
    pub orphan_locations: Vec<String>,
}

/// How old a locations object without its version must be to be taken for a killed upload's.
const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Roots: each pack a stored version names, with the byte ranges of it that versions read.
type Roots = HashMap<String, HashSet<(u64, u32)>>;

/// Sweeps the packs of the prefix (see the module); a dry run only reports.
pub(crate) async fn sweep(s: &Session, min_age: Duration, apply: bool, doomed: &HashSet<String>) -> Result<PackReport> {
    let mut out = PackReport::default();
    let packs_prefix = s.layout.packs_prefix();
    let listed = |what: &str| {
        let what = what.to_string();
        move |e| Error::from_provider(format!("listing {what}"), e)
    };
    if s.provider.list(&packs_prefix).await.map_err(listed(&packs_prefix))?.is_empty() {
        return Ok(out);
    }
    let marker = s.layout.new_pack_sweep_marker();
    let now = if apply {
        let now = versions::raise_sweep_marker(s, &marker, "prune --remote (packs)").await?;
        versions::remove_stale_markers(s, &s.layout.pack_sweep_markers(), now).await?;
        now
    } else {
        SystemTime::now()
    };
    let cutoff = now.checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let result = sweep_with(s, cutoff, apply.then_some(marker.as_str()), doomed, &mut out).await;
    if apply {
        let _ = s.provider.delete(&marker).await;
    }
    result.map(|()| out)
}

async fn sweep_with(
    s: &Session,
    cutoff: SystemTime,
    marker: Option<&str>,
    doomed: &HashSet<String>,
    out: &mut PackReport,
) -> Result<()> {
    let window = versions::sweep_window();
    let mut known: HashMap<String, Vec<(String, u64, u32)>> = HashMap::new();
    loop {
        // The clock starts before the roots are read: a version written during the read may
        // not have been seen.
        let read = Instant::now();
        if let Some(marker) = marker {
            versions::refresh_sweep_marker(s, marker, "prune --remote (packs)").await?;
        }
        let roots = read_roots(s, cutoff, marker.is_some(), doomed, &mut known, out).await?;
        if let Some(pause) = test_pause(window) {
            // Tests widen the gap between the read and the deletes, where a racing upload must
            // be caught by its commit check.
            tokio::time::sleep(pause).await;
        }
        if marker.is_some() && read.elapsed() > window / 2 {
            return Err(Error::other(
                format!(
                    "reading the versions of every model took longer than half the sweep window ({}); no pack was deleted",
                    humantime::format_duration(window)
                ),
                Some("set CROWECODE_SWEEP_WINDOW_MS higher (every writer must use the same value)".into()),
            ));
        }
        let prefix = s.layout.packs_prefix();
        let packs = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
        let mut again = false;
        let (mut kept, mut bytes, mut dead) = (0, 0, 0);
        for o in packs {
            let Some(id) = s.layout.pack_of_key(&o.key) else { continue };
            if let Some(ranges) = roots.get(id) {
                kept += 1;
                bytes += o.size;
                dead += o.size.saturating_sub(ranges.iter().map(|&(_, len)| u64::from(len)).sum());
                continue;
            }
            if o.last_modified.is_none_or(|t| t > cutoff) || out.deleted.iter().any(|p| p.key == o.key) {
                continue;
            }
            if let Some(_marker) = marker {
                if read.elapsed() > window / 2 {
                    again = true;
                    continue;
                }
                super::prune_remote::within(read, window, &o.key, s.delete_key(&o.key)).await?;
            }
            out.deleted.push(PrunedPack { key: o.key, bytes: o.size });
        }
        (out.packs, out.bytes, out.dead_bytes) = (kept, bytes, dead);
        if !again {
            return Ok(());
        }
    }
}

/// Every pack a stored version of any model names, with the ranges of it read. A locations
/// object whose version is not stored is a root while young (an upload between its two
/// writes), and removed when old and `apply` (a killed upload's).
async fn read_roots(
    s: &Session,
    cutoff: SystemTime,
    apply: bool,
    doomed: &HashSet<String>,
    known: &mut HashMap<String, Vec<(String, u64, u32)>>,
    out: &mut PackReport,
) -> Result<Roots> {
    let prefix = s.layout.prefix();
    let objects = s.provider.list(prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    let keys: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).filter(|k| !doomed.contains(*k)).collect();
    let mut roots = Roots::new();
    for o in &objects {
        let Some(stem) = o.key.strip_suffix(".loc.json") else { continue };
        let Some(model) = s.layout.model_of_key(&format!("{stem}.json")) else { continue };
        let Some(version) = stem.rsplit('/').next().and_then(VersionId::parse) else { continue };
        let committed = keys.contains(format!("{stem}.json").as_str());
        if doomed.contains(&format!("{stem}.json")) {
            continue;
        }
        if !committed {
            // Perhaps not committed yet (an upload writes it before its version): it and its
            // packs stay while young, and it is removed only long after any upload would have
            // committed.
            let old = cutoff.min(SystemTime::now() - ORPHAN_AGE);
            if o.last_modified.is_some_and(|t| t < old) {
                if apply {
                    s.delete_key(&o.key).await?;
                }
                out.orphan_locations.push(o.key.clone());
                continue;
            }
        }
        if !known.contains_key(&o.key) {
            let places = match places(s, &model, &version, committed).await {
                Ok(p) => p,
                // A version that cannot be read names no pack we can tell: keep everything
                // rather than guess.
                Err(e) => {
                    return Err(Error::other(
                        format!("cannot read the locations of {model}@{}: {e}", version.short()),
                        Some("no pack was deleted; fix or delete that version, then prune again".into()),
                    ));
                }
            };
            known.insert(o.key.clone(), places);
        }
        for (pack, offset, len) in &known[&o.key] {
            roots.entry(pack.clone()).or_default().insert((*offset, *len));
        }
    }
    Ok(roots)
}

/// The packs, offsets and lengths of the chunks of a version (lengths from its manifest when it
/// is stored; without it, a pack is a root with no ranges known).
async fn places(
    s: &Session,
    model: &ModelName,
    version: &VersionId,
    committed: bool,
) -> Result<Vec<(String, u64, u32)>> {
    let key = s.layout.locations_key(model, version);
    let bytes = s.get_small(&key).await?.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Loose {
        packs: Vec<String>,
        chunks: Vec<(u32, u64)>,
    }
    let loc: Loose = serde_json::from_slice(&bytes).map_err(|e| Error::integrity(&key, e.to_string(), None, None))?;
    let manifest: Option<Manifest> =
        if committed { versions::by_id(s, model, version).await?.map(|f| f.manifest) } else { None };
    let lens: Vec<u32> =
        manifest.map(|m| m.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.1)).collect()).unwrap_or_default();
    let mut out: Vec<(String, u64, u32)> = loc
        .chunks
        .iter()
        .enumerate()
        .filter_map(|(i, &(p, offset))| Some((loc.packs.get(p as usize)?.clone(), offset, *lens.get(i).unwrap_or(&0))))
        .collect();
    // Every pack listed is a root, even one no chunk entry names.
    for p in &loc.packs {
        if !out.iter().any(|(q, _, _)| q == p) {
            out.push((p.clone(), 0, 0));
        }
    }
    Ok(out)
}

/// `CROWECODE_TEST_PACK_SWEEP_PAUSE_MS`: a pause after each read of the roots, for race tests
/// (at most a third of the window, so the sweep still keeps its deadline).
fn test_pause(window: Duration) -> Option<Duration> {
    let ms: u64 = std::env::var("CROWECODE_TEST_PACK_SWEEP_PAUSE_MS").ok()?.parse().ok()?;
    Some(Duration::from_millis(ms).min(window / 3))
}
