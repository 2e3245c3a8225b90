//! The live progress line: an indicatif spinner on a terminal, a plain line every few seconds
//! otherwise (logs), nothing when disabled (tests, `--quiet`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last_plain: Option<Instant>,
    started: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let started = Instant::now();
        if !enabled {
            return Progress {
                bar: None,
                plain: false,
                last_plain: None,
                started,
            };
        }
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                plain: true,
                last_plain: None,
                started,
            };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {msg}")
                .expect("valid progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(125));
        Progress {
            bar: Some(bar),
            plain: false,
            last_plain: None,
            started,
        }
    }

    /// Replaces the progress message (cheap to call often).
    pub fn update(&mut self, msg: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg());
        } else if self.plain && self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            self.last_plain = Some(Instant::now());
            eprintln!("[{:6.1}s] {}", self.started.elapsed().as_secs_f64(), msg());
        }
    }

    /// Prints a line above the progress line (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.plain => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
