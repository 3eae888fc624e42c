//! The generated skeleton of `bpf/datapath.bpf.c`: map definitions and the shared struct types.
#![allow(clippy::all, dead_code, non_camel_case_types, non_upper_case_globals, unused)]
include!(concat!(env!("OUT_DIR"), "/datapath.skel.rs"));
