//! Entry point: dispatch on the name we were called by (`iptables`, `iptables-save`,
//! `iptables-restore`, or the `bpf-iptables*` forms) and exit with iptables' exit code.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    std::process::exit(bpf_iptables::cli::main(args));
}
