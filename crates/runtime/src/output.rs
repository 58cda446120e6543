//! Printing to stdout for commands whose output is piped (`gait-aggregator agents --json | head`): a closed pipe
//! ends the printing quietly instead of panicking as `println!` does.

use std::fmt::Arguments;
use std::io::{self, Write};

/// Writes one line to stdout. Returns `false` when stdout is closed or broken, so callers can stop producing
/// output; never panics.
pub fn print_line(args: Arguments<'_>) -> bool {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_ok()
}

/// `println!` that never panics: `outln!("{n} agents")` evaluates to `false` when stdout is gone.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print_line(::std::format_args!($($arg)*))
    };
}

/// Writes one line to stderr. Returns `false` when stderr is closed or broken; never panics (`eprintln!` does).
pub fn print_error_line(args: Arguments<'_>) -> bool {
    let mut err = io::stderr().lock();
    err.write_fmt(args)
        .and_then(|()| err.write_all(b"\n"))
        .and_then(|()| err.flush())
        .is_ok()
}

/// `eprintln!` that never panics: for the one-line error reports of operator commands, written before (or
/// instead of) logging.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::print_error_line(::std::format_args!($($arg)*))
    };
}
