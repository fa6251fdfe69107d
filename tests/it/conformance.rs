//! One conformance suite for the `Provider` trait, run on every backend: the local provider
//! always, and S3 on moto. Each check names the behaviour the transfer engine relies on.

use std::sync::Arc;

use bytes::Bytes;
use crowecode_cloud::config::{self, FileLocation, Overrides};
use crowecode_cloud::provider::{self, GetRange, Provider, ProviderErrorKind, ProviderExt as _, PutMode, RetryPolicy};
use futures::{StreamExt as _, TryStreamExt as _, stream};

use crate::common::{noise, require_env};

pub(crate) async fn provider_for(overrides: Overrides, dir: &std::path::Path) -> Arc<dyn Provider> {
    let file = FileLocation { path: dir.join("none.json"), explicit: false };
    let resolved = config::resolve(&|_| None, &file, &overrides).unwrap();
    provider::from_config(&resolved.config, RetryPolicy { max_attempts: 2, ..RetryPolicy::default() }).await.unwrap()
}

async fn read(p: &dyn Provider, key: &str, range: GetRange) -> Vec<u8> {
    let mut s = p.get(key, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

struct Expect {
    /// The backend refuses a create-only write over an existing object.
    conditional: bool,
    /// The backend refuses a write whose version precondition no longer holds.
    if_match: bool,
    /// The backend lists unfinished multipart uploads.
    lists_pending: bool,
    /// Smallest non-final multipart part.
    min_part: usize,
    /// Also check listing across pages (over 1,000 keys).
    many_keys: bool,
}

/// A streamed body of `data` in pieces of 256 KiB, and how many times it was opened to be sent.
/// With `fail_at`, a stream opened to be sent (not one read to hash it) spoils the body and fails
/// once that many bytes went out.
fn streamed(data: Vec<u8>, fail_at: Option<usize>) -> (provider::StreamBody, Arc<std::sync::atomic::AtomicUsize>) {
    let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spoiled = Arc::new(std::sync::OnceLock::new());
    let (data, counted, spoils) = (Bytes::from(data), opens.clone(), spoiled.clone());
    let len = data.len() as u64;
    let body = provider::StreamBody::new(len, spoiled, move |sent| {
        if sent {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let (data, spoils) = (data.clone(), spoils.clone());
        let fail_at = fail_at.filter(|_| sent);
        Box::pin(stream::iter((0..data.len()).step_by(256 << 10)).map(move |at| {
            if fail_at.is_some_and(|f| at >= f) {
                let _ = spoils.set("the source changed".to_string());
                return Err(provider::ProviderError::new(ProviderErrorKind::Other, "the source changed"));
            }
            Ok(data.slice(at..(at + (256 << 10)).min(data.len())))
        })) as provider::ByteStream
    });
    (body, opens)
}

async fn suite(p: Arc<dyn Provider>, expect: Expect) {
    let p = p.as_ref();
    // The bucket answers.
    p.check_bucket().await.unwrap();

    // A missing object is NotFound, for head and get alike; deleting it succeeds.
    assert_eq!(p.head("t/missing").await.unwrap_err().kind, ProviderErrorKind::NotFound);
    let get_missing = p.get("t/missing", GetRange::All).await.err().expect("get of a missing key fails");
    assert_eq!(get_missing.kind, ProviderErrorKind::NotFound, "{get_missing}");
    p.delete("t/missing").await.unwrap();

    // put → head → get, whole and ranged.
    let data = noise(100_000, 1);
    p.put("t/obj.bin", Bytes::from(data.clone()), PutMode::Overwrite).await.unwrap();
    let meta = p.head("t/obj.bin").await.unwrap();
    assert_eq!(meta.size, 100_000);
    assert_eq!(read(p, "t/obj.bin", GetRange::All).await, data);
    assert_eq!(read(p, "t/obj.bin", GetRange::Bounded(1000..5000)).await, &data[1000..5000]);
    assert_eq!(read(p, "t/obj.bin", GetRange::From(99_990)).await, &data[99_990..]);
    assert_eq!(p.get_bytes("t/obj.bin").await.unwrap().len(), 100_000);

    // Conditional writes: create-only refuses an existing key; a version precondition refuses a
    // write once the object changed, and passes with the current version.
    if expect.conditional {
        let err = p.put("t/obj.bin", Bytes::from_static(b"x"), PutMode::Create).await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Precondition, "{err}");
        p.put("t/created.bin", Bytes::from_static(b"c"), PutMode::Create).await.unwrap();
    }
    if expect.if_match {
        let stale = p.head("t/obj.bin").await.unwrap().etag.expect("etag");
        p.put("t/obj.bin", Bytes::from(noise(1000, 99)), PutMode::Overwrite).await.unwrap();
        let err = p.put("t/obj.bin", Bytes::from_static(b"x"), PutMode::IfMatch(stale)).await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Precondition, "{err}");
        let etag = p.head("t/obj.bin").await.unwrap().etag.expect("etag");
        p.put("t/obj.bin", Bytes::from_static(b"new"), PutMode::IfMatch(etag)).await.unwrap();
        assert_eq!(p.get_bytes("t/obj.bin").await.unwrap(), Bytes::from_static(b"new"));
    }

    // A body read as it is sent: stored whole (over 4 MiB, where Azure's crate would cut blocks),
    // create-only as `put` is. One that fails midway, once bytes went out, stores nothing (the
    // request never got its last byte) and, its source having said so, is not tried again.
    let big = noise((5 << 20) + 123, 7);
    let (body, opens) = streamed(big.clone(), None);
    p.put_stream("t/streamed.bin", body.clone(), PutMode::Create).await.unwrap();
    assert_eq!(read(p, "t/streamed.bin", GetRange::All).await, big);
    if expect.conditional {
        let err = p.put_stream("t/streamed.bin", body, PutMode::Create).await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Precondition, "{err}");
    }
    assert!(opens.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let (spoiled, opens) = streamed(big.clone(), Some(3 << 20));
    let err = p.put_stream("t/spoiled.bin", spoiled.clone(), PutMode::Overwrite).await.unwrap_err();
    assert_eq!(spoiled.spoiled(), Some("the source changed"), "{err}");
    assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried: {err}");
    assert_eq!(p.head("t/spoiled.bin").await.unwrap_err().kind, ProviderErrorKind::NotFound, "nothing stored");
    p.delete("t/streamed.bin").await.unwrap();

    // Multipart: parts uploaded out of order where the backend allows it, completed in order,
    // read back whole.
    let parts: Vec<Vec<u8>> = vec![noise(expect.min_part, 2), noise(expect.min_part, 3), noise(777, 4)];
    let id = p.create_multipart("t/multi.bin", expect.min_part as u64).await.unwrap();
    let mut tags = Vec::new();
    let order = if p.limits().concurrent_parts { [2u32, 1, 3] } else { [1, 2, 3] };
    for n in order {
        tags.push(p.put_part("t/multi.bin", &id, n, Bytes::from(parts[n as usize - 1].clone())).await.unwrap());
    }
    tags.sort_by_key(|t| t.number);
    assert!(p.head("t/multi.bin").await.is_err(), "nothing visible before complete");
    p.complete_multipart("t/multi.bin", &id, tags).await.unwrap();
    assert_eq!(read(p, "t/multi.bin", GetRange::All).await, parts.concat());

    // An aborted upload leaves nothing behind, pending or visible.
    let id = p.create_multipart("t/aborted.bin", expect.min_part as u64).await.unwrap();
    p.put_part("t/aborted.bin", &id, 1, Bytes::from(noise(expect.min_part, 5))).await.unwrap();
    if expect.lists_pending {
        assert!(p.list_pending_uploads("t/").await.unwrap().iter().any(|u| u.upload_id == id), "pending upload listed");
    }
    p.abort_multipart("t/aborted.bin", &id).await.unwrap();
    assert!(!p.list_pending_uploads("t/").await.unwrap().iter().any(|u| u.upload_id == id));
    assert_eq!(p.head("t/aborted.bin").await.unwrap_err().kind, ProviderErrorKind::NotFound);

    // Listing: by prefix, sorted, with sizes, nothing outside the prefix.
    p.put("u/other.bin", Bytes::from_static(b"o"), PutMode::Overwrite).await.unwrap();
    let keys: Vec<String> = p.list("t/").await.unwrap().into_iter().map(|o| o.key).collect();
    let mut expected = vec!["t/multi.bin".to_string(), "t/obj.bin".to_string()];
    if expect.conditional {
        expected.insert(0, "t/created.bin".into());
    }
    assert_eq!(keys, expected);
    assert_eq!(p.list("t/o").await.unwrap().len(), 1, "prefixes need not end at a '/'");

    // Listing crosses pages (S3 returns at most 1,000 keys a page).
    if expect.many_keys {
        stream::iter(0..1005)
            .map(|i| async move { p.put(&format!("many/k{i:05}"), Bytes::from_static(b"."), PutMode::Overwrite).await })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let listed = p.list("many/").await.unwrap();
        assert_eq!(listed.len(), 1005);
        assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    }

    // Delete makes an object disappear.
    p.delete("t/obj.bin").await.unwrap();
    assert_eq!(p.head("t/obj.bin").await.unwrap_err().kind, ProviderErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let overrides =
        Overrides { provider: Some("local".into()), bucket: Some(bucket.display().to_string()), ..Default::default() };
    let p = provider_for(overrides, dir.path()).await;
    assert_eq!(p.check_bucket().await.unwrap_err().kind, ProviderErrorKind::BucketNotFound);
    assert!(p.create_bucket().await.unwrap(), "created");
    assert!(!p.create_bucket().await.unwrap(), "already there");
    suite(p, Expect { conditional: true, if_match: true, lists_pending: true, min_part: 1000, many_keys: true }).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_provider_conforms_on_moto() {
    let endpoint = require_env("CROWECODE_TEST_S3_ENDPOINT");
    require_env("AWS_ACCESS_KEY_ID");
    let dir = tempfile::tempdir().unwrap();
    let bucket = format!("conformance-{:08x}", fastrand_u32());
    let overrides = Overrides {
        provider: Some("s3".into()),
        bucket: Some(bucket),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let p = provider_for(overrides, dir.path()).await;
    assert_eq!(p.check_bucket().await.unwrap_err().kind, ProviderErrorKind::BucketNotFound);
    assert!(p.create_bucket().await.unwrap());
    assert!(!p.create_bucket().await.unwrap());
    suite(p, Expect { conditional: true, if_match: true, lists_pending: true, min_part: 5 << 20, many_keys: true })
        .await;
}

#[cfg(feature = "gcs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_provider_conforms_on_fake_gcs_server() {
    let endpoint = require_env("CROWECODE_TEST_GCS_ENDPOINT");
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        provider: Some("gcs".into()),
        bucket: Some(format!("conformance-{:08x}", fastrand_u32())),
        endpoint: Some(endpoint),
        project: Some("test-project".into()),
        ..Default::default()
    };
    let p = provider_for(overrides, dir.path()).await;
    assert_eq!(p.check_bucket().await.unwrap_err().kind, ProviderErrorKind::BucketNotFound);
    assert!(p.create_bucket().await.unwrap());
    assert!(!p.create_bucket().await.unwrap());
    suite(p, Expect { conditional: true, if_match: true, lists_pending: false, min_part: 256 << 10, many_keys: true })
        .await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_provider_conforms_on_azurite() {
    use crowecode_cloud::provider::Retrying;
    use crowecode_cloud::provider::azure::AzureProvider;

    let a = crate::azure::azurite();
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        provider: Some("azure".into()),
        bucket: Some(format!("conformance-{:08x}", fastrand_u32())),
        ..Default::default()
    };
    let file = FileLocation { path: dir.path().join("none.json"), explicit: false };
    let resolved = config::resolve(&|_| None, &file, &overrides).unwrap();
    let cs = a.connection_string(&a.key);
    let env = move |name: &str| (name == "AZURE_STORAGE_CONNECTION_STRING").then(|| cs.clone());
    let inner = AzureProvider::with_env(&resolved.config, &env).unwrap();
    let p: Arc<dyn Provider> =
        Arc::new(Retrying::new(Arc::new(inner), RetryPolicy { max_attempts: 2, ..RetryPolicy::default() }));
    assert_eq!(p.check_bucket().await.unwrap_err().kind, ProviderErrorKind::BucketNotFound);
    assert!(p.create_bucket().await.unwrap());
    assert!(!p.create_bucket().await.unwrap());
    suite(p, Expect { conditional: true, if_match: true, lists_pending: false, min_part: 1 << 20, many_keys: true })
        .await;
}

/// A random bucket suffix without another dependency.
pub fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u32
}
