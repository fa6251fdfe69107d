//! File patterns for selective downloads: `*.json`, `tokenizer/*`, `**/*.safetensors`.
//!
//! A pattern without `/` matches a file's name at any depth (as in `.gitignore`); one with `/`
//! matches the whole relative path. `*` and `?` never cross a `/`; `**` does.

/// Whether `path` (relative, `/`-separated) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./");
    if pattern.contains('/') {
        let pattern = pattern.strip_suffix('/').map_or_else(|| pattern.to_string(), |dir| format!("{dir}/**"));
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            // `**/x` also matches `x` itself.
            if let [b'/', after @ ..] = rest
                && glob(after, s)
            {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        [b'*', rest @ ..] => {
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && glob(rest, tail)),
        [c, rest @ ..] => matches!(s, [d, tail @ ..] if d == c && glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        let yes = [
            ("*.json", "config.json"),
            ("*.json", "tokenizer/tokenizer.json"),
            ("tokenizer/*", "tokenizer/vocab.txt"),
            ("tokenizer/", "tokenizer/deep/vocab.txt"),
            ("**/*.bin", "a/b/c.bin"),
            ("**/*.bin", "c.bin"),
            ("model-?????-of-00002.safetensors", "model-00001-of-00002.safetensors"),
            ("./config.json", "config.json"),
            ("a/**/z", "a/z"),
            ("a/**/z", "a/b/c/z"),
        ];
        for (p, s) in yes {
            assert!(matches(p, s), "{p} should match {s}");
        }
        let no = [
            ("*.json", "config.jsonl"),
            ("tokenizer/*", "tokenizer/deep/vocab.txt"),
            ("tokenizer/*", "other/tokenizer/x"),
            ("config.json", "sub/config.jsonx"),
            ("?", "ab"),
            ("a/*/z", "a/b/c/z"),
        ];
        for (p, s) in no {
            assert!(!matches(p, s), "{p} should not match {s}");
        }
    }
}
