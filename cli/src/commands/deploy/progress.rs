//! Upload progress for `cpub deploy`. `CPUB_PROGRESS` chooses how it shows:
//! `auto` (the default) draws a bar when stderr is a terminal and prints
//! plain lines otherwise (a log or a pipe gets no cursor movements); `bar`
//! draws the bar whatever stderr is (a terminal the detection misses);
//! `plain` prints at most four lines: one as each quarter of the bytes is
//! passed (two passed at once make one line) and a last one with the exact
//! count; `none` shows nothing.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The environment variable that chooses the display.
pub const ENV: &str = "CPUB_PROGRESS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Plain,
    None,
}

impl Mode {
    fn parse(value: Option<&str>, terminal: bool) -> Result<Self> {
        Ok(match value {
            None | Some("" | "auto") if terminal => Self::Bar,
            None | Some("" | "auto") => Self::Plain,
            Some("bar") => Self::Bar,
            Some("plain") => Self::Plain,
            Some("none") => Self::None,
            Some(other) => {
                bail!("{ENV} must be auto, bar, plain or none, not {other:?}")
            }
        })
    }
}

/// What the upload body advances as its bytes go out.
pub enum Upload {
    Bar(ProgressBar),
    Plain {
        total: u64,
        sent: u64,
        /// Quarters reported so far.
        quarters: u64,
        started: Instant,
    },
    None,
}

impl Upload {
    /// The display `CPUB_PROGRESS` asks for, for `total` bytes.
    pub fn from_env(total: u64) -> Result<Self> {
        let value = match std::env::var(ENV) {
            Ok(v) => Some(v),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(v)) => {
                bail!("{ENV} must be auto, bar, plain or none, not {v:?}")
            }
        };
        let mode = Mode::parse(value.as_deref(), std::io::stderr().is_terminal())?;
        Ok(match mode {
            Mode::Bar => {
                // Drawn whatever stderr is: the choice was made above
                // (indicatif's own stderr target hides on a non-terminal).
                let target =
                    ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 20);
                let bar = ProgressBar::with_draw_target(Some(total), target).with_style(
                    ProgressStyle::with_template(
                        "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .context("bad progress template")?,
                );
                Self::Bar(bar)
            }
            Mode::Plain => Self::Plain {
                total,
                sent: 0,
                quarters: 0,
                started: Instant::now(),
            },
            Mode::None => Self::None,
        })
    }

    /// What `finish` needs (the bar, if any), to keep after the body took
    /// `self`.
    pub fn handle(&self) -> Option<ProgressBar> {
        match self {
            Self::Bar(bar) => Some(bar.clone()),
            _ => None,
        }
    }

    /// `n` more bytes went out.
    pub fn advance(&mut self, n: u64) {
        match self {
            Self::Bar(bar) => {
                bar.inc(n);
                if bar.length().is_some_and(|len| bar.position() >= len) {
                    show_building(bar);
                }
            }
            Self::Plain {
                total,
                sent,
                quarters,
                started,
            } => {
                *sent = sent.saturating_add(n);
                let reached = if *total == 0 {
                    4
                } else {
                    (u128::from(*sent) * 4 / u128::from(*total)).min(4) as u64
                };
                if *quarters < reached.min(3) {
                    *quarters = reached.min(3);
                    eprintln!(
                        "uploading: {}% ({} of {})",
                        *quarters * 25,
                        HumanBytes(*sent),
                        HumanBytes(*total)
                    );
                }
                if *sent >= *total && *quarters < 4 {
                    *quarters = 4;
                    eprintln!(
                        "uploaded {sent} bytes in {} ms; the server builds now",
                        started.elapsed().as_millis()
                    );
                }
            }
            Self::None => {}
        }
    }

    /// Every byte went out (also for an empty file).
    pub fn done(&mut self) {
        match self {
            Self::Bar(bar) => show_building(bar),
            Self::Plain { .. } => self.advance(0),
            Self::None => {}
        }
    }
}

/// Clears the bar (or spinner), if one is drawn.
pub fn finish(handle: Option<ProgressBar>) {
    if let Some(bar) = handle {
        bar.finish_and_clear();
    }
}

/// Turns the upload bar into the "building" spinner (once), since the
/// server answers only when the build started or ended.
fn show_building(progress: &ProgressBar) {
    if progress.length().is_none() {
        return;
    }
    progress.unset_length();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.set_message("uploaded; starting the build");
    progress.reset_elapsed();
    progress.enable_steady_tick(Duration::from_millis(120));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_variable_then_the_terminal() {
        assert_eq!(Mode::parse(None, true).unwrap(), Mode::Bar);
        assert_eq!(Mode::parse(None, false).unwrap(), Mode::Plain);
        assert_eq!(Mode::parse(Some("auto"), false).unwrap(), Mode::Plain);
        assert_eq!(Mode::parse(Some(""), true).unwrap(), Mode::Bar);
        assert_eq!(Mode::parse(Some("bar"), false).unwrap(), Mode::Bar);
        assert_eq!(Mode::parse(Some("plain"), true).unwrap(), Mode::Plain);
        assert_eq!(Mode::parse(Some("none"), true).unwrap(), Mode::None);
        let err = Mode::parse(Some("Bar\u{1b}[2J"), true).unwrap_err();
        assert!(err.to_string().contains("CPUB_PROGRESS must be"), "{err}");
    }
}
