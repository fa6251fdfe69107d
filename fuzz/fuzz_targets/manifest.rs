//! Manifest parsing: anything accepted is self-consistent.
#![no_main]

use crowecode_cloud::manifest::Manifest;
use crowecode_cloud::names::ModelName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let model = ModelName::new("Alpha").unwrap();
    if let Ok(m) = Manifest::parse(data, &model, "fuzz/manifest.json") {
        for f in &m.files {
            assert!(!f.path.starts_with('/') && !f.path.split('/').any(|c| c == ".." || c.is_empty()), "{}", f.path);
        }
        let _ = m.expected_entries();
        // A parsed manifest serialises and parses back to the same thing.
        let again = Manifest::parse(&m.to_bytes(), &model, "again").expect("round trip");
        assert!(again.same_tree(&m));
    }
});
