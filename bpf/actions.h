/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What happens after classification: LOG events to the ring buffer, and REJECT replies built
 * as netfilter builds them (ICMP destination unreachable as icmp_send does, TCP reset as
 * nf_send_reset does), written over the original packet and sent back the way it came (XDP_TX
 * at XDP, redirect out of the device at TC ingress, redirect into the local stack at TC
 * egress). `kind` is always a constant (PROG_*) so each program keeps only its own helpers.
 */
#ifndef BPFIPT_ACTIONS_H
#define BPFIPT_ACTIONS_H

#include "lbvs.h"

#define PROG_XDP 0
#define PROG_TC_IN 1
#define PROG_TC_EG 2

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BPFIPT_LOG_RINGBUF);
} bpfipt_log_events SEC(".maps");

/* Interfaces of the namespace (ifindex -> struct bpfipt_iface), kept by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFIPT_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpfipt_iface);
} bpfipt_ifaces SEC(".maps");

static __always_inline long load_bytes(void *ctx, int kind, __u32 off, void *to, __u32 len)
{
	if (kind == PROG_XDP)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline __u32 pkt_len(void *ctx, int kind)
{
	if (kind == PROG_XDP) {
		struct xdp_md *x = ctx;
		return bpf_xdp_get_buff_len(x);
	}
	return ((struct __sk_buff *)ctx)->len;
}

/* One step of the options' walk (x: the packet, and the offset reached). */
struct tcp_opt_walk {
	struct pkt *p;
	__u32 i;
};

/* tcp_find_option of xt_tcpudp, walking every option (EOL included) and noting each kind it
 * meets instead of stopping at one: a kind is present for the check exactly when the walk
 * met it. Returns 1 to stop. */
static long tcp_opt_walk_cb(__u64 n, struct tcp_opt_walk *x)
{
	struct pkt *p = x->p;
	__u32 i = x->i;
	if (i >= p->tcp_opt_len)
		return 1;
	__u8 k = p->tcp_opt[i & 63];
	p->tcp_opt_kinds[(k >> 6) & 3] |= 1ull << (k & 63);
	if (k < 2) {
		x->i = i + 1;
	} else {
		__u8 l = i + 1 < p->tcp_opt_len ? p->tcp_opt[(i + 1) & 63] : 0;
		x->i = i + (l ? l : 1);
	}
	return 0;
}

/* The TCP options, for `--tcp-option` checks (only the header was parsed), and the kinds
 * among them: walked once here rather than by every check (the walk, a loop, was verified
 * again at each place a rule's checks run). */
static __always_inline void load_tcp_options(void *ctx, int kind, struct pkt *p)
{
	if (p->proto != IPPROTO_TCP || !p->l4_ok || p->tcp_doff <= 20)
		return;
	__u32 n = p->tcp_doff - 20;
	if (n > 40)
		n = 40;
	if (p->l4_len < p->tcp_doff)
		return;
	if (n > 0 && n <= 40 && !load_bytes(ctx, kind, p->l4_off + 20, p->tcp_opt, n)) {
		p->tcp_opt_len = n;
		__builtin_memset(p->tcp_opt_kinds, 0, sizeof(p->tcp_opt_kinds));
		struct tcp_opt_walk x = { .p = p, .i = 0 };
		bpf_loop(40, tcp_opt_walk_cb, &x, 0);
	}
}

/* Emits the LOG events recorded during classification, in order. */
static __always_inline void emit_logs(void *ctx, int kind, struct img *img, struct cls *c)
{
	__u32 logs_off = (__u32)slot(img, BPFIPT_IMG_SLOT_LOGS);
	struct pkt *p = &c->p;
	__u32 total = pkt_len(ctx, kind);

	for (int i = 0; i < BPFIPT_MAX_LOGS_PER_PKT; i++) {
		if (i >= c->n_logs)
			break;
		struct bpfipt_log_event *e = bpf_ringbuf_reserve(&bpfipt_log_events, sizeof(*e), 0);
		if (!e) {
			struct bpfipt_stats *s = stats();
			if (s)
				s->log_lost++;
			continue;
		}
		__u32 l = logs_off + c->log_idx[i & (BPFIPT_MAX_LOGS_PER_PKT - 1)] * BPFIPT_IMG_LOG_SLOTS;
		__u64 l0 = slot(img, l);
		e->level = l0 & 0xff;
		e->flags = (l0 >> 8) & 0xff;
		for (int k = 0; k < 4; k++) {
			__u64 w = slot(img, l + 1 + k);
			__builtin_memcpy(&e->prefix[k * 8], &w, 8);
		}
		e->hook = p->hook;
		e->in_ifindex = p->in_ifindex;
		e->out_ifindex = p->out_ifindex;
		e->mark = c->log_mark[i & (BPFIPT_MAX_LOGS_PER_PKT - 1)];
		e->skb_len = p->len;
		e->has_uid = 0;
		e->uid = 0;
		e->gid = 0;
		/* nf_log prints the link-layer header only when there is an input device. */
		__u32 ml = p->in_ifindex ? p->l3_off : 0;
		e->mac_len = ml;
		if (ml >= 14 && ml <= 16) {
			if (load_bytes(ctx, kind, 0, e->mac, 14))
				e->mac_len = 0;
			else if (ml > 14 && load_bytes(ctx, kind, 14, &e->mac[14], 2))
				e->mac_len = 14;
		} else {
			e->mac_len = 0;
		}
		__u32 n = total > p->l3_off ? total - p->l3_off : 0;
		if (n > p->len)
			n = p->len;
		if (n > BPFIPT_LOG_DATA)
			n = BPFIPT_LOG_DATA;
		e->data_len = 0;
		if (n > 0 && n <= BPFIPT_LOG_DATA && !load_bytes(ctx, kind, p->l3_off, e->data, n))
			e->data_len = n;
		if (kind == PROG_TC_EG) {
			__u32 uid = bpf_get_socket_uid(ctx);
			/* overflowuid (65534) is what the helper returns without a full socket */
			if (((struct __sk_buff *)ctx)->sk) {
				e->uid = uid;
				e->has_uid = 1;
			}
		}
		bpf_ringbuf_submit(e, 0);
	}
}

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

/* Sum of 16-bit words (network order as read from memory) of an IP header. */
static __always_inline __u64 sum_words(const __u16 *w, int n)
{
	__u64 s = 0;
	for (int i = 0; i < n; i++)
		s += w[i];
	return s;
}

static __always_inline void put_iphdr(struct iphdr *ip, __u8 tos, __u16 tot_len, __u16 frag, __u8 proto,
				      __u32 saddr, __u32 daddr)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = tos;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(frag);
	ip->ttl = DEFAULT_TTL;
	ip->protocol = proto;
	ip->check = 0;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = csum_fold(sum_words((__u16 *)ip, 10));
}

/* Builds the REJECT reply in c->reply; returns its length, or 0 when netfilter would send
 * nothing (the packet is dropped all the same). `out_saddr` (network order) is the source of
 * an ICMP error about a packet this host sent (OUTPUT): the address the kernel's route to the
 * packet's source picks. */
static __always_inline __u32 build_reject(void *ctx, int kind, struct cls *c, __u32 out_saddr)
{
	struct pkt *p = &c->p;
	__u8 *b = c->reply;
	__u32 l2 = p->l3_off;

	__builtin_memset(b, 0, sizeof(c->reply));
	if (l2 != 0 && l2 != 14 && l2 != 18)
		return 0;
	if (p->frag_off)
		return 0;
	if (l2) {
		if (load_bytes(ctx, kind, 0, b, l2 == 14 ? 14 : 18))
			return 0;
		__u8 t[6];
		__builtin_memcpy(t, b, 6);
		__builtin_memcpy(b, b + 6, 6);
		__builtin_memcpy(b + 6, t, 6);
	}
	__u32 osrc = bpf_htonl(p->src), odst = bpf_htonl(p->dst);

	if (c->verdict_arg == BPFIPT_REJECT_TCP_RESET) {
		if (p->proto != IPPROTO_TCP || !p->l4_ok || (p->tcp_flags & 0x04))
			return 0;
		struct iphdr *ip = (void *)(b + (l2 & 31));
		struct tcphdr *th = (void *)(b + (l2 & 31) + 20);
		put_iphdr(ip, 0, 40, IP_DF, IPPROTO_TCP, odst, osrc);
		th->source = bpf_htons(p->dport);
		th->dest = bpf_htons(p->sport);
		th->doff = 5;
		if (p->tcp_flags & 0x10) {
			th->seq = bpf_htonl(p->tcp_ack);
		} else {
			__u32 payload = p->l4_len > p->tcp_doff ? p->l4_len - p->tcp_doff : 0;
			th->ack_seq = bpf_htonl(p->tcp_seq + !!(p->tcp_flags & 0x02) + (p->tcp_flags & 0x01) + payload);
			th->ack = 1;
		}
		th->rst = 1;
		/* pseudo header + TCP header */
		__u64 s = (odst & 0xffff) + (odst >> 16) + (osrc & 0xffff) + (osrc >> 16) +
			  bpf_htons(IPPROTO_TCP) + bpf_htons(20);
		s += sum_words((__u16 *)th, 10);
		th->check = csum_fold(s);
		return l2 + 40;
	}

	/* icmp_send: never about an ICMP error, nor to a non-unicast destination. */
	if (p->pkttype != PACKET_HOST || (p->dst >> 28) == 0xe || p->dst == 0xffffffff)
		return 0;
	if (p->proto == IPPROTO_ICMP) {
		if (!p->l4_ok)
			return 0;
		__u8 t = p->icmp >> 8;
		if (t > NR_ICMP_TYPES || t == ICMP_DEST_UNREACH || t == ICMP_SOURCE_QUENCH || t == ICMP_REDIRECT ||
		    t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB)
			return 0;
	}
	__u32 saddr = odst;
	if (p->hook == BPFIPT_HOOK_FORWARD) {
		/* Not addressed to us: the error comes from our address on the way back. */
		__u32 ifi = p->in_ifindex;
		struct bpfipt_iface *ifc = bpf_map_lookup_elem(&bpfipt_ifaces, &ifi);
		if (!ifc || !ifc->ipv4)
			return 0;
		saddr = ifc->ipv4;
	} else if (p->hook == BPFIPT_HOOK_OUTPUT) {
		if (!out_saddr)
			return 0;
		saddr = out_saddr;
	}
	/* Quote the original packet as icmp_send does: as much as fits in 576 bytes. */
	__u32 q = p->len;
	if (q > 576 - 20 - 8)
		q = 576 - 20 - 8;
	if (q < 20 || q > 548)
		return 0;
	__u8 *icmp = b + (l2 & 31) + 20;
	if (load_bytes(ctx, kind, p->l3_off, icmp + 8, q))
		return 0;
	struct iphdr *ip = (void *)(b + (l2 & 31));
	put_iphdr(ip, (p->tos & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL, 20 + 8 + q, 0, IPPROTO_ICMP, saddr,
		  osrc);
	icmp[0] = ICMP_DEST_UNREACH;
	icmp[1] = c->verdict_arg & 0xff;
	/* 8 + q <= 556 bytes, padded with zeros (which do not change the sum) to 4-byte words;
	 * bpf_csum_diff takes at most 512 bytes at a time */
	__u32 n = (8 + q + 3) & ~3u;
	__u32 first = n > 512 ? 512 : n;
	__s64 s1 = bpf_csum_diff(NULL, 0, (__be32 *)icmp, first & 0x3fc, 0);
	__s64 s2 = n > 512 ? bpf_csum_diff(NULL, 0, (__be32 *)(icmp + 512), (n - 512) & 0x3c, 0) : 0;
	if (s1 < 0 || s2 < 0)
		return 0;
	__u64 s = (__u64)(__u32)s1 + (__u32)s2;
	__u16 ck = csum_fold(s);
	__builtin_memcpy(icmp + 2, &ck, 2);
	return l2 + 28 + q;
}

/* Replaces the packet with the reply in c->reply (len bytes). 0 on success. */
static __always_inline int write_reply(void *ctx, int kind, struct cls *c, __u32 len)
{
	if (len == 0 || len > sizeof(c->reply))
		return -1;
	if (kind == PROG_XDP) {
		struct xdp_md *x = ctx;
		int cur = (long)x->data_end - (long)x->data;
		int delta = (int)len - cur;
		if (delta > 0 && bpf_xdp_adjust_head(x, -delta))
			return -1;
		if (delta < 0 && bpf_xdp_adjust_tail(x, delta))
			return -1;
		return bpf_xdp_store_bytes(x, 0, c->reply, len) ? -1 : 0;
	}
	struct __sk_buff *skb = ctx;
	if (bpf_skb_change_tail(skb, len, 0))
		return -1;
	return bpf_skb_store_bytes(skb, 0, c->reply, len, 0) ? -1 : 0;
}

#endif
