//! Memory stays within the budget however many requests are in flight, on every provider, with
//! and without a prefix, from a home set up as the README says; and the tuning is reported.

use crate::common::{make_model, tree};
use crate::mirror::machine_with_prefix;
use crate::user_paths::Provider;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn bounded(p: Provider) {
    for prefix in [None, Some("team/models")] {
        let (mut sb, _) = machine_with_prefix(p, prefix);
        // The streaming pipeline of archives (bucket format 2 is bounded in incremental.rs).
        sb.env("CROWECODE_UPLOAD_FORMAT", "1");
        // About 10 MiB in files of every size (make_model), and a shard of 24 MiB.
        let src = make_model(sb.src().as_path(), "Big", 7);
        let shard: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(src.join("shard.bin"), &shard).unwrap();
        let up = sb.cmd().args(["upload", "Big", "--from"]).arg(&src).arg("--json").output().unwrap();
        json(&up);

        // 64 requests of 1 MiB in flight, and 8 MiB of memory: 6 MiB may be held ahead of the writer.
        let out = sb
            .cmd()
            .args(["download", "Big", "--json", "--concurrency", "64", "--part-size", "1M", "--max-memory", "8M"])
            .output()
            .unwrap();
        let v = json(&out);
        let t = &v["models"][0]["tuning"];
        assert_eq!(t["reached"], 64, "{p:?} {prefix:?}: {t}");
        assert_eq!(t["memory_budget"], 8 << 20);
        let held = t["peak_held"].as_u64().unwrap_or_else(|| panic!("{p:?}: no peak_held in {t}"));
        // The budget, plus the range being written (1 MiB), plus one chunk over the line.
        assert!(held <= (6 << 20) + (2 << 20), "{p:?} {prefix:?}: held {held} bytes with an 8 MiB budget");
        assert!(held > 0, "{t}");
        let installed = std::fs::canonicalize(sb.cache().join("models/Big")).unwrap();
        assert_eq!(tree(&installed), tree(&src), "{p:?} {prefix:?}: the download differs from the model");

        // The defaults, and why, are in --json.
        let out = sb.cmd().args(["download", "Big", "--json", "--force"]).output().unwrap();
        let v = json(&out);
        let t = &v["models"][0]["tuning"];
        assert_eq!(t["part_size"], 8 << 20, "{t}");
        assert_eq!(t["memory_budget"], 160 << 20, "{t}");
        assert!(t["why"].as_str().unwrap().contains("received ahead of the writer"), "{t}");
        assert_eq!(tree(&installed), tree(&src));
    }
}

#[test]
fn memory_is_bounded_with_many_requests_in_flight_locally() {
    bounded(Provider::Local);
}

#[cfg(feature = "s3")]
#[test]
fn memory_is_bounded_with_many_requests_in_flight_on_moto() {
    bounded(Provider::S3);
}

#[cfg(feature = "gcs")]
#[test]
fn memory_is_bounded_with_many_requests_in_flight_on_fake_gcs() {
    bounded(Provider::Gcs);
}

#[cfg(feature = "azure")]
#[test]
fn memory_is_bounded_with_many_requests_in_flight_on_azurite() {
    bounded(Provider::Azure);
}
