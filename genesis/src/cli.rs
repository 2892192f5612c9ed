//! What the three binaries share on the command line: clap usage errors as
//! one line on stderr (help and version print as clap writes them).

use std::process::ExitCode;

/// Prints a clap parse failure and returns the exit code: help and version
/// go out as clap writes them (exit 0); a usage error becomes one line on
/// stderr (exit 2).
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            eprintln!("{}", one_line(&error.render().to_string()));
            ExitCode::from(2)
        }
    }
}

/// The first paragraph of a clap error, joined into one line.
fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if line.starts_with("error:") {
        line
    } else {
        format!("error: {line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_paragraph_on_one_line() {
        assert_eq!(
            one_line("error: unexpected argument '--x'\n\n  tip: ...\n\nUsage: a b\n"),
            "error: unexpected argument '--x'"
        );
        assert_eq!(one_line("\nbad\nthing\n\nmore"), "error: bad thing");
    }
}
