//! Azure credentials the official crate does not take: connection strings, account keys
//! (SharedKey request signing) and SAS tokens; and the choice among all sources.
//!
//! SharedKey follows "Authorize with Shared Key" of the Azure Storage REST reference (service
//! version 2009-09-19 and later): the string to sign is the verb, eleven standard header values
//! (Content-Length empty when zero), the `x-ms-*` headers lowercased and sorted, and the
//! canonicalized resource (`/account/path` then each query parameter as `name:value`, names
//! lowercased and sorted, values decoded). The signature is base64(HMAC-SHA256(key, string)).
//! The unit tests hold signatures computed by Microsoft's Python SDK for the same requests.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use azure_core::time::{OffsetDateTime, to_rfc7231};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Azurite's published development account and key (`UseDevelopmentStorage=true`).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// A parsed storage connection string. `Debug` never shows the key or the SAS.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionString {
    /// `AccountName`.
    pub account: Option<String>,
    /// `AccountKey`, still base64.
    pub key: Option<String>,
    /// `SharedAccessSignature`, without a leading `?`.
    pub sas: Option<String>,
    /// `BlobEndpoint`, without a trailing `/`.
    pub blob_endpoint: Option<String>,
    /// `DefaultEndpointsProtocol` (`https` unless said otherwise).
    pub protocol: Option<String>,
    /// `EndpointSuffix` (`core.windows.net` unless said otherwise).
    pub suffix: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("account", &self.account)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("sas", &self.sas.as_ref().map(|_| "<redacted>"))
            .field("blob_endpoint", &self.blob_endpoint)
            .finish_non_exhaustive()
    }
}

impl ConnectionString {
    /// Parses `Key=Value;…` (keys case-insensitive, values may contain `=`). Errors name the
    /// offending key, never a value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) =
                part.split_once('=').ok_or_else(|| "a part without `=` (expected Key=Value;…)".to_string())?;
            let value = value.trim().to_string();
            if value.is_empty() {
                // `AccountName=;` says nothing; treat it as absent so the error names it.
                continue;
            }
            match key.trim().to_ascii_lowercase().as_str() {
                "accountname" => out.account = Some(value),
                "accountkey" => out.key = Some(value),
                "sharedaccesssignature" => out.sas = Some(value.trim_start_matches('?').to_string()),
                "blobendpoint" => out.blob_endpoint = Some(value.trim_end_matches('/').to_string()),
                "defaultendpointsprotocol" => out.protocol = Some(value),
                "endpointsuffix" => out.suffix = Some(value),
                "usedevelopmentstorage" if value.eq_ignore_ascii_case("true") => {
                    out.account = Some(DEV_ACCOUNT.into());
                    out.key = Some(DEV_KEY.into());
                    out.blob_endpoint = Some(DEV_ENDPOINT.into());
                }
                // Queue, table and file endpoints and the like concern other services.
                _ => {}
            }
        }
        if out.key.is_none() && out.sas.is_none() {
            return Err("it has neither AccountKey nor SharedAccessSignature".into());
        }
        if out.key.is_some() && out.account.is_none() {
            return Err("it has an AccountKey but no AccountName".into());
        }
        if out.blob_endpoint.is_none() && out.account.is_none() {
            return Err("it has neither BlobEndpoint nor AccountName".into());
        }
        Ok(out)
    }

    /// The blob endpoint it names or implies.
    pub fn endpoint(&self) -> Option<String> {
        self.blob_endpoint.clone().or_else(|| {
            let account = self.account.as_deref()?;
            let protocol = self.protocol.as_deref().unwrap_or("https");
            let suffix = self.suffix.as_deref().unwrap_or("core.windows.net");
            Some(format!("{protocol}://{account}.blob.{suffix}"))
        })
    }
}

/// An account key: the account name and the decoded key bytes. `Debug` hides the key.
#[derive(Clone)]
pub struct SharedKey {
    account: String,
    key: Vec<u8>,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKey").field("account", &self.account).finish_non_exhaustive()
    }
}

impl SharedKey {
    /// From the base64 key Azure shows; the error never contains the key.
    pub fn new(account: &str, key_b64: &str) -> Result<Self, String> {
        let key = B64.decode(key_b64.trim()).map_err(|_| {
            format!("the account key of {account:?} is not valid base64 (copy it again from the portal)")
        })?;
        if key.is_empty() {
            return Err(format!("the account key of {account:?} is empty"));
        }
        Ok(Self { account: account.to_string(), key })
    }

    /// The account the key belongs to.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The `Authorization` header value for a request.
    pub fn authorization<'a>(
        &self,
        method: &str,
        url: &Url,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        body_len: Option<u64>,
    ) -> String {
        let text = string_to_sign(&self.account, method, url, headers, body_len);
        format!("SharedKey {}:{}", self.account, self.sign(&text))
    }

    /// A service SAS (query string, no `?`) that lets its bearer read one blob until `expiry`:
    /// `container_and_blob` is `container/blob/name`, not encoded.
    pub fn blob_read_sas(&self, container_and_blob: &str, expiry: std::time::SystemTime) -> String {
        const VERSION: &str = "2021-08-06";
        let se = humantime::format_rfc3339_seconds(expiry).to_string();
        let resource = format!("/blob/{}/{container_and_blob}", self.account);
        // Permissions, start, expiry, resource, identifier, IP, protocol, version, resource type,
        // snapshot time, encryption scope, and the five response-header overrides.
        let text = ["r", "", &se, &resource, "", "", "", VERSION, "b", "", "", "", "", "", "", ""].join("\n");
        let sig = self.sign(&text);
        let enc = crate::provider::percent_encode;
        format!("sv={VERSION}&sr=b&sp=r&se={}&sig={}", enc(&se), enc(&sig))
    }

    fn sign(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(text.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

/// The SharedKey string to sign (see the module docs).
pub fn string_to_sign<'a>(
    account: &str,
    method: &str,
    url: &Url,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    body_len: Option<u64>,
) -> String {
    const STANDARD: [&str; 11] = [
        "content-encoding",
        "content-language",
        "content-length",
        "content-md5",
        "content-type",
        "date",
        "if-modified-since",
        "if-match",
        "if-none-match",
        "if-unmodified-since",
        "range",
    ];
    let mut standard: [Option<String>; 11] = Default::default();
    let mut ms: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = value.trim().to_string();
        if let Some(i) = STANDARD.iter().position(|s| *s == name) {
            standard[i] = Some(value);
        } else if name.starts_with("x-ms-") {
            ms.push((name, value));
        }
    }
    // The transport sets Content-Length from the body; a zero length signs as empty.
    if standard[2].is_none() {
        standard[2] = body_len.map(|n| n.to_string());
    }
    if standard[2].as_deref() == Some("0") {
        standard[2] = None;
    }
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    for value in &standard {
        out.push_str(value.as_deref().unwrap_or(""));
        out.push('\n');
    }
    ms.sort();
    for (name, value) in ms {
        out.push_str(&name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push('/');
    out.push_str(account);
    out.push_str(url.path());
    let mut params: Vec<(String, String)> =
        url.query_pairs().map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned())).collect();
    params.sort();
    let mut i = 0;
    while i < params.len() {
        let name = &params[i].0;
        let values: Vec<&str> = params[i..].iter().take_while(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
        out.push('\n');
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        i += values.len();
    }
    out
}

/// A per-try pipeline policy that dates and signs every request with an account key.
#[derive(Debug)]
pub struct SharedKeyPolicy(pub SharedKey);

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        request.insert_header("x-ms-date", to_rfc7231(&OffsetDateTime::now_utc()));
        let method = request.method().to_string();
        let body_len = request.body().len();
        let auth = {
            let headers = request.headers().iter().map(|(n, v)| (n.as_str(), v.as_str()));
            self.0.authorization(&method, request.url(), headers, body_len)
        };
        request.insert_header("authorization", auth);
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = DEV_KEY;
    const DATE: &str = "Sun, 29 Nov 2026 10:00:00 GMT";

    fn auth(account: &str, method: &str, url: &str, headers: &[(&str, &str)]) -> String {
        let key = SharedKey::new(account, KEY).unwrap();
        key.authorization(method, &url.parse().unwrap(), headers.iter().copied(), None)
    }

    // Expected values: Microsoft's azure-storage-blob 12.31.1 (Python), SharedKeyCredentialPolicy,
    // signing the same requests.
    #[test]
    fn ranged_get_path_style() {
        let got = auth(
            "devstoreaccount1",
            "GET",
            "http://127.0.0.1:10000/devstoreaccount1/models/crowecode-models/Alpha/archives/a.tar",
            &[
                ("x-ms-date", DATE),
                ("x-ms-version", "2026-02-06"),
                ("range", "bytes=0-1048575"),
                ("accept", "application/octet-stream"),
                ("x-ms-client-request-id", "0f7e"),
            ],
        );
        assert_eq!(got, "SharedKey devstoreaccount1:qmzCRdNHU56P5aTuETCwdvTiZ8VNAUemgInLyuVS9P4=");
    }

    #[test]
    fn stage_block_with_scope() {
        let got = auth(
            "devstoreaccount1",
            "PUT",
            "http://127.0.0.1:10000/devstoreaccount1/models/Alpha/archives/a.tar?comp=block&blockid=MDAwMDAx",
            &[
                ("x-ms-date", DATE),
                ("x-ms-version", "2026-02-06"),
                ("content-length", "8388608"),
                ("content-type", "application/octet-stream"),
                ("x-ms-encryption-scope", "scope1"),
            ],
        );
        assert_eq!(got, "SharedKey devstoreaccount1:TC75RY5K7twD+bxq2DdmEvlEnP5RqYg/91yLyOwBkzI=");
    }

    #[test]
    fn list_with_encoded_query_values() {
        let got = auth(
            "myaccount",
            "GET",
            "https://myaccount.blob.core.windows.net/models?restype=container&comp=list&prefix=crowecode-models%2FAlpha%2F&marker=2%21100%21MDAw",
            &[("x-ms-date", DATE), ("x-ms-version", "2026-02-06"), ("accept", "application/xml")],
        );
        assert_eq!(got, "SharedKey myaccount:2Pxxh5SncYFdsHfKgDj8yYW7QqkyuIryhK0aQajSbk4=");
    }

    // A listing of the whole container (no prefix configured): no `prefix` parameter at all. The
    // third request shows that an empty value canonicalises as `prefix:` (as the SDK does);
    // Azurite does not accept that signature, so the provider never sends an empty prefix.
    #[test]
    fn list_of_the_whole_container_without_a_prefix() {
        let headers = [("x-ms-date", DATE), ("x-ms-version", "2026-02-06"), ("accept", "application/xml")];
        for (url, want) in [
            (
                "http://127.0.0.1:10000/devstoreaccount1/models?restype=container&comp=list",
                "jdQB3jQJz2Qk+FIM7ZBV0SP/BYUFNqznokkZwVLPm1A=",
            ),
            (
                "http://127.0.0.1:10000/devstoreaccount1/models?restype=container&comp=list&maxresults=1",
                "RvCGFTY+h6A2sdrvJ4vxiPAcrX/F6lHOcZOyE8DN+/A=",
            ),
            (
                "http://127.0.0.1:10000/devstoreaccount1/models?restype=container&comp=list&prefix=",
                "IWd8D4b2req6TclcrDjKLii+yxlfxyEOisy5/kTXU8k=",
            ),
        ] {
            assert_eq!(
                auth("devstoreaccount1", "GET", url, &headers),
                format!("SharedKey devstoreaccount1:{want}"),
                "{url}"
            );
        }
    }

    #[test]
    fn create_only_put_with_zero_length() {
        let got = auth(
            "myaccount",
            "PUT",
            "https://myaccount.blob.core.windows.net/models/Alpha/manifest.json",
            &[
                ("x-ms-date", DATE),
                ("x-ms-version", "2026-02-06"),
                ("content-length", "0"),
                ("if-none-match", "*"),
                ("x-ms-blob-type", "BlockBlob"),
                ("content-type", "application/json"),
            ],
        );
        assert_eq!(got, "SharedKey myaccount:j7ecJCpTHOZ74aF10bAA8HjszShPoor95+teFa36rJk=");
    }

    #[test]
    fn head_with_escaped_path_and_if_match() {
        let got = auth(
            "myaccount",
            "HEAD",
            "https://myaccount.blob.core.windows.net/models/a%20b/manifest.json",
            &[("x-ms-date", DATE), ("x-ms-version", "2026-02-06"), ("if-match", "\"0x8D\"")],
        );
        assert_eq!(got, "SharedKey myaccount:K8nrK1GYNZad6NC7EQHzSse8CX17DUyIFr86thsTocU=");
    }

    #[test]
    fn string_to_sign_layout() {
        let url = "https://a.blob.core.windows.net/c/b?comp=block&blockid=x%3D".parse().unwrap();
        let text = string_to_sign(
            "a",
            "PUT",
            &url,
            [("X-Ms-Version", " 2026-02-06 "), ("x-ms-date", DATE), ("Content-Type", "t")].into_iter(),
            Some(5),
        );
        let expected = format!(
            "PUT\n\n\n5\n\nt\n\n\n\n\n\n\nx-ms-date:{DATE}\nx-ms-version:2026-02-06\n/a/c/b\nblockid:x=\ncomp:block"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=abc==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;",
        )
        .unwrap();
        assert_eq!(cs.account.as_deref(), Some("devstoreaccount1"));
        assert_eq!(cs.key.as_deref(), Some("abc=="));
        assert_eq!(cs.endpoint().as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
        assert!(!format!("{cs:?}").contains("abc=="));

        let cs = ConnectionString::parse("accountname=acct;accountkey=k;endpointsuffix=core.chinacloudapi.cn").unwrap();
        assert_eq!(cs.endpoint().as_deref(), Some("https://acct.blob.core.chinacloudapi.cn"));

        let cs = ConnectionString::parse(
            "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=?sv=2024&sig=s%3D",
        )
        .unwrap();
        assert_eq!(cs.sas.as_deref(), Some("sv=2024&sig=s%3D"));
        assert!(!format!("{cs:?}").contains("sig"));

        let cs = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(cs.endpoint().as_deref(), Some(DEV_ENDPOINT));

        for bad in ["", "AccountName=a", "AccountKey=k", "garbage", "SharedAccessSignature=sv=1"] {
            let err = ConnectionString::parse(bad).unwrap_err();
            assert!(!err.contains("=k"), "{err}");
        }
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let err = SharedKey::new("acct", "not base64!!").unwrap_err();
        assert!(err.contains("acct") && !err.contains("not base64!!"), "{err}");
        assert!(!format!("{:?}", SharedKey::new("acct", KEY).unwrap()).contains(KEY));
    }
}
