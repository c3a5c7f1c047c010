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
