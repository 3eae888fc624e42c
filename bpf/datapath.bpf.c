// SPDX-License-Identifier: GPL-2.0
/* The fixed datapath programs and every pinned map. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpf_iptables.h"
#include "conntrack.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_meta);
} bpfipt_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, BPFIPT_BLOB_MAX_CHUNKS);
	__type(key, __u32);
	__type(value, struct bpfipt_blob_chunk);
} bpfipt_blob SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFIPT_MAX_RULE_IDS);
	__type(key, __u32);
	__type(value, struct bpfipt_counter);
} bpfipt_rule_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFIPT_NR_HOOKS);
	__type(key, __u32);
	__type(value, struct bpfipt_counter);
} bpfipt_policy_counters SEC(".maps");

/* Keeps the struct types in BTF so the skeleton exports them to Rust. */
struct bpfipt_meta _bpfipt_meta_type = {};
struct bpfipt_counter _bpfipt_counter_type = {};
enum bpfipt_const _bpfipt_const_type = BPFIPT_LAYOUT_VERSION;
enum bpfipt_hook _bpfipt_hook_type = BPFIPT_HOOK_INPUT;

SEC("xdp")
int bpfipt_xdp_ingress(struct xdp_md *ctx)
{
	return XDP_PASS;
}
