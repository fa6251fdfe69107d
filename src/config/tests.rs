use super::*;

const SEED_B64: &str = "eyJlbmFibGVkIjp0cnVlLCJwcm92aWRlciI6InMzIiwiY29uZmlnIjp7ImJ1Y2tldCI6Im15LWNyb3dlY29kZS1tb2RlbHMiLCJyZWdpb24iOiJ1cy13ZXN0LTIiLCJwcmVmaXgiOiJjcm93ZWNvZGUtbW9kZWxzLyJ9fQ==";

fn env_with(b64: Option<&str>) -> impl Fn(&str) -> Option<String> {
    let b64 = b64.map(str::to_string);
    move |k: &str| {
        if k == ENV_CONFIG_B64 { b64.clone() } else { None }
    }
}

fn nowhere() -> FileLocation {
    FileLocation { path: PathBuf::from("/nonexistent/crowecode/cloud.json"), explicit: false }
}

#[test]
fn seed_example_decodes_and_encodes_back_to_the_same_string() {
    let r = resolve(&env_with(Some(SEED_B64)), &nowhere(), &Overrides::default()).unwrap();
    assert_eq!(r.source, ConfigSource::Env);
    assert_eq!(r.config.provider, ProviderKind::S3);
    assert_eq!(r.config.bucket, "my-crowecode-models");
    assert_eq!(r.config.region.as_deref(), Some("us-west-2"));
    assert_eq!(r.config.prefix, "crowecode-models/");
    assert!(r.warnings.is_empty());
    assert_eq!(r.config.to_b64(), SEED_B64);
}

#[test]
fn flags_override_env_per_key() {
    let ov = Overrides { bucket: Some("other-bucket".into()), ..Default::default() };
    let r = resolve(&env_with(Some(SEED_B64)), &nowhere(), &ov).unwrap();
    assert_eq!(r.config.bucket, "other-bucket");
    assert_eq!(r.config.region.as_deref(), Some("us-west-2"));
}

#[test]
fn a_different_provider_flag_starts_from_flags_only() {
    let ov = Overrides { provider: Some("local".into()), bucket: Some("/tmp/b".into()), ..Default::default() };
    let r = resolve(&env_with(Some(SEED_B64)), &nowhere(), &ov).unwrap();
    assert_eq!(r.source, ConfigSource::Flags);
    assert_eq!(r.config.provider, ProviderKind::Local);
    assert_eq!(r.config.region, None);
}

#[test]
fn missing_everything_is_not_configured() {
    let err = resolve(&env_with(None), &nowhere(), &Overrides::default()).unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(matches!(err, Error::NotConfigured { .. }));
}

#[test]
fn malformed_inputs_name_their_source_and_exit_3() {
    for (b64, needle) in [
        ("!!!not base64", "not valid base64"),
        ("bm90IGpzb24=", "not valid JSON"),
        ("WzFd", "JSON object"),
        ("eyJwcm92aWRlciI6InMzIn0=", "no bucket"),
        ("eyJwcm92aWRlciI6ImZ0cCIsImNvbmZpZyI6eyJidWNrZXQiOiJ4eXoifX0=", "unknown provider"),
        ("eyJlbmFibGVkIjpmYWxzZSwicHJvdmlkZXIiOiJzMyIsImNvbmZpZyI6eyJidWNrZXQiOiJ4eXoifX0=", "disabled"),
    ] {
        let err = resolve(&env_with(Some(b64)), &nowhere(), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.exit_code(), 3, "{b64}: {text}");
        assert!(text.starts_with(ENV_CONFIG_B64), "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
        assert!(err.hint().is_some());
    }
}

#[test]
fn unknown_keys_are_kept_secret_looking_ones_dropped() {
    let json =
        r#"{"provider":"s3","config":{"bucket":"abc","colour":"blue","aws_secret_access_key":"SHOULD-NOT-LEAK"}}"#;
    let doc = Document::from_json(json.as_bytes(), "test", &mut Vec::new()).unwrap();
    let mut warnings = Vec::new();
    let cfg = doc.into_config(&Overrides::default(), "test", &mut warnings).unwrap();
    assert!(cfg.extra.contains_key("colour"));
    assert!(!cfg.extra.contains_key("aws_secret_access_key"));
    let all = format!("{warnings:?} {cfg:?} {}", cfg.to_document());
    assert!(!all.contains("SHOULD-NOT-LEAK"), "{all}");
    assert_eq!(warnings.len(), 2);
}

#[test]
fn prefixes_are_normalised() {
    assert_eq!(normalise_prefix("models", "t").unwrap(), "models/");
    assert_eq!(normalise_prefix("/a/b/", "t").unwrap(), "a/b/");
    assert_eq!(normalise_prefix("", "t").unwrap(), "");
    assert!(normalise_prefix("a/../b", "t").is_err());
    assert!(normalise_prefix("a//b", "t").is_err());
}

#[test]
fn bucket_rules_follow_each_provider() {
    assert!(bucket_problem(ProviderKind::S3, "my-models.v2").is_none());
    assert!(bucket_problem(ProviderKind::S3, "My_Models").is_some());
    assert!(bucket_problem(ProviderKind::S3, "ab").is_some());
    assert!(bucket_problem(ProviderKind::S3, "192.168.1.1").is_some());
    assert!(bucket_problem(ProviderKind::Gcs, "my_models").is_none());
    assert!(bucket_problem(ProviderKind::Azure, "models").is_none());
    assert!(bucket_problem(ProviderKind::Azure, "my.models").is_some());
    assert!(bucket_problem(ProviderKind::Azure, "a--b").is_some());
    assert!(bucket_problem(ProviderKind::Local, "/tmp/x").is_none());
}

#[test]
fn endpoint_loses_trailing_slash_and_must_be_a_url() {
    assert_eq!(
        check_url("http://127.0.0.1:10000/devstoreaccount1/", "endpoint").unwrap(),
        "http://127.0.0.1:10000/devstoreaccount1"
    );
    assert!(check_url("127.0.0.1:4566", "endpoint").is_err());
    assert!(check_url("http://127.0.0.1:99999", "mirror").unwrap_err().message.contains("port \"99999\""));
    assert!(check_url("http://[::1]:8080/", "mirror").is_ok());
    assert!(check_url("http://host:abc", "data_proxy").is_err());
}

#[test]
fn file_written_with_mode_0600_round_trips() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/cloud.json");
    let cfg = resolve(&env_with(Some(SEED_B64)), &nowhere(), &Overrides::default()).unwrap().config;
    write_config_file(&path, &cfg).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again =
        resolve(&env_with(None), &FileLocation { path: path.clone(), explicit: true }, &Overrides::default()).unwrap();
    assert_eq!(again.config, cfg);
    assert_eq!(again.source, ConfigSource::File(path));
}
