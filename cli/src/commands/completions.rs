//! `cpub completions bash|zsh|fish`: prints a completion script for the
//! shell (clap_complete, generated from the same clap definitions).
//!
//! ```sh
//! cpub completions bash > /etc/bash_completion.d/cpub
//! cpub completions zsh > "${fpath[1]}/_cpub"
//! cpub completions fish > ~/.config/fish/completions/cpub.fish
//! ```

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    shell: Target,
}

/// The shells a script is printed for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Target {
    Bash,
    Zsh,
    Fish,
}

pub fn run(args: Args) -> Result<()> {
    let shell = match args.shell {
        Target::Bash => Shell::Bash,
        Target::Zsh => Shell::Zsh,
        Target::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "cpub", &mut script);
    use std::io::Write as _;
    std::io::stdout()
        .write_all(&script)
        .context("cannot write the completion script")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for (shell, marker) in [
            (Shell::Bash, "complete -F _cpub"),
            (Shell::Zsh, "#compdef cpub"),
            (Shell::Fish, "complete -c cpub"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut super::super::Cli::command(), "cpub", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(marker), "{shell}: no {marker:?}");
            for command in ["rollback", "versions", "scale", "deploy"] {
                assert!(text.contains(command), "{shell}: no {command}");
            }
        }
    }
}
