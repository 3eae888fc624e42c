//! bpf-iptables: the iptables command, with rules enforced by eBPF programs instead of netfilter.
//!
//! Data flows through one module per step:
//! `parse` (argv and restore input) -> `model` (pure data) -> `store` (pinned BPF maps of this
//! network namespace) -> `compile` (pure: model to LBVS classifier tables) -> `datapath` (write the
//! tables, flip the generation, attach programs) -> `output` (`-S`, `-L`, `iptables-save`).
//! `ext` holds one file per match/target extension (parse, check, print), and `cli` runs a parsed
//! command against the store.

pub mod cli;
pub mod compile;
pub mod conntrack;
pub mod datapath;
pub mod error;
pub mod ext;
pub mod model;
pub mod output;
pub mod parse;
pub mod store;
#[doc(hidden)]
pub mod testutil;
