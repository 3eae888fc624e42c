/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one header shared by the BPF programs and the Rust side: map names, struct layouts and
 * constants. Rust never copies these by hand: it takes them from the skeleton libbpf-cargo
 * generates from this file's BTF (the `types` module of the skeleton).
 */
#ifndef BPF_IPTABLES_H
#define BPF_IPTABLES_H

/* Constants the Rust side reads from the skeleton's BTF (an enum, not #defines, so that they
 * survive into BTF). */
enum bpfipt_const {
	/* Bumped whenever a pinned map's layout or meaning changes; the CLI refuses to open pins
	 * of another version. */
	BPFIPT_LAYOUT_VERSION = 1,
	BPFIPT_MAGIC = 0x62706974, /* "bpit" */
	/* Per-rule counters are indexed by the rule's stable id. Ids of the live ruleset and of
	 * the one being written must both fit, so this is twice the largest ruleset we accept. */
	BPFIPT_MAX_RULE_IDS = 262144,
	/* The serialized ruleset model lives in chunks (key = generation << 20 | index). */
	BPFIPT_BLOB_CHUNK = 65536,
	BPFIPT_BLOB_MAX_CHUNKS = 4096,
	BPFIPT_BLOB_GEN_SHIFT = 20,
};

/* Built-in filter chains (hooks), index into policy counters. */
enum bpfipt_hook {
	BPFIPT_HOOK_INPUT = 0,
	BPFIPT_HOOK_FORWARD = 1,
	BPFIPT_HOOK_OUTPUT = 2,
	BPFIPT_NR_HOOKS = 3,
};

struct bpfipt_counter {
	__u64 packets;
	__u64 bytes;
};

/* Entry 0 of the meta map: what the pins are and which blob generation is live. */
struct bpfipt_meta {
	__u32 magic;
	__u32 layout_version;
	__u64 netns_cookie;
	__u32 blob_gen;     /* generation (0/1) of the live serialized ruleset */
	__u32 blob_chunks;  /* chunks in that generation */
	__u64 blob_len;     /* bytes */
	__u64 blob_hash;    /* FNV-1a of the blob, checked on load */
};

struct bpfipt_blob_chunk {
	__u8 data[BPFIPT_BLOB_CHUNK];
};

#endif
