//! The `limpet` command.

use std::process::ExitCode;

/// jemalloc, with background purging (see .cargo/config.toml): memory freed by closed connections goes back to
/// the system, where glibc's malloc keeps it in its arenas.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    limpet::cli::main()
}
