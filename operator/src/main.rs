//! `shadowkeep`: see `shadowkeep --help`.

use std::process::ExitCode;

use clap::Parser as _;
use shadowkeep::cli::{Cli, run};

fn main() -> ExitCode {
    run(Cli::parse())
}
