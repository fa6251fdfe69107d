//! Naming versions: `resolve` (a reference to its pinned form), `tag` and `untag`, `rollback`,
//! `history` and `delete`. Every tag move is a compare-and-swap (see [`super::versions`]).

use serde::Serialize;

use super::Session;
use super::versions::{self, Expect, Found, Moved, TagMove};
use crate::error::{Error, Result};
use crate::names::ModelName;
use crate::reference::{Reference, TagName, Target, VersionId};

/// A reference and the version it names now.
#[derive(Clone, Debug, Serialize)]
pub struct Resolution {
    /// As given.
    pub reference: String,
    pub model: ModelName,
    pub version: VersionId,
    /// `Model@sha256:…`: hand this to a deploy.
    pub pinned: String,
    /// The tag it went through.
    pub tag: Option<TagName>,
}

/// The version `reference` names, or exit 5 when there is none.
pub(crate) async fn resolve(s: &Session, reference: &str) -> Result<Resolution> {
    let r = Reference::parse(reference)?;
    let found = find(s, &r).await?;
    Ok(Resolution {
        reference: reference.to_string(),
        model: r.model.clone(),
        pinned: Reference::pinned(&r.model, &found.version).to_string(),
        version: found.version,
        tag: found.tag,
    })
}

async fn find(s: &Session, r: &Reference) -> Result<Found> {
    versions::resolve(s, r)
        .await?
        .ok_or_else(|| Error::ModelNotFound { model: r.to_string(), location: s.config.location() })
}

/// Points each of `tags` at the version `reference` names. With `if_current`, each tag moves only
/// if it points where `if_current` does now (a deploy promotes only what it tested against).
pub(crate) async fn tag(
    s: &Session,
    reference: &str,
    tags: &[TagName],
    if_current: Option<&str>,
) -> Result<Vec<Moved>> {
    let r = Reference::parse(reference)?;
    let found = find(s, &r).await?;
    store_version(s, &r.model, &found).await?;
    let to = found.version;
    let expect = match if_current {
        Some(other) => {
            let other = Reference::parse(other)?;
            if other.model != r.model {
                return Err(Error::usage(
                    format!("--if-current {other} names another model than {r}"),
                    "give a reference to the same model",
                ));
            }
            Expect::Current(Some(find(s, &other).await?.version))
        }
        None => Expect::Any,
    };
    // All or nothing as far as a check can make it: every tag must match before any moves.
    if let Expect::Current(Some(expected)) = &expect {
        for tag in tags {
            let now = versions::read_tag(s, &r.model, tag).await?;
            if now.as_ref().map(|t| &t.version) != Some(expected) {
                return Err(versions::conflict(&r.model, tag, now.as_ref(), Some(expected)));
            }
        }
    }
    let mut moved: Vec<Moved> = Vec::new();
    for tag in tags {
        match versions::move_tag(s, &r.model, tag, &to, expect.clone()).await {
            Ok(m) => moved.push(m),
            // A move that raced in after the check: say exactly which tags did move.
            Err(Error::Conflict { message, hint }) if moved.iter().any(|m| m.changed) => {
                let done: Vec<String> = moved.iter().filter(|m| m.changed).map(|m| m.tag.to_string()).collect();
                return Err(Error::Conflict {
                    message: format!(
                        "{} (but {} had already moved to {})",
                        message.trim_end_matches("; nothing was changed"),
                        done.join(", "),
                        to.short()
                    ),
                    hint,
                });
            }
            Err(e) => return Err(e),
        }
        if tag.is_latest() {
            versions::write_alias(s, &r.model).await?;
        }
    }
    Ok(moved)
}

/// Writes the version object of a version found only as `manifest.json` (a bucket of an earlier
/// release), so that a tag never names a version that is not stored.
async fn store_version(s: &Session, model: &ModelName, found: &Found) -> Result<()> {
    if versions::by_id(s, model, &found.version).await?.is_none() {
        super::upload::put_version(s, model, &found.version, &found.bytes).await?;
    }
    Ok(())
}

/// Removes a tag. `latest` is not removed: it exists while the model does.
pub(crate) async fn untag(s: &Session, reference: &str) -> Result<bool> {
    let r = Reference::parse(reference)?;
    let tag = match &r.target {
        Target::Tag(t) if !t.is_latest() && reference.contains(':') => t.clone(),
        Target::Tag(_) => {
            return Err(Error::usage(
                format!("`untag {reference}` would remove latest, which exists while the model does"),
                "untag MODEL:TAG for another tag; `crowecode-cloud delete MODEL --all --yes` removes a model",
            ));
        }
        _ => return Err(Error::usage(format!("{reference} names a version, not a tag"), "untag MODEL:TAG")),
    };
    versions::remove_tag(s, &r.model, &tag).await
}

/// Moves the tag back to the version it pointed at before its last move.
pub(crate) async fn rollback(s: &Session, reference: &str) -> Result<Moved> {
    let r = Reference::parse(reference)?;
    let Some(tag) = r.tag().cloned() else {
        return Err(Error::usage(format!("{reference} names a version, not a tag"), "rollback MODEL or MODEL:TAG"));
    };
    let record = versions::read_tag(s, &r.model, &tag)
        .await?
        .ok_or_else(|| Error::ModelNotFound { model: r.to_string(), location: s.config.location() })?;
    let previous = record.previous().cloned().ok_or_else(|| Error::Conflict {
        message: format!("{r} has no earlier version to roll back to (it never moved, or every move was rolled back)"),
        hint: Some(format!(
            "see `crowecode-cloud history {r}`; `crowecode-cloud tag {}@VERSION {tag}` points it anywhere",
            r.model
        )),
    })?;
    if versions::by_id(s, &r.model, &previous).await?.is_none() {
        return Err(Error::ModelNotFound {
            model: format!(
                "{}@{} (where {r} pointed before; it was deleted from the bucket)",
                r.model,
                previous.short()
            ),
            location: s.config.location(),
        });
    }
    let moved = versions::move_tag(s, &r.model, &tag, &previous, Expect::Rollback(record.version)).await?;
    if tag.is_latest() {
        versions::write_alias(s, &r.model).await?;
    }
    Ok(moved)
}

/// What `sign` did.
#[derive(Clone, Debug, Serialize)]
pub struct Signed {
    pub model: ModelName,
    pub version: VersionId,
    /// `Model@sha256:…`.
    pub reference: String,
    /// Short ids of the keys that signed it now.
    pub signed_by: Vec<String>,
    /// Where the signatures are stored.
    pub keys: Vec<String>,
}

/// Adds a signature by each signing key to the version `reference` names.
pub(crate) async fn sign(s: &Session, reference: &str) -> Result<Signed> {
    if s.trust.signers.is_empty() {
        return Err(Error::usage(
            "no signing key given",
            format!(
                "pass --sign-key PATH (or set {}); `crowecode-cloud keygen --out PATH` makes one",
                crate::signing::ENV_SIGNING_KEY
            ),
        ));
    }
    let r = Reference::parse(reference)?;
    let found = find(s, &r).await?;
    let signed_by = super::signatures::sign_version(s, &r.model, &found.version, &found.manifest).await?;
    let keys = signed_by.iter().map(|id| s.layout.signature_key(&r.model, &found.version, id)).collect();
    Ok(Signed {
        reference: Reference::pinned(&r.model, &found.version).to_string(),
        model: r.model,
        version: found.version,
        signed_by,
        keys,
    })
}

/// One version in a history.
#[derive(Clone, Debug, Serialize)]
pub struct VersionEntry {
    pub version: VersionId,
    pub created_at: String,
    /// Sum of file sizes.
    pub size: u64,
    pub files: usize,
    /// Tags pointing at it now.
    pub tags: Vec<TagName>,
    /// Who signed it.
    pub signatures: super::signatures::Signers,
}

/// A model's versions, newest first, and one tag's moves, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    pub model: ModelName,
    pub tag: TagName,
    pub versions: Vec<VersionEntry>,
    pub moves: Vec<TagMove>,
}

/// The versions of the model `reference` names and the moves of its tag.
pub(crate) async fn history(s: &Session, reference: &str) -> Result<History> {
    let r = Reference::parse(reference)?;
    let tag = r.tag().cloned().unwrap_or_else(TagName::latest);
    let model = r.model.clone();
    let tags = versions::list_tags(s, &model).await?;
    let mut ids = versions::list_versions(s, &model).await?;
    let legacy = versions::legacy(s, &model).await?;
    if ids.is_empty()
        && let Some(l) = &legacy
    {
        ids.push(l.version.clone());
    }
    if ids.is_empty() {
        return Err(s.not_found(&model));
    }
    let mut entries = Vec::new();
    for id in ids {
        let found = match versions::by_id_listed(s, &model, &id).await? {
            Some(f) => f,
            None => match &legacy {
                Some(l) if l.version == id => l.clone(),
                _ => continue,
            },
        };
        let mut on: Vec<TagName> = tags.iter().filter(|t| t.version == id).map(|t| t.tag.clone()).collect();
        if on.is_empty() && tags.is_empty() && legacy.as_ref().is_some_and(|l| l.version == id) {
            on.push(TagName::latest());
        }
        let signatures = super::signatures::signers(s, &model, &id, &found.manifest).await?;
        entries.push(VersionEntry {
            version: id,
            created_at: found.manifest.created_at.clone(),
            size: found.manifest.total_size,
            files: found.manifest.files.len(),
            tags: on,
            signatures,
        });
    }
    // Newest first; versions of the same second by when `latest` last moved to them.
    let moved_at = |v: &VersionId| versions::latest_moved_to(&tags, v);
    entries.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| moved_at(&b.version).cmp(&moved_at(&a.version)))
            .then(a.version.cmp(&b.version))
    });
    let mut moves = tags.iter().find(|t| t.tag == tag).map(|t| t.moves.clone()).unwrap_or_default();
    moves.reverse();
    Ok(History { model, tag, versions: entries, moves })
}

/// What `delete` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Deleted {
    pub model: Option<ModelName>,
    /// Keys deleted from the bucket.
    pub keys: Vec<String>,
    /// Tags removed first (`--force`).
    pub untagged: Vec<TagName>,
    /// Objects under the model's directory that this tool did not write, left where they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    /// Unfinished uploads of the model's archives that were aborted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted_uploads: Vec<String>,
}

/// Deletes one version (its manifest, and its archive when no other version uses it). A
/// version a tag points at is refused unless `force`, which removes those tags first.
pub(crate) async fn delete_version(s: &Session, reference: &str, force: bool) -> Result<Deleted> {
    let r = Reference::parse(reference)?;
    if r.tag().is_some() {
        return Err(Error::usage(
            format!("`delete {reference}` names a tag; delete takes a version (MODEL@VERSION) or MODEL --all"),
            "`crowecode-cloud resolve MODEL:TAG` prints the version a tag points at",
        ));
    }
    let found = find(s, &r).await?;
    let model = r.model.clone();
    let tags = versions::list_tags(s, &model).await?;
    let on: Vec<TagName> = tags.iter().filter(|t| t.version == found.version).map(|t| t.tag.clone()).collect();
    if !on.is_empty() && !force {
        let names: Vec<String> = on.iter().map(ToString::to_string).collect();
        return Err(Error::usage(
            format!("{model}@{} is tagged {}: deleting it would break them", found.version.short(), names.join(", ")),
            "move those tags elsewhere first (`crowecode-cloud tag`), or add --force to remove them with it",
        ));
    }
    if on.iter().any(TagName::is_latest) {
        return Err(Error::usage(
            format!("{model}@{} is latest", found.version.short()),
            "point latest at another version first (`crowecode-cloud rollback` or `tag`), or delete the whole model with --all",
        ));
    }
    let rollback_of: Vec<String> =
        tags.iter().filter(|t| t.previous() == Some(&found.version)).map(|t| t.tag.to_string()).collect();
    if !rollback_of.is_empty() && !force {
        return Err(Error::usage(
            format!(
                "{model}@{} is where `rollback` takes {}: deleting it would leave nothing to roll back to",
                found.version.short(),
                rollback_of.join(", ")
            ),
            "add --force to delete it anyway",
        ));
    }
    let mut out = Deleted { model: Some(model.clone()), ..Default::default() };
    for tag in on {
        versions::remove_tag(s, &model, &tag).await?;
        out.untagged.push(tag);
    }
    let key = s.layout.version_key(&model, &found.version);
    s.delete_key(&key).await?;
    out.keys.push(key);
    for (id, _) in super::signatures::list(s, &model, &found.version).await? {
        let key = s.layout.signature_key(&model, &found.version, &id);
        s.delete_key(&key).await?;
        out.keys.push(key);
    }
    if found.manifest.is_pieces() {
        // Format 2: its locations; its packs, shared, go in the next `prune --remote` when no
        // other version names them.
        let loc = s.layout.locations_key(&model, &found.version);
        s.delete_key(&loc).await?;
        out.keys.push(loc);
        return Ok(out);
    }
    // Format 1: its archive, unless another version names the same one.
    let archive = s.layout.archive_key(&found.manifest);
    let mut shared = false;
    for id in versions::list_versions(s, &model).await? {
        if id != found.version
            && let Some(other) = versions::by_id_listed(s, &model, &id).await?
        {
            shared |= s.layout.archive_key(&other.manifest) == archive;
        }
    }
    if !shared {
        s.delete_key(&archive).await?;
        out.keys.push(archive);
    }
    Ok(out)
}

/// Deletes every object of a model this tool wrote: `manifest.json`, tags, versions and their
/// signatures, archives, and unfinished archive uploads. Anything else under the model's
/// directory (another prefix's models, files a person put there) is listed and left alone.
///
/// Against tag moves and uploads running at the same time it works like the prune sweep: the
/// sweep marker is up while it deletes (a move that sees it waits, then checks that its
/// version is still there, and is undone if not), and after its deletes it removes any tag that
/// names a version no longer there. The marker goes last; a move checked after that finds its
/// deleted version missing. So no tag is left naming something deleted.
pub(crate) async fn delete_model(s: &Session, model: &ModelName) -> Result<Deleted> {
    let prefix = format!("{}{model}/", s.layout.prefix());
    let markers = s.layout.sweep_markers(model);
    let marker = s.layout.new_sweep_marker(model);
    let objects = s.provider.list(&prefix).await.map_err(|e| Error::from_provider(format!("listing {prefix}"), e))?;
    // Other sweeps' markers are theirs to remove: a move must keep waiting while they run.
    let (keys, left_alone): (Vec<String>, Vec<String>) = objects
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.starts_with(&markers))
        .partition(|k| s.layout.is_model_object(model, k));
    if keys.is_empty() {
        return Err(s.not_found(model));
    }
    versions::raise_sweep_marker(s, &marker, "delete --all").await?;
    let result = delete_listed(s, model, keys, left_alone).await;
    let _ = s.provider.delete(&marker).await;
    result
}

async fn delete_listed(s: &Session, model: &ModelName, keys: Vec<String>, left_alone: Vec<String>) -> Result<Deleted> {
    let mut out = Deleted { model: Some(model.clone()), left_alone, ..Default::default() };
    // The manifest and the tags first: readers then find no model rather than a half-deleted one.
    let manifest = s.layout.manifest_key(model);
    let mut keys = keys;
    keys.sort_by_key(|k| (k != &manifest, !k.contains("/tags/"), !k.contains("/versions/")));
    for key in keys {
        s.delete_key(&key).await?;
        out.keys.push(key);
    }
    // A tag moved meanwhile onto a version deleted above names nothing now: it goes too, and
    // so does a manifest.json an upload wrote meanwhile for such a version.
    for record in versions::list_tags(s, model).await? {
        if versions::missing_part(s, model, &record.version).await?.is_some() {
            let key = s.layout.tag_key(model, &record.tag);
            s.delete_key(&key).await?;
            out.keys.push(key);
        }
    }
    if versions::remove_dangling_alias(s, model).await? {
        out.keys.push(s.layout.manifest_key(model));
    }
    let archives = s.layout.archives_prefix(model);
    let pending = s
        .provider
        .list_pending_uploads(&archives)
        .await
        .map_err(|e| Error::from_provider(format!("listing unfinished uploads in {archives}"), e))?;
    for p in pending.into_iter().filter(|p| s.layout.is_model_object(model, &p.key)) {
        s.abort_upload(&p).await?;
        out.aborted_uploads.push(p.key);
    }
    Ok(out)
}
