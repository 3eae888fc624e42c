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
    println!("cargo:rerun-if-changed=bpf");
}
