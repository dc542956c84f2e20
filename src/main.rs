//! The `ron-kms` command: `serve`, `tokens`, and gRPC client commands
//! (`keys`, `sign`, `verify`, `wrap`, `unwrap`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
