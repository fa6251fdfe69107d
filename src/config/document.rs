//! The raw config document (from `CROWECODE_CLOUD_CONFIG_B64` or the file) and how it becomes a
//! validated [`CloudConfig`] with the command line's overrides applied.

use super::*;

/// The raw document, before validation.
#[derive(Clone, Debug, Default)]
pub(super) struct Document {
    pub(super) enabled: Option<bool>,
    pub(super) provider: Option<String>,
    pub(super) keys: Map<String, Value>,
}

impl Document {
    pub(super) fn provider_kind(&self) -> Option<ProviderKind> {
        self.provider.as_deref().and_then(ProviderKind::parse)
    }

    pub(super) fn from_b64(raw: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let cleaned: String = raw.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if cleaned.starts_with(['\'', '"']) || cleaned.ends_with(['\'', '"']) {
            return Err(Error::config(
                ENV_CONFIG_B64,
                "not valid base64: the value starts or ends with a quote",
                "it was quoted twice; set it to the text between the quotes of the `export` line that `crowecode-cloud setup` prints",
            ));
        }
        let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let bytes = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
            .decode(&cleaned)
            .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(&cleaned))
            .map_err(|e| {
                Error::config(
                    ENV_CONFIG_B64,
                    format!("not valid base64 ({e})"),
                    "regenerate it with `crowecode-cloud setup ...`, or unset it to use the config file",
                )
            })?;
        Self::from_json(&bytes, ENV_CONFIG_B64, warnings)
    }

    pub(super) fn from_json(bytes: &[u8], origin: &str, warnings: &mut Vec<String>) -> Result<Self> {
        // Windows editors write a byte order mark; it is not part of the JSON.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let hint = "the format is {\"enabled\":true,\"provider\":\"s3\",\"config\":{\"bucket\":\"NAME\",\"prefix\":\"models/\"}}; `crowecode-cloud setup` writes it";
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::config(origin, format!("not valid JSON ({e})"), hint))?;
        let Value::Object(mut top) = value else {
            return Err(Error::config(origin, "expected a JSON object at the top level", hint));
        };
        let enabled = match top.remove("enabled") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => {
                return Err(Error::config(origin, "\"enabled\" must be true or false", hint));
            }
        };
        let provider = match top.remove("provider") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(Error::config(origin, "\"provider\" must be a string", hint)),
        };
        let keys = match top.remove("config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(Error::config(origin, "\"config\" must be an object", hint)),
        };
        for k in top.keys() {
            if looks_like_secret(k) {
                warnings
                    .push(format!("{origin}: ignoring top-level key {k:?}: credentials never belong in this config"));
            } else {
                warnings.push(format!("{origin}: unknown top-level key {k:?} ignored (keys go under \"config\")"));
            }
        }
        Ok(Self { enabled, provider, keys })
    }

    pub(super) fn into_config(self, ov: &Overrides, origin: &str, warnings: &mut Vec<String>) -> Result<CloudConfig> {
        let provider_name = ov.provider.clone().or(self.provider).ok_or_else(|| {
            Error::config(
                origin,
                "no provider given",
                "add \"provider\": \"s3\" (or gcs, azure, local), or pass --provider",
            )
        })?;
        let provider = ProviderKind::parse(&provider_name).ok_or_else(|| {
            Error::config(origin, format!("unknown provider {provider_name:?}"), "use one of: s3, gcs, azure, local")
        })?;

        let mut keys = self.keys;
        let trusted_keys = match keys.remove("trusted_keys") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(Error::config(
                        origin,
                        "\"config.trusted_keys\" must hold strings",
                        "each entry is a PEM public key or the path of one",
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => {
                return Err(Error::config(
                    origin,
                    "\"config.trusted_keys\" must be a string or a list of strings",
                    "each entry is a PEM public key or the path of one",
                ));
            }
        };
        let require_signature = match keys.remove("require_signature") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) if matches!(s.as_str(), "true" | "1") => true,
            Some(Value::String(s)) if matches!(s.as_str(), "false" | "0" | "") => false,
            Some(_) => {
                return Err(Error::config(
                    origin,
                    "\"config.require_signature\" must be true or false",
                    "write true or false, unquoted",
                ));
            }
        };
        let mut strings: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut extra = BTreeMap::new();
        for (k, v) in keys {
            match KNOWN_KEYS.iter().find(|known| **known == k) {
                Some(known) => match v {
                    Value::Null => {}
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => {
                        strings.insert(known, s);
                    }
                    _ => {
                        return Err(Error::config(
                            origin,
                            format!("\"config.{k}\" must be a string"),
                            "quote the value in the JSON",
                        ));
                    }
                },
                None => {
                    if looks_like_secret(&k) {
                        warnings.push(format!(
                            "{origin}: ignoring config key {k:?}: credentials never belong in this config; use the cloud's own credential chain (see README, Credentials)"
                        ));
                    } else {
                        warnings.push(format!("{origin}: unknown config key {k:?} kept and ignored"));
                        extra.insert(k, v);
                    }
                }
            }
        }
        // Where each overridden value came from (`--mirror`, `CROWECODE_MIRROR`): errors and
        // warnings about it name that, not the config document.
        let mut from_flag: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in ov.pairs() {
            if let Some(v) = v {
                from_flag.insert(k, ov.source_of(k));
                if v.is_empty() {
                    strings.remove(k);
                } else {
                    strings.insert(k, v.clone());
                }
            }
        }
        for k in strings.keys() {
            if !provider.keys().contains(k) {
                let what = from_flag.get(k).cloned().unwrap_or_else(|| format!("config key {k:?}"));
                warnings.push(format!("{what} does not apply to provider {provider} and is ignored"));
            }
        }
        let fail = |k: &str, p: Problem| match from_flag.get(k) {
            Some(source) => p.in_flag(source),
            None => p.in_config(origin),
        };
        let url = |k: &str, v: Option<String>| v.map(|v| check_url(&v, k).map_err(|p| fail(k, p))).transpose();
        let mut take = |k: &str| strings.remove(k);
        let bucket = take("bucket").ok_or_else(|| {
            Error::config(origin, "no bucket given", "add \"bucket\" under \"config\", or pass --bucket NAME")
        })?;
        let config = CloudConfig {
            provider,
            bucket: bucket.trim().to_string(),
            prefix: check_prefix(take("prefix").as_deref().unwrap_or("")).map_err(|p| fail("prefix", p))?,
            region: take("region"),
            endpoint: url("endpoint", take("endpoint"))?,
            account: take("account"),
            project: take("project"),
            sse: take("sse"),
            kms_key_id: take("kms_key_id"),
            kms_key: take("kms_key"),
            encryption_scope: take("encryption_scope"),
            fallback_command: take("fallback_command"),
            mirror: url("mirror", take("mirror"))?,
            data_proxy: url("data_proxy", take("data_proxy"))?,
            trusted_keys,
            require_signature,
            signing_scope: take("signing_scope").map(|s| s.trim().to_string()),
            aws_profile: None,
            extra,
        };
        if let Some((key, problem)) = config.problem() {
            return Err(fail(key, problem));
        }
        if config.mirror.is_some() && config.data_proxy.is_some() {
            return Err(Error::config(
                origin,
                "both a mirror and a data_proxy are set; archive reads go through one of them",
                "keep `mirror` for a reverse-proxy cache or CDN, or `data_proxy` for a forward proxy such as Dragonfly's dfdaemon",
            ));
        }
        Ok(config)
    }
}
