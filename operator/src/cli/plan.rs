//! `shadowkeep plan --base REV --head REV`: what a change to the estate's repository does,
//! and its risks (the work is in [`crate::plan`]).

use std::io::Write;

use crate::plan::{EXIT_FAILED, Options, plan, render};

/// How the plan is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    #[default]
    Text,
    /// For a pull-request comment: at most 65,536 characters.
    Markdown,
    /// For tools.
    Json,
}

/// Makes and prints the plan; returns the exit code (0 no change, 1 changes, 2 risks or an
/// invalid head, 3 could not run). With `exit_zero`, 1 and 2 become 0: for a pipeline that
/// only posts the comment.
pub fn run(
    options: &Options,
    format: Format,
    exit_zero: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let plan = match plan(options) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = writeln!(err, "shadowkeep plan: {e}");
            return EXIT_FAILED;
        }
    };
    let text = match format {
        Format::Text => render::text(&plan),
        Format::Markdown => render::markdown(&plan),
        Format::Json => render::json(&plan),
    };
    // A closed pipe is not worth a panic; the exit code still tells.
    let _ = out.write_all(text.as_bytes());
    if exit_zero { 0 } else { plan.exit_code }
}
