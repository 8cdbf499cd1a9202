//! Shell completions and man pages, generated from the CLI definition (cli.rs), so that they
//! can never describe a command or an option the binary does not have. Packages ship what
//! `tracker completions SHELL` and `tracker man DIR` write (see xtask/src/package.rs).
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, DocsCommand};

/// The man section: tracker is a system administration command (root, kernel programs).
pub const MAN_SECTION: &str = "8";

pub fn run(cmd: DocsCommand) -> Result<ExitCode> {
    match cmd {
        DocsCommand::Completions { shell } => {
            let mut out = io::stdout().lock();
            completions(shell, &mut out)?;
            out.flush().context("writing the completion script")?;
        }
        DocsCommand::Man { dir } => {
            for page in man_pages(&dir)? {
                println!("{}", page.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// One man page for `tracker` and one for each of its commands (`tracker-run.8`, ...), written
/// into `dir` (made if missing); the paths written.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut root = Cli::command().disable_help_subcommand(true);
    // Building names each command's page after its parent (`tracker-run`).
    root.build();
    let mut written = Vec::new();
    write_pages(root, dir, &mut written)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(written)
}

fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    let page = clap_mangen::Man::new(cmd)
        .section(MAN_SECTION)
        .manual("tracker")
        .source(concat!("tracker ", env!("CARGO_PKG_VERSION")));
    written.push(page.generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn subcommands() -> Vec<String> {
        Cli::command().get_subcommands().map(|s| s.get_name().to_owned()).collect()
    }

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// How each shell's script offers a subcommand: a substring test would take `load` for
    /// found in `unload`'s entry.
    fn offers(shell: Shell, script: &str, name: &str) -> bool {
        match shell {
            // `tracker,run)` in the case over the words typed so far.
            Shell::Bash => script.contains(&format!("tracker,{name})")),
            // `'run:Run a command ...'` in the list of commands.
            Shell::Zsh => script.contains(&format!("'{name}:")),
            // `-f -a "run" -d '...'` when no subcommand has been given yet.
            Shell::Fish => script.contains(&format!("-a \"{name}\"")),
            _ => unreachable!("only bash, zsh and fish are tested"),
        }
    }

    #[test]
    fn each_shell_completes_every_subcommand() {
        let names = subcommands();
        for must in ["run", "kill", "daemon", "completions", "man"] {
            assert!(names.iter().any(|n| n == must), "{must} is not a subcommand: {names:?}");
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            for name in &names {
                assert!(offers(shell, &s, name), "{shell} script does not offer `{name}`");
            }
            // The check can fail: a name that is not a command is not offered.
            assert!(!offers(shell, &s, "no-such-command"), "{shell}");
        }
    }

    #[test]
    fn options_of_a_subcommand_are_completed() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            for opt in ["memory-max", "kill-timeout", "exist-ok"] {
                assert!(s.contains(opt), "{shell} script lacks --{opt}");
            }
        }
    }

    #[test]
    fn a_man_page_for_tracker_and_each_subcommand() {
        let dir = std::env::temp_dir().join(format!("tracker-man-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let written = man_pages(&dir).unwrap();
        let mut want: Vec<String> =
            subcommands().iter().map(|n| format!("tracker-{n}.{MAN_SECTION}")).collect();
        want.push(format!("tracker.{MAN_SECTION}"));
        want.sort();
        let mut have: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        assert_eq!(have, want);
        assert_eq!(written.len(), want.len());
        let run = fs::read_to_string(dir.join(format!("tracker-run.{MAN_SECTION}"))).unwrap();
        assert!(run.starts_with(".ie"), "not roff: {}", &run[..run.len().min(80)]);
        assert!(run.contains(&format!(".TH tracker-run {MAN_SECTION}")), "{run}");
        assert!(run.contains("memory\\-max"), "run's page lacks its options");
        let root = fs::read_to_string(dir.join(format!("tracker.{MAN_SECTION}"))).unwrap();
        for name in subcommands() {
            assert!(root.contains(&format!("tracker\\-{name}({MAN_SECTION})")), "{name}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
