/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one header shared by the BPF programs and the Rust side: map names, struct layouts and
 * constants. Rust never copies these by hand: it takes them from the skeleton libbpf-cargo
 * generates from this file's BTF (the `types` module of the skeleton).
 *
 * # The classifier image (`bpfipt_tables`)
 *
 * A compiled ruleset (all three hooks) is one flat array of u64 *slots*, the image, kept in
 * one of two inner BPF_MAP_TYPE_ARRAYs (BPF_F_INNER_MAP | BPF_F_MMAPABLE) held by the
 * ARRAY_OF_MAPS `bpfipt_tables`. `bpfipt_active` holds the generation of the installed
 * image, which lives in slot `gen & 1`. Userspace writes a new image into the other
 * slot through mmap, then flips: one store of `gen + 1`. A packet reads the generation once and
 * uses only that image, so it sees the old ruleset or the new one, never a mix; a failed or
 * killed update leaves the old one installed.
 * Before userspace rewrites a slot it waits until no packet still uses it: each program
 * announces the generation it uses in `bpfipt_inuse` (per CPU: gen | BPFIPT_IMG_BUSY, a plain
 * store, then reads the generation again and retries if it moved; cleared when the packet is
 * done), and the writer, after the last flip, makes every CPU execute a full memory barrier
 * (an IPI to each, see src/datapath/fence.rs), then finds every CPU either idle or on the
 * other slot. The barrier is the writer's half of the program's store-then-load: whichever
 * side of it a packet's store falls, the writer sees the mark or the packet sees the flip,
 * and no packet pays a barrier of its own. This is RCU done by hand: swapping inner maps
 * through the outer map would make every update wait a whole kernel RCU grace period
 * (8-20 ms). A slot is replaced by a new,
 * larger map (through the outer map) only when an image outgrows it.
 * An image map's value is a chunk of IMG_CHUNK_SLOTS slots, and its entries are consecutive
 * chunks, so through mmap it is one array of slots. Programs look up chunk 0 once per packet
 * and read its slots directly; an image of up to ~15 000 rules fits in it (then the installer
 * sets BPFIPT_IMG_F_ONE_CHUNK, and field lookups read with plain loads).
 * Stateful checks (limit, nth) keep their state in the image: like iptables-legacy, which
 * re-creates every match's private state on each table replace, a new ruleset starts fresh.
 *
 * Slot layout (offsets are slot indexes; "a | b << 32" packs two u32 in one slot):
 *   0                      IMG_MAGIC | IMG_VERSION << 32
 *   IMG_SLOT_VECTAB        vectab_off | n_vectors << 32
 *   IMG_SLOT_LOGS          logs_off | n_logs << 32
 *   IMG_SLOT_STATES        states_off | n_states << 32
 *   IMG_SLOT_FLAGS         BPFIPT_IMG_F_* bits
 *   IMG_SLOT_LEN           slots in use (appended rules go after them)
 *   IMG_SLOT_FLOW_MASK     4 slots: a struct bpfipt_flow_key with every bit of the fields some
 *                          rule of a hook with BPFIPT_IMG_F_FLOW << hook looks at (see
 *                          `bpfipt_flows`); set by the installer from the image itself
 *   IMG_SLOT_HOOK0 + 6*h   per hook h: [0] n_rules | policy_accept << 32
 *                                      [1] actions_off | n_lbvs << 32
 *                                      [2] fields_off | n_fields << 32
 *                                      [3] lead_off | n_lead << 32
 *                                      [4] inserted_off | n_inserted << 32
 *                                      [5] the first action of the room for inserted rules
 *   vector table           one slot per vector: words_off | n_words << 32; a vector's words
 *                          are pairs of slots (word index, 64 bits), word index increasing
 *   field descriptor       IMG_FIELD_SLOTS slots: [0] field | top_shift << 8 |
 *                          n_intervals << 32  [1] intervals_off | index_off << 32
 *                          [2] wildcard vector id
 *   interval index         (fields with over IMG_INDEX_MIN intervals; index_off 0: none) a
 *                          radix tree on the value, 8 bits per level from bit top_shift
 *                          down: nodes of 256 slots, each either node_off with bit
 *                          IMG_INDEX_CHILD_BIT set (a child, for the next 8 bits),
 *                          or first | count << 32: the intervals [first, first + count)
 *                          are all that overlap that bucket of values (the first holds its
 *                          lowest value), searched by bisection
 *   intervals              one slot each: lo << 32 | vector id, with IMG_IV_ALL when that
 *                          vector and the field's wildcard hold every classifier rule of the
 *                          hook past its lead (the field then tells no rule apart for such a
 *                          value, and the walk leaves it out); sorted, covering the field's
 *                          whole domain (the first has lo 0). Addresses (host order) come
 *                          from the LPM prefixes; interface fields are keyed by ifindex,
 *                          resolved against the names by userspace (see `bpfipt_ifaces`).
 *   action                 IMG_ACTION_SLOTS slots: [0] kind | rule_id << 32 (NO_RULE: none)
 *                          [1] arg0 | arg1 << 32  [2] checks_off | n_checks << 32
 *                          per hook n_rules of them, with room for IMG_TAIL_CAP more,
 *                          then IMG_TAIL_CAP for inserted rules
 *   appended rules         the compiled rules n_lbvs..n_rules of a hook are not in its vectors:
 *                          `-A` to a built-in chain appends them in place (their field
 *                          matches as FIELD_IN checks), and the programs walk them in order
 *                          once LBVS finds no candidate (see `compile::compile_tail`)
 *   inserted rules         `-I` in a built-in chain (not at its end), `-R` of one of its
 *                          rules, and `-I`, `-R` or `-A` in a user chain (in every place it
 *                          is inlined) put the new compiled rules in the room for inserted
 *                          ones (in the order they come), and list them in n_inserted
 *                          slots, each `key | action << 32` with key = before <<
 *                          IMG_INS_DEPTH_BITS | (IMG_INS_MAX_DEPTH - depth): evaluate
 *                          action `action` before compiled rule `before` (the compiled rule
 *                          of the chain rule the new one precedes, or the end of the chain's
 *                          block), inside a chain inlined `depth` jumps deep (0: the built-in
 *                          chain); sorted by key (at one `before`, the deeper chains' rules
 *                          first), in chain order. The programs take the next one due
 *                          before any rule at or past `before` is considered (a candidate,
 *                          or the walk past it), the lead included; inserted rules neither
 *                          jump nor return. A skip (RETURN, a failed jump: SKIP_TO, ENTER)
 *                          to the end `to` of a block `depth` deep passes over the inserted
 *                          rules with a key below its arg1 = to << IMG_INS_DEPTH_BITS |
 *                          (IMG_INS_MAX_DEPTH - depth) + 1: those of its block and of the
 *                          blocks in it. `-R` also turns the replaced compiled rule into a
 *                          no-op (as `-D` does)
 *   check                  IMG_CHECK_SLOTS slots: [0] kind | invert << 8 | field << 16 |
 *                          op << 24 | a << 32  [1] b  [2] c
 *   log target             IMG_LOG_SLOTS slots: [0] level | flags << 8, [1..] prefix (NUL
 *                          terminated, BPFIPT_LOG_PREFIX bytes)
 *   lead                   per hook, one slot per leading rule that constrains only the
 *                          conntrack state (no other field, no check), at most IMG_MAX_LEAD:
 *                          bit v set when it accepts ct_state value v. Tried in order before
 *                          the field lookups (established packets then skip them); these
 *                          rules are not in the vectors (LBVS starts past them), and a field
 *                          only they constrain is not in the hook's fields.
 *   state                  one slot per limit/nth state, written by the programs
 */
#ifndef BPF_IPTABLES_H
#define BPF_IPTABLES_H

/* Constants the Rust side reads from the skeleton's BTF (an enum, not #defines, so that they
 * survive into BTF). */
enum bpfipt_const {
	/* Bumped whenever a pinned map's layout or meaning changes; the CLI refuses to open pins
	 * of another version. */
	BPFIPT_LAYOUT_VERSION = 14,
	BPFIPT_MAGIC = 0x62706974, /* "bpit" */
	/* Per-rule counters are indexed by the rule's stable id. Ids of the live ruleset and of
	 * the one being written must both fit, so this is twice the largest ruleset we accept. */
	BPFIPT_MAX_RULE_IDS = 262144,
	/* Entries of struct bpfipt_counter_set (a power of two). */
	BPFIPT_COUNTER_SET_MAX = 4096,
	/* The serialized ruleset model: one array map per generation, pinned as bpfipt_blob0 and
	 * bpfipt_blob1, created by the CLI (its size follows the ruleset's; no program reads it)
	 * with BPF_F_MMAPABLE, BPFIPT_BLOB_PAGE bytes a value, so that it is read and written
	 * through a mapping rather than a syscall and two kernel copies per value. */
	BPFIPT_BLOB_PAGE = 4096,
	BPFIPT_BLOB_MAX_PAGES = 65536,

	/* Classifier image (see the top of this file). */
	BPFIPT_IMG_MAGIC = 0x676d6962, /* "bimg" */
	BPFIPT_IMG_VERSION = 10,
	BPFIPT_IMG_SLOT_VECTAB = 1,
	BPFIPT_IMG_SLOT_LOGS = 2,
	BPFIPT_IMG_SLOT_STATES = 3,
	BPFIPT_IMG_SLOT_HOOK0 = 4,
	BPFIPT_IMG_HOOK_SLOTS = 6,
	/* bpfipt_inuse: the generation a CPU's packet uses, with this bit while it does. */
	BPFIPT_IMG_BUSY = 0x80000000,
	BPFIPT_IMG_GEN_MASK = 0x7fffffff,
	BPFIPT_IMG_SLOT_FLAGS = 22,
	BPFIPT_IMG_SLOT_LEN = 23,
	BPFIPT_IMG_SLOT_FLOW_MASK = 24,
	BPFIPT_IMG_HEADER_SLOTS = 28,
	/* Compiled rules a hook can take by appending, past its LBVS ones, before a full rebuild:
	 * room for TAIL_CAP, used while they number at most one per TAIL_PER LBVS rules of the
	 * whole image (a first packet that walks them pays ~25 ns each; a rebuild recompiles
	 * every hook, so a small image costs little to rebuild, a small hook beside big ones
	 * does not). The same holds for inserted rules. */
	BPFIPT_IMG_TAIL_CAP = 16,
	BPFIPT_IMG_TAIL_PER = 64,
	/* Keys of inserted rules (see "inserted rules" above): the depth of a chain is its low
	 * bits, the deepest one a rule can be inserted in IMG_INS_MAX_DEPTH. */
	BPFIPT_IMG_INS_DEPTH_BITS = 8,
	BPFIPT_IMG_INS_MAX_DEPTH = 255,
	/* IMG_SLOT_FLAGS: some rule looks at conntrack state, so packets are tracked (as in
	 * netfilter, where conntrack hooks a namespace only once a rule needs it). */
	BPFIPT_IMG_F_CONNTRACK = 1,
	/* IMG_SLOT_FLAGS: some rule checks TCP options, so they are read from each TCP packet. */
	BPFIPT_IMG_F_TCP_OPTIONS = 2,
	/* IMG_SLOT_FLAGS, set by the installer: the whole image is in chunk 0, so the programs
	 * may read its slots as plain loads. */
	BPFIPT_IMG_F_ONE_CHUNK = 4,
	/* IMG_SLOT_FLAGS, set by the installer, shifted left by the hook: a packet's verdict in
	 * this hook is a function of its flow key (IMG_SLOT_FLOW_MASK) alone, so the programs
	 * may remember it per flow (`bpfipt_flows`). */
	BPFIPT_IMG_F_FLOW = 8,
	BPFIPT_IMG_F_FLOW_HOOKS = 8 * 7, /* F_FLOW of every hook */
	/* IMG_SLOT_FLAGS, set by the installer: the ruleset has no rule and ACCEPT policies, and
	 * the programs stay attached (as netfilter keeps its hooks), so every packet passes at
	 * once: emptying a ruleset and filling it again detaches and attaches nothing, each of
	 * which waits for an RCU grace period per link. */
	BPFIPT_IMG_F_PASS_ALL = 64,
	/* In an interval slot: the field tells no rule apart there (see "intervals" above). */
	BPFIPT_IMG_IV_ALL = 0x80000000,
	BPFIPT_IMG_FIELD_SLOTS = 3,
	BPFIPT_IMG_INDEX_MIN = 32,
	BPFIPT_IMG_INDEX_CHILD_BIT = 63,
	BPFIPT_IMG_ACTION_SLOTS = 3,
	BPFIPT_IMG_CHECK_SLOTS = 3,
	BPFIPT_IMG_LOG_SLOTS = 5,
	BPFIPT_IMG_MAX_LEAD = 16,
	/* 2 MiB per chunk: a power of two (slot i is in chunk i >> 18) */
	BPFIPT_IMG_CHUNK_SLOTS = 1 << 18,
	BPFIPT_LOG_PREFIX = 32,
	BPFIPT_NO_RULE = 0xffffffff,
	/* Largest compiled ruleset per hook the programs walk: 4096 words of 64 rules. */
	BPFIPT_MAX_RULES = 262144,
	BPFIPT_MAX_WORDS = 4096,
	BPFIPT_MAX_FIELDS = 10,
	BPFIPT_MAX_CHECKS = 32,
	/* Classification steps (bpf_loop iterations): every rule once, every word of the
	 * pivot's two vectors once, plus one step per empty word, and per inserted rule. */
	BPFIPT_MAX_STEPS = 262144 + 4 * 4096 + 16 + BPFIPT_IMG_TAIL_CAP,
	/* LOG hits recorded per packet (events are emitted after classification). */
	BPFIPT_MAX_LOGS_PER_PKT = 16,
	/* Packet bytes (from the IP header) copied into a LOG event. */
	BPFIPT_LOG_DATA = 192,
	BPFIPT_LOG_RINGBUF = 1 << 20,
	BPFIPT_MAX_IFACES = 4096,
	/* struct bpfipt_local_fast: 2^BITS slots, Fibonacci hashing */
	BPFIPT_LOCAL_FAST_BITS = 10,
	BPFIPT_LOCAL_FAST_MULT = 0x9e3779b1,
	BPFIPT_LOCAL_FAST_SHARED = 0xffffffff,
	/* bpfipt_routes: 2^BITS entries per CPU */
	BPFIPT_ROUTE_CACHE_BITS = 10,
	/* bpfipt_flows: 2^BITS entries per CPU; an entry replays at most FLOW_COUNTED counters */
	BPFIPT_FLOW_CACHE_BITS = 11,
	BPFIPT_FLOW_COUNTED = 4,
	/* Reject code for a TCP reset (ICMP codes are 0..15). */
	BPFIPT_REJECT_TCP_RESET = 255,
	/* skb->mark of a REJECT reply to a packet this host sent, judged already: our egress
	 * programs let it pass, our ingress program (on lo) clears the mark and lets it pass. */
	BPFIPT_REPLY_MARK = 0x62706972, /* "bpir" */
};

/* Built-in filter chains (hooks), index into policy counters. */
enum bpfipt_hook {
	BPFIPT_HOOK_INPUT = 0,
	BPFIPT_HOOK_FORWARD = 1,
	BPFIPT_HOOK_OUTPUT = 2,
	BPFIPT_NR_HOOKS = 3,
};

/* Fields, numbered as `compile::tables::Field`. */
enum bpfipt_field {
	BPFIPT_F_SRC = 0,
	BPFIPT_F_DST = 1,
	BPFIPT_F_PROTO = 2,
	BPFIPT_F_SPORT = 3,
	BPFIPT_F_DPORT = 4,
	BPFIPT_F_IN_IFACE = 5,
	BPFIPT_F_OUT_IFACE = 6,
	BPFIPT_F_TCP_FLAGS = 7,
	BPFIPT_F_ICMP = 8,
	BPFIPT_F_CT_STATE = 9,
};

/* Action kinds in the image. */
enum bpfipt_action {
	BPFIPT_A_ACCEPT = 0,
	BPFIPT_A_DROP = 1,
	BPFIPT_A_REJECT = 2,   /* arg0: ICMP code or BPFIPT_REJECT_TCP_RESET */
	BPFIPT_A_LOG = 3,      /* arg0: log target index */
	BPFIPT_A_MARK = 4,     /* arg0: value, arg1: mask */
	BPFIPT_A_CONTINUE = 5,
	BPFIPT_A_SKIP_TO = 6,  /* arg0: next rule, arg1: key of the first inserted rule not skipped */
	BPFIPT_A_ENTER = 7,    /* arg0: where a failed check continues, arg1: as SKIP_TO's */
};

/* `-m addrtype` flags of BPFIPT_C_ADDRTYPE. */
enum bpfipt_addrtype_flags {
	BPFIPT_AT_INVERT_SRC = 1,
	BPFIPT_AT_INVERT_DST = 2,
	BPFIPT_AT_LIMIT_IN = 4,
	BPFIPT_AT_LIMIT_OUT = 8,
};

/* Residual check kinds in the image (`compile::tables::Check`). */
enum bpfipt_check {
	BPFIPT_C_L4HDR = 0,
	BPFIPT_C_FRAGMENT = 1,  /* invert: wanted "non-first fragment" */
	BPFIPT_C_MARK = 2,      /* a: value, b: mask */
	BPFIPT_C_LENGTH = 3,    /* a: lo, b: hi */
	BPFIPT_C_TTL = 4,       /* op: 0 eq, 1 ne, 2 lt, 3 gt; a: value */
	BPFIPT_C_TOS = 5,       /* a: value, b: mask */
	BPFIPT_C_DSCP = 6,      /* a: value */
	BPFIPT_C_PKTTYPE = 7,   /* a: pkttype */
	BPFIPT_C_MAC = 8,       /* b: the 6 address bytes, first byte lowest */
	BPFIPT_C_TCPOPT = 9,    /* a: option kind */
	BPFIPT_C_LIMIT = 10,    /* a: state, b: avg | burst << 32 */
	BPFIPT_C_RANDOM = 11,   /* a: probability (2^31 = 1) */
	BPFIPT_C_NTH = 12,      /* a: state, b: every | packet << 32 */
	BPFIPT_C_FIELD_IN = 13, /* field; a: ranges_off, b: n (slots lo << 32 | hi) */
	BPFIPT_C_PORT_EITHER = 14, /* as FIELD_IN on sport or dport */
	BPFIPT_C_ADDR_MASK = 15,   /* field; a: value, b: mask */
	BPFIPT_C_CONNTRACK = 16,   /* a: offset of a struct bpfipt_ct_match (BPFIPT_IMG_CTM_SLOTS) */
	BPFIPT_C_ADDRTYPE = 17,    /* a: src types | dst types << 16 (XT_ADDRTYPE_* bits, 0 = no
				    * condition); b: BPFIPT_AT_* flags */
};

/* One value of an image map (see "The classifier image" above). */
struct bpfipt_img_chunk {
	__u64 slot[BPFIPT_IMG_CHUNK_SLOTS];
};

/* Entry 0 of `bpfipt_active`: the installed image's generation (slot gen & 1; 0: none). */
struct bpfipt_active {
	__u32 gen;
	__u32 pad;
};

struct bpfipt_counter {
	__u64 packets;
	__u64 bytes;
};

/* Entry 0 of `bpfipt_counter_set`: rule counters for `bpfipt_set_counters` to write, the
 * counts on CPU 0 and zero on every other CPU (a new rule's, `-Z`, restore `--counters`).
 * The syscall's batch update copies and checks each CPU's value of each entry on its own
 * (~2 ms for 10 000 rules on the VM measured); the program writes them in place. */
struct bpfipt_counter_set_entry {
	__u32 id;
	__u32 pad;
	struct bpfipt_counter c;
};

struct bpfipt_counter_set {
	__u32 n; /* entries in use, at most BPFIPT_COUNTER_SET_MAX */
	__u32 ncpus; /* the possible CPUs, 0 to ncpus - 1 (none missing: their values are written) */
	struct bpfipt_counter_set_entry e[BPFIPT_COUNTER_SET_MAX];
};

/* Entry 0 of the meta map: what the pins are and which blob generation is live. */
struct bpfipt_meta {
	__u32 magic;
	__u32 layout_version;
	__u64 netns_cookie;
	__u32 blob_gen;     /* generation (0/1) of the live serialized ruleset */
	__u32 blob_pages;   /* values (BPFIPT_BLOB_PAGE bytes) of that generation's map */
	__u64 blob_len;     /* bytes */
	__u64 blob_hash;    /* FNV-1a of the blob, checked on load */
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
	__u64 expires;  /* bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE) at which it expires */
	__u64 created;  /* bpf_ktime_get_coarse_ns() at creation */
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
	__u8 live;      /* the table had a live (not expired) entry under `key` at lookup */
	__u8 done;      /* lookup applied the packet (it changed nothing in the entry but its
			 * counters): nothing left for the update */
	__u8 absent;    /* no live entry, and `created` read before looking (not ICMP) */
	__u32 created;  /* the key's lock's `created` count before the lookup (conntrack.h) */
	__u64 now;      /* the clock the lookup read, for the update */
};
/* `-m conntrack` options (bpfipt_ct_match.flags and .invert), as XT_CONNTRACK_* bits. */
enum bpfipt_ctm_flags {
	BPFIPT_CTM_STATE = 1 << 0,
	BPFIPT_CTM_PROTO = 1 << 1,
	BPFIPT_CTM_ORIGSRC = 1 << 2,
	BPFIPT_CTM_ORIGDST = 1 << 3,
	BPFIPT_CTM_REPLSRC = 1 << 4,
	BPFIPT_CTM_REPLDST = 1 << 5,
	BPFIPT_CTM_STATUS = 1 << 6,
	BPFIPT_CTM_EXPIRES = 1 << 7,
	BPFIPT_CTM_ORIGSRC_PORT = 1 << 8,
	BPFIPT_CTM_ORIGDST_PORT = 1 << 9,
	BPFIPT_CTM_REPLSRC_PORT = 1 << 10,
	BPFIPT_CTM_REPLDST_PORT = 1 << 11,
	BPFIPT_CTM_DIRECTION = 1 << 12,
};

/* One `-m conntrack` match (compile::Check::Conntrack), evaluated by bpfipt_ct_match() in
 * conntrack.h on a bpfipt_ct_result; `conntrack::encode_match` builds it in Rust. Arrays of 4
 * are indexed origsrc, origdst, replsrc, repldst; addresses in host order. */
struct bpfipt_ct_match {
	__u16 flags;       /* enum bpfipt_ctm_flags: options present */
	__u16 invert;      /* enum bpfipt_ctm_flags: options negated with `!` */
	__u16 state_mask;  /* --ctstate: model::ct_state bits */
	__u16 status_mask; /* --ctstatus: enum bpfipt_ct_status bits */
	__u32 addr[4];
	__u32 mask[4];
	__u16 port_lo[4];
	__u16 port_hi[4];
	__u32 expire_lo;   /* --ctexpire, seconds */
	__u32 expire_hi;
	__u8 proto;        /* --ctproto */
	__u8 dir_reply;    /* --ctdir REPLY (else ORIGINAL) */
	__u8 pad[6];
};
/* Slots of a struct bpfipt_ct_match in the image. */
enum bpfipt_ctm_const {
	BPFIPT_IMG_CTM_SLOTS = 9,
};
/* ---- end of connection tracking ---- */

/* `bpfipt_local`, keyed by IPv4 address (network order), kept by userspace: the addresses the
 * kernel's local routing table holds, as `-m addrtype` and local delivery see them. */
struct bpfipt_local_addr {
	__u32 ifindex;  /* the interface the address belongs to */
	__u32 rtn_type; /* RTN_LOCAL (an address of this host) or RTN_BROADCAST (a subnet's) */
};

/* `bpfipt_local_fast`, kept by userspace with `bpfipt_local`: a direct-mapped table in front of
 * it for the question every arriving packet asks (is its destination local?), a load instead
 * of a hash lookup. Slot LOCAL_FAST_HASH(a) of address a (host order) holds a when a is the
 * only address of `bpfipt_local` hashing there, 0 when none does, and LOCAL_FAST_SHARED when
 * several do (or while userspace rewrites the slot): then `bpfipt_local` answers. */
struct bpfipt_local_fast {
	__u32 slot[1 << BPFIPT_LOCAL_FAST_BITS];
};
#define BPFIPT_LOCAL_FAST_HASH(a) ((__u32)((a) * (__u32)BPFIPT_LOCAL_FAST_MULT) >> (32 - BPFIPT_LOCAL_FAST_BITS))

/* `bpfipt_routes`, per CPU, kept by the ingress programs alone: the route lookups of arriving
 * packets (which hook judges them, and their output interface), direct-mapped by what the FIB's
 * answer can depend on, as the FIB lookup costs a forwarded packet more than the rest of its
 * classification. An entry answers while the namespace's route generation
 * (net->ipv4.rt_genid) is the one it was looked up under: the kernel moves it on every change
 * a lookup could see (routes added, changed or removed once used, policy rules, addresses,
 * links going down or up, the forwarding switch), so a change applies from the next packet
 * on. Keyed (`keyed`) by the packet's destination, input interface and TOS alone while no
 * policy rule was ever added and no route has several next hops (`bpfipt_routing`): every
 * source then gets the same answer, so a host's new clients share one lookup; else by its
 * addresses too, and by its protocol and ports while the FIB can see those (policy rules
 * matching them, multipath hashing on them). */
struct bpfipt_route {
	__u32 src, dst; /* the lookup's key: addresses in host order (src: 0 but BY_ADDRS, BY_FLOW), */
	__u32 ports;    /* sport << 16 | dport (BPFIPT_ROUTE_BY_FLOW, else 0), */
	__u32 in_ifindex;
	__u8 proto, tos; /* (proto: BPFIPT_ROUTE_BY_FLOW, else 0) */
	__s8 hook;      /* the answer: BPFIPT_HOOK_INPUT/FORWARD, or -1 (not judged) */
	__u8 keyed;     /* 0 (empty) or an enum bpfipt_route_keyed */
	__u32 genid;    /* the route generation it was looked up under */
	__u32 out_ifindex;
	__u32 pad;
};

enum bpfipt_route_keyed {
	BPFIPT_ROUTE_BY_FLOW = 1,
	BPFIPT_ROUTE_BY_ADDRS = 2,
	BPFIPT_ROUTE_BY_DST = 3,
};

/* Entry 0 of `bpfipt_routing`, kept by userspace (a command that installs an image, and the
 * watcher on every route event): whether every IPv4 route of the namespace had a single next
 * hop (no multipath route, none by a nexthop object) when the namespace's route generation was
 * `genid` and its FIB sequence (net->ipv4.fib_seq, moved on every change to a route in use,
 * including a replacement of one never looked up, which leaves the generation) `fib_seq`.
 * Both are read by running `bpfipt_route_gen` before the routes are listed, so a change made
 * since leaves the entry stale: then routes are remembered per source again. */
struct bpfipt_routing {
	__u32 genid;
	__u32 fib_seq;
	__u32 single_path;
	__u32 pad;
};

#define BPFIPT_ROUTE_HASH(src, dst, ports, ifindex) \
	((__u32)(((src) ^ ((dst) * 0x85ebca6bu) ^ ((ports) * 0xc2b2ae35u) ^ (ifindex)) * \
		 (__u32)BPFIPT_LOCAL_FAST_MULT) >> (32 - BPFIPT_ROUTE_CACHE_BITS))

/* What a packet's verdict can depend on in a hook whose rules keep no state and have no side
 * effect but counting (no LOG, MARK, limit, statistic, TCP option, MAC or conntrack match
 * beyond the state): its header fields, where it came from or goes to, and its conntrack
 * state. Host order. Each field is masked with the image's IMG_SLOT_FLOW_MASK, which keeps
 * only what its rules look at (a TCP flow's packets of every length share one entry unless a
 * rule matches the length; the flows of one client to one service share one unless a rule,
 * the tracker or the FIB looks at the source port: the programs key the ports for the FIB). */
struct bpfipt_flow_key {
	__u32 src, dst;
	__u16 sport, dport;
	__u32 ifindex;       /* the input interface at ingress, the output one at egress */
	__u8 proto, tos;
	__u8 prog;           /* the program: XDP, TC ingress or TC egress; bit 7: ports keyed for the FIB */
	__u8 ct_state;
	__u8 tcp_flags, ttl, pkttype;
	__u8 frag;           /* bit 0: a non-first fragment, bit 1: a whole transport header */
	__u16 icmp, len;
	__u32 mark;
};

/* `bpfipt_flows`, per CPU, kept by the programs alone: recent flows' verdicts, direct-mapped
 * by flow key, so a packet of a flow seen before skips the chain choice and classification.
 * An entry answers a packet with the same (masked) key while the image it was classified
 * against is installed (every ruleset change installs a new generation, and userspace
 * refreshes the local-address maps only before installing one) and, at ingress, while the
 * route generation is the one its chain was chosen under (as `bpfipt_routes`). It holds the
 * rule counters the packet bumped, which a hit bumps again. Only ACCEPT and DROP verdicts of
 * hooks with BPFIPT_IMG_F_FLOW, and packets netfilter would not judge, are remembered. */
struct bpfipt_flow {
	struct bpfipt_flow_key key;
	__u32 gen;           /* the image generation (0: empty) */
	__u32 rt_gen;        /* the route generation the chain was chosen under (ingress) */
	__s8 hook;           /* the chain, or -1: not judged */
	__u8 verdict;        /* V_ACCEPT or V_DROP */
	__u8 by_policy;      /* the chain's policy counted it */
	__u8 n_counted;
	__u32 counted[BPFIPT_FLOW_COUNTED]; /* the rules that counted it */
	__u32 ct_created;    /* keyed with no connection: its conntrack lock's count (flow.h) */
};

/* `bpfipt_ifaces`, keyed by ifindex, kept by userspace: what the programs need to know about
 * an interface of this namespace. */
struct bpfipt_iface {
	__u32 ipv4;      /* primary IPv4 address (network order), source of ICMP errors we send
			  * for forwarded packets; 0 if none */
	__u32 flags;     /* BPFIPT_IFACE_* */
	__u8 name[16];
};

enum bpfipt_iface_flags {
	BPFIPT_IFACE_NO_L2 = 1, /* no Ethernet header (e.g. tun, wireguard) */
};

/* One LOG event on the ring buffer `bpfipt_log_events`; formatted by `bpf-iptables
 * --log-follow` like the kernel's nf_log_ipv4. */
struct bpfipt_log_event {
	__u32 hook;
	__u32 in_ifindex;   /* 0: none (OUTPUT) */
	__u32 out_ifindex;  /* 0: none (INPUT) */
	__u32 mark;
	__u32 uid;          /* socket owner at OUTPUT when has_uid */
	__u32 gid;
	__u16 data_len;     /* bytes of data[] valid */
	__u16 skb_len;      /* packet length from the IP header on */
	__u8 level;
	__u8 flags;
	__u8 mac_len;       /* bytes of mac[] valid (0: no link-layer header) */
	__u8 has_uid;
	__u8 prefix[BPFIPT_LOG_PREFIX];
	__u8 mac[16];
	__u8 data[BPFIPT_LOG_DATA];
};

/* Per-CPU datapath statistics (`bpfipt_stats`), for diagnostics. */
struct bpfipt_stats {
	__u64 no_image;        /* packets seen with no ruleset installed */
	__u64 parse_pass;      /* non-IPv4 or unparsable packets passed unjudged */
	__u64 log_lost;        /* LOG events lost (ring buffer full, or too many per packet) */
	__u64 reject_failed;   /* REJECT replies that could not be built (packet dropped) */
	__u64 steps_exhausted; /* classification ran out of steps (policy applied) */
};

#endif
