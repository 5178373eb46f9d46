//! The `statuslens` binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    statuslens::cli::main()
}
