//! Builds the BPF object and its Rust skeleton (map names, struct layouts) with libbpf-cargo,
//! and exports a hash of the object (`BPFIPT_OBJ_HASH`): the datapath pins its loaded programs
//! under that name, so a new build reloads them and an unchanged one reuses them.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/datapath.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("datapath.skel.rs");
    let obj = out.with_file_name("datapath.bpf.o");
    SkeletonBuilder::new()
        .source(SRC)
        .obj(&obj)
        .clang_args(["-I", "bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function"])
        .build_and_generate(&out)
        .expect("building bpf/datapath.bpf.c (needs clang; see README)");
    let bytes = std::fs::read(&obj).expect("reading the built BPF object");
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    println!("cargo:rustc-env=BPFIPT_OBJ_HASH={hash:016x}");
    // The conntrack test harness (tests/conntrack*.rs include its skeleton from OUT_DIR).
    SkeletonBuilder::new()
        .source("bpf/ct_test.bpf.c")
        .clang_args(["-I", "bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function"])
        .build_and_generate(out.with_file_name("ct_test.skel.rs"))
        .expect("building bpf/ct_test.bpf.c (needs clang; see README)");
    println!("cargo:rerun-if-changed=bpf");
    // The unwinder linked into the command itself (libgcc_eh, whole: its definitions win over
    // libgcc_s's, which --as-needed then drops): loading libgcc_s runs its CPU-feature probe,
    // a dozen CPUID instructions, each a VM exit on a virtual machine, ~0.1 ms of every command.
    println!("cargo:rustc-link-arg-bins=-Wl,--whole-archive,-lgcc_eh,--no-whole-archive");
}
