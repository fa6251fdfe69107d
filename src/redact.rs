//! The one place that hides credentials in text. Every provider error message, every printed
//! error and hint, and every log line passes through [`text`], so a presigned URL (S3's
//! signature, access key id and session token; an Azure SAS) quoted by an HTTP client's error
//! never reaches a terminal or a log.

/// Query parameters that carry a credential, wherever they appear (lowercase).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "signature",
    "token",
    "access_token",
    "sas",
    "skoid",
    "sktid",
];

/// `text` with every URL's query, fragment and userinfo dropped (`https://h/p?X-Amz-…` becomes
/// `https://h/p?…`), and any credential-carrying `name=value` left outside a URL hidden.
pub fn text(text: &str) -> String {
    if !text.contains("://") && !text.contains('=') {
        return text.to_string();
    }
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(start) = next_url(&lower, at) {
        out.push_str(&text[at..start]);
        let end = lower[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>' | '`' | ']' | '}'))
            .map_or(text.len(), |e| start + e);
        out.push_str(&strip_url(&text[start..end]));
        at = end;
    }
    out.push_str(&text[at..]);
    params(&out)
}

fn next_url(lower: &str, from: usize) -> Option<usize> {
    ["http://", "https://"].iter().filter_map(|s| lower[from..].find(s).map(|i| from + i)).min()
}

/// A URL as scheme, host and path only.
fn strip_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let (mut head, tail) = rest.split_at(cut);
    let authority_end = head.find('/').unwrap_or(head.len());
    let host_part;
    if let Some(at) = head[..authority_end].rfind('@') {
        host_part = format!("<redacted>@{}", &head[at + 1..]);
        head = &host_part;
    }
    let mut out = format!("{scheme}://{head}");
    if !tail.is_empty() {
        out.push_str("?…");
    }
    out
}

/// Hides the values of [`SECRET_PARAMS`] in `name=value` pairs.
fn params(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let boundary = i == 0 || matches!(bytes[i - 1], b'?' | b'&' | b';' | b' ' | b'(' | b'"' | b'\'' | b',');
        let hit = boundary
            .then(|| SECRET_PARAMS.iter().find(|p| lower[i..].starts_with(*p) && bytes.get(i + p.len()) == Some(&b'=')))
            .flatten();
        match hit {
            Some(p) => {
                let value = i + p.len() + 1;
                let end = lower[value..]
                    .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ')' | '"' | '\'' | ','))
                    .map_or(text.len(), |e| value + e);
                out.push_str(&text[copied..value]);
                out.push_str("<redacted>");
                copied = end;
                i = end;
            }
            None => i += lower[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Standard error, with every line redacted: the writer of the log subscriber.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = text(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn presigned_urls_lose_their_query_and_userinfo() {
        let s3 = "error sending request for url (http://127.0.0.1:20998/b/M/archives/x.tar?x-id=GetObject&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026&X-Amz-Security-Token=tok&X-Amz-Signature=f53a): refused";
        let out = text(s3);
        assert_eq!(out, "error sending request for url (http://127.0.0.1:20998/b/M/archives/x.tar?…): refused");
        let az = "url (HTTPS://acct.blob.core.windows.net/c/M/a.tar?sv=2021&sp=rcwdl&sig=7devl8AR%3D)";
        assert_eq!(text(az), "url (HTTPS://acct.blob.core.windows.net/c/M/a.tar?…)");
        assert_eq!(text("via http://user:pw@proxy:3128/x"), "via http://<redacted>@proxy:3128/x");
    }

    #[test]
    fn credential_parameters_outside_urls_are_hidden() {
        let out = text("query sv=1&sig=abc%3D&se=2026 and X-Amz-Signature=ff, token=t1");
        assert_eq!(out, "query sv=1&sig=<redacted>&se=2026 and X-Amz-Signature=<redacted>, token=<redacted>");
        assert!(!out.contains("abc"));
        // Words that only end like a parameter are left alone.
        assert_eq!(text("design=good mysig=1"), "design=good mysig=1");
        assert_eq!(text("plain text, no secrets"), "plain text, no secrets");
    }
}
