//! The ruleset of this network namespace, kept in pinned BPF maps.
