//! Output of the commands on versions and tags: resolve, tag, rollback, sign, keygen, untag,
//! history, delete, verify and prune.

use super::*;

impl Printer {
    /// Output of `resolve`: the pinned references on stdout, one per line.
    pub fn resolutions(&self, batch: &Batch<crate::manager::Resolution>) {
        self.model_errors(batch);
        if self.json {
            return self.json_out(batch);
        }
        for r in &batch.models {
            self.out(&r.pinned);
        }
    }

    /// Output of `tag` and `rollback`: each move on stderr, the pinned reference on stdout.
    pub fn moves(&self, model: &str, moved: &[crate::manager::Moved]) {
        if self.json {
            return self.json_out(&serde_json::json!({ "model": model, "moved": moved }));
        }
        for m in moved {
            let from = m.from.as_ref().map_or_else(|| "(new)".to_string(), |v| v.short().to_string());
            let what =
                if m.changed { format!("{from} → {}", m.to.short()) } else { format!("already at {}", m.to.short()) };
            self.note(&format!("{model}:{}: {what}", m.tag));
        }
        if let Some(m) = moved.first() {
            self.out(&format!("{model}@{}", m.to));
        }
    }

    /// Output of `sign`: the pinned reference on stdout.
    pub fn signed(&self, signed: &crate::manager::Signed) {
        if self.json {
            return self.json_out(signed);
        }
        self.note(&format!("{}: signed by {}", signed.reference, signed.signed_by.join(", ")));
        self.out(&signed.reference);
    }

    /// Output of `keygen`.
    pub fn keygen(&self, private: &std::path::Path, public: &std::path::Path, key: &crate::signing::PublicKey) {
        if self.json {
            return self.json_out(&serde_json::json!({
                "private_key": private,
                "public_key": public,
                "key_id": key.id(),
            }));
        }
        self.note(&format!(
            "wrote {} (private: keep it secret, mode 0600) and {} (public: give it to every machine as a trusted key)",
            private.display(),
            public.display()
        ));
        self.out(key.short_id());
    }

    /// Output of `untag`.
    pub fn untagged(&self, reference: &str, removed: bool) {
        if self.json {
            return self.json_out(&serde_json::json!({ "reference": reference, "removed": removed }));
        }
        self.note(&if removed { format!("{reference}: removed") } else { format!("{reference}: no such tag") });
    }

    /// Output of `history`: versions newest first, then the tag's moves.
    pub fn history(&self, h: &crate::manager::History) {
        if self.json {
            return self.json_out(h);
        }
        let mut lines = vec![format!(
            "{:<14} {:<22} {:>10} {:>6}  {:<16} SIGNED BY",
            "VERSION", "CREATED", "SIZE", "FILES", "TAGS"
        )];
        for v in &h.versions {
            let tags: Vec<String> = v.tags.iter().map(ToString::to_string).collect();
            lines.push(format!(
                "{:<14} {:<22} {:>10} {:>6}  {:<16} {}",
                v.version.short(),
                v.created_at,
                fmt_bytes(v.size),
                v.files,
                tags.join(", "),
                signers(&v.signatures)
            ));
        }
        if !h.moves.is_empty() {
            lines.push(String::new());
            lines.push(format!("moves of {}:{} (newest first):", h.model, h.tag));
            for m in &h.moves {
                let from = m.from.as_ref().map_or_else(|| "(new)".to_string(), |v| v.short().to_string());
                let signed = if m.signed_by.is_empty() {
                    String::new()
                } else {
                    format!(", signed by {}", m.signed_by.iter().map(|k| safe(k)).collect::<Vec<_>>().join(", "))
                };
                lines.push(format!("  {}  {from} → {}  by {}{signed}", m.at, m.to.short(), safe(&m.by)));
            }
        }
        self.out(&lines.join("\n"));
    }

    /// Output of `delete`: the keys removed.
    pub fn deleted(&self, d: &crate::manager::Deleted) {
        if self.json {
            return self.json_out(d);
        }
        for t in &d.untagged {
            self.note(&format!("removed tag {t}"));
        }
        for k in &d.keys {
            self.out(&format!("deleted {}", safe(k)));
        }
        for k in &d.aborted_uploads {
            self.out(&format!("aborted the unfinished upload of {}", safe(k)));
        }
        for k in &d.left_alone {
            self.warn(&format!("left alone {} (not written by crowecode-cloud)", safe(k)));
        }
    }

    /// Output of `verify`: one line per model on stdout, differences listed.
    pub fn verify(&self, batch: &Batch<crate::cache::VerifyReport>) {
        self.model_errors(batch);
        if self.json {
            return self.json_out(batch);
        }
        for r in &batch.models {
            let signed = match (&r.signed_by, &r.signature_problem) {
                (Some(key), _) => format!(", signed by trusted key {}", safe(key)),
                (None, Some(problem)) => format!(", NOT SIGNED by a trusted key: {}", safe(problem)),
                (None, None) => String::new(),
            };
            if !r.differs() {
                // Intact files under require_signature without a trusted signature: not ok.
                let verdict = if r.ok { "ok" } else { "REFUSED" };
                self.out(&format!(
                    "{}: {verdict}, {} match {}{signed}",
                    r.model,
                    files(r.files_checked),
                    r.path.display()
                ));
                continue;
            }
            // What was signed is the manifest; the files on disk no longer match it.
            let mut text = format!("{}: DIFFERS from its manifest ({})", r.model, r.path.display());
            for (what, list) in [("missing", &r.missing), ("changed", &r.changed), ("extra", &r.extra)] {
                for p in list {
                    text.push_str(&format!("\n  {what}: {}", safe(p)));
                }
            }
            self.out(&text);
        }
        for r in batch.models.iter().filter(|r| !r.ok) {
            if r.differs() {
                self.note(&format!(
                    "hint: `crowecode-cloud download {} --force` fetches a clean, verified copy and replaces {}",
                    r.model,
                    r.path.display()
                ));
            } else {
                // The files are intact; what is missing is a trusted signature, which a fresh
                // copy would not have either.
                let pinned = match r.version.as_deref().and_then(crate::reference::VersionId::parse) {
                    Some(v) => format!("{}@{}", r.model, v.short()),
                    None => r.model.to_string(),
                };
                self.note(&format!(
                    "hint: the files match, but no trusted key signed this version. If it is genuine, sign it in the bucket (`crowecode-cloud sign {pinned} --sign-key KEY`), then `crowecode-cloud download {pinned} --force` installs the signature"
                ));
            }
        }
    }

    /// Output of `copy`: the pinned reference of each version on stdout; what was sent, and how,
    /// on stderr.
    pub fn copy(&self, r: &crate::commands::copy::Report) {
        if self.json {
            return self.json_out(r);
        }
        for v in &r.versions {
            let t = &v.traffic;
            let what = match v.status {
                "present" => "already there".to_string(),
                "would copy" => format!("would send {}", fmt_bytes(v.missing_bytes)),
                _ if t.server_side_bytes > 0 && t.through_machine_bytes == 0 => {
                    format!("{} copied inside the storage service", fmt_bytes(t.server_side_bytes))
                }
                _ => format!(
                    "{} through this machine{}",
                    fmt_bytes(t.through_machine_bytes),
                    if t.server_side_bytes > 0 {
                        format!(", {} inside the storage service", fmt_bytes(t.server_side_bytes))
                    } else {
                        String::new()
                    }
                ),
            };
            let sigs = if v.signatures > 0 { format!(", {} signature(s)", v.signatures) } else { String::new() };
            let short =
                crate::reference::VersionId::parse(&v.version).map_or(v.version.clone(), |id| id.short().to_string());
            self.note(&format!(
                "{}@{short}: {what} ({} object(s) written, {} there already){sigs}; {}",
                v.model, t.objects, t.present_objects, v.checked
            ));
        }
        for t in &r.tags {
            let short =
                crate::reference::VersionId::parse(&t.version).map_or(t.version.clone(), |id| id.short().to_string());
            let verb = match (r.dry_run, t.changed) {
                (true, _) => "would point",
                (false, true) => "now points",
                (false, false) => "already pointed",
            };
            let signed = if t.signed { " (signed for the destination)" } else { "" };
            self.note(&format!("{}:{} {verb} at {short} in {}{signed}", t.model, t.tag, safe(&r.to)));
        }
        let tot = &r.totals;
        self.note(&format!(
            "{} {} to {}: {} through this machine, {} inside the storage service",
            if r.dry_run { "would copy" } else { "copied" },
            plural(r.versions.len(), "version"),
            safe(&r.to),
            fmt_bytes(tot.through_machine_bytes),
            fmt_bytes(tot.server_side_bytes),
        ));
        if r.dry_run && r.missing_bytes > 0 {
            self.note(&format!("{} would be sent; run without --dry-run to copy", fmt_bytes(r.missing_bytes)));
        }
        self.model_errors_of(&r.errors);
        for v in &r.versions {
            self.out(&v.pinned);
        }
    }

    /// Output of `prune`: one line per removed version or archive, then the total.
    pub fn prune(&self, r: &crate::commands::prune::Report) {
        if self.json {
            return self.json_out(r);
        }
        let verb = if r.dry_run { "would remove" } else { "removed" };
        for p in &r.local {
            self.out(&format!("{verb} {} ({}, {}): {}", p.path.display(), p.model, p.reason, fmt_bytes(p.bytes)));
        }
        for p in r.remote_versions.iter().chain(&r.remote) {
            self.out(&format!("{verb} {} ({}): {}", safe(&p.key), p.model, fmt_bytes(p.bytes)));
        }
        let packs = r.packs.clone().unwrap_or_default();
        if !packs.deleted.is_empty() {
            let bytes = packs.deleted.iter().map(|p| p.bytes).sum();
            self.out(&format!(
                "{verb} {} pack(s) no version names ({}, under {})",
                packs.deleted.len(),
                fmt_bytes(bytes),
                safe(packs.deleted[0].key.rsplitn(3, '/').nth(2).unwrap_or_default())
            ));
        }
        if packs.dead_bytes > 0 {
            self.note(&format!(
                "packs: {} kept ({}), of which {} is read by no version",
                packs.packs,
                fmt_bytes(packs.bytes),
                fmt_bytes(packs.dead_bytes)
            ));
        }
        if let Some(rp) = &r.repack {
            let (did, reclaim) = if r.dry_run { ("would copy", "would be") } else { ("copied", "are") };
            if rp.packs > 0 {
                self.out(&format!(
                    "repack: {did} {} of live chunks out of {} pack(s) at least half dead into {} new pack(s); {} {reclaim} freed by the next `prune --remote --yes`",
                    fmt_bytes(rp.copied_bytes),
                    rp.packs,
                    if r.dry_run { "?".to_string() } else { rp.new_packs.to_string() },
                    fmt_bytes(rp.reclaimable_bytes),
                ));
            } else {
                self.note("repack: no pack is half dead");
            }
            if rp.put_back > 0 {
                self.note(&format!(
                    "repack: {} version(s) left on their old packs (a concurrent prune removed a new pack); run it again",
                    rp.put_back
                ));
            }
        }
        let abort = if r.dry_run { "would abort" } else { "aborted" };
        for key in &r.unfinished_uploads {
            self.out(&format!("{abort} the unfinished upload {}", safe(key)));
        }
        for m in &r.skipped {
            self.note(&format!("{m}: left alone, a download of it is in progress"));
        }
        for h in &r.held {
            let by = if h.holders.is_empty() {
                String::new()
            } else {
                format!(" by {}", h.holders.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))
            };
            self.note(&format!(
                "{}: left alone ({}, {}), in use{by}: {}",
                h.model,
                h.reason,
                fmt_bytes(h.bytes),
                h.path.display()
            ));
        }
        if let Some(left) = r.over_max_size {
            self.err_line(&format!(
                "error: the cache still takes {} after pruning, over --max-size: versions in use or being downloaded could not go",
                fmt_bytes(left)
            ));
            self.err_line("hint: they can go once the processes using them end; run prune again then");
        }
        for m in &r.unreadable {
            self.note(&format!("{m}: left alone, its manifest cannot be read (see the warning above)"));
        }
        let n = r.local.len() + r.remote.len() + r.remote_versions.len() + packs.deleted.len();
        if n == 0 && r.unfinished_uploads.is_empty() {
            self.note("nothing to prune");
        } else if n > 0 {
            self.note(&format!("{verb} {n} item(s), {}", fmt_bytes(r.would_free_bytes)));
        }
        if r.dry_run
            && !(r.remote.is_empty()
                && r.remote_versions.is_empty()
                && r.unfinished_uploads.is_empty()
                && packs.deleted.is_empty())
        {
            self.note("hint: add --yes to delete these archives and abort these uploads");
        }
    }
}

/// Who signed a version, for tables: verified trusted keys, else the keys the bucket names.
pub(super) fn signers(s: &crate::manager::Signers) -> String {
    if !s.trusted.is_empty() {
        format!("{} (trusted)", s.trusted.join(", "))
    } else if s.keys.is_empty() {
        "-".into()
    } else {
        s.keys.iter().map(|k| safe(k)).collect::<Vec<_>>().join(", ")
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
