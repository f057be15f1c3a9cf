//! How kiln prints, resolved once from the flags and the environment: colour (`--color`,
//! `NO_COLOR`, `CLICOLOR_FORCE`) and the build's progress view (`--progress`, `CI`, `TERM`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use clap::ValueEnum;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal, unless `NO_COLOR` is set; `CLICOLOR_FORCE` forces it elsewhere.
    #[default]
    Auto,
    Always,
    Never,
}

/// `kiln build --progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ProgressChoice {
    /// The live view on a terminal, unless `CI` is set or `TERM` is `dumb`; plain lines
    /// elsewhere.
    #[default]
    Auto,
    /// The live view whenever stderr is a terminal.
    Live,
    /// Timestamped lines: one when a node starts, one when it ends, one per retry.
    Plain,
}

/// What of the environment decides how kiln prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `NO_COLOR` is set and not empty (<https://no-color.org>).
    pub no_color: bool,
    /// `CLICOLOR_FORCE` is set and not `0`.
    pub clicolor_force: bool,
    /// `CI` is set (every CI service sets it).
    pub ci: bool,
    /// `TERM` is `dumb`.
    pub dumb: bool,
}

impl Env {
    pub fn read() -> Env {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            no_color: var("NO_COLOR").is_some(),
            clicolor_force: var("CLICOLOR_FORCE").is_some_and(|v| v != "0"),
            ci: var("CI").is_some(),
            dumb: var("TERM").is_some_and(|v| v == "dumb"),
        }
    }
}

/// Whether to colour a stream: the flag, then `NO_COLOR`, then `CLICOLOR_FORCE`, then whether
/// the stream is a terminal.
pub fn color(choice: ColorChoice, terminal: bool, env: &Env) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !env.no_color && (env.clicolor_force || (terminal && !env.dumb)),
    }
}

/// Whether the build shows the live view (stderr being a terminal is `terminal`). `NO_COLOR`
/// is about colour only: it keeps the live view, uncoloured.
pub fn live(choice: ProgressChoice, terminal: bool, env: &Env) -> bool {
    match choice {
        ProgressChoice::Plain => false,
        ProgressChoice::Live => terminal,
        ProgressChoice::Auto => terminal && !env.ci && !env.dumb,
    }
}

/// Colour of stdout and stderr, resolved by [`init`] before a command runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Colors {
    pub stdout: bool,
    pub stderr: bool,
}

static COLORS: OnceLock<Colors> = OnceLock::new();

/// Resolves `--color` against the environment and the two streams, once per process.
pub fn init(choice: ColorChoice) -> Colors {
    let env = Env::read();
    *COLORS.get_or_init(|| Colors {
        stdout: color(choice, std::io::stdout().is_terminal(), &env),
        stderr: color(choice, std::io::stderr().is_terminal(), &env),
    })
}

/// The colours [`init`] resolved (none before it ran).
pub fn colors() -> Colors {
    COLORS.get().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_no_color_then_clicolor_force_then_the_terminal() {
        let env = |no_color, clicolor_force| Env {
            no_color,
            clicolor_force,
            ..Env::default()
        };
        assert!(color(ColorChoice::Always, false, &env(true, false)));
        assert!(!color(ColorChoice::Never, true, &env(false, true)));
        assert!(!color(ColorChoice::Auto, true, &env(true, false)));
        assert!(!color(ColorChoice::Auto, true, &env(true, true)));
        assert!(color(ColorChoice::Auto, false, &env(false, true)));
        assert!(color(ColorChoice::Auto, true, &env(false, false)));
        assert!(!color(ColorChoice::Auto, false, &env(false, false)));
        let dumb = Env {
            dumb: true,
            ..Env::default()
        };
        assert!(!color(ColorChoice::Auto, true, &dumb));
    }

    #[test]
    fn the_live_view_needs_a_terminal_and_auto_leaves_it_to_people() {
        let ci = Env {
            ci: true,
            ..Env::default()
        };
        let no_color = Env {
            no_color: true,
            ..Env::default()
        };
        assert!(live(ProgressChoice::Auto, true, &Env::default()));
        assert!(live(ProgressChoice::Auto, true, &no_color));
        assert!(!live(ProgressChoice::Auto, true, &ci));
        assert!(live(ProgressChoice::Live, true, &ci));
        assert!(!live(ProgressChoice::Live, false, &Env::default()));
        assert!(!live(ProgressChoice::Plain, true, &Env::default()));
        assert!(!live(ProgressChoice::Auto, false, &Env::default()));
    }
}
