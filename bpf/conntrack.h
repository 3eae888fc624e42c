/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Connection tracking for the datapath: the connection table (pinned maps) and the two calls the
 * datapath makes per packet. Follows netfilter's nf_conntrack (IPv4) closely enough that
 * `-m conntrack`/`-m state` rules give the same verdicts. Self-contained: needs only vmlinux.h,
 * libbpf's bpf_helpers.h/bpf_endian.h and the conntrack section of bpf_iptables.h.
 *
 * How the datapath uses it:
 *
 *   struct bpfipt_ct_pkt p = { ... };      // from the parsed packet, host byte order
 *   (ICMP: bpfipt_ct_parse_icmp(&p, icmp_header, data_end) fills the ICMP fields)
 *   struct bpfipt_ct_result r;
 *   bpfipt_ct_lookup(&p, &r, 1);           // r.state: the packet's ct state, r.*: the entry
 *   ... classify (CtState field = r.state, Check::Conntrack on r) ...
 *   bpfipt_ct_update(&p, &r, verdict == ACCEPT); // advance the entry; create ("confirm")
 *                                                // it only for an accepted packet
 *
 * Call lookup+update once per packet per pass through this host: at ingress for received and
 * forwarded packets, at egress only for locally generated ones (a forwarded packet must not be
 * tracked again at egress). On loopback a packet is seen at egress and again at ingress:
 * track it at egress, and at ingress call bpfipt_ct_lookup() alone (netfilter keeps the state
 * it computed at OUTPUT; lookup then gives the same state without counting the packet twice).
 * `apply` (the third argument of lookup) says that the update follows whatever the verdict;
 * lookup may then apply a packet that only counts (see Concurrency) itself.
 *
 * Semantics (as nf_conntrack with default sysctls):
 *  - lookup does not change the table (but for the counters of a packet that changes nothing
 *    else, when `apply`). It computes what the packet would do to its entry and
 *    reports the state netfilter gives the packet: NEW for the first packet of a connection
 *    and for packets in the original direction until a reply was seen, ESTABLISHED after,
 *    RELATED for ICMP errors quoting a tracked connection, INVALID for what the protocol
 *    trackers refuse (bad TCP flag combinations, TCP packets that don't fit the state
 *    machine, ICMP replies and non-query types without a request, ICMP errors quoting
 *    nothing tracked, truncated headers). UNTRACKED is never returned (no raw table/NOTRACK).
 *  - update is called for every judged packet, as netfilter tracks at PREROUTING/OUTPUT before
 *    the filter: a packet of an existing connection advances it (state, counters, timeout)
 *    whatever the verdict (found by the differential test against netfilter: a dropped
 *    SYN-ACK still makes the connection ESTABLISHED there), but only an accepted packet
 *    creates ("confirms") an entry, so a dropped SYN leaves none, nor does a dropped packet
 *    revive an expired entry or reopen a closed connection (which it ends: netfilter kills
 *    it before the filter).
 *  - TCP: netfilter's transition table, tcp_new() with nf_conntrack_tcp_loose=1 (a packet with
 *    only ACK set picks a connection up, as NEW), SYN_SENT2/simultaneous open, reopening from
 *    TIME_WAIT/CLOSE, RST handling (an RST to an unanswered SYN deletes the entry; an RST below
 *    the peer's highest ACK is INVALID), the ASSURED rule and the timeout rules (RST -> CLOSE,
 *    unacknowledged data -> 300 s, no reply yet -> at most 300 s in ESTABLISHED, SYN
 *    retransmissions do not refresh). Window tracking is liberal (as
 *    nf_conntrack_tcp_be_liberal=1) except that a SYN/ACK must acknowledge the SYN: we do not
 *    parse window scaling options, and a wrong window check drops real traffic.
 *  - UDP/UDPLITE: 30 s; 120 s and ASSURED once both directions were seen and the connection
 *    is older than 2 s. ICMP queries (echo, timestamp, info, address mask): keyed by
 *    identifier, 30 s. GRE: 30 s; 180 s and ASSURED once replied. Other protocols: by address
 *    pair, 600 s (SCTP and DCCP by ports, but without their state machines).
 *  - Not done: checksum validation (netfilter marks bad checksums INVALID at PREROUTING),
 *    non-first fragments (netfilter reassembles first; here they are INVALID), helpers and
 *    expectations (EXPECTED is never set), NAT (SNAT/DNAT states never set), zones, marks.
 *
 * The table: an LRU hash keyed by the direction-independent `struct bpfipt_ct_key`, at most
 * BPFIPT_CT_MAX_ENTRIES entries; when full the kernel evicts the least recently used entry
 * (netfilter instead early-drops unassured entries and then drops the new packet).
 * Timeouts are enforced at lookup: an expired entry counts as absent and is overwritten by
 * the next connection with its key. There is no sweeper: expired entries are by definition
 * the least recently used, so LRU eviction reclaims them first, and the listing skips them.
 *
 * Concurrency: LRU hash values cannot hold a bpf_spin_lock, so updates of an existing entry
 * take one of BPFIPT_CT_LOCKS spin locks (chosen by key hash) in a separate array map to
 * write (the state machine runs before, on a snapshot, and the write happens only if no
 * other update came in between: see bpfipt_ct_update); entry creation is an atomic insert
 * (BPF_NOEXIST) and a loser of that race falls back to updating the winner's entry. Lookup
 * reads an unlocked snapshot: it may see a state another CPU is replacing, which only
 * affects that one packet's classification, as with netfilter where the ct state is computed
 * before the filter runs. An update under a lock
 * makes the lock's seq odd while it writes and moves it on after (a seqcount over the
 * entries of that lock), so lookup also learns whether its snapshot was whole, and then
 * whether the packet changes nothing in the entry but its counters (a UDP stream, a
 * repeated ACK: the deadline moves once per clock tick). Such a packet is applied by lookup
 * itself, with atomic adds, without the lock (taking it, with the interrupts it disables,
 * cost as much as the rest of the update) and without the update's second table lookup: it
 * takes effect at that instant, on the state the snapshot saw (an update after it changes
 * the state, not the counters, which commute). Counters in the table are always added
 * atomically, so no count is lost. Each lock also counts the connections made live under its
 * keys (`created`, after the insert or the revival): lookup reads it before the table, so a
 * caller that found no connection knows none has come to be while it stays the same (the
 * flow cache judges such packets without a lookup, flow.h).
 */
#ifndef BPFIPT_CONNTRACK_H
#define BPFIPT_CONNTRACK_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bpf_iptables.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BPFIPT_CT_MAX_ENTRIES);
	__type(key, struct bpfipt_ct_key);
	__type(value, struct bpfipt_ct_entry);
} bpfipt_ct SEC(".maps");

struct bpfipt_ct_lock {
	struct bpf_spin_lock lock;
	__u32 seq; /* even; odd while an update under the lock writes (see the top) */
	/* Moved on (atomically) after every connection made live under a key of this lock: a
	 * lookup that read it before finding no live connection under its key knows, while it
	 * stays the same, that none has come to be since (the flow cache keeps such verdicts). */
	__u32 created;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFIPT_CT_LOCKS);
	__type(key, __u32);
	__type(value, struct bpfipt_ct_lock);
} bpfipt_ct_locks SEC(".maps");

/* Keeps the conntrack enums in BTF so the skeleton exports them to Rust. */
enum bpfipt_ct_const _bpfipt_ct_const_type;
enum bpfipt_ct_status _bpfipt_ct_status_type;
enum bpfipt_ct_tcp_state _bpfipt_ct_tcp_state_type;
enum bpfipt_ct_dir _bpfipt_ct_dir_type;
enum bpfipt_ct_state _bpfipt_ct_state_type;
enum bpfipt_ctm_flags _bpfipt_ctm_flags_type;
struct bpfipt_ct_match _bpfipt_ct_match_type;

#define CT_NS_PER_SEC 1000000000ULL

/* Timeouts in seconds: netfilter's defaults. */
#define CT_TIMEOUT_UDP 30
#define CT_TIMEOUT_UDP_STREAM 120
#define CT_UDP_STREAM_AFTER_NS (2 * CT_NS_PER_SEC)
#define CT_TIMEOUT_ICMP 30
#define CT_TIMEOUT_GRE 30
#define CT_TIMEOUT_GRE_STREAM 180
#define CT_TIMEOUT_GENERIC 600
#define CT_TIMEOUT_TCP_UNACK 300

#define CT_TCP_FIN 0x01
#define CT_TCP_SYN 0x02
#define CT_TCP_RST 0x04
#define CT_TCP_ACK 0x10
#define CT_TCP_URG 0x20
#define CT_TCP_CHECKED (CT_TCP_FIN | CT_TCP_SYN | CT_TCP_RST | CT_TCP_ACK | CT_TCP_URG)

/* Valid combinations of FIN/SYN/RST/ACK/URG (PSH, ECE, CWR are always allowed), as a bitmap
 * indexed by those flags: SYN, SYN|URG, SYN|ACK, RST, RST|ACK, FIN|ACK, FIN|ACK|URG, ACK,
 * ACK|URG (tcp_valid_flags). */
#define CT_TCP_VALID_FLAGS                                                                         \
	((1ULL << 0x02) | (1ULL << 0x22) | (1ULL << 0x12) | (1ULL << 0x04) | (1ULL << 0x14) |        \
	 (1ULL << 0x11) | (1ULL << 0x31) | (1ULL << 0x10) | (1ULL << 0x30))

/* Flag classes of a TCP segment (the kernel's enum tcp_bit_set), rows of the table below. */
enum ct_tcp_index {
	CT_IDX_SYN = 0,
	CT_IDX_SYNACK = 1,
	CT_IDX_FIN = 2,
	CT_IDX_ACK = 3,
	CT_IDX_RST = 4,
	CT_IDX_NONE = 5,
};

/* bpfipt_ct_tcp_peer.flags */
#define CT_TCPF_INIT 0x01       /* this side's td_end is known (the kernel's td_maxwin != 0) */
#define CT_TCPF_CLOSE_INIT 0x02 /* this side sent the first FIN */
#define CT_TCPF_DATA_UNACK 0x04 /* this side sent data the peer has not acknowledged */
#define CT_TCPF_MAXACK_SET 0x08 /* td_maxack is valid */

/* bpfipt_ct_entry.last_flags */
#define CT_TCPL_SIMOPEN 0x01   /* simultaneous open seen */
#define CT_TCPL_CHALLENGE 0x02 /* a SYN in LAST_ACK may be answered by a challenge ACK */

/* Verdicts of the protocol trackers. */
enum ct_verdict {
	CT_V_INVALID = 0,
	CT_V_ACCEPT = 1, /* state advanced and timeout refreshed */
	CT_V_IGNORE = 2, /* valid, but the entry's state and timeout stay as they are */
	CT_V_REOPEN = 3, /* TCP: a SYN reopening a closed connection: track it as a new one */
	CT_V_KILL = 4,   /* TCP: valid, and the entry goes away (RST answering an unreplied SYN) */
};

#define sNO BPFIPT_TCP_NONE
#define sSS BPFIPT_TCP_SYN_SENT
#define sSR BPFIPT_TCP_SYN_RECV
#define sES BPFIPT_TCP_ESTABLISHED
#define sFW BPFIPT_TCP_FIN_WAIT
#define sCW BPFIPT_TCP_CLOSE_WAIT
#define sLA BPFIPT_TCP_LAST_ACK
#define sTW BPFIPT_TCP_TIME_WAIT
#define sCL BPFIPT_TCP_CLOSE
#define sS2 BPFIPT_TCP_SYN_SENT2
#define sIV BPFIPT_TCP_MAX
#define sIG BPFIPT_TCP_IGNORE

/* Next TCP state by [direction][flag class][current state]: netfilter's tcp_conntracks. */
static const __u8 bpfipt_ct_tcp_next[2][6][BPFIPT_TCP_MAX] = {
	{
		/*         sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2 */
		/* syn */ { sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2 },
		/* s/a */ { sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR },
		/* fin */ { sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV },
		/* ack */ { sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV },
		/* rst */ { sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL },
		/* none*/ { sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV },
	},
	{
		/*         sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2 */
		/* syn */ { sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2 },
		/* s/a */ { sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR },
		/* fin */ { sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV },
		/* ack */ { sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG },
		/* rst */ { sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL },
		/* none*/ { sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV },
	},
};

/* Timeout (seconds) of each TCP state. */
static const __u32 bpfipt_ct_tcp_timeout[BPFIPT_TCP_MAX] = {
	[sSS] = 120, [sSR] = 60,  [sES] = 432000, [sFW] = 120, [sCW] = 60,
	[sLA] = 30,  [sTW] = 120, [sCL] = 10,     [sS2] = 120,
};

/* The tuple of one packet, and for ICMP queries what the key needs. */
struct ct_tuple_info {
	struct bpfipt_ct_tuple t;
	__u8 proto;
	__u8 icmp_reply; /* an ICMP query reply: its tuple is the entry's reply tuple */
	__u8 icmp_req;   /* ICMP queries: the request type */
	__u8 icmp_code;
};

/* Hides a value from the compiler so that a bounds check it could prove redundant (from the
 * contents of a const table) stays in the code for the verifier. */
#define ct_opaque(v) asm volatile("" : "+r"(v))

/* Timeout of TCP state `state` in seconds. */
static __always_inline __u32 ct_tcp_timeout_of(__u32 state)
{
	ct_opaque(state);
	if (state >= BPFIPT_TCP_MAX)
		return 0;
	return bpfipt_ct_tcp_timeout[state];
}

static __always_inline int ct_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

static __always_inline int ct_after(__u32 a, __u32 b)
{
	return (__s32)(b - a) < 0;
}

static __always_inline int ct_port_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
	       proto == IPPROTO_SCTP || proto == IPPROTO_DCCP;
}

/* ICMP types that quote a packet: unreachable, source quench, redirect, time exceeded,
 * parameter problem. */
static __always_inline int ct_icmp_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* Fills `ti` from a packet's header fields. Returns -1 for what cannot be tracked (ICMP
 * types that are neither queries nor errors). */
static __always_inline int ct_tuple_of(struct ct_tuple_info *ti, __u8 proto, __u32 saddr,
				       __u32 daddr, __u16 sport, __u16 dport, __u8 icmp_type,
				       __u8 icmp_code)
{
	__builtin_memset(ti, 0, sizeof(*ti));
	ti->proto = proto;
	ti->t.src = saddr;
	ti->t.dst = daddr;
	if (proto == IPPROTO_ICMP) {
		/* request/reply pairs: echo 8/0, timestamp 13/14, info 15/16, address mask 17/18 */
		if (icmp_type == 8 || icmp_type == 13 || icmp_type == 15 || icmp_type == 17) {
			ti->icmp_req = icmp_type;
		} else if (icmp_type == 0) {
			ti->icmp_req = 8;
			ti->icmp_reply = 1;
		} else if (icmp_type == 14 || icmp_type == 16 || icmp_type == 18) {
			ti->icmp_req = icmp_type - 1;
			ti->icmp_reply = 1;
		} else {
			return -1;
		}
		ti->icmp_code = icmp_code;
		ti->t.sport = sport;
		ti->t.dport = (__u16)icmp_type << 8 | icmp_code;
	} else if (ct_port_proto(proto)) {
		ti->t.sport = sport;
		ti->t.dport = dport;
	}
	return 0;
}

static __always_inline void ct_key_of(struct bpfipt_ct_key *k, const struct ct_tuple_info *ti)
{
	const struct bpfipt_ct_tuple *t = &ti->t;

	__builtin_memset(k, 0, sizeof(*k));
	k->proto = ti->proto;
	if (ti->proto == IPPROTO_ICMP) {
		k->addr[0] = ti->icmp_reply ? t->dst : t->src;
		k->addr[1] = ti->icmp_reply ? t->src : t->dst;
		k->port[0] = t->sport;
		k->port[1] = (__u16)ti->icmp_req << 8 | ti->icmp_code;
	} else if (t->src < t->dst || (t->src == t->dst && t->sport <= t->dport)) {
		k->addr[0] = t->src;
		k->addr[1] = t->dst;
		k->port[0] = t->sport;
		k->port[1] = t->dport;
	} else {
		k->addr[0] = t->dst;
		k->addr[1] = t->src;
		k->port[0] = t->dport;
		k->port[1] = t->sport;
	}
}

/* The reply tuple of an entry whose original tuple is `o` (no NAT: the inverse). */
static __always_inline void ct_invert(struct bpfipt_ct_tuple *r, const struct bpfipt_ct_tuple *o,
				      __u8 proto)
{
	r->src = o->dst;
	r->dst = o->src;
	if (proto == IPPROTO_ICMP) {
		__u8 req = o->dport >> 8;

		r->sport = o->sport;
		r->dport = (__u16)(req == 8 ? 0 : req + 1) << 8 | (o->dport & 0xff);
	} else {
		r->sport = o->dport;
		r->dport = o->sport;
	}
}

/* Direction of a packet with tuple `ti` relative to the entry's original tuple. */
static __always_inline __u32 ct_dir_of(const struct bpfipt_ct_entry *e,
				       const struct ct_tuple_info *ti)
{
	if (ti->proto == IPPROTO_ICMP)
		return ti->icmp_reply ? BPFIPT_CT_DIR_REPLY : BPFIPT_CT_DIR_ORIGINAL;
	return ti->t.src == e->orig.src && ti->t.sport == e->orig.sport ? BPFIPT_CT_DIR_ORIGINAL
									  : BPFIPT_CT_DIR_REPLY;
}

static __always_inline int ct_expired(const struct bpfipt_ct_entry *e, __u64 now)
{
	return (__s64)(e->expires - now) <= 0;
}

static __always_inline void ct_init(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
				    const struct bpfipt_ct_tuple *orig, __u64 now)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->created = now;
	e->orig = *orig;
	e->proto = p->proto;
	e->from_local = p->from_local;
	e->ifindex = p->ifindex;
	e->last_index = CT_IDX_NONE;
}

/* The packet counted in its direction; atomic in a table entry (`shared`), as packets that
 * change nothing else count into it without the lock (see the top), plain in a copy. */
static __always_inline void ct_count(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p, __u32 dir,
				     int shared)
{
	struct bpfipt_counter *c = &e->acct[dir & 1];

	if (shared) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, p->ip_len);
	} else {
		c->packets += 1;
		c->bytes += p->ip_len;
	}
}

/* nf_ct_refresh_acct: a new deadline, and the packet counted in its direction. */
static __always_inline void ct_refresh(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
				       __u32 dir, __u64 now, __u32 timeout)
{
	e->expires = now + (__u64)timeout * CT_NS_PER_SEC;
	ct_count(e, p, dir, 0);
}

/* An entry as 8-byte words, of which the counters are words 2..5. */
#define CT_ENTRY_WORDS ((int)(sizeof(struct bpfipt_ct_entry) / 8))
_Static_assert(sizeof(struct bpfipt_ct_entry) % 8 == 0, "entries are 8-byte words");
_Static_assert(__builtin_offsetof(struct bpfipt_ct_entry, acct) == 16 &&
		       __builtin_offsetof(struct bpfipt_ct_entry, orig) == 48,
	       "the counters are words 2..5");
#define ct_counter_word(i) ((i) >= 2 && (i) < 6)

/* Whether entries a and b are the same but for their counters. */
static __always_inline int ct_same_but_counters(const struct bpfipt_ct_entry *a, const struct bpfipt_ct_entry *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < CT_ENTRY_WORDS; i++)
		if (!ct_counter_word(i))
			diff |= x[i] ^ y[i];
	return diff == 0;
}

static __always_inline __u32 ct_tcp_index(__u8 flags)
{
	if (flags & CT_TCP_RST)
		return CT_IDX_RST;
	if (flags & CT_TCP_SYN)
		return flags & CT_TCP_ACK ? CT_IDX_SYNACK : CT_IDX_SYN;
	if (flags & CT_TCP_FIN)
		return CT_IDX_FIN;
	if (flags & CT_TCP_ACK)
		return CT_IDX_ACK;
	return CT_IDX_NONE;
}

/* tcp_in_window(), liberal: records sequence/ack progress (for the RST check, the
 * unacknowledged-data timeout and the resync cases); the only bounds enforced are those on
 * the ack of a SYN/ACK (INVALID above the SYN's end, ignored far below it). */
static __always_inline int ct_tcp_window(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
					 __u32 dir, __u32 index, __u32 end)
{
	struct bpfipt_ct_tcp_peer *sender = dir ? &e->seen[1] : &e->seen[0];
	struct bpfipt_ct_tcp_peer *receiver = dir ? &e->seen[0] : &e->seen[1];
	__u8 flags = p->tcp_flags;
	__u32 ack = p->ack_seq;

	if (!(sender->flags & CT_TCPF_INIT)) {
		sender->td_end = end;
		if (flags & CT_TCP_SYN) {
			/* SYN/ACK answering a SYN, or a SYN from the reply side (simultaneous open) */
			sender->flags = CT_TCPF_INIT;
			if (!(flags & CT_TCP_ACK))
				return CT_V_ACCEPT;
		} else {
			/* picked up mid-stream: the peer's position is whatever this packet acks */
			sender->flags |= CT_TCPF_INIT;
			if (!(receiver->flags & CT_TCPF_INIT))
				receiver->td_end = ack;
			else if (ack == receiver->td_end + 1)
				receiver->td_end++; /* a reply to a keepalive */
		}
	} else if ((flags & CT_TCP_SYN) && ct_after(end, sender->td_end) &&
		   (e->tcp_state == sSS || e->tcp_state == sSR)) {
		/* a reinitialised SYN (RFC 793: new, larger sequence numbers) */
		sender->td_end = end;
		sender->td_maxack = 0;
		sender->flags = CT_TCPF_INIT;
		if (dir == BPFIPT_CT_DIR_REPLY && !(flags & CT_TCP_ACK))
			return CT_V_ACCEPT;
	}

	if (!(flags & CT_TCP_ACK) || ((flags & CT_TCP_RST) && ack == 0))
		ack = receiver->td_end; /* no ack, or a broken stack's RST|ACK with ack 0 */

	/* The SYN/ACK must acknowledge what the SYN sent: (td_end - 66000, td_end]. */
	if (index == CT_IDX_SYNACK && (receiver->flags & CT_TCPF_INIT)) {
		if (!ct_before(ack, receiver->td_end + 1))
			return CT_V_INVALID;
		if (!ct_after(ack, receiver->td_end - 66000 - 1))
			return CT_V_IGNORE;
	}

	if (ct_after(end, sender->td_end)) {
		sender->td_end = end;
		sender->flags |= CT_TCPF_DATA_UNACK;
	}
	if (flags & CT_TCP_ACK) {
		if (!(sender->flags & CT_TCPF_MAXACK_SET) || ct_after(ack, sender->td_maxack))
			sender->td_maxack = ack;
		sender->flags |= CT_TCPF_MAXACK_SET;
	}
	if (ack == receiver->td_end)
		receiver->flags &= ~CT_TCPF_DATA_UNACK;
	if (index == CT_IDX_ACK) {
		e->last_end = end;
		e->last_ack = ack;
	}
	return CT_V_ACCEPT;
}

/* nf_conntrack_tcp_packet() (with tcp_error() and tcp_new()). */
static __always_inline int ct_tcp(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
				  __u32 dir, __u64 now)
{
	__u8 flags = p->tcp_flags;
	__u32 seq = p->seq;
	__u32 end = seq + p->payload_len + !!(flags & CT_TCP_SYN) + !!(flags & CT_TCP_FIN);
	__u32 index, old, new, timeout;
	struct bpfipt_ct_tcp_peer *sender, *receiver;
	int v;

	if (!((CT_TCP_VALID_FLAGS >> (flags & CT_TCP_CHECKED)) & 1))
		return CT_V_INVALID;
	index = ct_tcp_index(flags);
	dir &= 1;
	sender = dir ? &e->seen[1] : &e->seen[0];
	receiver = dir ? &e->seen[0] : &e->seen[1];

	if (!(e->status & BPFIPT_CT_S_CONFIRMED) && e->tcp_state == sNO) {
		/* tcp_new(): only a SYN starts a connection; loose mode picks up ACKs */
		if (index != CT_IDX_SYN && index != CT_IDX_ACK)
			return CT_V_INVALID;
		e->seen[0].td_end = end;
		e->seen[0].flags = CT_TCPF_INIT;
	}

	old = e->tcp_state;
	ct_opaque(index);
	if (old >= BPFIPT_TCP_MAX || index > CT_IDX_NONE)
		return CT_V_INVALID;
	new = bpfipt_ct_tcp_next[dir][index][old];

	switch (new) {
	case sSS:
		if (old < sTW)
			break;
		/* a SYN reopening a closed connection, or the client restarting after an RST */
		if (((sender->flags | receiver->flags) & CT_TCPF_CLOSE_INIT) ||
		    (e->last_dir == dir && e->last_index == CT_IDX_RST))
			return CT_V_REOPEN;
		/* fall through */
	case sIG:
		if (index == CT_IDX_SYNACK && e->last_index == CT_IDX_SYN && e->last_dir != dir &&
		    p->ack_seq == e->last_end) {
			/* this SYN/ACK answers a SYN we ignored: resync from that SYN */
			struct bpfipt_ct_tcp_peer *syn_side = e->last_dir ? &e->seen[1] : &e->seen[0];

			old = sSS;
			new = sSR;
			syn_side->td_end = e->last_end;
			syn_side->td_maxack = 0;
			syn_side->flags = CT_TCPF_INIT;
			e->last_flags &= ~CT_TCPL_CHALLENGE;
			sender->td_end = 0;
			sender->td_maxack = 0;
			sender->flags = 0;
			break;
		}
		e->last_index = index;
		e->last_dir = dir;
		e->last_end = end;
		if (index == CT_IDX_SYN && dir == BPFIPT_CT_DIR_ORIGINAL)
			e->last_flags = old == sLA ? CT_TCPL_CHALLENGE : 0;
		if (old == sSS && index == CT_IDX_ACK && dir == BPFIPT_CT_DIR_REPLY)
			e->last_ack = p->ack_seq; /* possibly a challenge ACK */
		return CT_V_IGNORE;
	case sIV:
		return CT_V_INVALID;
	case sTW:
		if (old == sLA && index == CT_IDX_ACK && e->last_dir != dir &&
		    e->last_index == CT_IDX_SYN && (e->last_flags & CT_TCPL_CHALLENGE)) {
			/* an RFC 5961 challenge ACK, not the ACK of the last FIN */
			e->last_flags &= ~CT_TCPL_CHALLENGE;
			return CT_V_IGNORE;
		}
		break;
	case sS2:
		e->last_flags |= CT_TCPL_SIMOPEN;
		break;
	case sSR:
		if (dir == BPFIPT_CT_DIR_REPLY && index == CT_IDX_ACK &&
		    (e->last_flags & CT_TCPL_SIMOPEN))
			new = sES;
		break;
	case sCL:
		if (index != CT_IDX_RST)
			break;
		if (old == sFW || old == sCW || old == sLA || old == sTW || old == sCL)
			goto in_window; /* closing anyway: no sequence checks */
		if ((receiver->flags & CT_TCPF_MAXACK_SET) && e->last_index != CT_IDX_SYN) {
			int established = old == sES && (e->status & BPFIPT_CT_S_ASSURED);

			if (seq == 0 && !established)
				break; /* most likely answers a SYN we let through */
			if (ct_before(seq, receiver->td_maxack))
				return CT_V_INVALID;
			if (!established || seq == receiver->td_maxack)
				break;
			if (e->last_index == CT_IDX_ACK && e->last_dir == dir && seq == e->last_end)
				break; /* part of a train: data then RST */
			/* not exactly at the expected sequence: keep the state, a challenge ACK
			 * may follow */
			new = old;
		}
		if ((((e->status & BPFIPT_CT_S_SEEN_REPLY) && e->last_index == CT_IDX_SYN) ||
		     (!(e->status & BPFIPT_CT_S_ASSURED) && e->last_index == CT_IDX_ACK)) &&
		    p->ack_seq == e->last_end)
			goto in_window; /* RST answering a SYN or ACK we let through */
		if (old == sSS && e->last_index == CT_IDX_ACK &&
		    e->last_dir == BPFIPT_CT_DIR_REPLY && seq == e->last_ack)
			goto in_window; /* RST answering a challenge ACK */
		break;
	default:
		break;
	}

	v = ct_tcp_window(e, p, dir, index, end);
	if (v != CT_V_ACCEPT)
		return v;

in_window:
	e->last_index = index;
	e->last_dir = dir;
	e->tcp_state = new;
	if (old != new && new == sFW)
		sender->flags |= CT_TCPF_CLOSE_INIT;

	timeout = ct_tcp_timeout_of(new);
	if (index == CT_IDX_RST)
		timeout = ct_tcp_timeout_of(sCL);
	else if (((e->seen[0].flags | e->seen[1].flags) & CT_TCPF_DATA_UNACK) &&
		 timeout > CT_TIMEOUT_TCP_UNACK)
		timeout = CT_TIMEOUT_TCP_UNACK;

	if (!(e->status & BPFIPT_CT_S_SEEN_REPLY)) {
		if (flags & CT_TCP_RST) {
			/* the only answer is an RST: no connection */
			ct_refresh(e, p, dir, now, timeout);
			return CT_V_KILL;
		}
		if (index == CT_IDX_SYN && old == sSS)
			return CT_V_ACCEPT; /* SYN retransmissions do not extend the life */
		if (new == sES && timeout > CT_TIMEOUT_TCP_UNACK)
			timeout = CT_TIMEOUT_TCP_UNACK; /* picked up, no reply yet */
	} else if (!(e->status & BPFIPT_CT_S_ASSURED) && (old == sSR || old == sES) && new == sES) {
		e->status |= BPFIPT_CT_S_ASSURED;
	}
	ct_refresh(e, p, dir, now, timeout);
	return CT_V_ACCEPT;
}

/* nf_conntrack_udp_packet() (UDP and UDPLITE). */
static __always_inline int ct_udp(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
				  __u32 dir, __u64 now)
{
	/* both directions seen: a stream once it lives longer than 2 s */
	if ((e->status & BPFIPT_CT_S_SEEN_REPLY) && now - e->created > CT_UDP_STREAM_AFTER_NS) {
		ct_refresh(e, p, dir, now, CT_TIMEOUT_UDP_STREAM);
		e->status |= BPFIPT_CT_S_ASSURED;
		return CT_V_ACCEPT;
	}
	ct_refresh(e, p, dir, now, CT_TIMEOUT_UDP);
	return CT_V_ACCEPT;
}

/* Advances `e`, a copy of an entry, with packet `p` travelling in direction `dir`. */
static __always_inline int ct_advance(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p,
				      __u32 dir, __u64 now)
{
	switch (e->proto) {
	case IPPROTO_TCP:
		return ct_tcp(e, p, dir, now);
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
		return ct_udp(e, p, dir, now);
	case IPPROTO_ICMP:
		ct_refresh(e, p, dir, now, CT_TIMEOUT_ICMP);
		return CT_V_ACCEPT;
	case IPPROTO_GRE:
		if (e->status & BPFIPT_CT_S_SEEN_REPLY) {
			ct_refresh(e, p, dir, now, CT_TIMEOUT_GRE_STREAM);
			e->status |= BPFIPT_CT_S_ASSURED;
		} else {
			ct_refresh(e, p, dir, now, CT_TIMEOUT_GRE);
		}
		return CT_V_ACCEPT;
	default:
		ct_refresh(e, p, dir, now, CT_TIMEOUT_GENERIC);
		return CT_V_ACCEPT;
	}
}

/* ct_advance() as a global function: the verifier checks the state machines once, for any
 * arguments, instead of along every path to each of the five places that advance an entry
 * (inlined there, the TCP one made two fifths of every program's verification). It works on
 * copies: no global function may be called holding a lock (see bpfipt_ct_update). */
__noinline int bpfipt_ct_advance_copy(struct bpfipt_ct_entry *e, const struct bpfipt_ct_pkt *p, __u32 dir,
				      __u64 now)
{
	if (!e || !p)
		return CT_V_INVALID;
	return ct_advance(e, p, dir, now);
}

/* The lock of the connection between (a0, p0) and (a1, p1): the same whichever end comes
 * first, so a packet's lock is found without ordering its ends as its key does. */
static __always_inline struct bpfipt_ct_lock *ct_lock_at(__u32 a0, __u16 p0, __u32 a1, __u16 p1, __u8 proto)
{
	__u32 h = ((a0 * 0x9E3779B1u ^ p0 * 0xC2B2AE3Du) + (a1 * 0x9E3779B1u ^ p1 * 0xC2B2AE3Du) + proto) *
		  0x85EBCA77u;
	__u32 idx = (h ^ (h >> 16)) & (BPFIPT_CT_LOCKS - 1);

	return bpf_map_lookup_elem(&bpfipt_ct_locks, &idx);
}

/* The lock of the entry under key k. */
static __always_inline struct bpfipt_ct_lock *ct_lock_of(const struct bpfipt_ct_key *k)
{
	return ct_lock_at(k->addr[0], k->port[0], k->addr[1], k->port[1], k->proto);
}

/*
 * The `created` count of the lock of the connection of a packet with these ends, as a struct
 * bpfipt_ct_pkt holds them (see struct bpfipt_ct_lock), as bpfipt_ct_lookup() reports it in
 * r->created when it finds none live (r->absent). Returns 0 for packets whose key is not
 * their tuple's ends (ICMP).
 */
static __always_inline int bpfipt_ct_created(__u32 saddr, __u16 sport, __u32 daddr, __u16 dport, __u8 proto,
					     __u32 *created)
{
	if (proto == IPPROTO_ICMP)
		return 0;
	struct bpfipt_ct_lock *lk = ct_lock_at(saddr, sport, daddr, dport, proto);
	if (!lk)
		return 0;
	*created = *(volatile __u32 *)&lk->created;
	return 1;
}

static __always_inline void ct_fill_result(struct bpfipt_ct_result *r,
					   const struct bpfipt_ct_entry *e, __u32 dir, __u64 now)
{
	r->orig = e->orig;
	ct_invert(&r->reply, &e->orig, e->proto);
	r->status = e->status;
	r->expire = (e->status & BPFIPT_CT_S_CONFIRMED) && !ct_expired(e, now)
			    ? (e->expires - now) / CT_NS_PER_SEC
			    : 0;
	r->dir = dir;
	r->proto = e->proto;
	r->tcp_state = e->tcp_state;
}

/* ICMP errors: RELATED to the connection of the quoted packet (nf_conntrack_inet_error). */
static __always_inline int ct_lookup_related(const struct bpfipt_ct_pkt *p,
					     struct bpfipt_ct_result *r, __u64 now)
{
	struct ct_tuple_info inner;
	struct bpfipt_ct_entry *e;

	if (p->inner_proto == IPPROTO_ICMP && ct_icmp_is_error(p->inner_icmp_type))
		return r->state; /* an error about an error */
	if (ct_tuple_of(&inner, p->inner_proto, p->inner_saddr, p->inner_daddr, p->inner_sport,
			p->inner_dport, p->inner_icmp_type, p->inner_icmp_code) < 0)
		return r->state;
	/* The error goes back to the quoted packet's sender. */
	if (p->daddr != p->inner_saddr)
		return r->state;
	ct_key_of(&r->key, &inner);
	e = bpf_map_lookup_elem(&bpfipt_ct, &r->key);
	if (!e || ct_expired(e, now))
		return r->state;
	ct_fill_result(r, e, !ct_dir_of(e, &inner), now);
	r->state = BPFIPT_CT_RELATED;
	return r->state;
}

/*
 * Classifies packet `p` against the connection table. Fills `r` (always completely) and
 * returns r->state (enum bpfipt_ct_state). Changes nothing, unless `apply` (the update
 * follows whatever the verdict) and the packet only counts: then it counts it (r->done).
 */
static __always_inline int bpfipt_ct_lookup(const struct bpfipt_ct_pkt *p,
					    struct bpfipt_ct_result *r, int apply)
{
	struct ct_tuple_info ti;
	struct bpfipt_ct_entry snap;
	struct bpfipt_ct_entry *e;
	__u32 dir = BPFIPT_CT_DIR_ORIGINAL;
	struct bpfipt_ct_lock *lk = NULL;
	__u16 status_before;
	int found = 0, v;
	__u32 seq = 1;
	__u64 now, counted;

	__builtin_memset(r, 0, sizeof(*r));
	r->state = BPFIPT_CT_INVALID;
	if (p->frag)
		return r->state;
	if ((ct_port_proto(p->proto) || p->proto == IPPROTO_ICMP) && !p->l4_ok)
		return r->state;
	/* the clock as of the last tick, as fine as netfilter's jiffies: reading the precise
	 * one (the TSC) cost a tracked packet a fifth of its classification */
	now = bpf_ktime_get_coarse_ns();
	if (p->proto == IPPROTO_ICMP) {
		if (p->icmp_type > 18)
			return r->state;
		if (ct_icmp_is_error(p->icmp_type))
			return ct_lookup_related(p, r, now);
	}
	if (ct_tuple_of(&ti, p->proto, p->saddr, p->daddr, p->sport, p->dport, p->icmp_type,
			p->icmp_code) < 0)
		return r->state;
	ct_key_of(&r->key, &ti);

	lk = ct_lock_of(&r->key);
	if (!lk)
		return r->state;
	r->created = *(volatile __u32 *)&lk->created;
	/* `created` before the table: a connection made live after this read moves it on */
	asm volatile("" ::: "memory");
	e = bpf_map_lookup_elem(&bpfipt_ct, &r->key);
	r->now = now;
	if (e && !ct_expired(e, now)) {
		/* the seq only matters to a lookup that may apply the packet */
		seq = apply ? *(volatile __u32 *)&lk->seq : 1;
		asm volatile("" ::: "memory");
		snap = *e;
		dir = ct_dir_of(&snap, &ti);
		found = 1;
		r->live = 1;
	} else {
		r->absent = p->proto != IPPROTO_ICMP;
		if (ti.icmp_reply)
			return r->state; /* only requests start ICMP connections */
		ct_init(&snap, p, &ti.t, now);
	}
	status_before = snap.status;
	counted = snap.acct[dir & 1].packets;
	v = bpfipt_ct_advance_copy(&snap, p, dir, now);
	if (v == CT_V_REOPEN) {
		ct_init(&snap, p, &ti.t, now);
		dir = BPFIPT_CT_DIR_ORIGINAL;
		found = 0;
		status_before = 0;
		v = bpfipt_ct_advance_copy(&snap, p, dir, now);
	}
	if (v == CT_V_INVALID)
		return r->state;
	if (dir == BPFIPT_CT_DIR_REPLY)
		snap.status |= BPFIPT_CT_S_SEEN_REPLY;
	/* Compared with the entry as it is now, then the seq read again: even and unchanged, no
	 * update wrote meanwhile (x86 orders loads with loads and stores with stores, and the
	 * JIT keeps the program's order). */
	if (found && apply && v == CT_V_ACCEPT && !(seq & 1) && ct_same_but_counters(&snap, e)) {
		asm volatile("" ::: "memory");
		if (*(volatile __u32 *)&lk->seq == seq) {
			/* some packets are not counted (a retransmitted SYN) */
			if (snap.acct[dir & 1].packets != counted)
				ct_count(e, p, dir, 1);
			r->done = 1;
		}
	}
	ct_fill_result(r, &snap, dir, now);
	if (!found)
		r->state = BPFIPT_CT_NEW;
	else if (dir == BPFIPT_CT_DIR_REPLY || (status_before & BPFIPT_CT_S_SEEN_REPLY))
		r->state = BPFIPT_CT_ESTABLISHED;
	else
		r->state = BPFIPT_CT_NEW;
	return r->state;
}

/* What ct_apply() did to the copy of an entry, for the table's entry. */
enum ct_applied {
	CT_UNCHANGED, /* nothing to write */
	CT_ADVANCED,  /* the copy moved on: its words but the counters, and what it counted */
	CT_REPLACED,  /* the copy is a new connection: all of it */
	CT_KILL,      /* delete the entry */
};

/* ct_advance(), inline when `in_lock` (a constant: holding the lock, which no global function
 * may be called with), else the global bpfipt_ct_advance_copy(). */
static __always_inline int ct_advance_in(struct bpfipt_ct_entry *c, const struct bpfipt_ct_pkt *p, __u32 dir,
					 __u64 now, const int in_lock)
{
	if (in_lock)
		return ct_advance(c, p, dir, now);
	return bpfipt_ct_advance_copy(c, p, dir, now);
}

/* Applies the packet to `c`, a copy of the table's entry (reinitialising it when it has
 * expired or the packet reopens it, if `accepted`). Sets *created when it holds a new
 * connection then. `in_lock`: see ct_advance_in(). */
static __always_inline enum ct_applied ct_apply(struct bpfipt_ct_entry *c, const struct bpfipt_ct_pkt *p,
						const struct ct_tuple_info *ti, __u64 now, int accepted, int *created,
						const int in_lock)
{
	__u32 dir = BPFIPT_CT_DIR_ORIGINAL;
	int v = CT_V_REOPEN;

	if (!ct_expired(c, now)) {
		dir = ct_dir_of(c, ti);
		v = ct_advance_in(c, p, dir, now, in_lock);
	}
	if (v == CT_V_REOPEN) {
		/* (a packet that reopens changed nothing before saying so) */
		if (ti->icmp_reply)
			return CT_UNCHANGED;
		/* The old connection is over (netfilter kills it before the filter runs, and an
		 * expired one is gone); a dropped packet starts no new one. */
		if (!accepted)
			return CT_KILL;
		ct_init(c, p, &ti->t, now);
		v = ct_advance_in(c, p, BPFIPT_CT_DIR_ORIGINAL, now, in_lock);
		if (v == CT_V_INVALID)
			return CT_UNCHANGED;
		c->status |= BPFIPT_CT_S_CONFIRMED;
		if (v == CT_V_KILL)
			return CT_KILL;
		*created = 1;
		return CT_REPLACED;
	}
	/* an INVALID packet keeps what the state machine recorded on its way */
	if (v != CT_V_INVALID) {
		if (dir == BPFIPT_CT_DIR_REPLY)
			c->status |= BPFIPT_CT_S_SEEN_REPLY;
		c->status |= BPFIPT_CT_S_CONFIRMED;
	}
	return v == CT_V_KILL ? CT_KILL : CT_ADVANCED;
}

/* Under the entry's lock: writes copy `c`, advanced from a snapshot whose counters were
 * `before`, into the table's entry `e`: every word but the counters, which lookups add to
 * without the lock (see the top), get what the copy counted, atomically. */
static __always_inline void ct_write_back(struct bpfipt_ct_entry *e, const struct bpfipt_ct_entry *c,
					  const struct bpfipt_counter *before)
{
	__u64 *x = (__u64 *)e;
	const __u64 *y = (const __u64 *)c;
#pragma unroll
	for (int i = 0; i < CT_ENTRY_WORDS; i++)
		if (!ct_counter_word(i))
			x[i] = y[i];
#pragma unroll
	for (int d = 0; d < 2; d++) {
		__sync_fetch_and_add(&e->acct[d].packets, c->acct[d].packets - before[d].packets);
		__sync_fetch_and_add(&e->acct[d].bytes, c->acct[d].bytes - before[d].bytes);
	}
}

/* Tries of an update whose snapshot other updates under its lock keep overtaking. */
#define CT_UPDATE_TRIES 16

/* An update's copy of the entry and its counters as copied: per CPU (programs never nest on a
 * CPU), off the stack (with it there, the deepest call chain, through the update's tries to
 * the state machine, passed the verifier's 512 bytes). */
struct bpfipt_ct_work {
	struct bpfipt_ct_entry c;
	struct bpfipt_counter before[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_ct_work);
} bpfipt_ct_work SEC(".maps");

/* One try of bpfipt_ct_update() on an existing entry (a bpf_loop callback, so that the
 * verifier checks it once, not once per try). */
struct ct_update_ctx {
	const struct bpfipt_ct_pkt *p;
	const struct ct_tuple_info *ti;
	struct bpfipt_ct_entry *e;
	struct bpfipt_ct_lock *lk;
	struct bpfipt_ct_work *w;
	__u64 now;
	int accepted;
	int done, killed, created; /* out: whether a try succeeded, what follows the write */
};

/* Under the lock: writes what ct_apply() made of the copy (`done`) into the entry, the seq odd
 * meanwhile; what follows the write is left in `x`. */
static __always_inline void ct_update_write(struct ct_update_ctx *x, enum ct_applied done, __u32 seq)
{
	struct bpfipt_ct_entry *e = x->e;

	*(volatile __u32 *)&x->lk->seq = seq + 1;
	asm volatile("" ::: "memory");
	if (done == CT_REPLACED)
		*e = x->w->c;
	else if (done == CT_ADVANCED)
		ct_write_back(e, &x->w->c, x->w->before);
	asm volatile("" ::: "memory");
	*(volatile __u32 *)&x->lk->seq = seq + 2;
	x->killed = done == CT_KILL;
	x->done = 1;
}

/* The copy and its counters as the entry has them now. */
static __always_inline void ct_update_snapshot(struct ct_update_ctx *x)
{
	struct bpfipt_ct_work *w = x->w;

	w->c = *x->e;
	w->before[0] = w->c.acct[0];
	w->before[1] = w->c.acct[1];
	x->created = 0;
}

/* Returns 1 once the try is done (written, or nothing to write), 0 to try again. */
static long ct_update_try(__u64 i, struct ct_update_ctx *x)
{
	struct bpfipt_ct_lock *lk = x->lk;
	enum ct_applied done;
	__u32 seq = *(volatile __u32 *)&lk->seq;

	if (seq & 1)
		return 0; /* an update is writing */
	asm volatile("" ::: "memory");
	ct_update_snapshot(x);
	asm volatile("" ::: "memory");
	if (*(volatile __u32 *)&lk->seq != seq)
		return 0;
	done = ct_apply(&x->w->c, x->p, x->ti, x->now, x->accepted, &x->created, 0);
	if (done == CT_UNCHANGED) {
		x->done = 1;
		return 1;
	}
	bpf_spin_lock(&lk->lock);
	if (lk->seq != seq) {
		bpf_spin_unlock(&lk->lock);
		return 0;
	}
	ct_update_write(x, done, seq);
	bpf_spin_unlock(&lk->lock);
	return 1;
}

/*
 * Called with the `r` of bpfipt_ct_lookup() once packet `p` is judged: advances an existing
 * entry (state, timeout, counters, SEEN_REPLY, ASSURED), and when `accepted` creates the entry
 * of a NEW connection. Nothing to do for INVALID and RELATED packets.
 *
 * The state machine runs on a snapshot of the entry, outside the lock (so it is the global
 * bpfipt_ct_advance_copy() everywhere); the lock is taken to write the result back when no
 * update under that lock came in between (the seq unchanged), else the update starts again
 * from a new snapshot. So the updates of one connection still apply one after another, each
 * to what the one before left, as netfilter's do under its lock; a try is lost only to
 * another CPU's update that succeeded. After CT_UPDATE_TRIES lost tries in a row (other CPUs
 * writing under the same lock all the while) the packet is applied as it was before this
 * scheme, wholly under the lock, with the state machine inline there (one inline copy rather
 * than one per place that advances an entry).
 */
static __always_inline void bpfipt_ct_update(const struct bpfipt_ct_pkt *p,
					     const struct bpfipt_ct_result *r, int accepted)
{
	struct ct_tuple_info ti;
	struct ct_update_ctx x;
	struct bpfipt_ct_work *w;
	struct bpfipt_ct_lock *lk;
	struct bpfipt_ct_entry *e;
	__u32 zero = 0;
	__u64 now;

	if (r->done || (r->state != BPFIPT_CT_NEW && r->state != BPFIPT_CT_ESTABLISHED))
		return;
	/* a dropped packet of no live connection leaves no trace (netfilter forgets the one it
	 * made for it; a connection another CPU made meanwhile is not this packet's) */
	if (!accepted && !r->live)
		return;
	if (ct_tuple_of(&ti, p->proto, p->saddr, p->daddr, p->sport, p->dport, p->icmp_type,
			p->icmp_code) < 0)
		return;
	now = r->now;
	lk = ct_lock_of(&r->key);
	w = bpf_map_lookup_elem(&bpfipt_ct_work, &zero);
	if (!lk || !w)
		return;
	e = bpf_map_lookup_elem(&bpfipt_ct, &r->key);
	if (!e) {
		if (!accepted)
			return;
		/* Only the original direction creates (the entry of an ESTABLISHED packet may have
		 * been deleted by another CPU meanwhile: its reply must not start a connection). */
		if (r->state != BPFIPT_CT_NEW || r->dir != BPFIPT_CT_DIR_ORIGINAL || ti.icmp_reply)
			return;
		ct_init(&w->c, p, &ti.t, now);
		if (bpfipt_ct_advance_copy(&w->c, p, BPFIPT_CT_DIR_ORIGINAL, now) == CT_V_INVALID)
			return;
		w->c.status |= BPFIPT_CT_S_CONFIRMED;
		if (bpf_map_update_elem(&bpfipt_ct, &r->key, &w->c, BPF_NOEXIST) == 0) {
			__sync_fetch_and_add(&lk->created, 1);
			return;
		}
		/* another CPU created it first: update theirs */
		e = bpf_map_lookup_elem(&bpfipt_ct, &r->key);
		if (!e)
			return;
	}
	x.p = p;
	x.ti = &ti;
	x.e = e;
	x.lk = lk;
	x.w = w;
	x.now = now;
	x.accepted = accepted;
	x.done = 0;
	x.killed = 0;
	x.created = 0;
	bpf_loop(CT_UPDATE_TRIES, ct_update_try, &x, 0);
	if (!x.done) {
		bpf_spin_lock(&lk->lock);
		ct_update_snapshot(&x);
		ct_update_write(&x, ct_apply(&w->c, p, &ti, now, accepted, &x.created, 1), lk->seq);
		bpf_spin_unlock(&lk->lock);
	}
	if (x.killed)
		bpf_map_delete_elem(&bpfipt_ct, &r->key);
	else if (x.created)
		__sync_fetch_and_add(&lk->created, 1);
}

/* Global functions: the verifier checks each once, on its own, instead of along every path
 * of every caller, and the tracker's stack stays out of the callers' frames. */
__noinline int bpfipt_dp_ct_lookup(struct bpfipt_ct_pkt *p, struct bpfipt_ct_result *r, int apply)
{
	if (!p || !r)
		return BPFIPT_CT_INVALID;
	return bpfipt_ct_lookup(p, r, apply);
}

__noinline int bpfipt_dp_ct_update(struct bpfipt_ct_pkt *p, struct bpfipt_ct_result *r, int accepted)
{
	if (p && r)
		bpfipt_ct_update(p, r, accepted);
	return 0;
}

/* Ports, or for ICMP type/code/identifier, of a quoted transport header at `l4`; returns 0
 * when it is truncated. */
static __always_inline int ct_parse_inner_l4(struct bpfipt_ct_pkt *p, void *l4, void *data_end,
					     __u8 proto)
{
	if (proto == IPPROTO_ICMP) {
		struct icmphdr *ih = l4;

		if ((void *)(ih + 1) > data_end)
			return 0;
		p->inner_icmp_type = ih->type;
		p->inner_icmp_code = ih->code;
		p->inner_sport = bpf_ntohs(ih->un.echo.id);
		return 1;
	}
	if (ct_port_proto(proto)) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) > data_end)
			return 0;
		p->inner_sport = bpf_ntohs(ports[0]);
		p->inner_dport = bpf_ntohs(ports[1]);
	}
	return 1;
}

/*
 * Fills the ICMP part of `p` from the ICMP header at `icmp` (in a linear packet window ending
 * at `data_end`): type, code, the identifier of queries (sport), and for errors the quoted
 * packet's addresses, protocol and ports (inner_*). Sets p->l4_ok when everything the
 * tracker needs is present. The caller sets p->proto = IPPROTO_ICMP.
 */
static __always_inline void bpfipt_ct_parse_icmp(struct bpfipt_ct_pkt *p, void *icmp,
						 void *data_end)
{
	struct icmphdr *ih = icmp;
	struct iphdr *in;
	__u32 in_ihl;

	p->l4_ok = 0;
	if ((void *)(ih + 1) > data_end)
		return;
	p->icmp_type = ih->type;
	p->icmp_code = ih->code;
	if (!ct_icmp_is_error(ih->type)) {
		p->sport = bpf_ntohs(ih->un.echo.id);
		p->l4_ok = 1;
		return;
	}
	in = (void *)(ih + 1);
	if ((void *)(in + 1) > data_end)
		return;
	in_ihl = in->ihl * 4;
	if (in_ihl < sizeof(*in) || in_ihl > 60)
		return;
	p->inner_saddr = bpf_ntohl(in->saddr);
	p->inner_daddr = bpf_ntohl(in->daddr);
	p->inner_proto = in->protocol;
	p->l4_ok = ct_parse_inner_l4(p, (void *)in + in_ihl, data_end, in->protocol);
}

static __always_inline int ct_in_range(__u32 v, __u32 lo, __u32 hi)
{
	return lo <= v && v <= hi;
}

/*
 * `-m conntrack` (conntrack_mt, revision 3) on the result of bpfipt_ct_lookup(): returns 1 when
 * match `m` matches. A packet without connection (INVALID) matches only through --ctstate.
 */
static __always_inline int bpfipt_ct_match(const struct bpfipt_ct_match *m,
					   const struct bpfipt_ct_result *r)
{
	__u32 addr[4] = { r->orig.src, r->orig.dst, r->reply.src, r->reply.dst };
	__u16 port[4] = { r->orig.sport, r->orig.dport, r->reply.sport, r->reply.dport };
	__u16 f = m->flags, inv = m->invert;
	int i;

	if ((f & BPFIPT_CTM_STATE) &&
	    !!(m->state_mask & (1u << (r->state & 15))) == !!(inv & BPFIPT_CTM_STATE))
		return 0;
	if (r->state == BPFIPT_CT_INVALID || r->state == BPFIPT_CT_UNTRACKED)
		return !!(f & BPFIPT_CTM_STATE);
	if ((f & BPFIPT_CTM_DIRECTION) && (r->dir == BPFIPT_CT_DIR_REPLY) != !!m->dir_reply)
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u16 bit = BPFIPT_CTM_ORIGSRC << i;

		if ((f & bit) && ((addr[i] & m->mask[i]) == m->addr[i]) == !!(inv & bit))
			return 0;
	}
	if ((f & BPFIPT_CTM_PROTO) && (r->proto == m->proto) == !!(inv & BPFIPT_CTM_PROTO))
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u16 bit = BPFIPT_CTM_ORIGSRC_PORT << i;

		if ((f & bit) && ct_in_range(port[i], m->port_lo[i], m->port_hi[i]) == !!(inv & bit))
			return 0;
	}
	if ((f & BPFIPT_CTM_STATUS) &&
	    !!(m->status_mask & r->status) == !!(inv & BPFIPT_CTM_STATUS))
		return 0;
	if ((f & BPFIPT_CTM_EXPIRES) &&
	    ct_in_range(r->expire, m->expire_lo, m->expire_hi) == !!(inv & BPFIPT_CTM_EXPIRES))
		return 0;
	return 1;
}

#undef sNO
#undef sSS
#undef sSR
#undef sES
#undef sFW
#undef sCW
#undef sLA
#undef sTW
#undef sCL
#undef sS2
#undef sIV
#undef sIG

#endif
