//! Runs one invocation: picks the personality from argv[0], parses, applies the command to the
//! ruleset loaded from the store, commits, prints, and maps errors to iptables' exit codes.

use std::ffi::OsString;

pub fn main(_args: Vec<OsString>) -> i32 {
    0
}
