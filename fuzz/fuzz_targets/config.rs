//! Config decoding: the bytes as `CROWECODE_CLOUD_CONFIG_B64` text, and as the JSON inside it.
#![no_main]

use base64::Engine as _;
use crowecode_cloud::config::{FileLocation, Overrides, resolve};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = FileLocation { path: "/nonexistent/crowecode-fuzz.json".into(), explicit: false };
    let as_text = String::from_utf8_lossy(data).into_owned();
    let as_json = base64::engine::general_purpose::STANDARD.encode(data);
    for b64 in [as_text, as_json] {
        let env = move |k: &str| (k == "CROWECODE_CLOUD_CONFIG_B64").then(|| b64.clone());
        if let Ok(r) = resolve(&env, &file, &Overrides::default()) {
            // Whatever was accepted must be usable and describable.
            let _ = r.config.location();
            assert!(r.config.prefix.is_empty() || r.config.prefix.ends_with('/'));
        }
    }
});
