/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Linear Bit Vector Search over the classifier image (layout: bpf_iptables.h), step by step
 * as `src/compile/lbvs.rs` describes it:
 *   0. before any compiled rule r is considered (as a candidate, or walked past), the rules
 *      inserted in place before it (see "inserted rules" in bpf_iptables.h), as 4,
 *      but for those inside blocks a skip passed over (a key below c->floor);
 *   1. per used field, the packet's value -> interval -> vector V_f, plus the wildcard W_f;
 *   2. pivot = the field with the fewest words in V_f + W_f;
 *   3. walk the pivot's word indices >= pos/64 in increasing order, AND over fields of
 *      (V_f[w] | W_f[w]), lowest bit >= pos is the candidate;
 *   4. residual checks, then the action (terminal verdict, or continue at pos);
 *   5. no candidate among the LBVS rules: the appended ones (n_lbvs..n_rules), in order from
 *      pos, as 4;
 *   6. nothing left: the hook's policy.
 * One bpf_loop iteration is one step of 3/4, so a hook of BPFIPT_MAX_RULES rules verifies
 * whatever its size. Each field keeps two cursors (into V_f and W_f) that only move forward,
 * because the words visited only increase; a cursor that lags seeks forward by binary search.
 */
#ifndef BPFIPT_LBVS_H
#define BPFIPT_LBVS_H

#include "parse.h"
#include "conntrack.h"

#define NONE32 0xffffffffu
#define MAXF BPFIPT_MAX_FIELDS

enum verdict {
	V_ACCEPT = 0,
	V_DROP = 1,
	V_REJECT = 2,
};

/* Per-CPU scratch of one classification (too big for the 512-byte stack). */
struct cls {
	struct pkt p;
	struct bpfipt_ct_pkt ctp;    /* the packet as the tracker sees it */
	struct bpfipt_ct_result ctr; /* its connection, for -m conntrack/-m state */
	struct bpfipt_ct_match ctm;  /* the -m conntrack being checked (off the stack) */
	struct bpf_fib_lookup fib;   /* the route lookup of an arriving packet (off the stack) */
	__u32 nf, pivot, pos, n_rules, n_lbvs, actions_off, states_off;
	__u32 ins_off, n_ins, ins_i; /* the hook's inserted rules, and the next one due */
	__u32 floor;                 /* inserted rules with a key below it were skipped over */
	__u32 verdict, verdict_arg, by_policy;
	/* per used field (indexed & 15: the verifier needs the bound on every access) */
	__u32 vs[16], vn[16], vc[16]; /* value vector: words offset, words, cursor */
	__u32 ws[16], wn[16], wc[16]; /* wildcard vector */
	__u32 n_counted;             /* rule counters bumped (which: counted[], up to FLOW_COUNTED) */
	__u32 counted[BPFIPT_FLOW_COUNTED];
	struct bpfipt_flow_key fk;   /* the packet's flow key (bpf/flow.h) */
	__u32 n_logs;
	__u32 log_idx[BPFIPT_MAX_LOGS_PER_PKT];
	__u32 log_mark[BPFIPT_MAX_LOGS_PER_PKT];
	__u8 reply[640]; /* a REJECT reply: L2 + IP + ICMP + up to 548 quoted bytes (576 in all) */
	__u32 word;      /* a value passed through memory, where the verifier should forget it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3); /* one per program: XDP, TC ingress, TC egress */
	__type(key, __u32);
	__type(value, struct cls);
} bpfipt_scratch SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_stats);
} bpfipt_stats SEC(".maps");

/* Local IPv4 addresses and subnet broadcasts of this namespace, kept by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFIPT_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpfipt_local_addr);
} bpfipt_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_local_fast);
} bpfipt_local_fast SEC(".maps");

/* The image template; real images are created by userspace at the ruleset's size. */
struct bpfipt_image {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[BPFIPT_IMG_CHUNK_SLOTS]);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct bpfipt_image);
} bpfipt_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_active);
} bpfipt_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64); /* gen | BPFIPT_IMG_BUSY while a packet uses it, else 0 */
} bpfipt_inuse SEC(".maps");

/* The classifier image being read: its map, and its first chunk, looked up once per packet.
 * Most images fit in that chunk, so reading a slot is a bounds check and a load rather than a
 * map lookup (the verifier cannot inline lookups in inner maps of varying size); slots of
 * later chunks take one lookup each. */
struct img {
	void *map;
	struct bpfipt_img_chunk *c0;
	__u32 gen;
};

/* Context of the bpf_loop callbacks: the image (looked up once per packet), the scratch,
 * and per-loop values. Loops run through bpf_loop so that the verifier checks each body
 * once, whatever the iteration count; only the short AND over the fields is a plain loop
 * (a callback per field cost a call each, ~1.5 ns with this kernel's return thunks). */
struct lctx {
	struct img *img;
	struct cls *c;
	__u64 bits;
	__u32 a, b;
	__u32 w;
	__u32 ok;
};

static __always_inline struct bpfipt_stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&bpfipt_stats, &zero);
}

/* A pointer to slot i; NULL if the image has no such slot. */
static __always_inline __u64 *slot_ptr(struct img *img, __u32 i)
{
	__u32 k = i / BPFIPT_IMG_CHUNK_SLOTS;
	struct bpfipt_img_chunk *v = bpf_map_lookup_elem(img->map, &k);
	if (!v)
		return NULL;
	__u32 j = i & (BPFIPT_IMG_CHUNK_SLOTS - 1);
	/* keeps clang from computing the address before the NULL check (the verifier refuses
	 * arithmetic on a maybe-NULL pointer) */
	asm volatile("" : "+r"(j));
	return &v->slot[j];
}

static __always_inline __u64 slot(struct img *img, __u32 i)
{
	if (i < BPFIPT_IMG_CHUNK_SLOTS)
		return img->c0->slot[i];
	__u64 *v = slot_ptr(img, i);
	return v ? *v : 0;
}

/* slot(), or for a one-chunk image (`one_chunk`, a constant) a masked load from chunk 0. */
static __always_inline __u64 slot_in(struct img *img, const int one_chunk, __u32 i)
{
	if (one_chunk)
		return img->c0->slot[i & (BPFIPT_IMG_CHUNK_SLOTS - 1)];
	return slot(img, i);
}

static __always_inline void count(void *map, __u32 key, __u32 bytes)
{
	struct bpfipt_counter *ctr = bpf_map_lookup_elem(map, &key);
	if (ctr) {
		ctr->packets++;
		ctr->bytes += bytes;
	}
}

/* Whether the packet has a whole transport header to match (BPFIPT_C_L4HDR). */
static __always_inline int has_l4(const struct pkt *p)
{
	return p->frag_off == 0 && p->l4_ok;
}

/* The packet's value of a field, as `compile::reference::Packet::field_value` defines it. */
static __always_inline __u32 field_value(const struct pkt *p, __u32 f)
{
	int l4 = has_l4(p);
	switch (f) {
	case BPFIPT_F_SRC:
		return p->src;
	case BPFIPT_F_DST:
		return p->dst;
	case BPFIPT_F_PROTO:
		return p->proto;
	case BPFIPT_F_SPORT:
		return l4 && is_port_proto(p->proto) ? p->sport : 0;
	case BPFIPT_F_DPORT:
		return l4 && is_port_proto(p->proto) ? p->dport : 0;
	case BPFIPT_F_IN_IFACE:
		return p->in_ifindex;
	case BPFIPT_F_OUT_IFACE:
		return p->out_ifindex;
	case BPFIPT_F_TCP_FLAGS:
		return l4 && p->proto == IPPROTO_TCP ? p->tcp_flags : 0;
	case BPFIPT_F_ICMP:
		return l4 && p->proto == IPPROTO_ICMP ? p->icmp : 0;
	case BPFIPT_F_CT_STATE:
		return p->ct_state;
	default:
		return 0;
	}
}

/* One halving step of lower_bound: x->a = lo, x->b = hi, x->w = the value, x->bits = the
 * offset, x->ok = the stride. */
static long lower_bound_cb(__u64 i, struct lctx *x)
{
	if (x->a >= x->b)
		return 1;
	__u32 mid = x->a + (x->b - x->a) / 2;
	if ((__u32)slot(x->img, (__u32)x->bits + x->ok * mid) < x->w)
		x->a = mid + 1;
	else
		x->b = mid;
	return 0;
}

/* The first index i in [lo, hi) whose slot off + stride * i has a low half >= v (hi if none),
 * for sorted slots. Runs in bpf_loop so the verifier checks the body once rather than per
 * unrolled step and call site. */
static __always_inline __u32 lower_bound(struct img *img, __u32 off, __u32 stride, __u32 lo, __u32 hi, __u32 v)
{
	struct lctx y = { .img = img, .bits = off, .ok = stride, .a = lo, .b = hi, .w = v };
	bpf_loop(32, lower_bound_cb, &y, 0);
	return y.a;
}

/* Moves a vector cursor that is behind word w (on a word below it: the callers look first,
 * without a call) to the first word whose index is >= w; returns that index, or NONE32 when
 * the vector has no such word. */
static __noinline __u32 seek(struct img *img, __u32 off, __u32 n, __u32 *cur, __u32 w)
{
	__u32 c = *cur;
	__u32 idx = (__u32)slot(img, off + 2 * c);
	/* Word indices strictly increase, so word w can be no later than position p; there it
	 * is exactly when the words from the cursor to it are consecutive (dense vectors). */
	__u32 p = c + (w - idx), hi = n;
	if (p < n) {
		if ((__u32)slot(img, off + 2 * p) == w) {
			*cur = p;
			return w;
		}
		hi = p + 1;
	}
	/* the next word, most often the one sought, without the loop */
	__u32 lo = c + 1;
	if (lo < hi && (__u32)slot(img, off + 2 * lo) < w)
		lo = lower_bound(img, off, 2, lo + 1, hi, w);
	*cur = lo;
	if (lo >= n)
		return NONE32;
	return (__u32)slot(img, off + 2 * lo);
}

/* The first word of a vector whose index is >= w (NONE32: none), moving its cursor there;
 * seek() only when the cursor is behind w (not on a packet's first step, nor for the pivot's
 * vector that its last step left untouched). */
static __always_inline __u32 seek_inline(struct img *img, __u32 off, __u32 n, __u32 *cur, __u32 w)
{
	__u32 c = *cur;
	if (c >= n)
		return NONE32;
	__u32 idx = (__u32)slot(img, off + 2 * c);
	if (idx >= w)
		return idx;
	return seek(img, off, n, cur, w);
}

/* Word w of a vector (0 when absent), moving its cursor forward. */
static __always_inline __u64 word_at(struct img *img, __u32 off, __u32 n, __u32 *cur, __u32 w)
{
	/* the cursor is often on w or past it already: no call then */
	__u32 c = *cur;
	if (c >= n)
		return 0;
	__u32 at = (__u32)slot(img, off + 2 * c);
	if (at > w)
		return 0;
	if (at < w && seek(img, off, n, cur, w) != w)
		return 0;
	return slot(img, off + 2 * *cur + 1);
}

/* Step 1 for one field: binary search of the interval holding the packet's value.
 * `one_chunk` (a constant): the image is all in chunk 0 (BPFIPT_IMG_F_ONE_CHUNK). */
static __always_inline long setup_field_in(__u64 i, struct lctx *x, const int one_chunk)
{
	struct img *img = x->img;
	struct cls *c = x->c;
	__u32 k = i & 15;
	__u32 desc = x->a + k * BPFIPT_IMG_FIELD_SLOTS, vectab = x->b;
	if (k >= MAXF)
		return 1;
	__u64 d0 = slot_in(img, one_chunk, desc), d1 = slot_in(img, one_chunk, desc + 1);
	__u32 field = d0 & 0xff, shift = (d0 >> 8) & 31, n = d0 >> 32;
	__u32 ivs = (__u32)d1, node = d1 >> 32;
	__u32 wild = (__u32)slot_in(img, one_chunk, desc + 2);
	__u32 v = field_value(&c->p, field);
	/* last interval with lo <= v (the first interval starts at 0): the index narrows the
	 * range, bisection does the rest */
	__u32 lo = 0, hi = n;
	for (int i = 0; node && i < 4; i++) {
		__u64 e = slot_in(img, one_chunk, node + ((v >> shift) & 0xff));
		if (!(e >> BPFIPT_IMG_INDEX_CHILD_BIT)) {
			lo = (__u32)e;
			hi = lo + (__u32)(e >> 32);
			break;
		}
		node = (__u32)e;
		shift = (shift - 8) & 31;
	}
	for (int i = 0; i < 21; i++) {
		if (hi - lo <= 1)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		if ((__u32)(slot_in(img, one_chunk, ivs + mid) >> 32) <= v)
			lo = mid;
		else
			hi = mid;
	}
	__u32 vec = (__u32)slot_in(img, one_chunk, ivs + lo);
	/* every rule passes this field for this packet: the walk need not look at it */
	if (vec & BPFIPT_IMG_IV_ALL)
		return 0;
	__u64 e = slot_in(img, one_chunk, vectab + vec);
	__u64 we = slot_in(img, one_chunk, vectab + wild);
	__u32 j = c->nf; /* the fields kept so far: j <= k, bounded for the verifier */
	if (j >= MAXF)
		return 1;
	c->vs[j] = (__u32)e;
	c->vn[j] = e >> 32;
	c->vc[j] = 0;
	c->ws[j] = (__u32)we;
	c->wn[j] = we >> 32;
	c->wc[j] = 0;
	__u32 cost = c->vn[j] + c->wn[j];
	if (cost < x->w) {
		x->w = cost;
		c->pivot = j;
	}
	c->nf = j + 1;
	return 0;
}

/* An image all in chunk 0 (x->ok) reads its fields' slots as plain loads: a body free of
 * slot()'s bounds checks, map lookups and the register spills around them (~5 ns a packet at
 * 4 fields); its fields are set up two a call (x->bits: how many in all), a call and its
 * return costing more than the loop's other work for a field. Larger images take one a call:
 * each copy of the body lengthens the programs' verification by a sixth. */
static long setup_fields(__u64 i, struct lctx *x)
{
	if (!x->ok)
		return setup_field_in(i, x, 0);
	__u64 k = 2 * i;
	if (setup_field_in(k, x, 1) || k + 1 >= x->bits)
		return 1;
	return setup_field_in(k + 1, x, 1);
}

static __always_inline __u32 ctz64(__u64 x)
{
	__u32 n = 0;
	x &= -x;
	if (!(x & 0x00000000ffffffffULL)) n += 32;
	if (!(x & 0x0000ffff0000ffffULL)) n += 16;
	if (!(x & 0x00ff00ff00ff00ffULL)) n += 8;
	if (!(x & 0x0f0f0f0f0f0f0f0fULL)) n += 4;
	if (!(x & 0x3333333333333333ULL)) n += 2;
	if (!(x & 0x5555555555555555ULL)) n += 1;
	return n;
}

/* `ranges` slots are lo << 32 | hi, sorted and disjoint. */
static __noinline int in_ranges(struct img *img, __u32 off, __u32 n, __u32 v)
{
	__u32 lo = lower_bound(img, off, 1, 0, n, v);
	if (lo >= n)
		return 0;
	return (__u32)(slot(img, off + lo) >> 32) <= v;
}

/* xt_limit's credit algorithm with HZ = 1000 (time in ms): user2credit(x) = x * HZ *
 * CREDITS_PER_JIFFY / XT_LIMIT_SCALE with CREDITS_PER_JIFFY = 32. State slot: credit in bits
 * 0..31, time of the last update (ms, 31 bits) in 32..62, bit 63 = initialised (a new bucket
 * is full). Updated with compare-and-swap, as several CPUs share it. */
static __noinline int limit_pass(struct img *img, __u32 idx, __u32 avg, __u32 burst)
{
	__u64 *st = slot_ptr(img, idx);
	if (!st)
		return 0;
	__u64 cap = (__u64)avg * burst * 1000 * 32 / 10000;
	__u64 cost = (__u64)avg * 1000 * 32 / 10000;
	__u32 now = (bpf_ktime_get_ns() / 1000000) & 0x7fffffff;
	__u64 old = *st;
	__u64 credit;
	if (old >> 63) {
		__u32 prev = (old >> 32) & 0x7fffffff;
		__u32 elapsed = (now - prev) & 0x7fffffff;
		credit = (old & 0xffffffff) + (__u64)elapsed * 32;
	} else {
		credit = cap;
	}
	if (credit > cap)
		credit = cap;
	int ok = credit >= cost;
	if (ok)
		credit -= cost;
	__u64 nv = (credit & 0xffffffff) | ((__u64)now << 32) | (1ULL << 63);
	/* Another CPU updated the bucket meanwhile: it spent the credit we saw. */
	if (__sync_val_compare_and_swap(st, old, nv) != old)
		return 0;
	return ok;
}

/* `-m statistic --mode nth` on its shared counter (as `compile::reference::nth_pass`). */
static __noinline int nth_pass(struct img *img, __u32 idx, __u32 every, __u32 packet)
{
	__u64 *st = slot_ptr(img, idx);
	if (!st)
		return 0;
	/* Counting is an atomic increment modulo every + 1, as xt_statistic's cmpxchg loop. */
	__u64 n = __sync_fetch_and_add(st, 1) + 1;
	return n % ((__u64)every + 1) == packet;
}

/* `--tcp-option kind`: whether the options walked at load (load_tcp_options) met `kind`. */
static __always_inline int has_tcp_option(const struct pkt *p, __u32 kind)
{
	return p->tcp_opt_len && ((p->tcp_opt_kinds[(kind >> 6) & 3] >> (kind & 63)) & 1);
}

/* inet_dev_addr_type() as xt_addrtype calls it: the type of `addr` (host order) in the local
 * routing table, restricted to routes through device `dev` when it is not 0. */
static __always_inline __u32 addr_type(__u32 addr, __u32 dev)
{
	if ((addr >> 24) == 0 || addr == 0xffffffff)
		return RTN_BROADCAST;
	if ((addr >> 28) == 0xe)
		return RTN_MULTICAST;
	/* 127/8 is one local route through lo (ifindex 1 in every namespace) */
	if ((addr >> 24) == 127)
		return !dev || dev == 1 ? RTN_LOCAL : RTN_UNICAST;
	__u32 key = bpf_htonl(addr);
	struct bpfipt_local_addr *l = bpf_map_lookup_elem(&bpfipt_local, &key);
	if (!l || (dev && dev != l->ifindex))
		return RTN_UNICAST;
	return l->rtn_type;
}

/* addrtype_mt_v1. */
static __noinline int addrtype_pass(const struct pkt *p, __u32 types, __u32 flags)
{
	__u32 dev = flags & BPFIPT_AT_LIMIT_IN ? p->in_ifindex : flags & BPFIPT_AT_LIMIT_OUT ? p->out_ifindex : 0;
	__u32 src = types & 0xffff, dst = types >> 16;
	if (src && !!(src & (1u << (addr_type(p->src, dev) & 15))) == !!(flags & BPFIPT_AT_INVERT_SRC))
		return 0;
	if (dst && !!(dst & (1u << (addr_type(p->dst, dev) & 15))) == !!(flags & BPFIPT_AT_INVERT_DST))
		return 0;
	return 1;
}

/* `-m conntrack` with the match copied out of the image (into the scratch: the stack of
 * this deepest call chain is tight). */
static __noinline int conntrack_pass(struct img *img, struct cls *c, __u32 off)
{
	__u64 *w = (__u64 *)&c->ctm;
	_Static_assert(sizeof(c->ctm) == BPFIPT_IMG_CTM_SLOTS * 8, "ct match is whole slots");
	for (int i = 0; i < BPFIPT_IMG_CTM_SLOTS; i++)
		w[i] = slot(img, off + i);
	return bpfipt_ct_match(&c->ctm, &c->ctr);
}

/* Whether v is in range r (lo << 32 | hi: a value, a prefix, a port range): no search. */
static __always_inline int in_range(__u64 r, __u32 v)
{
	return (__u32)(r >> 32) <= v && v <= (__u32)r;
}

/* One residual check; 1 = passes. */
static __noinline int check_one(struct img *img, struct cls *c, __u32 off)
{
	struct pkt *p = &c->p;
	__u64 s0 = slot(img, off), b = slot(img, off + 1);
	__u32 kind = s0 & 0xff, inv = (s0 >> 8) & 1, field = (s0 >> 16) & 0xff, op = (s0 >> 24) & 0xff;
	__u32 a = s0 >> 32;
	int r;

	switch (kind) {
	case BPFIPT_C_L4HDR:
		return has_l4(p);
	case BPFIPT_C_FRAGMENT:
		return (p->frag_off != 0) == inv;
	case BPFIPT_C_MARK:
		return ((p->mark & (__u32)b) == a) ^ inv;
	case BPFIPT_C_LENGTH:
		return (a <= p->len && p->len <= b) ^ inv;
	case BPFIPT_C_TTL:
		switch (op) {
		case 0: return p->ttl == a;
		case 1: return p->ttl != a;
		case 2: return p->ttl < a;
		default: return p->ttl > a;
		}
	case BPFIPT_C_TOS:
		return ((p->tos & (__u8)b) == a) ^ inv;
	case BPFIPT_C_DSCP:
		return ((__u32)(p->tos >> 2) == a) ^ inv;
	case BPFIPT_C_PKTTYPE:
		return (p->pkttype == a) ^ inv;
	case BPFIPT_C_MAC: {
		if (!p->has_mac)
			return 0;
		__u64 m = 0;
		for (int i = 5; i >= 0; i--)
			m = m << 8 | p->mac_src[i];
		return (m == b) ^ inv;
	}
	case BPFIPT_C_TCPOPT:
		return has_tcp_option(p, a) ^ inv;
	case BPFIPT_C_LIMIT:
		return limit_pass(img, c->states_off + a, (__u32)b, b >> 32);
	case BPFIPT_C_RANDOM:
		return ((bpf_get_prandom_u32() & 0x7fffffff) < a) ^ inv;
	case BPFIPT_C_NTH:
		return nth_pass(img, c->states_off + a, (__u32)b, b >> 32) ^ inv;
	case BPFIPT_C_FIELD_IN: {
		__u32 v = field_value(p, field);
		if ((__u32)b != 1)
			return in_ranges(img, a, (__u32)b, v);
		return in_range(slot(img, a), v);
	}
	case BPFIPT_C_PORT_EITHER:
		r = in_ranges(img, a, (__u32)b, field_value(p, BPFIPT_F_SPORT));
		return r || in_ranges(img, a, (__u32)b, field_value(p, BPFIPT_F_DPORT));
	case BPFIPT_C_ADDR_MASK:
		return ((field_value(p, field) & (__u32)b) == a) ^ inv;
	case BPFIPT_C_CONNTRACK:
		return conntrack_pass(img, c, a);
	case BPFIPT_C_ADDRTYPE:
		return addrtype_pass(p, a, (__u32)b);
	default:
		return 0;
	}
}

static long check_cb(__u64 i, struct lctx *x)
{
	if (!check_one(x->img, x->c, x->a + (__u32)i * BPFIPT_IMG_CHECK_SLOTS)) {
		x->ok = 0;
		return 1;
	}
	return 0;
}

/* Checks of a rule tried inline before any call (see take_rule): two catch most rules a
 * packet walks past, and each more made the programs' first load (verification) slower:
 * four took 7.9 s, two 6.6, none 6.5. */
#define BPFIPT_INLINE_CHECKS 2

/* Step 4: compiled rule r is a candidate; the walk goes on at `next` unless the rule
 * says where (r + 1 for a compiled rule, the same position for an inserted one). Returns 1
 * when the search is over. */
static __always_inline int take_rule(struct img *img, struct cls *c, __u32 r, __u32 next)
{
	__u32 a = c->actions_off + r * BPFIPT_IMG_ACTION_SLOTS;
	__u64 a0 = slot(img, a), a1 = slot(img, a + 1), a2 = slot(img, a + 2);
	__u32 kind = a0 & 0xff, rule_id = a0 >> 32, arg0 = (__u32)a1, arg1 = a1 >> 32;
	__u32 coff = (__u32)a2, nck = a2 >> 32;

	if (nck) {
		struct lctx y = { .img = img, .c = c, .a = coff, .ok = 1 };
		/* The leading checks that are one range of a field (an address, a prefix, a
		 * protocol, a port: the field matches of a rule walked in order come first) inline:
		 * a call costs more than such a check (a packet walking appended rules paid ~70 ns
		 * a rule for a loop callback and a call that the first check already fails). */
		__u32 done = 0;
		for (int i = 0; i < BPFIPT_INLINE_CHECKS && done < nck && y.ok; i++) {
			__u32 k = coff + done * BPFIPT_IMG_CHECK_SLOTS;
			__u64 s0 = slot(img, k);
			if ((s0 & 0xff) != BPFIPT_C_FIELD_IN || (__u32)slot(img, k + 1) != 1)
				break;
			__u64 r = slot(img, s0 >> 32);
			y.ok = in_range(r, field_value(&c->p, (s0 >> 16) & 0xff));
			done++;
		}
		y.a = coff + done * BPFIPT_IMG_CHECK_SLOTS;
		nck -= done;
		if (!y.ok || !nck) {
			/* decided inline */
		} else if (nck == 1 && (slot(img, y.a) & 0xff) == BPFIPT_C_L4HDR) {
			/* a port match's one check, without a call */
			y.ok = has_l4(&c->p);
		} else if (nck == 1) {
			y.ok = check_one(img, c, y.a);
		} else {
			bpf_loop(nck < BPFIPT_MAX_CHECKS ? nck : BPFIPT_MAX_CHECKS, check_cb, &y, 0);
		}
		if (!y.ok) {
			c->pos = next;
			if (kind == BPFIPT_A_ENTER) {
				c->pos = arg0;
				c->floor = arg1;
			}
			return 0;
		}
	}
	if (rule_id != BPFIPT_NO_RULE) {
		count(&bpfipt_rule_counters, rule_id, c->p.len);
		c->counted[c->n_counted & (BPFIPT_FLOW_COUNTED - 1)] = rule_id;
		c->n_counted++;
	}
	c->pos = next;
	switch (kind) {
	case BPFIPT_A_ACCEPT:
		c->verdict = V_ACCEPT;
		return 1;
	case BPFIPT_A_DROP:
		c->verdict = V_DROP;
		return 1;
	case BPFIPT_A_REJECT:
		c->verdict = V_REJECT;
		c->verdict_arg = arg0;
		return 1;
	case BPFIPT_A_LOG: {
		__u32 n = c->n_logs;
		if (n < BPFIPT_MAX_LOGS_PER_PKT) {
			c->log_idx[n] = arg0;
			c->log_mark[n] = c->p.mark;
			c->n_logs = n + 1;
		} else {
			struct bpfipt_stats *s = stats();
			if (s)
				s->log_lost++;
		}
		return 0;
	}
	case BPFIPT_A_MARK:
		c->p.mark = (c->p.mark & ~arg1) ^ arg0;
		return 0;
	case BPFIPT_A_SKIP_TO:
		c->pos = arg0;
		c->floor = arg1;
		return 0;
	default: /* CONTINUE, ENTER */
		return 0;
	}
}

/* Takes compiled rule r, or first the next inserted rule due before it (inserted rules are
 * in the order of the compiled rule each goes before), or passes over that one when a skip
 * did (a step that changes nothing else). One call site per step, so that take_rule is
 * inlined once per loop body. */
static __always_inline int take_at(struct img *img, struct cls *c, __u32 r)
{
	__u32 next = r + 1;
	if (c->ins_i < c->n_ins) {
		__u64 e = slot(img, c->ins_off + c->ins_i);
		if (((__u32)e >> BPFIPT_IMG_INS_DEPTH_BITS) <= r) {
			c->ins_i++;
			if ((__u32)e < c->floor)
				return 0;
			next = c->pos;
			r = e >> 32;
		}
	}
	return take_rule(img, c, r, next);
}

/* One step of 3/4. Returns 1 to stop the loop. */
static long lbvs_step(__u64 i, struct lctx *x)
{
	struct cls *c = x->c;
	struct img *img = x->img;
	__u32 pv = c->pivot & 15;
	if (c->pos >= c->n_lbvs)
		return 1;
	__u32 first = c->pos >> 6;
	__u32 a = seek_inline(img, c->vs[pv], c->vn[pv], &c->vc[pv], first);
	__u32 b = seek_inline(img, c->ws[pv], c->wn[pv], &c->wc[pv], first);
	/* through memory, whose loads the verifier knows nothing of: the word's several ways
	 * here (an empty vector's NONE32, a cursor's word, seek's answer) would otherwise each
	 * verify the rest of the step on their own (a sixth of the programs' verification) */
	c->word = a < b ? a : b;
	__u32 w = *(volatile __u32 *)&c->word;
	if (w == NONE32)
		return 1;
	__u64 bits = ~0ULL;
	__u32 nf = c->nf;
	for (__u32 f = 0; f < MAXF; f++) {
		if (f >= nf || !bits)
			break;
		bits &= word_at(img, c->vs[f], c->vn[f], &c->vc[f], w) |
			word_at(img, c->ws[f], c->wn[f], &c->wc[f], w);
	}
	if (w == first)
		bits &= ~0ULL << (c->pos & 63);
	if (!bits) {
		/* not past the LBVS rules: the appended ones start there */
		__u32 next = (w + 1) << 6;
		c->pos = next < c->n_lbvs ? next : c->n_lbvs;
		return 0;
	}
	__u32 r = (w << 6) + ctz64(bits);
	if (r >= c->n_lbvs)
		return 1;
	return take_at(img, c, r);
}

/* One leading rule (x->a: the masks' offset, x->b: how many). Returns 1 to stop. */
static long lead_step(__u64 i, struct lctx *x)
{
	struct cls *c = x->c;
	__u32 r = c->pos;
	if (r >= x->b || r >= c->n_rules)
		return 1;
	int due = c->ins_i < c->n_ins &&
		  ((__u32)slot(x->img, c->ins_off + c->ins_i) >> BPFIPT_IMG_INS_DEPTH_BITS) <= r;
	if (!due && !((slot(x->img, x->a + r) >> (c->p.ct_state & 63)) & 1)) {
		c->pos = r + 1;
		return 0;
	}
	return take_at(x->img, c, r);
}

/* Rules walked in order, from c->pos up to x->b = n_rules: the appended ones, or all of
 * them when no field is used; at the end, the inserted rules still due (none is, when the
 * walk skipped to the policy: past n_rules). */
static long linear_step(__u64 i, struct lctx *x)
{
	struct cls *c = x->c;
	__u32 r = c->pos;
	if (r > x->b || (r == x->b && c->ins_i >= c->n_ins))
		return 1;
	return take_at(x->img, c, r);
}

/* Fills `img` with the installed image, announced in bpfipt_inuse until image_exit() (see
 * bpf_iptables.h); 0 (counted) when there is none, -1 when the generation kept moving under
 * the announcement (four flips in a row: the packet is dropped, not let through). Programs
 * never nest on one CPU (the TC egress hook runs with bottom halves disabled), so one
 * announcement per CPU suffices. */
static __always_inline int image_enter(struct img *img)
{
	__u32 zero = 0;
	struct bpfipt_active *a = bpf_map_lookup_elem(&bpfipt_active, &zero);
	__u64 *mark = bpf_map_lookup_elem(&bpfipt_inuse, &zero);
	if (!a || !mark)
		return 0;
	__u32 gen = *(volatile __u32 *)&a->gen;
	int settled = 0;
	for (int i = 0; i < 4 && !settled; i++) {
		/* A plain store, no barrier here: the writer makes every CPU execute one between
		 * its flip and its look at the marks (fence.rs), so that it sees this mark or this
		 * CPU sees the flip (an atomic exchange here cost ~6 ns a packet). */
		*(volatile __u64 *)mark = (__u64)((gen & BPFIPT_IMG_GEN_MASK) | BPFIPT_IMG_BUSY);
		asm volatile("" ::: "memory");
		__u32 now = *(volatile __u32 *)&a->gen;
		settled = now == gen;
		gen = now;
	}
	/* a generation never announced is never read */
	if (!settled)
		return -1;
	__u32 slot = gen & 1;
	img->gen = gen;
	img->map = gen ? bpf_map_lookup_elem(&bpfipt_tables, &slot) : NULL;
	img->c0 = img->map ? bpf_map_lookup_elem(img->map, &zero) : NULL;
	if (!img->c0) {
		struct bpfipt_stats *s = stats();
		if (s)
			s->no_image++;
		return 0;
	}
	return 1;
}

/* Whether `img` has the layout these programs read. An image of another layout judges
 * nothing: an upgrade links its new programs a moment before it installs their first image,
 * and they must not misread the old one. */
static __always_inline int image_of_our_layout(struct img *img)
{
	return img->c0->slot[0] == ((__u64)BPFIPT_IMG_VERSION << 32 | BPFIPT_IMG_MAGIC);
}

/* The image's BPFIPT_IMG_F_* flags. */
static __always_inline __u64 image_flags(struct img *img)
{
	return slot(img, BPFIPT_IMG_SLOT_FLAGS);
}

/* Whether packets judged against `img` are tracked (some rule looks at conntrack state). */
static __always_inline int tracks(struct img *img)
{
	return image_flags(img) & BPFIPT_IMG_F_CONNTRACK;
}

static __always_inline void image_exit(void)
{
	__u32 zero = 0;
	__u64 *mark = bpf_map_lookup_elem(&bpfipt_inuse, &zero);
	if (mark)
		*(volatile __u64 *)mark = 0;
}

/* Classifies c->p (c->p.hook set) against image `img`. Counts rules and policy.
 * Returns the verdict (c->verdict_arg for REJECT); c->log_* lists the LOG hits. */
static __always_inline __u32 classify(struct img *img, struct cls *c)
{
	__u32 hook = c->p.hook;
	c->n_logs = 0;
	c->n_counted = 0;
	c->verdict_arg = 0;
	c->by_policy = 0;
	if (hook >= BPFIPT_NR_HOOKS)
		return V_ACCEPT;
	/* Slots are read where they are used, not kept in locals across the loops: the stack of
	 * this call chain is at its limit (and one loop context serves every loop). */
	__u32 h = BPFIPT_IMG_SLOT_HOOK0 + hook * BPFIPT_IMG_HOOK_SLOTS;
	__u64 h0 = slot(img, h), h1 = slot(img, h + 1);
	c->n_rules = (__u32)h0;
	c->n_lbvs = h1 >> 32;
	c->actions_off = (__u32)h1;
	c->states_off = (__u32)slot(img, BPFIPT_IMG_SLOT_STATES);
	c->pos = 0;
	c->nf = 0;
	c->pivot = 0;
	c->verdict = NONE32;
	if (c->n_rules > BPFIPT_MAX_RULES)
		c->n_rules = BPFIPT_MAX_RULES;

	__u64 ins = slot(img, h + 4);
	c->ins_off = (__u32)ins;
	c->n_ins = ins >> 32;
	c->ins_i = 0;
	c->floor = 0;

	struct lctx x = { .img = img, .c = c };
	/* The leading rules on conntrack state alone (see "lead" in bpf_iptables.h). */
	__u64 ld = slot(img, BPFIPT_IMG_SLOT_HOOK0 + c->p.hook * BPFIPT_IMG_HOOK_SLOTS + 3);
	if (ld >> 32) {
		x.a = (__u32)ld;
		x.b = ld >> 32;
		/* inserted rules due before a lead rule take a step each too */
		bpf_loop(BPFIPT_IMG_MAX_LEAD + BPFIPT_IMG_TAIL_CAP, lead_step, &x, 0);
		if (c->verdict != NONE32)
			return c->verdict;
	}
	__u64 h2 = slot(img, BPFIPT_IMG_SLOT_HOOK0 + c->p.hook * BPFIPT_IMG_HOOK_SLOTS + 2);
	x.a = (__u32)h2;
	x.b = (__u32)slot(img, BPFIPT_IMG_SLOT_VECTAB);
	x.w = NONE32;
	x.ok = !!(image_flags(img) & BPFIPT_IMG_F_ONE_CHUNK);
	x.bits = (h2 >> 32) < MAXF ? (h2 >> 32) : MAXF;
	/* one callback for both image kinds: a callback each measured ~40 ns a packet slower */
	if (x.bits)
		bpf_loop(x.ok ? (x.bits + 1) / 2 : x.bits, setup_fields, &x, 0);
	if (c->n_rules) {
		long n = 0;
		if (c->nf)
			n = bpf_loop(BPFIPT_MAX_STEPS, lbvs_step, &x, 0);
		/* then the appended rules, in order (all rules when no field is used), and the
		 * inserted ones still due */
		if (c->verdict == NONE32 && n < BPFIPT_MAX_STEPS &&
		    (c->n_rules > (c->nf ? c->n_lbvs : 0) || c->ins_i < c->n_ins)) {
			if (c->nf && c->pos < c->n_lbvs)
				c->pos = c->n_lbvs;
			x.b = c->n_rules;
			n = bpf_loop(BPFIPT_MAX_STEPS, linear_step, &x, 0);
		}
		if (n >= BPFIPT_MAX_STEPS && c->verdict == NONE32) {
			struct bpfipt_stats *s = stats();
			if (s)
				s->steps_exhausted++;
		}
	}
	if (c->verdict != NONE32)
		return c->verdict;
	c->by_policy = 1;
	hook = c->p.hook;
	count(&bpfipt_policy_counters, hook, c->p.len);
	return slot(img, BPFIPT_IMG_SLOT_HOOK0 + hook * BPFIPT_IMG_HOOK_SLOTS) >> 32 ? V_ACCEPT : V_DROP;
}

#endif
