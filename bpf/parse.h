/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing shared by every program: Ethernet (one optional 802.1Q/802.1ad tag), IPv4,
 * and the transport fields the classifier needs. Works on a linear [data, data_end) window:
 * XDP's frame, or an skb's linear head (TC programs pull the headers in first).
 */
#ifndef BPFIPT_PARSE_H
#define BPFIPT_PARSE_H

#include "consts.h"

/* Everything classification and the actions look at in one packet. Addresses and ports in
 * host order. */
struct pkt {
	__u32 src, dst;
	__u32 in_ifindex, out_ifindex; /* 0 where netfilter sees no interface */
	__u32 mark;
	__u32 tcp_seq, tcp_ack;        /* host order */
	__u8 tcp_opt_len;              /* bytes of tcp_opt[] loaded */
	__u16 sport, dport;
	__u16 icmp;                    /* type << 8 | code */
	__u16 len;                     /* IP total length */
	__u16 frag_off;                /* fragment offset, 8-byte units */
	__u16 frag_bits;               /* the raw frag_off field (host order), for LOG */
	__u16 l3_off;                  /* offset of the IP header */
	__u16 l4_off;                  /* offset of the transport header */
	__u16 l4_len;                  /* bytes from the transport header to the IP end */
	__u8 proto, tcp_flags, ttl, tos;
	__u8 l4_ok;                    /* transport header present and complete */
	__u8 pkttype;                  /* PACKET_HOST/BROADCAST/MULTICAST/OTHERHOST */
	__u8 has_mac;
	__u8 hook;
	__u8 mac_src[6];
	__u8 tcp_doff;                 /* TCP header length, bytes */
	__u16 tcp_win;                 /* TCP window, raw */
	__u8 ct_state;                 /* enum bpfipt_ct_state, when the ruleset tracks */
	__u8 ihl;                      /* IP header length, bytes */
	/* last, and not cleared by parse_packet: only read when tcp_opt_len is not 0 (its first
	 * tcp_opt_len bytes) */
	__u8 tcp_opt[64];              /* TCP options, 40 bytes at most (loaded after parsing) */
	__u64 tcp_opt_kinds[4];        /* the kinds among them: bit k % 64 of word k / 64 */
};

static __always_inline int is_port_proto(__u8 p)
{
	return p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_UDPLITE || p == IPPROTO_SCTP ||
	       p == IPPROTO_DCCP;
}

/* Fills `p` from the frame; `l2` says whether the frame starts with an Ethernet header.
 * Returns 0 for an IPv4 packet we can judge, -1 for anything else (passed unjudged, as
 * netfilter's IPv4 hooks never see it; a malformed IPv4 header is dropped by the stack). */
static __always_inline int parse_packet(struct pkt *p, void *data, void *data_end, int l2)
{
	__u32 off = 0;

	__builtin_memset(p, 0, __builtin_offsetof(struct pkt, tcp_opt));
	/* the fields are stored as they are parsed, not merged with the zeroing into locals
	 * kept across the protocol switch (which cost the caller's frame ~80 bytes of stack) */
	asm volatile("" ::: "memory");
	if (l2) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return -1;
		__u16 proto = bpf_ntohs(eth->h_proto);
		off = sizeof(*eth);
		if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
			struct vlan_hdr *vh = data + off;
			if ((void *)(vh + 1) > data_end)
				return -1;
			proto = bpf_ntohs(vh->h_vlan_encapsulated_proto);
			off += sizeof(*vh);
		}
		if (proto != ETH_P_IP)
			return -1;
		__builtin_memcpy(p->mac_src, eth->h_source, 6);
		p->has_mac = 1;
		if (eth->h_dest[0] & 1) {
			int bcast = eth->h_dest[0] == 0xff && eth->h_dest[1] == 0xff && eth->h_dest[2] == 0xff &&
				    eth->h_dest[3] == 0xff && eth->h_dest[4] == 0xff && eth->h_dest[5] == 0xff;
			p->pkttype = bcast ? PACKET_BROADCAST : PACKET_MULTICAST;
		}
	}
	struct iphdr *ip = data + off;
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	p->l3_off = off;
	p->ihl = ip->ihl * 4;
	p->src = bpf_ntohl(ip->saddr);
	p->dst = bpf_ntohl(ip->daddr);
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->len = bpf_ntohs(ip->tot_len);
	p->frag_bits = bpf_ntohs(ip->frag_off);
	p->frag_off = p->frag_bits & IP_OFFSET;
	if (p->len < p->ihl)
		return -1;
	p->l4_off = off + p->ihl;
	p->l4_len = p->len - p->ihl;
	if (p->frag_off)
		return 0;

	void *l4 = data + (off & 0xff) + (p->ihl & 0x3c);
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end || p->l4_len < sizeof(*th))
			return 0;
		p->l4_ok = 1;
		p->sport = bpf_ntohs(th->source);
		p->dport = bpf_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		p->tcp_seq = bpf_ntohl(th->seq);
		p->tcp_ack = bpf_ntohl(th->ack_seq);
		p->tcp_doff = th->doff * 4;
		p->tcp_win = bpf_ntohs(th->window);
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
	case IPPROTO_DCCP: {
		/* xt_udp and friends need the whole fixed header (8 bytes; DCCP/SCTP ports are
		 * its first 4 bytes as well). */
		__u16 *ports = l4;
		if ((void *)(ports + 4) > data_end || p->l4_len < 8)
			return 0;
		p->l4_ok = 1;
		p->sport = bpf_ntohs(ports[0]);
		p->dport = bpf_ntohs(ports[1]);
		break;
	}
	case IPPROTO_ICMP: {
		__u8 *ich = l4;
		/* icmp_match needs type and code (2 bytes). */
		if ((void *)(ich + 2) > data_end || p->l4_len < 2)
			return 0;
		p->l4_ok = 1;
		p->icmp = (__u16)ich[0] << 8 | ich[1];
		break;
	}
	default:
		break;
	}
	return 0;
}

#endif
