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

/* ---- Connection tracking (owner: bpf/conntrack.h, src/conntrack/) ----------------------------
 *
 * All addresses, ports and TCP sequence numbers in these structs are in HOST byte order.
 * The datapath fills a `struct bpfipt_ct_pkt` from the parsed packet, calls bpfipt_ct_lookup()
 * before classifying and bpfipt_ct_update() once the packet is accepted (see conntrack.h).
 */

enum bpfipt_ct_const {
	/* Entries in the connection table (LRU: the least recently used entry is evicted when
	 * full). Same as nf_conntrack_max on a machine with 8 GB or more. */
	BPFIPT_CT_MAX_ENTRIES = 262144,
	/* Spin locks serialising updates of entries that hash to the same slot. */
	BPFIPT_CT_LOCKS = 1024,
};

/* A packet's conntrack state as the bit index of model::ct_state (XT_CONNTRACK_STATE_*). */
enum bpfipt_ct_state {
	BPFIPT_CT_INVALID = 0,
	BPFIPT_CT_ESTABLISHED = 1,
	BPFIPT_CT_RELATED = 2,
	BPFIPT_CT_NEW = 3,
	BPFIPT_CT_UNTRACKED = 6,
};

enum bpfipt_ct_dir {
	BPFIPT_CT_DIR_ORIGINAL = 0,
	BPFIPT_CT_DIR_REPLY = 1,
};

/* Entry status bits, as the kernel's IPS_* (only those we ever set; EXPECTED never is). */
enum bpfipt_ct_status {
	BPFIPT_CT_S_EXPECTED = 1 << 0,
	BPFIPT_CT_S_SEEN_REPLY = 1 << 1,
	BPFIPT_CT_S_ASSURED = 1 << 2,
	BPFIPT_CT_S_CONFIRMED = 1 << 3,
};

/* TCP states, numbered as the kernel's enum tcp_conntrack. */
enum bpfipt_ct_tcp_state {
	BPFIPT_TCP_NONE = 0,
	BPFIPT_TCP_SYN_SENT = 1,
	BPFIPT_TCP_SYN_RECV = 2,
	BPFIPT_TCP_ESTABLISHED = 3,
	BPFIPT_TCP_FIN_WAIT = 4,
	BPFIPT_TCP_CLOSE_WAIT = 5,
	BPFIPT_TCP_LAST_ACK = 6,
	BPFIPT_TCP_TIME_WAIT = 7,
	BPFIPT_TCP_CLOSE = 8,
	BPFIPT_TCP_SYN_SENT2 = 9,
	BPFIPT_TCP_MAX = 10,    /* "invalid" in the transition table */
	BPFIPT_TCP_IGNORE = 11, /* "ignore" in the transition table */
};

/* What the datapath fills from the packet. Zero what does not apply. */
struct bpfipt_ct_pkt {
	__u32 saddr;
	__u32 daddr;
	/* TCP, UDP, UDPLITE, SCTP, DCCP: the ports. ICMP echo/timestamp/info/address request or
	 * reply: sport = the identifier, dport = 0. Otherwise 0. */
	__u16 sport;
	__u16 dport;
	__u32 seq;         /* TCP */
	__u32 ack_seq;     /* TCP */
	__u32 payload_len; /* TCP payload bytes (IP total length - IP header - TCP header) */
	__u32 ip_len;      /* IP total length: the byte counters add this */
	__u32 ifindex;     /* interface the packet was seen on */
	__u16 window;      /* TCP, raw (unscaled) */
	__u8 proto;
	__u8 tcp_flags;    /* TCP header byte 13: FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 ... */
	__u8 icmp_type;
	__u8 icmp_code;
	/* 1 when the transport header is present and complete; for ICMP errors, also the quoted
	 * IP header and its first 8 transport bytes (the inner_* fields). 0 for a non-first
	 * fragment. */
	__u8 l4_ok;
	/* 1 for a non-first IP fragment (no transport header): not tracked yet, see conntrack.h. */
	__u8 frag;
	/* 1 at egress for a locally generated packet, 0 at ingress. Recorded in new entries. */
	__u8 from_local;
	/* ICMP errors (types 3, 4, 5, 11, 12): the quoted packet's header, as that packet was
	 * sent. inner_sport/inner_dport as sport/dport above (for a quoted ICMP query:
	 * inner_sport = its identifier, inner_icmp_type/code its type and code). */
	__u8 inner_proto;
	__u8 inner_icmp_type;
	__u8 inner_icmp_code;
	__u32 inner_saddr;
	__u32 inner_daddr;
	__u16 inner_sport;
	__u16 inner_dport;
};

/* One direction of a connection (host order). ICMP queries: sport = identifier,
 * dport = type << 8 | code (as the kernel's tuple.dst.u.all). Other non-port protocols: 0. */
struct bpfipt_ct_tuple {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
};

/* Key of the connection table: the same for both directions of a connection.
 * Port protocols and others: the two (addr, port) endpoints in ascending order.
 * ICMP queries: addr[0] = requester, addr[1] = responder, port[0] = identifier,
 * port[1] = request type << 8 | code. */
struct bpfipt_ct_key {
	__u32 addr[2];
	__u16 port[2];
	__u8 proto;
	__u8 pad[3];
};

/* Per-direction TCP tracking data (a subset of the kernel's ip_ct_tcp_state). */
struct bpfipt_ct_tcp_peer {
	__u32 td_end;    /* highest seq + len sent */
	__u32 td_maxack; /* highest ack sent */
	__u8 flags;      /* CT_TCPF_* (conntrack.h) */
	__u8 pad[3];
};

/* A connection table entry (value of the bpfipt_ct map). */
struct bpfipt_ct_entry {
	__u64 expires;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at which it expires */
	__u64 created;  /* bpf_ktime_get_ns() at creation */
	struct bpfipt_counter acct[2]; /* per direction (enum bpfipt_ct_dir) */
	struct bpfipt_ct_tuple orig;   /* the reply tuple is its inverse (we do no NAT) */
	__u16 status;   /* enum bpfipt_ct_status bits */
	__u8 proto;
	__u8 tcp_state; /* enum bpfipt_ct_tcp_state */
	struct bpfipt_ct_tcp_peer seen[2];
	__u32 last_end; /* TCP: seq + len of the last ACK or ignored packet */
	__u32 last_ack; /* TCP: ack of the last ACK, or of a possible challenge ACK */
	__u8 last_index;/* TCP: flag class of the last packet that moved the state */
	__u8 last_dir;
	__u8 last_flags;/* TCP: CT_TCPL_* (conntrack.h) */
	__u8 from_local;/* the first packet was locally generated */
	__u32 ifindex;  /* interface of the first packet */
};

/* What bpfipt_ct_lookup() tells the classifier (everything -m conntrack looks at), and the
 * handle bpfipt_ct_update() takes. For INVALID packets only `state` is meaningful. */
struct bpfipt_ct_result {
	struct bpfipt_ct_tuple orig;
	struct bpfipt_ct_tuple reply;
	struct bpfipt_ct_key key; /* handle for bpfipt_ct_update() */
	__u32 status;   /* enum bpfipt_ct_status bits as netfilter shows them to the filter */
	__u32 expire;   /* seconds until the entry expires (0 for a not yet confirmed one) */
	__u8 state;     /* enum bpfipt_ct_state */
	__u8 dir;       /* enum bpfipt_ct_dir */
	__u8 proto;     /* the connection's protocol (for RELATED: the quoted flow's) */
	__u8 tcp_state; /* after this packet */
};
/* ---- end of connection tracking ---- */

#endif
