//! The rules a configuration's values follow: bucket names per provider, prefixes, endpoints,
//! regions, and which config keys are credentials (never kept, never printed).

use super::ProviderKind;
use crate::error::{Error, Result};

/// Whether a config key names a credential. Compared case-insensitively with `_`, `-` and `.`
/// removed, so `accountKey`, `AccessKey`, `api_key`, `SharedAccessSignature` and
/// `azure_storage_key` are all caught; a key that is (or ends in) `key`, `sig`, `pass` or `auth`
/// is one too. `kms_key`/`kms_key_id` name a key, they do not hold one, and are known keys.
pub(crate) fn looks_like_secret(key: &str) -> bool {
    let k: String = key.chars().filter(|c| !matches!(c, '_' | '-' | '.' | ' ')).collect::<String>().to_lowercase();
    const ANYWHERE: [&str; 14] = [
        "secret",
        "password",
        "passwd",
        "token",
        "credential",
        "connectionstring",
        "sas",
        "accesskey",
        "accountkey",
        "apikey",
        "storagekey",
        "private",
        "signature",
        "bearer",
    ];
    const WHOLE_OR_END: [&str; 6] = ["key", "sig", "pass", "auth", "pwd", "authorization"];
    ANYWHERE.iter().any(|w| k.contains(w)) || WHOLE_OR_END.iter().any(|w| k == *w || k.ends_with(w))
}

/// Single-quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Why a setting's value is refused, before it is known where the value came from (a flag, the
/// environment or the config): the caller names the source.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl Problem {
    pub(crate) fn new(message: String, hint: impl Into<String>) -> Self {
        Self { message, hint: hint.into() }
    }

    /// As an error about the config document at `origin` (exit 3).
    pub(crate) fn in_config(self, origin: &str) -> Error {
        Error::config(origin, self.message, self.hint)
    }

    /// As a usage error about a flag or an environment variable (exit 2), named by `source`.
    pub(crate) fn in_flag(self, source: &str) -> Error {
        Error::usage(format!("{source}: {}", self.message), self.hint)
    }
}

/// Normalises a prefix: no leading `/`, a trailing `/` unless empty, no `.`/`..` segments.
pub fn normalise_prefix(raw: &str, origin: &str) -> Result<String> {
    check_prefix(raw).map_err(|p| p.in_config(origin))
}

pub(crate) fn check_prefix(raw: &str) -> std::result::Result<String, Problem> {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().any(char::is_control) || trimmed.contains('\\') {
        return Err(Problem::new(
            format!("invalid prefix {raw:?}: control characters and '\\' are not allowed"),
            "use a prefix like \"crowecode-models/\"",
        ));
    }
    if trimmed.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(Problem::new(
            format!("invalid prefix {raw:?}: empty, '.' or '..' path segments are not allowed"),
            "use a prefix like \"crowecode-models/\"",
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// Checks an http(s) base URL of the setting `key` (`endpoint`, `mirror` or `data_proxy`): a host,
/// a port that exists, no query, fragment or credentials. Returns it without a trailing `/`.
pub(crate) fn check_url(raw: &str, key: &str) -> std::result::Result<String, Problem> {
    let (what, example) = match key {
        "mirror" => ("mirror URL", "for example --mirror https://models-cache.internal"),
        "data_proxy" => ("data proxy URL", "for example --data-proxy http://127.0.0.1:65001 (dfdaemon's proxy)"),
        _ => ("endpoint", "for example --endpoint https://s3.example.com"),
    };
    let e = raw.trim().trim_end_matches('/');
    let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
    // Never echo what might be a credential: messages show the URL redacted.
    let shown = redact_url(raw);
    let Some(rest) = rest.filter(|r| !r.is_empty()) else {
        return Err(Problem::new(format!("invalid {what} {shown:?}: expected an http:// or https:// URL"), example));
    };
    if rest.contains(['?', '#']) {
        return Err(Problem::new(
            format!("invalid {what} {shown:?}: it has no query or fragment"),
            "give the URL without `?...`; a SAS token goes in AZURE_STORAGE_SAS_TOKEN, never in the config",
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(Problem::new(
            format!("invalid {what} {shown:?}: it carries no user name or password"),
            "remove `user:password@`; credentials come from the cloud's own credential chain (see README, Credentials)",
        ));
    }
    if authority.is_empty() || rest.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Problem::new(
            format!("invalid {what} {shown:?}: no host, or spaces or control characters"),
            example,
        ));
    }
    if let Some(port) = port_of(authority)
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(Problem::new(
            format!("invalid {what} {shown:?}: port {port:?} is not between 1 and 65535"),
            example,
        ));
    }
    Ok(e.to_string())
}

/// The port written in `host:port` or `[v6]:port`, if any.
fn port_of(authority: &str) -> Option<&str> {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').and_then(|(_, after)| after.strip_prefix(':')),
        None => authority.rsplit_once(':').map(|(_, port)| port),
    }
}

/// A URL with what could be a credential hidden: the password of `user:password@`, and the
/// values of `sig`, `signature`, `token`, `key` and similar query parameters.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let after = scheme_end + 3;
        let authority_end = out[after..].find(['/', '?', '#']).map_or(out.len(), |i| after + i);
        if let Some(at) = out[after..authority_end].rfind('@') {
            let userinfo = &out[after..after + at];
            let user = userinfo.split(':').next().unwrap_or("");
            out.replace_range(after..after + at, &format!("{user}:<redacted>"));
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if looks_like_secret(k) || k.eq_ignore_ascii_case("sig") => format!("{k}=<redacted>"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{base}{}", redacted.join("&"));
    }
    out
}

/// AWS regions are lowercase letters, digits and dashes (`us-west-2`, `eu-central-1`);
/// S3-compatible stores also use names like `auto` or `default`, so letters, digits, `-` and `_`.
pub(super) fn region_problem(region: &str) -> Option<&'static str> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (!ok).then_some("a region is letters, digits, '-' and '_', like us-west-2")
}

pub(super) fn bucket_problem(kind: ProviderKind, b: &str) -> Option<String> {
    let bytes = b.as_bytes();
    let lower_digit = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match kind {
        ProviderKind::Local => (b.is_empty() || b.contains('\0')).then(|| "it must be a directory path".into()),
        ProviderKind::S3 | ProviderKind::Gcs | ProviderKind::Azure => {
            let max = if kind == ProviderKind::Gcs && b.contains('.') { 222 } else { 63 };
            if b.len() < 3 || b.len() > max {
                return Some(format!("it must be 3 to {max} characters long"));
            }
            let allowed = |c: u8| match kind {
                ProviderKind::S3 => lower_digit(c) || c == b'-' || c == b'.',
                ProviderKind::Gcs => lower_digit(c) || c == b'-' || c == b'.' || c == b'_',
                _ => lower_digit(c) || c == b'-',
            };
            if let Some(c) = bytes.iter().find(|c| !allowed(**c)) {
                return Some(format!("it contains {:?}", *c as char));
            }
            if !lower_digit(bytes[0]) || !lower_digit(bytes[bytes.len() - 1]) {
                return Some("it must start and end with a lowercase letter or digit".into());
            }
            if b.contains("..") || b.contains("--") && kind == ProviderKind::Azure {
                return Some("it contains consecutive '.' or '-'".into());
            }
            if kind != ProviderKind::Azure && b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok())
            {
                return Some("it must not look like an IP address".into());
            }
            if kind == ProviderKind::S3
                && (b.starts_with("xn--")
                    || b.starts_with("sthree-")
                    || b.ends_with("-s3alias")
                    || b.ends_with("--ol-s3"))
            {
                return Some("AWS reserves the prefixes xn-- and sthree- and the suffixes -s3alias and --ol-s3".into());
            }
            if kind == ProviderKind::Gcs && (b.starts_with("goog") || b.contains("google") || b.contains("g00gle")) {
                return Some("GCS forbids names that begin with \"goog\" or contain \"google\"".into());
            }
            None
        }
    }
}
