//! Makes models ready on this machine through the library, the way a model server's start-up
//! code would: the cached version if there is one (no network), else a verified download.
//!
//! ```sh
//! export CROWECODE_CLOUD_CONFIG_B64=...     # or a config file written by `crowecode-cloud setup`
//! cargo run --example ensure_model -- Alpha Beta
//! ```

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let models: Vec<String> = std::env::args().skip(1).collect();
    if models.is_empty() {
        eprintln!("usage: ensure_model MODEL...");
        return ExitCode::from(2);
    }
    let manager = match crowecode_cloud::CloudManager::from_env().await {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    println!("bucket: {}", manager.get_cloud_config().location());
    for model in &models {
        match manager.ensure_model(model).await {
            Ok(path) => println!("{model}: {}", path.display()),
            Err(e) => return fail(&e),
        }
    }
    ExitCode::SUCCESS
}

fn fail(e: &crowecode_cloud::Error) -> ExitCode {
    eprintln!("error: {e}");
    if let Some(hint) = e.hint() {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}
