//! Builds the BPF object and its Rust skeleton (map names, struct layouts) with libbpf-cargo.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/datapath.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("datapath.skel.rs");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-I", "bpf", "-Wall", "-Wno-unused-function"])
        .build_and_generate(&out)
        .expect("building bpf/datapath.bpf.c (needs clang; see README)");
    // The conntrack test harness (tests/conntrack*.rs include its skeleton from OUT_DIR).
    SkeletonBuilder::new()
        .source("bpf/ct_test.bpf.c")
        .clang_args(["-I", "bpf", "-Wall", "-Wno-unused-function"])
        .build_and_generate(out.with_file_name("ct_test.skel.rs"))
        .expect("building bpf/ct_test.bpf.c (needs clang; see README)");
    println!("cargo:rerun-if-changed=bpf");
}
