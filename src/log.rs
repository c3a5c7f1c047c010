//! How much lowbit says on stderr besides errors: `--quiet` (nothing but errors), the default
//! (progress bars on a terminal, warnings once), `--verbose` (also each step's time, and the
//! timing lines of `encode`/`decode`). A healthy run in a script or CI log prints nothing.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet = 0,
    Normal = 1,
    Verbose = 2,
}

static LEVEL: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);

pub fn set_verbosity(v: Verbosity) {
    LEVEL.store(v as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match LEVEL.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// A line on stderr shown only with `--verbose`.
#[macro_export]
macro_rules! verbose {
    ($($arg:tt)*) => {
        if $crate::log::verbosity() == $crate::log::Verbosity::Verbose {
            eprintln!($($arg)*);
        }
    };
}

/// A warning on stderr, unless `--quiet`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        if $crate::log::verbosity() != $crate::log::Verbosity::Quiet {
            eprintln!("warning: {}", format!($($arg)*));
        }
    };
}

/// A progress bar on stderr (indicatif, drawn only on a terminal, hidden with `--quiet`);
/// `--verbose` adds one line with the step's time at the end.
pub struct Progress {
    what: String,
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        let bar = if crate::log::verbosity() == crate::log::Verbosity::Quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total as u64)
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:34} [{bar:30}] {pos}/{len} {elapsed} (ETA {eta})") {
            bar.set_style(style.progress_chars("#>-"));
        }
        bar.set_message(what.to_string());
        Progress { what: what.to_string(), bar }
    }

    /// A bar counting bytes (a large checkpoint being read).
    pub fn bytes(what: &str, total: u64) -> Progress {
        let p = Progress::new(what, 0);
        p.bar.set_length(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:34} [{bar:30}] {bytes}/{total_bytes} {elapsed} (ETA {eta})") {
            p.bar.set_style(style.progress_chars("#>-"));
        }
        p
    }

    pub fn step(&mut self, n: usize) {
        self.bar.inc(n as u64);
    }

    /// One step, from any thread.
    pub fn tick(&self) {
        self.bar.inc(1);
    }

    /// `n` more units, from any thread.
    pub fn add(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        crate::verbose!("{}: {}/{} in {:.1} s", self.what, self.bar.position(), self.bar.length().unwrap_or(0), self.bar.elapsed().as_secs_f64());
    }
}
