//! Property test: random trees (nested directories, empty files, odd and long names, modes)
//! upload and download byte-identical, with every compression.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use crowecode_cloud::archive::Compression;
use crowecode_cloud::cache::Cache;
use crowecode_cloud::config::{self, FileLocation, Overrides};
use crowecode_cloud::provider::local::LocalProvider;
use crowecode_cloud::transfer::TransferOptions;
use crowecode_cloud::{CloudManager, UploadOptions};
use proptest::prelude::*;

use crate::common::tree;

#[derive(Clone, Debug)]
enum Node {
    File { size: usize, mode: u32, seed: u8 },
    Dir { mode: u32 },
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9_-][a-zA-Z0-9 ._-]{0,11}",
        1 => "[a-z]{101,130}",
        1 => Just("ünï cödé (1).json".to_string()),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let file_mode = prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o700, 0o444, 0o640]);
    let dir_mode = prop::sample::select(vec![0o755u32, 0o700, 0o750]);
    prop_oneof![
        4 => (prop_oneof![3 => 0usize..2000, 1 => Just(0usize), 1 => 60_000usize..90_000], file_mode, any::<u8>())
            .prop_map(|(size, mode, seed)| Node::File { size, mode, seed }),
        1 => dir_mode.prop_map(|mode| Node::Dir { mode }),
    ]
}

/// A tree as path → node, with no path both a file and a parent.
fn tree_spec() -> impl Strategy<Value = BTreeMap<String, Node>> {
    prop::collection::vec((prop::collection::vec(name(), 1..4), node()), 1..14).prop_map(|entries| {
        let mut out: BTreeMap<String, Node> = BTreeMap::new();
        for (parts, node) in entries {
            let path = parts.join("/");
            let clashes = out.keys().any(|k| {
                k == &path
                    || (path.starts_with(&format!("{k}/")) && matches!(out[k], Node::File { .. }))
                    || (k.starts_with(&format!("{path}/")) && matches!(node, Node::File { .. }))
            });
            if !clashes {
                out.insert(path, node);
            }
        }
        if !out.values().any(|n| matches!(n, Node::File { .. })) {
            out.insert("weights.bin".into(), Node::File { size: 10, mode: 0o644, seed: 1 });
        }
        out
    })
}

fn build(root: &Path, spec: &BTreeMap<String, Node>) {
    std::fs::create_dir_all(root).unwrap();
    // Files first, then directory modes (deepest first), as a user's tree would end up.
    for (path, node) in spec {
        match node {
            Node::File { size, seed, mode } => {
                let p = root.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, crate::common::noise(*size, u64::from(*seed))).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Dir { .. } => std::fs::create_dir_all(root.join(path)).unwrap(),
        }
    }
    for (path, node) in spec.iter().rev() {
        if let Node::Dir { mode } = node {
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
}

fn manager(dir: &Path) -> CloudManager {
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let overrides = Overrides {
        provider: Some("local".into()),
        bucket: Some(bucket.display().to_string()),
        prefix: Some("p".into()),
        ..Default::default()
    };
    let file = FileLocation { path: dir.join("none.json"), explicit: false };
    let resolved = config::resolve(&|_| None, &file, &overrides).unwrap();
    let transfer = TransferOptions { part_size: Some(8 << 10), concurrency: Some(3), ..Default::default() };
    CloudManager::with_provider(
        resolved,
        Arc::new(LocalProvider::new(&bucket)),
        Cache::new(dir.join("cache")),
        transfer,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_byte_identical(
        spec in tree_spec(),
        compression in prop::sample::select(vec![Compression::None, Compression::Zstd, Compression::Gzip]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/Model");
        build(&src, &spec);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let m = manager(dir.path());
        let up = rt.block_on(m.upload_model("Model", &src, &UploadOptions { compression, ..Default::default() })).unwrap();
        let down = rt.block_on(m.download_model("Model")).unwrap();
        prop_assert_eq!(tree(&down.path), tree(&src));
        prop_assert_eq!(down.sha256, up.sha256);
    }
}
