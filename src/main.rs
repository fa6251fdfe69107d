//! The `crowecode-cloud` binary: all logic is in the library.

fn main() -> std::process::ExitCode {
    crowecode_cloud::cli::main()
}
