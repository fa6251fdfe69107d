//! `prune --remote --repack`: reclaims the space of packs that are mostly dead (at least half
//! of their bytes read by no stored version). Their live chunks are read (each checked against
//! its digest), written into new packs, and the locations of every version that named the old
//! packs are rewritten to the new ones; the old packs, named by nothing then, go in the next
//! pack sweep. A version id never changes: locations are not covered by it
//! (ARCHITECTURE.md, "Incremental versions").

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::Serialize;

use super::Session;
use super::versions;
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::pack::Locations;
use crate::provider::{GetRange, ProviderErrorKind, PutMode};
use crate::reference::VersionId;

/// What a repack did (or, not applied, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepackReport {
    /// Packs at least half dead whose live chunks were (or would be) copied.
    pub packs: usize,
    /// Bytes of live chunks copied into new packs.
    pub copied_bytes: u64,
    /// Bytes the old packs take: freed by the next `prune --remote --yes`.
    pub reclaimable_bytes: u64,
    /// New packs written.
    pub new_packs: usize,
    /// Locations objects rewritten to name the new packs.
    pub locations_rewritten: usize,
    /// Locations put back because a concurrent sweep removed a new pack before they named it.
    pub put_back: usize,
}

/// A chunk: its digest, length, and the hash of the digest (of the version that names it).
type Chunk = ([u8; 32], u32, crate::chunk::ChunkHash);

/// A committed format 2 version: its locations' key and bytes, and each chunk's digest and
/// length in order.
struct Version {
    loc_key: String,
    chunks: Vec<([u8; 32], u32)>,
}

/// Repacks the packs of the prefix at least half dead; reports only unless `apply`.
pub(crate) async fn run(s: &Session, apply: bool) -> Result<RepackReport> {
    let mut out = RepackReport::default();
    let prefix = s.layout.prefix();
    let objects = s.provider.list(prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    let keys: std::collections::HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    // Every committed version's chunks, by the pack and offset its locations give.
    let mut versions: Vec<Version> = Vec::new();
    let mut live: HashMap<String, BTreeMap<u64, Chunk>> = HashMap::new();
    let mut users: HashMap<String, Vec<usize>> = HashMap::new();
    for o in &objects {
        let Some(stem) = o.key.strip_suffix(".loc.json") else { continue };
        if !keys.contains(format!("{stem}.json").as_str()) {
            continue;
        }
        let Some(model) = s.layout.model_of_key(&format!("{stem}.json")) else { continue };
        let Some(id) = stem.rsplit('/').next().and_then(VersionId::parse) else { continue };
        let Some(found) = versions::by_id(s, &model, &id).await? else { continue };
        if !found.manifest.is_pieces() {
            continue;
        }
        let loc = super::pieces::locations(s, &found).await?;
        let chunks: Vec<([u8; 32], u32)> = found
            .manifest
            .files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|(sha, len)| (super::pieces::digest_bytes(sha), *len)))
            .collect();
        let (n, hash) = (versions.len(), found.manifest.chunk_hash());
        for (&(p, offset), (digest, len)) in loc.chunks.iter().zip(&chunks) {
            let pack = &loc.packs[p as usize];
            live.entry(pack.clone()).or_default().insert(offset, (*digest, *len, hash));
        }
        for pack in &loc.packs {
            users.entry(pack.clone()).or_default().push(n);
        }
        versions.push(Version { loc_key: o.key.clone(), chunks });
    }
    let packs_prefix = s.layout.packs_prefix();
    let mut candidates: Vec<(String, u64)> = objects
        .iter()
        .filter(|o| o.key.starts_with(&packs_prefix))
        .filter_map(|o| {
            let id = s.layout.pack_of_key(&o.key)?;
            let used: u64 = live.get(id)?.values().map(|(_, len, _)| u64::from(*len)).sum();
            (used * 2 <= o.size && users.contains_key(id)).then(|| (id.to_string(), o.size))
        })
        .collect();
    candidates.sort();
    out.packs = candidates.len();
    out.reclaimable_bytes = candidates.iter().map(|(_, size)| size).sum();
    out.copied_bytes =
        candidates.iter().map(|(id, _)| live[id].values().map(|(_, len, _)| u64::from(*len)).sum::<u64>()).sum();
    if !apply || candidates.is_empty() {
        return Ok(out);
    }

    // The live chunks, pack by pack, into new packs; where each went.
    let max = super::pieces::pack_size(s);
    let mut moved: HashMap<(String, u64), (String, u64)> = HashMap::new();
    let mut current: Vec<u8> = Vec::new();
    let mut current_chunks: Vec<((String, u64), [u8; 32], u64)> = Vec::new();
    for (old, _) in &candidates {
        let key = s.layout.pack_key(old);
        let chunks: Vec<(u64, Chunk)> = live[old].iter().map(|(&o, &c)| (o, c)).collect();
        for run in crate::pack::runs(chunks, |(o, (_, len, _))| (0, *o, u64::from(*len)), super::pieces_fetch::RANGE) {
            let start = run[0].0;
            let end = run.last().map_or(start, |(o, (_, len, _))| o + u64::from(*len));
            let body = read(s, &key, start, end).await?;
            for (offset, (digest, len, hash)) in run {
                let bytes = &body[(offset - start) as usize..(offset - start) as usize + len as usize];
                let got = hash.digest(bytes);
                if got != digest {
                    return Err(Error::integrity(
                        &key,
                        format!("a chunk at offset {offset} differs from its digest; nothing was rewritten"),
                        Some(hex::encode(digest)),
                        Some(hex::encode(got)),
                    ));
                }
                if !current.is_empty() && current.len() as u64 + u64::from(len) > max {
                    flush(s, &mut current, &mut current_chunks, &mut moved, &mut out).await?;
                }
                current_chunks.push(((old.clone(), offset), digest, current.len() as u64));
                current.extend_from_slice(bytes);
            }
        }
    }
    flush(s, &mut current, &mut current_chunks, &mut moved, &mut out).await?;

    // Every version that named an old pack now names the new ones.
    let mut affected: Vec<usize> = candidates.iter().flat_map(|(id, _)| users[id].iter().copied()).collect();
    affected.sort_unstable();
    affected.dedup();
    for i in affected {
        let v = &versions[i];
        let Some(old_bytes) = s.get_small(&v.loc_key).await? else { continue };
        let Ok(loc) = Locations::parse(&old_bytes, v.chunks.len()) else { continue };
        let mut packs: Vec<String> = Vec::new();
        let mut chunks = Vec::with_capacity(loc.chunks.len());
        for &(p, offset) in &loc.chunks {
            let old = loc.packs[p as usize].clone();
            let (pack, offset) = moved.get(&(old.clone(), offset)).cloned().unwrap_or((old, offset));
            let at = packs.iter().position(|q| q == &pack).unwrap_or_else(|| {
                packs.push(pack);
                packs.len() - 1
            });
            chunks.push((at as u32, offset));
        }
        let new = Locations { format: 2, packs, chunks };
        let body = Bytes::from(serde_json::to_vec(&new).expect("locations serialise"));
        s.provider
            .put(&v.loc_key, body, PutMode::Overwrite)
            .await
            .map_err(|e| Error::from_provider(format!("writing {}", v.loc_key), e))?;
        out.locations_rewritten += 1;
        // The new packs were named by nothing until now: a concurrent sweep may have taken them.
        if !survived(s, &v.loc_key, &new).await? {
            s.provider
                .put(&v.loc_key, old_bytes, PutMode::Overwrite)
                .await
                .map_err(|e| Error::from_provider(format!("writing {}", v.loc_key), e))?;
            out.put_back += 1;
        }
    }
    Ok(out)
}

async fn read(s: &Session, key: &str, start: u64, end: u64) -> Result<Vec<u8>> {
    use futures::StreamExt as _;
    let mut stream = s.provider.get(key, GetRange::Bounded(start..end)).await.map_err(|e| match e.kind {
        ProviderErrorKind::NotFound => Error::integrity(key, "a pack a version names is missing", None, None),
        _ => Error::from_provider(format!("reading {key}"), e),
    })?;
    let mut body = Vec::with_capacity((end - start) as usize);
    while let Some(part) = stream.next().await {
        body.extend_from_slice(&part.map_err(|e| Error::from_provider(format!("reading {key}"), e))?);
    }
    if body.len() as u64 != end - start {
        return Err(Error::integrity(key, "the pack answered fewer bytes than asked", None, None));
    }
    Ok(body)
}

/// Writes the new pack being filled (create-only: its id is the digest of its chunks' digests).
async fn flush(
    s: &Session,
    current: &mut Vec<u8>,
    chunks: &mut Vec<((String, u64), [u8; 32], u64)>,
    moved: &mut HashMap<(String, u64), (String, u64)>,
    out: &mut RepackReport,
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let id = hex::encode(crate::pack::pack_id(chunks.iter().map(|(_, digest, _)| digest)));
    let key = s.layout.pack_key(&id);
    s.put_named(&key, Bytes::from(std::mem::take(current)), PutMode::Create).await?;
    out.new_packs += 1;
    for (old, _, offset) in chunks.drain(..) {
        moved.insert(old, (id.clone(), offset));
    }
    Ok(())
}

/// Whether every pack `loc` names is there, once any running pack sweep has had its window (the
/// commit rule of uploads, ARCHITECTURE.md).
async fn survived(s: &Session, loc_key: &str, loc: &Locations) -> Result<bool> {
    if versions::sweep_running(s, &s.layout.pack_sweep_markers()).await? {
        let model = ModelName::new(loc_key.split('/').rev().nth(2).unwrap_or("model")).ok();
        let label = model.as_ref().map_or("repack", ModelName::as_str);
        versions::wait_out_sweep(s, label, "a `prune --remote` is removing unused packs".into(), "every new pack")
            .await;
    }
    Ok(super::pieces::missing_packs(s, loc).await?.is_empty())
}
