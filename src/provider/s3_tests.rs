use super::*;

#[test]
fn listed_keys_are_url_decoded_like_botocore() {
    assert_eq!(url_decode("p/a+b%2Bc/manifest.json").as_deref(), Some("p/a b+c/manifest.json"));
    assert_eq!(url_decode("p/%1B%5B31mRED/manifest.json").as_deref(), Some("p/\u{1b}[31mRED/manifest.json"));
    assert_eq!(url_decode("p/%C3%A9").as_deref(), Some("p/\u{e9}"));
    assert_eq!(url_decode("bad%2"), None);
    assert_eq!(url_decode("bad%zz"), None);
    assert_eq!(url_decode("%FF"), None, "not UTF-8");
}

#[test]
fn content_range_parsing() {
    assert_eq!(content_range_start("bytes 100-199/1000"), Some(100));
    assert_eq!(content_range_start("bytes */1000"), None);
    assert_eq!(content_range_start("garbage"), None);
}

#[test]
fn access_keys_are_masked() {
    assert_eq!(mask("AKIAIOSFODNN7EXAMPLE"), "AKIA…MPLE");
    assert_eq!(mask("short"), "****");
}
