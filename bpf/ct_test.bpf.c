// SPDX-License-Identifier: GPL-2.0
/*
 * Test harness for conntrack.h (tests/conntrack*.rs): an XDP program that parses an
 * Ethernet/IPv4 frame into a struct bpfipt_ct_pkt, calls bpfipt_ct_lookup() and, unless the
 * test asked for a probe, bpfipt_ct_update() (through their global functions, as the
 * datapath does around its filter) and evaluates a `-m conntrack` match (bpfipt_ct_match()) the test sets on the result.
 * Its maps are its own (not pinned), so every test starts from an empty table.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bpf_iptables.h"
#include "conntrack.h"

char LICENSE[] SEC("license") = "GPL";

#define CT_TEST_ETH_P_IP 0x0800

/* Set by the test before a run: 0 = the filter accepts the packet, 1 = it drops it (an
 * existing entry still advances; none is created), 2 = a probe (lookup only), 3 = accepted,
 * with another CPU's update of its entry between its lookup and its update. */
__u32 ct_test_drop;
/* Set by the test: the packet is locally generated (egress). */
__u8 ct_test_from_local;
/* Set by the test: a -m conntrack match evaluated on every packet's lookup result. */
struct bpfipt_ct_match ct_test_match;
/* What the last run computed. */
struct bpfipt_ct_pkt ct_test_pkt;
struct bpfipt_ct_result ct_test_result;
__u32 ct_test_matched;

/* A run's packet and result: per CPU (concurrent runs must not share them), off the stack (a
 * frame of their size would leave too little of it for the tracker's calls). */
struct ct_test_work {
	struct bpfipt_ct_pkt p;
	struct bpfipt_ct_result r;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_test_work);
} ct_test_work SEC(".maps");

SEC("xdp")
int bpfipt_ct_test(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	struct ct_test_work *w = bpf_map_lookup_elem(&ct_test_work, &zero);
	struct bpfipt_ct_pkt *p;
	struct bpfipt_ct_result *r;
	struct iphdr *ip;
	__u32 ihl;
	void *l4;

	if (!w)
		return XDP_ABORTED;
	p = &w->p;
	r = &w->r;
	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(CT_TEST_ETH_P_IP))
		return XDP_ABORTED;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_ABORTED;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || ihl > 60)
		return XDP_ABORTED;
	l4 = (void *)ip + ihl;

	p->saddr = bpf_ntohl(ip->saddr);
	p->daddr = bpf_ntohl(ip->daddr);
	p->proto = ip->protocol;
	p->ip_len = bpf_ntohs(ip->tot_len);
	p->ifindex = ctx->ingress_ifindex;
	p->from_local = ct_test_from_local;
	if (bpf_ntohs(ip->frag_off) & 0x1fff) {
		p->frag = 1;
	} else if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) <= end) {
			doff = th->doff * 4;
			p->sport = bpf_ntohs(th->source);
			p->dport = bpf_ntohs(th->dest);
			p->seq = bpf_ntohl(th->seq);
			p->ack_seq = bpf_ntohl(th->ack_seq);
			p->window = bpf_ntohs(th->window);
			p->tcp_flags = ((__u8 *)th)[13];
			p->payload_len = p->ip_len - ihl - doff;
			p->l4_ok = doff >= sizeof(*th) && l4 + doff <= end && ihl + doff <= p->ip_len;
		}
	} else if (p->proto == IPPROTO_ICMP) {
		bpfipt_ct_parse_icmp(p, l4, end);
	} else if (ct_port_proto(p->proto)) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) <= end) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
			p->l4_ok = 1;
		}
	} else {
		p->l4_ok = 1;
	}

	bpfipt_dp_ct_lookup(p, r, ct_test_drop != 2);
	/* (racy between concurrent runs: only single runs read them) */
	ct_test_pkt = *p;
	ct_test_result = *r;
	ct_test_matched = bpfipt_ct_match(&ct_test_match, r);
	if (ct_test_drop == 2)
		return XDP_DROP;
	if (ct_test_drop == 3) {
		/* another CPU updates the entry between this packet's lookup and its update, as
		 * updates do (under the lock, the seq odd meanwhile): a deadline one second away */
		struct bpfipt_ct_entry *e = bpf_map_lookup_elem(&bpfipt_ct, &r->key);
		struct bpfipt_ct_lock *lk = ct_lock_of(&r->key);
		if (e && lk) {
			bpf_spin_lock(&lk->lock);
			*(volatile __u32 *)&lk->seq = lk->seq + 1;
			e->expires = r->now + CT_NS_PER_SEC;
			*(volatile __u32 *)&lk->seq = lk->seq + 1;
			bpf_spin_unlock(&lk->lock);
		}
	}
	bpfipt_dp_ct_update(p, r, ct_test_drop != 1);
	return ct_test_drop == 1 || ct_test_drop == 2 ? XDP_DROP : XDP_PASS;
}
