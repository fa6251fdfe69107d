//! Archive extraction: arbitrary bytes against a fixed manifest never panic and never write
//! outside the staging directory.
#![no_main]

use crowecode_cloud::archive::Extractor;
use crowecode_cloud::manifest::Manifest;
use crowecode_cloud::names::ModelName;
use libfuzzer_sys::fuzz_target;

const MANIFEST: &str = r#"{"format":1,"model":"Alpha","archive_key":"m/Alpha/archives/a.tar",
"archive_sha256":"0000000000000000000000000000000000000000000000000000000000000000","archive_size":3584,
"compression":"none","files":[
{"path":"a.txt","size":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","mode":420,"offset":512},
{"path":"sub/b.bin","size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","mode":493,"offset":2048}],
"dirs":[{"path":"sub","mode":493}],"total_size":8,"created_at":"2026-01-01T00:00:00Z","tool_version":"fuzz"}"#;

fuzz_target!(|data: &[u8]| {
    let model = ModelName::new("Alpha").unwrap();
    let manifest = Manifest::parse(MANIFEST.as_bytes(), &model, "fuzz").expect("the fixed manifest parses");
    let outer = tempfile::tempdir().unwrap();
    let staging = outer.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let mut x = Extractor::new(staging.clone(), manifest.expected_entries(), true);
    // Feed in two pieces to cross a boundary the input chooses.
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let ok = x.feed(&data[..cut]).and_then(|()| x.feed(&data[cut..])).and_then(|()| x.finish()).is_ok();
    // Nothing is ever written beside the staging directory.
    let outside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(outside, ["staging"], "wrote outside staging");
    if ok {
        assert_eq!(std::fs::read(staging.join("a.txt")).unwrap(), b"hello");
        assert_eq!(std::fs::read(staging.join("sub/b.bin")).unwrap(), b"abc");
    }
});
