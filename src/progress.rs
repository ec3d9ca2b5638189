//! Progress bars: drawn on stderr only, only when stderr is a terminal, and never when
//! `FLINT_NO_PROGRESS` is set (to anything but `0` or empty). Otherwise every helper returns
//! a hidden bar, on which every call is a no-op, so callers never check. Bars clear
//! themselves when finished or dropped (an error returned mid-run leaves nothing behind).
//! Nothing here writes to stdout: tables, CSV and JSON there are unchanged.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressState, ProgressStyle};
use std::ffi::OsStr;
use std::io::IsTerminal;

/// Set to `1` (anything but `0` or empty) to draw no progress bars.
pub const NO_PROGRESS_ENV: &str = "FLINT_NO_PROGRESS";

/// Whether bars are drawn: stderr is a terminal and `FLINT_NO_PROGRESS` does not turn them off.
fn draws(stderr_is_terminal: bool, no_progress: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_progress.is_none_or(|v| v.is_empty() || v == "0")
}

fn enabled() -> bool {
    draws(
        std::io::stderr().is_terminal(),
        std::env::var_os(NO_PROGRESS_ENV).as_deref(),
    )
}

/// A bar of `total` steps drawing `template` (indicatif's syntax), hidden unless `draw`.
fn new_bar(total: u64, msg: &str, template: &str, draw: bool) -> ProgressBar {
    // `ProgressDrawTarget::stderr()` is itself hidden when stderr is not a terminal (or TERM
    // is unset or `dumb`); the explicit check above also covers the env var.
    let target = if draw {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template(template)
        .expect("progress template is valid")
        .with_key("si", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/{}", si(s.pos()), si(s.len().unwrap_or(0)));
        })
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), target)
        .with_style(style)
        .with_message(msg.to_string())
        .with_finish(ProgressFinish::AndClear);
    bar.tick(); // drawn at 0 now, not at the first step
    bar
}

/// A bar over `total` things named `unit` ("requests", "tokens"), e.g. `count(n, "requests",
/// "throughput")`.
pub fn count(total: u64, unit: &str, msg: &str) -> ProgressBar {
    let template =
        format!("{{msg}} [{{wide_bar}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})");
    new_bar(total, msg, &template, enabled())
}

/// A bar over `total` model parameters, shown with SI prefixes (`4.21G/8.03G params`).
pub fn params(total: u64, msg: &str) -> ProgressBar {
    let template = "{msg} [{wide_bar}] {si} params ({elapsed}, eta {eta})";
    new_bar(total, msg, template, enabled())
}

/// `n` with three significant digits and an SI prefix: 999, 1.00k, 8.03G.
fn si(n: u64) -> String {
    const PREFIX: [&str; 5] = ["", "k", "M", "G", "T"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 999.5 && i + 1 < PREFIX.len() {
        v /= 1000.0;
        i += 1;
    }
    match i {
        0 => n.to_string(),
        _ if v >= 99.95 => format!("{v:.0}{}", PREFIX[i]),
        _ if v >= 9.995 => format!("{v:.1}{}", PREFIX[i]),
        _ => format!("{v:.2}{}", PREFIX[i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_only_on_a_terminal_without_the_env_var() {
        let v = |s: &'static str| Some(OsStr::new(s));
        assert!(draws(true, None));
        assert!(!draws(false, None), "not a terminal: no bar");
        assert!(!draws(true, v("1")), "FLINT_NO_PROGRESS=1: no bar");
        assert!(!draws(true, v("yes")));
        assert!(!draws(false, v("0")));
        assert!(draws(true, v("0")), "FLINT_NO_PROGRESS=0 leaves bars on");
        assert!(draws(true, v("")));
    }

    #[test]
    fn a_bar_that_does_not_draw_is_hidden() {
        let bar = new_bar(10, "x", "{msg} {si}", false);
        assert!(bar.is_hidden());
        bar.inc(3); // still counts: callers never check
        assert_eq!(bar.position(), 3);
        // Under a harness with stderr piped (CI, tests/cli.rs) the public helpers hide too;
        // this relies on our check and on indicatif's stderr target alike.
        if !std::io::stderr().is_terminal() {
            assert!(count(5, "requests", "throughput").is_hidden());
            assert!(params(5, "loading weights").is_hidden());
        }
    }

    #[test]
    fn si_prefixes() {
        let got: Vec<String> = [0, 999, 1000, 1234, 12_345, 123_456, 8_030_261_248]
            .into_iter()
            .map(si)
            .collect();
        assert_eq!(
            got,
            ["0", "999", "1.00k", "1.23k", "12.3k", "123k", "8.03G"]
        );
        assert_eq!(si(999_999), "1.00M");
    }
}
