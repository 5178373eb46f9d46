//! The `statuslens` binary: everything lives in the library.

/// jemalloc, not the system allocator: cheaper allocation per request and per HTTP/2
/// stream, memory handed back after a burst (README, "Performance").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    statuslens::cli::main()
}
