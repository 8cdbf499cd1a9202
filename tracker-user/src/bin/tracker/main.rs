//! The `tracker` command: a thin face over the tracker library.
mod cli;
mod commands;
mod docs;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's usage errors span several lines; say it in one.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("tracker: {first} (see `tracker --help`)");
            return ExitCode::from(2);
        }
    };
    // The daemon says what it does (info); a command only what went wrong (warn).
    let daemon = matches!(cli.command, cli::Command::Daemon { .. });
    if !daemon {
        // `tracker ps X | head` ends quietly when head does, as Unix tools do, rather than
        // panicking on the write to a closed pipe. The daemon keeps the write errors: a
        // client that goes away must not take it down.
        // SAFETY: restoring a signal's default disposition, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging(cli.verbose + u8::from(daemon));
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracker: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes scripts can act on without reading the message (see README).
pub const EXIT_UNKNOWN_SLOT: u8 = 3;
pub const EXIT_SLOT_EXISTS: u8 = 4;

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<tracker::Error>() {
        Some(tracker::Error::UnknownSlot(_)) => EXIT_UNKNOWN_SLOT,
        Some(tracker::Error::SlotExists(_)) => EXIT_SLOT_EXISTS,
        _ => 1,
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
