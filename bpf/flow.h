/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The flow cache (`bpfipt_flows`, see bpf_iptables.h): a packet of a flow whose verdict is
 * known takes it, with the counters its classification bumped, instead of choosing its chain
 * and walking the classifier again. The programs build the packet's key once it is parsed,
 * look it up, and on a miss store what the full path decided.
 *
 * When the image tracks connections, the key holds the packet's conntrack state, known only
 * after the tracker's lookup. The first probe goes before it, with FLOW_CT_ABSENT in the
 * state's place: an entry so keyed remembers a packet for which no connection was live and
 * to which the tracker had nothing to do (dropped, or INVALID), so its verdict holds while
 * no connection under its tuple comes to be (the `created` count of its conntrack lock stays
 * as it was before that lookup). A flood of packets of no connection that the rules drop is
 * so judged without the tracker. Otherwise the tracker runs and the key takes the state;
 * both keys of a flow share one entry (the hash leaves the state out).
 */
#ifndef BPFIPT_FLOW_H
#define BPFIPT_FLOW_H

#include "lbvs.h"
#include "actions.h" /* PROG_* */
#include "conntrack.h"

/* The key's conntrack state before the tracker looked: none live (see the top). */
#define FLOW_CT_ABSENT 0xff
#define FLOW_KEY_CT_SHIFT 24
/* In the key's `prog` byte (a program number takes its low bits): ports keyed for the FIB. */
#define FLOW_KEY_PORTS_BIT 23

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << BPFIPT_FLOW_CACHE_BITS);
	__type(key, __u32);
	__type(value, struct bpfipt_flow);
} bpfipt_flows SEC(".maps");

/* A flow key's entry, from its four words (the conntrack state left out, see the top). */
#define FLOW_HASH(w0, w1, w2, w3)                                                                 \
	((__u32)(((__u32)((w0) ^ ((w0) >> 32)) ^ (__u32)((w1) ^ ((w1) >> 32)) * 0x85ebca6bu ^   \
		  (__u32)(((w2) & ~(0xffull << FLOW_KEY_CT_SHIFT)) ^ ((w2) >> 32)) * 0xc2b2ae35u ^   \
		  (__u32)((w3) ^ ((w3) >> 32))) *                                                       \
		 (__u32)BPFIPT_LOCAL_FAST_MULT) >> (32 - BPFIPT_FLOW_CACHE_BITS))

/* Whether image `img` caches the verdicts of some hook. */
static __always_inline int flow_caching(struct img *img)
{
	return image_of_our_layout(img) && (image_flags(img) & BPFIPT_IMG_F_FLOW_HOOKS);
}

/* The entry (index) for c->p's flow in program `prog`, its key left in c->fk (with
 * c->p.ct_state), its ports in it when `ports` even if the image's mask leaves them out (the
 * FIB sees them); NONE32 when no hook of the image may be cached. An index, not the entry:
 * the programs carry it to flow_store() through their branches, and the verifier tells
 * states apart by a pointer's NULL-ness, not by a scalar's value. */
static __always_inline __u32 flow_slot(struct img *img, struct cls *c, int prog, int ports)
{
	if (!flow_caching(img))
		return NONE32;
	struct pkt *p = &c->p;
	/* built in registers, a word at a time, as the struct lays them out (little endian):
	 * stored field by field and read back as words, it costs a stalled load per word */
	_Static_assert(sizeof(struct bpfipt_flow_key) == 32 && __builtin_offsetof(struct bpfipt_flow_key, proto) == 16 &&
			       __builtin_offsetof(struct bpfipt_flow_key, ct_state) == 16 + FLOW_KEY_CT_SHIFT / 8 &&
			       __builtin_offsetof(struct bpfipt_flow_key, icmp) == 24,
		       "a flow key is four slots");
	__u32 ifindex = prog == PROG_TC_EG ? p->out_ifindex : p->in_ifindex;
	__u32 frag = (p->frag_off != 0) | (p->l4_ok != 0) << 1;
	__u64 *w = (__u64 *)&c->fk;
	w[0] = ((__u64)p->dst << 32 | p->src) & slot(img, BPFIPT_IMG_SLOT_FLOW_MASK);
	w[1] = ((__u64)ifindex << 32 | (__u32)p->dport << 16 | p->sport) &
	       (slot(img, BPFIPT_IMG_SLOT_FLOW_MASK + 1) | (ports ? 0xffffffffull : 0));
	w[2] = ((__u64)(frag << 24 | (__u32)p->pkttype << 16 | (__u32)p->ttl << 8 | p->tcp_flags) << 32 |
		(__u32)p->ct_state << FLOW_KEY_CT_SHIFT | (__u32)prog << 16 | (__u32)p->tos << 8 | p->proto) &
	       slot(img, BPFIPT_IMG_SLOT_FLOW_MASK + 2);
	/* keyed apart from a masked key of the same ports (the FIB may have stopped seeing them) */
	w[2] |= (__u64)(ports != 0) << FLOW_KEY_PORTS_BIT;
	w[3] = ((__u64)p->mark << 32 | (__u32)p->len << 16 | p->icmp) & slot(img, BPFIPT_IMG_SLOT_FLOW_MASK + 3);
	return FLOW_HASH(w[0], w[1], w[2], w[3]);
}

static __always_inline struct bpfipt_flow *flow_at(__u32 idx)
{
	return idx == NONE32 ? NULL : bpf_map_lookup_elem(&bpfipt_flows, &idx);
}

/* c->fk with the packet's conntrack state (c->p.ct_state) in it. */
static __always_inline void flow_key_ct(struct cls *c, struct img *img)
{
	__u64 *w = (__u64 *)&c->fk;
	w[2] = (w[2] & ~(0xffull << FLOW_KEY_CT_SHIFT)) |
	       ((__u64)c->p.ct_state << FLOW_KEY_CT_SHIFT & slot(img, BPFIPT_IMG_SLOT_FLOW_MASK + 2));
}

/* Whether hit `e`, keyed FLOW_CT_ABSENT, still holds: no connection of the packet's came to be
 * since its classification found none. Asked before the tracker's view of the packet is
 * filled (ct_fill): its ends are the parsed packet's (ports 0 but for a transport header
 * with ports). */
static __always_inline int flow_still_absent(struct bpfipt_flow *e, struct cls *c)
{
	struct pkt *p = &c->p;
	__u32 created;
	return e->hook >= 0 && bpfipt_ct_created(p->src, p->sport, p->dst, p->dport, p->proto, &created) &&
	       created == e->ct_created;
}

/* Whether entry `e` answers for the packet whose key flow_slot() built. */
static __always_inline int flow_hit(struct bpfipt_flow *e, struct cls *c, struct img *img, __u32 rt_gen)
{
	__u64 *a = (__u64 *)&e->key, *b = (__u64 *)&c->fk;
	return e->gen == img->gen && e->rt_gen == rt_gen && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3];
}

/* The verdict of a hit, its counters bumped as classify() bumped them. */
static __always_inline __u32 flow_replay(struct bpfipt_flow *e, struct cls *c)
{
	__u32 n = e->n_counted;
	for (__u32 i = 0; i < BPFIPT_FLOW_COUNTED; i++) {
		if (i >= n)
			break;
		count(&bpfipt_rule_counters, e->counted[i], c->p.len);
	}
	if (e->by_policy)
		count(&bpfipt_policy_counters, e->hook, c->p.len);
	return e->verdict;
}

/* Remembers in entry `idx` (from flow_slot) that the packet went to `hook` (-1: not judged) and got
 * verdict `v` there, when that is a function of its key: keyed FLOW_CT_ABSENT when the
 * tracker found no live connection and has nothing to do (see the top). */
static __always_inline void flow_store(__u32 idx, struct cls *c, struct img *img, __u32 rt_gen, int hook,
				       __u32 v)
{
	struct bpfipt_flow *e = flow_at(idx);
	if (!e)
		return;
	if (hook >= 0) {
		if (hook >= BPFIPT_NR_HOOKS || !(image_flags(img) & (BPFIPT_IMG_F_FLOW << hook)) ||
		    (v != V_ACCEPT && v != V_DROP) || c->n_counted > BPFIPT_FLOW_COUNTED)
			return;
		e->verdict = v;
		e->by_policy = c->by_policy;
		e->n_counted = c->n_counted;
		for (__u32 i = 0; i < BPFIPT_FLOW_COUNTED; i++)
			e->counted[i] = c->counted[i];
	} else {
		e->verdict = V_ACCEPT;
		e->by_policy = 0;
		e->n_counted = 0;
	}
	e->key = c->fk;
	if (hook >= 0 && tracks(img) && c->ctr.absent && (v != V_ACCEPT || c->p.ct_state == BPFIPT_CT_INVALID)) {
		e->key.ct_state = FLOW_CT_ABSENT;
		e->ct_created = c->ctr.created;
	}
	e->gen = img->gen;
	e->rt_gen = rt_gen;
	e->hook = hook;
}

#endif
