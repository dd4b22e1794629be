//! `shadowkeep-server`: see `shadowkeep-server --help`.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    shadowkeep_server::cli::main(shadowkeep_server::cli::Args::parse())
}
