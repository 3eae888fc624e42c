// SPDX-License-Identifier: GPL-2.0
/*
 * The fixed datapath programs and every pinned map. Rule changes never reload these: they
 * only install a new classifier image (see bpf_iptables.h).
 *
 * Programs: `bpfipt_xdp_ingress` (default at ingress), `bpfipt_tc_ingress` (TC ingress: where
 * XDP is taken or cannot be used, on lo, and for rulesets that MARK at INPUT/FORWARD, since
 * XDP has no skb to carry a mark), `bpfipt_tc_egress` (OUTPUT).
 *
 * Chain selection at ingress: multicast and limited broadcast, a local address of this
 * namespace or a broadcast address of one of its subnets (`bpfipt_local`, kept by userspace),
 * or 127/8 -> INPUT; else a FIB lookup: a route out -> FORWARD with its output interface;
 * forwarding disabled on the input device -> INPUT (the stack delivers locally or drops: it
 * never forwards; judging it at INPUT keeps an address added since the map was refreshed
 * filtered); no route, blackhole, unreachable -> not judged (netfilter would never see
 * FORWARD).
 * At egress: a packet that came in on an interface (`ingress_ifindex != 0`) was forwarded and
 * judged in FORWARD at ingress; anything else is locally generated -> OUTPUT.
 *
 * Connection tracking (bpf/conntrack.h) runs only while the installed image has
 * BPFIPT_IMG_F_CONNTRACK, i.e. some rule looks at conntrack state: netfilter too hooks
 * conntrack into a namespace only once a rule needs it. Then every judged packet is looked
 * up before classification (its state feeds -m conntrack/-m state), and after the verdict
 * its connection advances, whatever the verdict (netfilter tracks before filtering), while
 * only an accepted packet creates an entry (a dropped SYN leaves no state). The one packet
 * the tracker never sees is one the flow cache answers as of no connection, dropped (see
 * flow.h): the tracker would have nothing to do with it.
 * Each packet is tracked once per pass through the host: received and forwarded packets at
 * ingress, locally generated ones at egress. Loopback packets are seen at lo egress
 * (OUTPUT) and again at lo ingress (INPUT): egress only looks up (and updates a packet
 * OUTPUT drops, which ingress never sees), ingress looks up (the same state, since nothing
 * changed in between, as netfilter keeps the state it computed at OUTPUT) and updates.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "bpf_iptables.h"
#include "conntrack.h"
#include "consts.h"
#include "parse.h"
#include "lbvs.h"
#include "actions.h"
#include "flow.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_meta);
} bpfipt_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << BPFIPT_ROUTE_CACHE_BITS);
	__type(key, __u32);
	__type(value, struct bpfipt_route);
} bpfipt_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_routing);
} bpfipt_routing SEC(".maps");

/* Keeps the struct types in BTF so the skeleton exports them to Rust. */
struct bpfipt_meta _bpfipt_meta_type = {};
struct bpfipt_counter _bpfipt_counter_type = {};
struct bpfipt_iface _bpfipt_iface_type = {};
struct bpfipt_log_event _bpfipt_log_event_type = {};
struct bpfipt_stats _bpfipt_stats_type = {};
struct bpfipt_active _bpfipt_active_type = {};
struct bpfipt_local_addr _bpfipt_local_addr_type = {};
struct bpfipt_local_fast _bpfipt_local_fast_type = {};
struct bpfipt_flow_key _bpfipt_flow_key_type = {};
struct bpfipt_flow _bpfipt_flow_type = {};
struct bpfipt_route _bpfipt_route_type = {};
struct bpfipt_routing _bpfipt_routing_type = {};
enum bpfipt_const _bpfipt_const_type = BPFIPT_LAYOUT_VERSION;
enum bpfipt_hook _bpfipt_hook_type = BPFIPT_HOOK_INPUT;
enum bpfipt_field _bpfipt_field_type = BPFIPT_F_SRC;
enum bpfipt_action _bpfipt_action_type = BPFIPT_A_ACCEPT;
enum bpfipt_check _bpfipt_check_type = BPFIPT_C_L4HDR;
enum bpfipt_iface_flags _bpfipt_iface_flags_type = BPFIPT_IFACE_NO_L2;
enum bpfipt_addrtype_flags _bpfipt_addrtype_flags_type = BPFIPT_AT_INVERT_SRC;
enum bpfipt_ctm_const _bpfipt_ctm_const_type = BPFIPT_IMG_CTM_SLOTS;
enum bpfipt_route_keyed _bpfipt_route_keyed_type = BPFIPT_ROUTE_BY_FLOW;

static __always_inline struct cls *scratch(__u32 kind)
{
	return bpf_map_lookup_elem(&bpfipt_scratch, &kind);
}

static __always_inline void stat_parse_pass(void)
{
	struct bpfipt_stats *s = stats();
	if (s)
		s->parse_pass++;
}

#define LOOPBACK_IFINDEX 1

static __always_inline void reject_failed(void)
{
	struct bpfipt_stats *s = stats();
	if (s)
		s->reject_failed++;
}

/* The TCP options, read only when a rule checks them (a helper call per packet otherwise). */
static __always_inline void tcp_options_if_used(void *ctx, int kind, struct img *img, struct pkt *p)
{
	if (image_flags(img) & BPFIPT_IMG_F_TCP_OPTIONS)
		load_tcp_options(ctx, kind, p);
}

/* Fills c->ctp from the parsed packet; [data, data_end) is the linear window parse_packet
 * read (an ICMP error's quoted header is read from it). */
static __always_inline void ct_fill(struct cls *c, void *data, void *data_end, int from_local)
{
	struct pkt *p = &c->p;
	struct bpfipt_ct_pkt *t = &c->ctp;

	__builtin_memset(t, 0, sizeof(*t));
	t->saddr = p->src;
	t->daddr = p->dst;
	t->proto = p->proto;
	t->ip_len = p->len;
	t->ifindex = p->in_ifindex ? p->in_ifindex : p->out_ifindex;
	t->from_local = from_local;
	if (p->frag_off) {
		t->frag = 1;
		return;
	}
	if (p->proto == IPPROTO_TCP) {
		t->sport = p->sport;
		t->dport = p->dport;
		t->seq = p->tcp_seq;
		t->ack_seq = p->tcp_ack;
		t->window = p->tcp_win;
		t->tcp_flags = p->tcp_flags;
		t->l4_ok = p->l4_ok && p->tcp_doff >= 20 && p->tcp_doff <= p->l4_len;
		if (t->l4_ok)
			t->payload_len = p->l4_len - p->tcp_doff;
	} else if (p->proto == IPPROTO_ICMP) {
		bpfipt_ct_parse_icmp(t, data + (p->l4_off & 0xff), data_end);
	} else if (ct_port_proto(p->proto)) {
		t->sport = p->sport;
		t->dport = p->dport;
		t->l4_ok = p->l4_ok;
	} else {
		t->l4_ok = 1;
	}
}

/* ct_fill() in program `kind`, from its context: its linear window, and whether the packet
 * is this host's own (at egress, or on lo at TC ingress). Only a packet the tracker is asked
 * about needs it (see flow_cached). */
static __always_inline void ct_fill_from(void *ctx, struct cls *c, int kind)
{
	if (kind == PROG_XDP) {
		struct xdp_md *x = ctx;
		ct_fill(c, (void *)(long)x->data, (void *)(long)x->data_end, 0);
	} else {
		struct __sk_buff *skb = ctx;
		ct_fill(c, (void *)(long)skb->data, (void *)(long)skb->data_end,
			kind == PROG_TC_EG || skb->ifindex == LOOPBACK_IFINDEX);
	}
}

/* Classification as a global function: verified once per program however many places judge
 * a packet (the packet itself, then a REJECT reply at OUTPUT), against the image this CPU
 * announced in image_enter(). */
__noinline int bpfipt_dp_classify(struct cls *c)
{
	__u32 zero = 0;
	if (!c)
		return V_ACCEPT;
	__u64 *mark = bpf_map_lookup_elem(&bpfipt_inuse, &zero);
	if (!mark)
		return V_ACCEPT;
	__u32 slot = *mark & 1;
	struct img img = { .map = bpf_map_lookup_elem(&bpfipt_tables, &slot) };
	if (!img.map)
		return V_ACCEPT;
	img.c0 = bpf_map_lookup_elem(img.map, &zero);
	if (!img.c0 || !image_of_our_layout(&img))
		return V_ACCEPT;
	return classify(&img, c);
}

/* `apply`: the update follows, whatever the verdict (see bpfipt_ct_lookup). */
static __always_inline void ct_lookup_cls(struct cls *c, int apply)
{
	c->p.ct_state = bpfipt_dp_ct_lookup(&c->ctp, &c->ctr, apply);
}

static __always_inline void ct_update_cls(struct cls *c, int accepted)
{
	bpfipt_dp_ct_update(&c->ctp, &c->ctr, accepted);
}

/* Whether `a` (host order) is an address of this host. */
static __always_inline int is_local(__u32 a)
{
	__u32 zero = 0, key = bpf_htonl(a);
	if ((a >> 24) == 127)
		return 1;
	struct bpfipt_local_fast *f = bpf_map_lookup_elem(&bpfipt_local_fast, &zero);
	if (f) {
		__u32 s = f->slot[BPFIPT_LOCAL_FAST_HASH(a) & ((1 << BPFIPT_LOCAL_FAST_BITS) - 1)];
		if (s != BPFIPT_LOCAL_FAST_SHARED)
			return s == a && a;
	}
	return bpf_map_lookup_elem(&bpfipt_local, &key) != NULL;
}

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The namespace a packet arrives in, in ingress program `kind` (XDP or TC ingress). */
static __always_inline struct net *xdp_net(struct xdp_md *ctx)
{
	struct xdp_buff *x = bpf_cast_to_kern_ctx(ctx);
	return x->rxq->dev->nd_net.net;
}

static __always_inline struct net *skb_net(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	return k->dev->nd_net.net;
}

static __always_inline struct net *ingress_net(void *ctx, int kind)
{
	return kind == PROG_XDP ? xdp_net(ctx) : skb_net(ctx);
}

/* The route generation of namespace `net` (see struct bpfipt_route). */
static __always_inline __u32 route_gen(struct net *net)
{
	return net->ipv4.rt_genid.counter;
}

/* Whether the FIB's answer in namespace `net` may depend on a packet's protocol and ports, not
 * only on its addresses, input interface and TOS: policy rules that match them (ipproto,
 * sport, dport: the kernel counts those), or multipath routes hashed on more than the
 * addresses. */
static __always_inline int route_sees_ports(struct net *net)
{
	int r = 0;
	if (bpf_core_field_exists(net->ipv4.fib_rules_require_fldissect))
		r |= net->ipv4.fib_rules_require_fldissect != 0;
	if (bpf_core_field_exists(net->ipv4.sysctl_fib_multipath_hash_policy))
		r |= net->ipv4.sysctl_fib_multipath_hash_policy != 0;
	return r;
}

/* The namespace's FIB sequence (see struct bpfipt_routing): a plain load, as for rt_genid
 * (`net` is a trusted pointer), not a probe-read helper call per packet. */
static __always_inline __u32 fib_seq(struct net *net)
{
	return net->ipv4.fib_seq;
}

/* Whether the FIB's answer in namespace `net`, at route generation `rt_gen`, is the same for
 * every source address: no policy rule was ever added (the kernel keeps that), and userspace
 * found every route with a single next hop since the routes last changed (struct
 * bpfipt_routing). */
static __always_inline int route_ignores_source(struct net *net, __u32 rt_gen)
{
	if (bpf_core_field_exists(net->ipv4.fib_has_custom_rules) && net->ipv4.fib_has_custom_rules)
		return 0;
	__u32 zero = 0;
	struct bpfipt_routing *r = bpf_map_lookup_elem(&bpfipt_routing, &zero);
	return r && r->single_path && r->genid == rt_gen && r->fib_seq == fib_seq(net);
}

/* Run by userspace with BPF_PROG_TEST_RUN in a namespace (whose loopback the frame then comes
 * in on), never attached: writes the namespace's route generation and FIB sequence into the
 * frame's first eight bytes, what a listing of the routes made next describes at best (see
 * struct bpfipt_routing). */
SEC("xdp")
int bpfipt_route_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	if (data + 2 * sizeof(__u32) > data_end)
		return XDP_ABORTED;
	struct net *net = xdp_net(ctx);
	((__u32 *)data)[0] = route_gen(net);
	((__u32 *)data)[1] = fib_seq(net);
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_counter_set);
} bpfipt_counter_set SEC(".maps");

struct set_counters_ctx {
	struct bpfipt_counter_set *s;
	struct bpfipt_counter_set_entry e;
};

static long set_counter_on_cpu(__u32 cpu, void *ctx)
{
	struct set_counters_ctx *x = ctx;
	struct bpfipt_counter *v = bpf_map_lookup_percpu_elem(&bpfipt_rule_counters, &x->e.id, cpu);
	if (!v)
		return 1; /* past the last CPU, or the id past the array */
	v->packets = cpu ? 0 : x->e.c.packets;
	v->bytes = cpu ? 0 : x->e.c.bytes;
	return 0;
}

static long set_counter(__u32 i, void *ctx)
{
	struct set_counters_ctx *x = ctx;
	x->e = x->s->e[i & (BPFIPT_COUNTER_SET_MAX - 1)];
	__u32 ncpus = x->s->ncpus;
	bpf_loop(ncpus < 1 << 16 ? ncpus : 1 << 16, set_counter_on_cpu, x, 0);
	return 0;
}

/* Run by userspace with BPF_PROG_TEST_RUN, never attached: writes the rule counters listed in
 * `bpfipt_counter_set` (see there). */
SEC("xdp")
int bpfipt_set_counters(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bpfipt_counter_set *s = bpf_map_lookup_elem(&bpfipt_counter_set, &zero);
	if (!s)
		return XDP_ABORTED;
	struct set_counters_ctx x = { .s = s };
	__u32 n = s->n;
	bpf_loop(n < BPFIPT_COUNTER_SET_MAX ? n : BPFIPT_COUNTER_SET_MAX, set_counter, &x, 0);
	return XDP_PASS;
}

/* ingress_hook for a destination that is not local: the FIB's answer. */
static __always_inline int route_lookup(void *ctx, struct cls *c)
{
	struct pkt *p = &c->p;
	/* in the scratch: the programs' stacks are full */
	struct bpf_fib_lookup *f = &c->fib;
	__builtin_memset(f, 0, sizeof(*f));
	f->family = AF_INET;
	f->tos = p->tos;
	f->l4_protocol = p->proto;
	f->sport = bpf_htons(p->sport);
	f->dport = bpf_htons(p->dport);
	f->ipv4_src = bpf_htonl(p->src);
	f->ipv4_dst = bpf_htonl(p->dst);
	f->ifindex = p->in_ifindex;
	long rc = bpf_fib_lookup(ctx, f, sizeof(*f), BPF_FIB_LOOKUP_SKIP_NEIGH);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		p->out_ifindex = f->ifindex;
		return BPFIPT_HOOK_FORWARD;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return BPFIPT_HOOK_INPUT;
	default:
		/* NOT_FWDED also means "no route" (local destinations were caught above). */
		return -1;
	}
}

/* Where a packet's verdict goes in the flow cache: its entry's index (NONE32: the image
 * caches nothing) and, at ingress when it caches, the namespace's routing as read before the
 * cache lookup (its generation, whether the FIB sees ports): a change after that read moves
 * the generation past what a cached answer records. */
struct flow_ref {
	__u32 idx;
	__u32 rt_gen;
	__u32 fib_ports;
};

/* The hook an arriving packet goes through, or -1 when netfilter would not filter it, in
 * ingress program `kind`. The routing `f` read (f->idx != NONE32), or read here; either way
 * before the route lookup. */
static __always_inline int ingress_hook(void *ctx, struct cls *c, int kind, const struct flow_ref *f)
{
	struct pkt *p = &c->p;
	if ((p->dst >> 28) == 0xe || p->dst == 0xffffffff || is_local(p->dst))
		return BPFIPT_HOOK_INPUT;
	struct net *net = ingress_net(ctx, kind);
	__u32 rt_gen = f->rt_gen;
	int by_flow = f->fib_ports;
	if (f->idx == NONE32) {
		rt_gen = route_gen(net);
		by_flow = route_sees_ports(net);
	}
	/* the usual cases: one answer for every source (a host's new clients), or for every flow
	 * between two addresses (a host's many connections) */
	__u8 keyed = by_flow			       ? BPFIPT_ROUTE_BY_FLOW :
		     route_ignores_source(net, rt_gen) ? BPFIPT_ROUTE_BY_DST :
							 BPFIPT_ROUTE_BY_ADDRS;
	__u32 src = keyed == BPFIPT_ROUTE_BY_DST ? 0 : p->src;
	__u32 ports = by_flow ? (__u32)p->sport << 16 | p->dport : 0;
	__u8 proto = by_flow ? p->proto : 0;
	__u32 k = BPFIPT_ROUTE_HASH(src, p->dst, ports, p->in_ifindex);
	struct bpfipt_route *e = bpf_map_lookup_elem(&bpfipt_routes, &k);
	if (e && e->keyed == keyed && e->genid == rt_gen && e->dst == p->dst && e->src == src && e->ports == ports &&
	    e->in_ifindex == p->in_ifindex && e->proto == proto && e->tos == p->tos) {
		p->out_ifindex = e->out_ifindex;
		return e->hook;
	}
	int hook = route_lookup(ctx, c);
	if (e) {
		e->src = src;
		e->dst = p->dst;
		e->ports = ports;
		e->in_ifindex = p->in_ifindex;
		e->proto = proto;
		e->tos = p->tos;
		e->hook = hook;
		e->genid = rt_gen;
		e->out_ifindex = p->out_ifindex;
		e->keyed = keyed;
	}
	return hook;
}

/* Netfilter sends a REJECT's reply (icmp_send, nf_send_reset) through OUTPUT, and a reply to
 * a local packet through INPUT too: judges the reply built in c->reply (`len` bytes) there,
 * counting it, leaving by `out_ifindex`. Returns 1 when it may be sent. Its conntrack state
 * is netfilter's: both icmp_send and nf_send_reset attach the answered packet's connection
 * (nf_ct_attach), so when that packet was tracked (any state but INVALID, a NEW one
 * included) the reply is RELATED to it, in the other direction; otherwise the reply is
 * tracked on its own (an ICMP error quoting a known connection is RELATED to it). LOG rules
 * do not log the reply. */
static __always_inline int reply_passes(struct cls *c, __u32 len, __u32 out_ifindex, int track, int local)
{
	int l2 = c->p.l3_off != 0;
	int answered_tracked = c->p.ct_state != BPFIPT_CT_INVALID;
	if (len > sizeof(c->reply) || parse_packet(&c->p, c->reply, c->reply + len, l2))
		return 1;
	if (track) {
		if (answered_tracked) {
			/* c->ctr still holds the answered packet's connection */
			c->ctr.state = BPFIPT_CT_RELATED;
			c->ctr.dir ^= 1;
			c->p.ct_state = BPFIPT_CT_RELATED;
		} else {
			ct_fill(c, c->reply, c->reply + len, 1);
			ct_lookup_cls(c, 0);
		}
	}
	c->p.pkttype = PACKET_HOST;
	c->p.out_ifindex = out_ifindex;
	c->p.hook = BPFIPT_HOOK_OUTPUT;
	if (bpfipt_dp_classify(c) != V_ACCEPT)
		return 0;
	if (!local)
		return 1;
	c->p.in_ifindex = LOOPBACK_IFINDEX;
	c->p.out_ifindex = 0;
	c->p.hook = BPFIPT_HOOK_INPUT;
	return bpfipt_dp_classify(c) == V_ACCEPT;
}

/* Which judged packets advance their connection. */
enum ct_update_mode {
	CT_NONE,      /* not tracking */
	CT_ALL,       /* every judged packet */
	CT_DROPPED,   /* lo egress: only one OUTPUT drops (lo ingress updates the others) */
};

/* The connection of a packet judged `v` advances (`update`: which do). */
static __always_inline void ct_judged(struct cls *c, int update, __u32 v)
{
	if (update == CT_ALL || (update == CT_DROPPED && v != V_ACCEPT))
		ct_update_cls(c, v == V_ACCEPT);
}

/* The verdict of a packet whose flow's is cached (flow_hit), its counters bumped and its
 * connection advanced as a full classification would (a packet not judged passes). */
static __always_inline __u32 cached_verdict(struct bpfipt_flow *e, struct cls *c, int update)
{
	if (e->hook < 0)
		return V_ACCEPT;
	__u32 v = flow_replay(e, c);
	ct_judged(c, update, v);
	return v;
}

/* The cached verdict of the packet's flow in program `kind`, or NONE32 with `f` set for the
 * rest and, when tracking (`track`), the tracker's lookup done (`apply`: see
 * bpfipt_ct_lookup) and the key holding the packet's conntrack state. A flow keyed with no
 * connection goes before the lookup (see flow.h). The route generation (ingress) is read only
 * when the image caches something; otherwise only a packet the FIB is asked about reads it. */
static __always_inline __u32 flow_cached(void *ctx, struct cls *c, struct img *img, int kind, int track, int apply,
					 int update, struct flow_ref *f)
{
	f->rt_gen = 0;
	f->fib_ports = 0;
	if (track)
		c->p.ct_state = FLOW_CT_ABSENT;
	/* the route is part of an ingress verdict: its generation, and the ports when the FIB
	 * sees them */
	if (kind != PROG_TC_EG && flow_caching(img)) {
		struct net *net = ingress_net(ctx, kind);
		f->rt_gen = route_gen(net);
		f->fib_ports = route_sees_ports(net);
	}
	f->idx = flow_slot(img, c, kind, f->fib_ports);
	struct bpfipt_flow *e = flow_at(f->idx);
	if (track) {
		/* nothing for the tracker to do */
		if (e && flow_hit(e, c, img, f->rt_gen) && flow_still_absent(e, c))
			return flow_replay(e, c);
		ct_fill_from(ctx, c, kind);
		ct_lookup_cls(c, apply);
		if (e)
			flow_key_ct(c, img);
	}
	return e && flow_hit(e, c, img, f->rt_gen) ? cached_verdict(e, c, update) : NONE32;
}

/* The start of judging an arriving packet in ingress program `kind`: its flow's cached
 * verdict, V_ACCEPT for a packet netfilter would not judge (remembered so), or NONE32 with
 * its hook chosen in c->p.hook and `f` set for the rest. */
static __always_inline __u32 ingress_start(void *ctx, struct cls *c, struct img *img, int kind, int track,
					   struct flow_ref *f)
{
	__u32 v = flow_cached(ctx, c, img, kind, track, 1, track ? CT_ALL : CT_NONE, f);
	if (v != NONE32)
		return v;
	int hook = ingress_hook(ctx, c, kind, f);
	if (hook < 0) {
		flow_store(f->idx, c, img, f->rt_gen, hook, V_ACCEPT);
		return V_ACCEPT;
	}
	c->p.hook = hook;
	return NONE32;
}

static __always_inline int xdp_ingress(struct xdp_md *ctx, struct img *img)
{
	struct cls *c = scratch(PROG_XDP);
	if (!c)
		return XDP_PASS;
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	if (parse_packet(&c->p, data, data_end, 1)) {
		stat_parse_pass();
		return XDP_PASS;
	}
	c->p.in_ifindex = ctx->ingress_ifindex;
	int track = tracks(img);
	int update = track ? CT_ALL : CT_NONE;
	tcp_options_if_used(ctx, PROG_XDP, img, &c->p);
	struct flow_ref f;
	__u32 v = ingress_start(ctx, c, img, PROG_XDP, track, &f);
	if (v != NONE32)
		return v == V_ACCEPT ? XDP_PASS : XDP_DROP;
	v = bpfipt_dp_classify(c);
	flow_store(f.idx, c, img, f.rt_gen, c->p.hook, v);
	if (c->n_logs)
		emit_logs(ctx, PROG_XDP, img, c);
	ct_judged(c, update, v);
	if (v == V_ACCEPT)
		return XDP_PASS;
	if (v == V_REJECT) {
		__u32 len = build_reject(ctx, PROG_XDP, c, 0);
		if (len && !reply_passes(c, len, c->p.in_ifindex, track, 0))
			return XDP_DROP;
		if (len && !write_reply(ctx, PROG_XDP, c, len))
			return XDP_TX;
		if (len)
			reject_failed();
	}
	return XDP_DROP;
}

/* Makes the headers parse_packet and the tracker look at linear (an ICMP error quotes an IP
 * header and 8 bytes). */
static __always_inline void pull_headers(struct __sk_buff *skb)
{
	__u32 want = 18 + 60 + 8 + 60 + 8;
	if (want > skb->len)
		want = skb->len;
	/* cheap when the head is linear already */
	bpf_skb_pull_data(skb, want);
}

/* Whether `skb` is a reply the kernel's own ICMP code sends (echo or timestamp reply, from
 * the per-CPU ICMP socket). icmp_send cannot answer those: their sender holds the socket it
 * needs, so netfilter's REJECT of them sends nothing. */
static __always_inline int from_kernel_icmp(struct __sk_buff *skb, struct cls *c)
{
	__u8 t = c->p.icmp >> 8;
	if (c->p.proto != IPPROTO_ICMP || (t != ICMP_ECHOREPLY && t != ICMP_TIMESTAMPREPLY))
		return 0;
	struct bpf_sock *sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	return sk && sk->type == SOCK_RAW && sk->protocol == IPPROTO_ICMP;
}

/* REJECT of a packet this host sent (OUTPUT, at TC egress). As icmp_send and nf_send_reset
 * do, the reply goes to the packet's source through OUTPUT; when that source is local (the
 * usual case) it comes back through lo, judged in INPUT too; otherwise it leaves by the
 * route to the source. It carries BPFIPT_REPLY_MARK until our ingress program sees it (or it
 * leaves), so that it is not judged twice. The source of an ICMP error is the one the kernel's
 * route to the destination picks: the destination itself when local, else the preferred
 * source of that route. */
static __always_inline int reject_sent_by_us(struct __sk_buff *skb, struct cls *c, int track)
{
	__u32 to = c->p.src;
	if (c->verdict_arg != BPFIPT_REJECT_TCP_RESET && from_kernel_icmp(skb, c))
		return TC_ACT_SHOT;
	int local = is_local(to);
	__u32 out = LOOPBACK_IFINDEX, saddr = bpf_htonl(to);
	if (!local) {
		struct bpf_fib_lookup *f = &c->fib;
		__builtin_memset(f, 0, sizeof(*f));
		f->family = AF_INET;
		f->ipv4_dst = bpf_htonl(to);
		f->ifindex = LOOPBACK_IFINDEX;
		if (bpf_fib_lookup(skb, f, sizeof(*f), BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC) !=
		    BPF_FIB_LKUP_RET_SUCCESS)
			return TC_ACT_SHOT; /* no route back: icmp_send and nf_send_reset send nothing */
		out = f->ifindex;
		saddr = f->ipv4_src;
	}
	__u32 len = build_reject(skb, PROG_TC_EG, c, saddr);
	if (!len)
		return TC_ACT_SHOT;
	if (!reply_passes(c, len, out, track, local))
		return TC_ACT_SHOT;
	if (write_reply(skb, PROG_TC_EG, c, len)) {
		reject_failed();
		return TC_ACT_SHOT;
	}
	skb->mark = BPFIPT_REPLY_MARK;
	/* Routed and given its link-layer header by the kernel, like a packet the stack sends:
	 * a local destination keeps the route through lo (an input route lookup there would
	 * refuse a local source as martian). */
	return bpf_redirect_neigh(out, NULL, 0, 0);
}

struct csum_walk {
	struct __sk_buff *skb;
	struct cls *c;
	__u32 off, end;
	__u64 sum;
	int failed;
};

/* One step of the transport checksum: up to 512 bytes (bpf_csum_diff's limit) through the
 * reply buffer, zero-padded to 4-byte words. */
static long csum_chunk(__u64 i, struct csum_walk *w)
{
	if (w->off >= w->end)
		return 1;
	__u64 n = (__u64)w->end - w->off;
	if (n > 512)
		n = 512;
	/* the verifier wants the bounds on the very register passed */
	asm volatile("" : "+r"(n));
	if (n == 0 || n > 512)
		return 1;
	__u8 *buf = w->c->reply;
	if (bpf_skb_load_bytes(w->skb, w->off, buf, n)) {
		w->failed = 1;
		return 1;
	}
	buf[n] = 0;
	buf[n + 1] = 0;
	buf[n + 2] = 0;
	__s64 s = bpf_csum_diff(NULL, 0, (__be32 *)buf, (n + 3) & 0x3fc, 0);
	if (s < 0) {
		w->failed = 1;
		return 1;
	}
	w->sum += (__u32)s;
	w->off += n;
	return 0;
}

/* Whether netfilter's REJECT, judging at `hook`, would find the packet's transport checksum
 * good enough to answer (nf_send_unreach, nf_send_reset): packets whose checksum the device
 * or the sending stack vouches for (CHECKSUM_UNNECESSARY, CHECKSUM_PARTIAL, or one already
 * verified) are answered, as are protocols without a checksum to verify (UDP with checksum
 * 0, AH, ESP, SCTP, UDP-Lite, DCCP, GRE without one); a CHECKSUM_COMPLETE packet is verified
 * only arriving for this host; the rest (CHECKSUM_NONE) is verified, with the TCP/UDP
 * pseudo-header. A function of its own: its stack is not on the classifier's deep path. */
static __noinline int reject_checksum_ok(struct __sk_buff *skb, struct cls *c, int tcp_reset)
{
	struct pkt *p = &c->p;
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	__u8 summed = BPF_CORE_READ_BITFIELD(k, ip_summed);
	if (summed == CHECKSUM_UNNECESSARY || summed == CHECKSUM_PARTIAL || BPF_CORE_READ_BITFIELD(k, csum_valid))
		return 1;
	if (summed == CHECKSUM_COMPLETE && p->hook != BPFIPT_HOOK_INPUT)
		return 1;
	if (!tcp_reset) {
		__u8 h[2];
		switch (p->proto) {
		case IPPROTO_UDP:
			if (bpf_skb_load_bytes(skb, p->l4_off + 6, h, 2) || (h[0] == 0 && h[1] == 0))
				return 1;
			break;
		case IPPROTO_AH:
		case IPPROTO_ESP:
		case IPPROTO_SCTP:
		case IPPROTO_UDPLITE:
		case IPPROTO_DCCP:
			return 1;
		case IPPROTO_GRE:
			if (bpf_skb_load_bytes(skb, p->l4_off, h, 2) || !(h[0] & 0x80))
				return 1;
		}
	}
	struct csum_walk w = { .skb = skb, .c = c, .off = p->l4_off, .end = p->l3_off + p->len };
	bpf_loop(128, csum_chunk, &w, 0);
	if (w.failed || w.off < w.end)
		return 1; /* could not read it: answer, as before */
	__u64 sum = w.sum;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		__u32 s = bpf_htonl(p->src), d = bpf_htonl(p->dst);
		sum += (s & 0xffff) + (s >> 16) + (d & 0xffff) + (d >> 16) + bpf_htons(p->proto) +
		       bpf_htons((__u16)(p->len - p->ihl));
	}
	return csum_fold(sum) == 0;
}

/* Common TC part once the hook is known; the verdict goes into the flow cache (`f`). */
static __always_inline int tc_judge(struct __sk_buff *skb, struct img *img, struct cls *c, int kind, int update,
				    struct flow_ref *f)
{
	__u32 v = bpfipt_dp_classify(c);
	flow_store(f->idx, c, img, f->rt_gen, c->p.hook, v);
	if (c->n_logs)
		emit_logs(skb, kind, img, c);
	ct_judged(c, update, v);
	if (v == V_ACCEPT) {
		if (c->p.mark != skb->mark)
			skb->mark = c->p.mark;
		return TC_ACT_OK;
	}
	if (v == V_REJECT) {
		if (!reject_checksum_ok(skb, c, c->verdict_arg == BPFIPT_REJECT_TCP_RESET))
			return TC_ACT_SHOT;
		if (kind == PROG_TC_EG)
			return reject_sent_by_us(skb, c, update != CT_NONE);
		__u32 len = build_reject(skb, kind, c, 0);
		if (len && !reply_passes(c, len, c->p.in_ifindex, update != CT_NONE, 0))
			return TC_ACT_SHOT;
		if (len && !write_reply(skb, kind, c, len))
			return bpf_redirect(skb->ifindex, 0);
		if (len)
			reject_failed();
	}
	return TC_ACT_SHOT;
}

static __always_inline int has_l2(struct __sk_buff *skb)
{
	/* An Ethernet-like device has its link-layer header in front of the network header. */
	__u32 ifi = skb->ifindex;
	struct bpfipt_iface *ifc = bpf_map_lookup_elem(&bpfipt_ifaces, &ifi);
	return !(ifc && (ifc->flags & BPFIPT_IFACE_NO_L2));
}

/* The start both TC programs share: the scratch, the image, linear headers and the parse.
 * NULL: pass the packet unjudged. */
static __always_inline struct cls *tc_start(struct __sk_buff *skb, int kind, struct img *img, int *track)
{
	struct cls *c = scratch(kind);
	if (!c || skb->protocol != bpf_htons(ETH_P_IP))
		return NULL;
	pull_headers(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	if (parse_packet(&c->p, data, data_end, has_l2(skb))) {
		stat_parse_pass();
		return NULL;
	}
	if (kind == PROG_TC_IN) {
		c->p.in_ifindex = skb->ifindex;
		c->p.pkttype = skb->pkt_type;
	} else {
		c->p.out_ifindex = skb->ifindex;
		c->p.pkttype = PACKET_HOST;
	}
	c->p.mark = skb->mark;
	*track = tracks(img);
	tcp_options_if_used(skb, kind, img, &c->p);
	return c;
}

static __always_inline int tc_ingress(struct __sk_buff *skb, struct img *img)
{
	int track;
	struct cls *c = tc_start(skb, PROG_TC_IN, img, &track);
	if (!c)
		return TC_ACT_OK;
	struct flow_ref f;
	__u32 v = ingress_start(skb, c, img, PROG_TC_IN, track, &f);
	if (v != NONE32)
		return v == V_ACCEPT ? TC_ACT_OK : TC_ACT_SHOT;
	return tc_judge(skb, img, c, PROG_TC_IN, track ? CT_ALL : CT_NONE, &f);
}

static __always_inline int tc_egress(struct __sk_buff *skb, struct img *img)
{
	int track;
	struct cls *c = tc_start(skb, PROG_TC_EG, img, &track);
	if (!c)
		return TC_ACT_OK;
	c->p.hook = BPFIPT_HOOK_OUTPUT;
	/* on lo the packet's connection advances at lo ingress (see the top): egress updates
	 * only what OUTPUT drops */
	int lo = c->p.out_ifindex == LOOPBACK_IFINDEX;
	int mode = !track ? CT_NONE : lo ? CT_DROPPED : CT_ALL;
	struct flow_ref f;
	__u32 v = flow_cached(skb, c, img, PROG_TC_EG, track, !lo, mode, &f);
	if (v != NONE32)
		return v == V_ACCEPT ? TC_ACT_OK : TC_ACT_SHOT;
	return tc_judge(skb, img, c, PROG_TC_EG, mode, &f);
}

/* Whether the image judges nothing: every packet passes (BPFIPT_IMG_F_PASS_ALL). */
static __always_inline int passes_all(struct img *img)
{
	return image_of_our_layout(img) && (image_flags(img) & BPFIPT_IMG_F_PASS_ALL);
}

/* The programs: each judges a packet against the image it announced (image_enter), and
 * withdraws the announcement on every path. No image, or one that passes all: nothing to
 * judge by; an image that could not be announced: dropped. */
SEC("xdp")
int bpfipt_xdp_ingress(struct xdp_md *ctx)
{
	struct img img;
	int entered = image_enter(&img);
	int v = entered > 0 && !passes_all(&img) ? xdp_ingress(ctx, &img) : entered < 0 ? XDP_DROP : XDP_PASS;
	image_exit();
	return v;
}

SEC("tc")
int bpfipt_tc_ingress(struct __sk_buff *skb)
{
	/* A REJECT reply we judged and sent already (reject_sent_by_us). */
	if (skb->mark == BPFIPT_REPLY_MARK) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	struct img img;
	int entered = image_enter(&img);
	int v = entered > 0 && !passes_all(&img) ? tc_ingress(skb, &img) : entered < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	image_exit();
	return v;
}

SEC("tc")
int bpfipt_tc_egress(struct __sk_buff *skb)
{
	/* Forwarded: judged in FORWARD at ingress already. */
	if (skb->ingress_ifindex)
		return TC_ACT_OK;
	/* A REJECT reply we judged and sent already, on its way (cleared at lo ingress). */
	if (skb->mark == BPFIPT_REPLY_MARK)
		return TC_ACT_OK;
	struct img img;
	int entered = image_enter(&img);
	int v = entered > 0 && !passes_all(&img) ? tc_egress(skb, &img) : entered < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	image_exit();
	return v;
}
