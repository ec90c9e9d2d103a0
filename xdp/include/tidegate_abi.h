/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tidegate ABI: every layout, enum, flag and constant shared between the BPF programs and
 * user space. This file is the single source of truth:
 *   - struct layouts reach Python only through BCC's generated Key/Leaf ctypes types;
 *   - enums and #defines reach Python through dataplane/abi.py, which parses this file.
 * Keep enum values explicit: they are mirrored in proto/ and checked by tests.
 */
#ifndef TIDEGATE_ABI_H
#define TIDEGATE_ABI_H

#include <linux/types.h>

/* IANA-assigned UDP ports; the defaults of the runtime config (struct tg_config). */
#define TG_VXLAN_PORT_DEFAULT 4789
#define TG_GENEVE_PORT_DEFAULT 6081
/* The largest VNI: VxLAN's and Geneve's are 24 bits (RFC 7348 5, RFC 8926 3.4). */
#define TG_VNI_MAX 0xffffff

/* Match keys carry a family byte, then the address left-aligned in 16 bytes (IPv4 in the first
 * four). One set of tries serves both families, a "/0 any family" wildcard is prefixlen 0, and
 * "all IPv4" / "all IPv6" are distinct prefixes of length TG_FAMILY_BITS. */
#define TG_FAMILY_V4 4
#define TG_FAMILY_V6 6
#define TG_FAMILY_BITS 8
#define TG_ADDR_LEN 16
#define TG_ADDR_BITS 128
#define TG_IPV4_ADDR_BITS 32
/* Width of the set/class id that prefixes the stage-2 and stage-3 trie keys. */
#define TG_SET_BITS 32
/* A stage-1 value with this bit is a ruleset id, not a class id: every rule of that class
 * matches any destination, so stage 2 would give that ruleset for every address and is
 * skipped. Class and ruleset ids stay below this bit. */
#define TG_SET_F_RULESET 0x80000000
#define TG_PROTO_BITS 8
#define TG_PORT_BITS 16

/* Fixed-depth forms of the stages, in front of the tries (dataplane/matcher_layout.py derives
 * them from the trie entries; xdp/include/match.h looks them up first):
 *   stage 1: a bucket per (family, leading TG_BUCKET_BYTES_V4/_V6 address bytes) holding every
 *            source prefix inside it, longest first, and the longest one enclosing it;
 *   stage 2: a list per class of its destination prefixes, longest first;
 *   stage 3: an exact (ruleset, protocol, port) entry per single-port trie entry.
 * The tries keep every entry, so either way gives the same answer: a hash probe costs more than
 * walking a trie of a few entries, and user space turns each form on (match_flags) only once its
 * trie is large enough. A list holds at most TG_LIST_MAX prefixes; a bucket or class with more
 * is found in the trie only. */
#define TG_LIST_MAX 4
#define TG_BUCKET_LEN 8 /* address bytes of a bucket key */
#define TG_BUCKET_BYTES_V4 2 /* an IPv4 bucket is a /16 */
#define TG_BUCKET_BYTES_V6 6 /* an IPv6 bucket is a /48 */

/* Hints in front of the hash probes (match_hints): a bit per 16-bit index, set when some bucket
 * (or exact-port entry) has that index, so that an address or port no fixed-depth form holds
 * walks the trie without a probe that must miss. A hint may be set where nothing is (then the
 * probe misses and the trie answers), never the other way. Index: an IPv4 bucket's two bytes,
 * an IPv6 bucket's three 16-bit words XORed, a port. Key of the u64 word holding bit i of
 * (table, kind): ((table * TG_HINT_KINDS) + kind) * TG_HINT_WORDS + i / 64. */
#define TG_HINT_WORDS 1024 /* 65,536 bits */
_Static_assert(TG_BUCKET_BYTES_V4 == 2 && TG_BUCKET_BYTES_V6 == 6, "hint indexes (match.h) read these bytes");
enum tg_hint {
	TG_HINT_SRC_V4 = 0,
	TG_HINT_SRC_V6 = 1,
	TG_HINT_PORT = 2,
	TG_HINT_KINDS = 3,
};

/* match_flags (key: enum tg_table): which fixed-depth forms the program looks up. */
#define TG_MATCH_F_SRC_BUCKETS 0x1
#define TG_MATCH_F_DST_LISTS 0x2
#define TG_MATCH_F_PORT_EXACT 0x4

/* The two match structures, each with its own maps (key of match_flags). */
enum tg_table {
	TG_TABLE_ACL = 0,
	TG_TABLE_CLS = 1,
	TG_TABLE_MAX = 2,
};

/* XDP programs reached by tail call from the ingress entry (the xdp_stages program array), each
 * verified on its own: the tunnel stage's parsing does not multiply the entry's states. */
enum tg_stage {
	TG_STAGE_TUNNEL = 0, /* UDP to a tunnel port: xdp/xdp_tunnel.c */
	TG_STAGE_REJECT = 1, /* a reject rule matched: the answer, xdp/xdp_reject.c */
	TG_STAGE_MAX = 2,
};

/* Offsets within a packet a stage may be handed (struct tg_stage_scratch). An XDP frame is at
 * most a page; the verifier trusts a bounds check only while offset + the bytes after it stay
 * within 64 KiB, and the stages read a few hundred bytes past this offset. */
#define TG_PKT_OFF_MAX 0x3fff

/* "No rule matched" in a stage-3 leaf. */
#define TG_SLOT_NONE 0xffffffff

/* XDP -> TC metadata marker ("tgm1"): TC trusts the metadata only when it carries this. */
#define TG_META_MAGIC 0x74676d31

/* Map capacities. Overridable at compile time (-D) from the settings model; an apply keeps
 * the old and the new policy side by side for a moment, so these hold both. */
#ifndef TG_TUNNELS_MAX
#define TG_TUNNELS_MAX 4096
#endif
#ifndef TG_ACL_RULES_MAX
#define TG_ACL_RULES_MAX 262144
#endif
#ifndef TG_ACL_SRC_MAX
#define TG_ACL_SRC_MAX 262144
#endif
#ifndef TG_ACL_DST_MAX
#define TG_ACL_DST_MAX 524288
#endif
#ifndef TG_ACL_PORT_MAX
#define TG_ACL_PORT_MAX 524288
#endif
#ifndef TG_CLS_RULES_MAX
#define TG_CLS_RULES_MAX 8192
#endif
#ifndef TG_CLS_SRC_MAX
#define TG_CLS_SRC_MAX 16384
#endif
#ifndef TG_CLS_DST_MAX
#define TG_CLS_DST_MAX 32768
#endif
#ifndef TG_CLS_PORT_MAX
#define TG_CLS_PORT_MAX 65536
#endif
/* Flows recorded for allow_established (conntrack.h): an LRU hash, so a full table replaces its
 * least recently used flow rather than refusing a new one. */
#ifndef TG_CT_MAX
#define TG_CT_MAX 65536
#endif
/* Pages of the policy event ring buffer: a power of two (kernel requirement). 64 pages of 4 KiB
 * hold 3,276 records (each takes its 72 bytes plus the ring's 8-byte header). */
#ifndef TG_EVENT_RING_PAGES
#define TG_EVENT_RING_PAGES 64
#endif

/* Defaults of the allow_established idle timeouts (struct tg_config), in seconds: a flow no packet
 * of, in either direction, has refreshed for this long is forgotten. */
#define TG_CT_TCP_TIMEOUT_DEFAULT 3600
#define TG_CT_TCP_CLOSING_TIMEOUT_DEFAULT 10 /* after a FIN or RST, either way */
#define TG_CT_UDP_TIMEOUT_DEFAULT 30
#define TG_CT_ICMP_TIMEOUT_DEFAULT 30
/* A flow's entry is rewritten at most this often by its own packets (each write dirties a cache
 * line every CPU handling the flow shares). */
#define TG_CT_REFRESH_NS 1000000000ULL

/* Defaults of the reject answers' token bucket (struct tg_config), per CPU: an answer costs a
 * packet out, so a flood of rejected packets must not turn into a flood of answers. */
#define TG_REJECT_RATE_DEFAULT 100 /* answers per second */
#define TG_REJECT_BURST_DEFAULT 20
/* Bytes of the rejected datagram an ICMP/ICMPv6 answer quotes (its IP header, and its transport
 * header behind that); less when the datagram is shorter, rounded down to 4 bytes. 0x7c: the
 * rounding is one mask. */
#define TG_REJECT_QUOTE_MAX 124

/* Defaults of the policy event token bucket (struct tg_config), per CPU. */
#define TG_EVENT_RATE_DEFAULT 1000 /* events per second */
#define TG_EVENT_BURST_DEFAULT 100 /* events sent back to back after a quiet spell */

/* Why a packet got its verdict. Every packet is counted under exactly one reason. */
enum tg_reason {
	TG_REASON_UNSPECIFIED = 0,
	TG_REASON_PASS_NOT_IP = 1,         /* not IPv4/IPv6 (ARP, LLDP...): left to the stack */
	TG_REASON_PASS_ALLOWED = 2,        /* an allow rule matched */
	TG_REASON_PASS_DEFAULT = 3,        /* no rule matched, default action is allow */
	TG_REASON_DROP_MALFORMED = 4,      /* a header field is impossible (IHL < 5, VxLAN I flag clear...) */
	TG_REASON_DROP_TRUNCATED = 5,      /* the frame ends inside a header we must read */
	TG_REASON_DROP_DENIED = 6,         /* a deny rule matched */
	TG_REASON_DROP_DEFAULT = 7,        /* no rule matched, default action is deny */
	TG_REASON_DROP_UNKNOWN_VNI = 8,    /* tunnel packet for a VNI we do not terminate */
	TG_REASON_DROP_GENEVE_VERSION = 9, /* Geneve version != 0 (RFC 8926 3.4: MUST drop) */
	TG_REASON_DROP_GENEVE_CRITICAL = 10, /* unknown critical Geneve option (RFC 8926 3.5: MUST drop) */
	TG_REASON_DROP_DECAP_FAILED = 11,  /* bpf_xdp_adjust_head refused */
	TG_REASON_PASS_TUNNEL_NOT_IP = 12, /* tunnel payload not IP (ARP...): passed still encapsulated */
	TG_REASON_PASS_TUNNEL_FRAGMENT = 13, /* first fragment of a datagram to a tunnel port: to the stack */
	TG_REASON_PASS_ESTABLISHED = 14,   /* a reply of a flow that left through this interface (allow_established) */
	TG_REASON_DROP_REJECTED = 15,      /* a reject rule matched: answered (XDP_TX) or, when it cannot be, dropped */
	TG_REASON_MAX = 16,
};

/* The verdict of each reason, stated per reason: the reasons listed here drop the packet, every
 * other reason passes it. A new reason that drops is added to the list (dataplane/abi.py reads it
 * for is_drop; tests/unit/dataplane/test_abi_parse.py checks it against the reasons' names).
 * DROP_REJECTED keeps the packet from the stack: the reject stage answers it with XDP_TX where it
 * can, and drops it otherwise. */
#define TG_REASON_BIT(r) (1u << (r))
#define TG_REASON_DROPS ( \
	TG_REASON_BIT(TG_REASON_DROP_MALFORMED) | \
	TG_REASON_BIT(TG_REASON_DROP_TRUNCATED) | \
	TG_REASON_BIT(TG_REASON_DROP_DENIED) | \
	TG_REASON_BIT(TG_REASON_DROP_DEFAULT) | \
	TG_REASON_BIT(TG_REASON_DROP_UNKNOWN_VNI) | \
	TG_REASON_BIT(TG_REASON_DROP_GENEVE_VERSION) | \
	TG_REASON_BIT(TG_REASON_DROP_GENEVE_CRITICAL) | \
	TG_REASON_BIT(TG_REASON_DROP_DECAP_FAILED) | \
	TG_REASON_BIT(TG_REASON_DROP_REJECTED))
_Static_assert(TG_REASON_MAX <= 32, "TG_REASON_DROPS holds one bit per reason");
#define TG_REASON_IS_DROP(r) ((TG_REASON_DROPS >> (r)) & 1)

/* Events worth counting that are not verdicts. */
enum tg_event {
	TG_EVENT_UNSPECIFIED = 0,          /* not an event: never counted */
	TG_EVENT_DECAP_VXLAN = 1,
	TG_EVENT_DECAP_GENEVE = 2,
	TG_EVENT_UNKNOWN_VNI_PASSED = 3,   /* left undecapped (unknown_vni_action = pass) */
	TG_EVENT_TUNNEL_NOT_DECAPPED = 4,  /* Geneve control (O bit), non-Ethernet or non-IP payload */
	TG_EVENT_INNER_DMAC_REWRITTEN = 5,
	TG_EVENT_CLASSIFIED = 6,           /* a classifier set a mark */
	TG_EVENT_META_FAILED = 7,          /* bpf_xdp_adjust_meta refused: TC falls back */
	TG_EVENT_TC_META_MARK = 8,         /* TC took the mark from XDP metadata */
	TG_EVENT_TC_FALLBACK = 9,          /* TC classified itself (no metadata arrived) */
	/* Policy events (struct tg_event_record): each one is counted under exactly one of these. */
	TG_EVENT_POLICY_SENT = 10,         /* written to the policy_events ring buffer */
	TG_EVENT_POLICY_RATE_LIMITED = 11, /* this CPU's token bucket was empty (or event_rate = 0) */
	TG_EVENT_POLICY_RINGBUF_FULL = 12, /* bpf_ringbuf_output refused: the reader is behind */
	/* UDP to a tunnel port that is no tunnel packet (UDP length, tunnel header cut, VxLAN I flag
	 * clear, Geneve version not 0): judged as plain UDP (strict_tunnel_ports off). */
	TG_EVENT_TUNNEL_PORT_PLAIN = 13,
	TG_EVENT_TC_PULL_FAILED = 14,      /* TC's bpf_skb_pull_data refused (memory): parsed what was linear */
	/* allow_established (conntrack.h) */
	TG_EVENT_CT_NEW = 15,              /* TC egress recorded a flow */
	TG_EVENT_CT_EVICTED = 16,          /* the table was full: a new flow replaced the least recently used */
	TG_EVENT_CT_EXPIRED = 17,          /* a reply found its flow idle past its timeout: the ACL decided */
	/* reject rules (xdp_reject.c): each rejected packet is counted under exactly one of these */
	TG_EVENT_REJECT_SENT = 18,         /* answered: TCP RST, or ICMP/ICMPv6 administratively prohibited */
	TG_EVENT_REJECT_RATE_LIMITED = 19, /* this CPU's answer bucket was empty: dropped unanswered */
	TG_EVENT_REJECT_UNANSWERED = 20,   /* no answer is due (an RST, an ICMP error, multicast...): dropped */
	TG_EVENT_MAX = 21,
};

enum tg_action {
	TG_ACTION_ALLOW = 0,
	TG_ACTION_DENY = 1,
	TG_ACTION_REJECT = 2, /* dropped, and answered: TCP RST, else ICMP/ICMPv6 administratively prohibited */
};

enum tg_unknown_vni_action {
	TG_UNKNOWN_VNI_PASS = 0,
	TG_UNKNOWN_VNI_DROP = 1,
};

enum tg_tunnel_type {
	TG_TUNNEL_VXLAN = 1,
	TG_TUNNEL_GENEVE = 2,
};

/* tg_config.flags */
#define TG_CFG_F_REWRITE_INNER_DMAC 0x1 /* give decapped unicast frames the interface's MAC */
#define TG_CFG_F_DECAP 0x2              /* terminate tunnels at all */
#define TG_CFG_F_STRICT_TUNNEL_PORTS 0x4 /* drop UDP to a tunnel port that is no tunnel packet */
#define TG_CFG_F_ESTABLISHED 0x8         /* allow_established: record flows at egress, pass their replies */

/* tg_tunnel.flags: which encapsulations a VNI is accepted with. */
#define TG_TUNNEL_F_VXLAN 0x1
#define TG_TUNNEL_F_GENEVE 0x2

/* tg_acl_rule.flags */
#define TG_RULE_F_LOG 0x1

/* tg_meta.flags */
#define TG_META_F_DECAPPED 0x1
#define TG_META_F_CLASSIFIED 0x2

/* tg_event_record.flags */
#define TG_EVENT_RECORD_F_DECAPPED 0x1 /* judged after decap: vni is valid, the tuple is the inner one */

/* Runtime configuration: one entry in the config array, rewritten without recompiling. */
struct tg_config {
	__u32 flags;
	__u16 vxlan_port;  /* host byte order */
	__u16 geneve_port; /* host byte order */
	__u8 unknown_vni_action; /* enum tg_unknown_vni_action */
	__u8 default_action;     /* enum tg_action, when no ACL rule matches */
	__u8 if_mac[6];          /* MAC of the interface the program is attached to */
	__u32 event_rate;  /* policy events per second per CPU; 0: none are sent */
	__u32 event_burst; /* policy events a CPU may send back to back (bucket size) */
	/* allow_established idle timeouts, seconds */
	__u32 ct_tcp_s;
	__u32 ct_tcp_closing_s;
	__u32 ct_udp_s;
	__u32 ct_icmp_s;
	__u32 reject_rate;  /* reject answers per second per CPU; 0: none are sent */
	__u32 reject_burst; /* answers a CPU may send back to back */
};
_Static_assert(sizeof(struct tg_config) == 48, "tg_config layout");

/* Per-VNI tunnel settings (key: __u32 VNI). */
struct tg_tunnel {
	__u32 flags; /* TG_TUNNEL_F_* */
	__u32 reserved;
};
_Static_assert(sizeof(struct tg_tunnel) == 8, "tg_tunnel layout");

struct tg_counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct tg_counter) == 16, "tg_counter layout");

/*
 * The match structure (ACL and classifiers share it) is three LPM lookups:
 *   stage 1  src address                  -> class   (the rules whose source covers it)
 *   stage 2  (class, dst address)         -> ruleset (... and whose destination covers it)
 *   stage 3  (ruleset, protocol, dst port) -> slot    (the first of those, by priority, that matches)
 * User space (dataplane/matcher.py) compiles rules into these; per-packet cost is three trie
 * lookups (two when stage 1 names a ruleset: TG_SET_F_RULESET), each costing a step per level
 * of its trie (about log2 of its entries).
 */
struct tg_src_key {
	__u32 prefixlen;
	__u8 family; /* TG_FAMILY_* */
	__u8 addr[TG_ADDR_LEN];
	__u8 reserved[3]; /* never inside the prefix */
};
_Static_assert(sizeof(struct tg_src_key) == 24, "tg_src_key layout");

struct tg_dst_key {
	__u32 prefixlen;
	__u32 set; /* class id, always fully matched */
	__u8 family;
	__u8 addr[TG_ADDR_LEN];
	__u8 reserved[3];
};
_Static_assert(sizeof(struct tg_dst_key) == 28, "tg_dst_key layout");

struct tg_port_key {
	__u32 prefixlen;
	__u32 set;      /* ruleset id, always fully matched */
	__u8 proto;     /* IP protocol; a wildcard entry stops before it */
	__u8 port[2];   /* destination port, network byte order */
	__u8 reserved;  /* never inside the prefix */
};
_Static_assert(sizeof(struct tg_port_key) == 12, "tg_port_key layout");

/* Stage 3, fixed depth: the slot a single-port trie entry holds, found in one hash probe. */
struct tg_port_exact_key {
	__u32 set;     /* ruleset id */
	__u8 proto;    /* IP protocol */
	__u8 port[2];  /* destination port, network byte order */
	__u8 reserved;
};
_Static_assert(sizeof(struct tg_port_exact_key) == 8, "tg_port_exact_key layout");

/* Stage 1, fixed depth: the bucket an address falls in. */
struct tg_bucket_key {
	__u8 family; /* TG_FAMILY_* */
	__u8 reserved[3];
	__u8 addr[TG_BUCKET_LEN]; /* the first TG_BUCKET_BYTES_V4/_V6 address bytes, the rest zero */
};
_Static_assert(sizeof(struct tg_bucket_key) == 12, "tg_bucket_key layout");

/* One prefix of a list: an address matches when its bytes, read as two native-order u64 words
 * (bytes 0-7, 8-15) and masked, equal addr_*; family 0 matches any family (prefix length 0). */
struct tg_prefix_entry {
	__u64 addr_hi;
	__u64 addr_lo;
	__u64 mask_hi;
	__u64 mask_lo;
	__u32 value;  /* what the trie entry holds: class (stage 1) or ruleset (stage 2) */
	__u8 family;  /* TG_FAMILY_*, 0: any */
	__u8 reserved[3];
};
_Static_assert(sizeof(struct tg_prefix_entry) == 40, "tg_prefix_entry layout");

/* The prefixes of a bucket or a class, longest first: the first that matches is the longest
 * match. None matching means no entry of that stage covers the address. */
struct tg_prefix_list {
	__u32 count; /* entries used, at most TG_LIST_MAX */
	__u32 reserved;
	struct tg_prefix_entry entries[TG_LIST_MAX];
};
_Static_assert(sizeof(struct tg_prefix_list) == 8 + 40 * TG_LIST_MAX, "tg_prefix_list layout");

/* What an ACL slot means (array index = slot from stage 3). */
struct tg_acl_rule {
	__u32 rule_id; /* the operator's rule id */
	__u8 action;   /* enum tg_action */
	__u8 flags;    /* TG_RULE_F_* */
	__u16 reserved;
};
_Static_assert(sizeof(struct tg_acl_rule) == 8, "tg_acl_rule layout");

/* What a classifier slot means. */
struct tg_cls_rule {
	__u32 classifier_id;
	__u32 mark; /* written to XDP metadata, then skb->mark by TC */
};
_Static_assert(sizeof(struct tg_cls_rule) == 8, "tg_cls_rule layout");

/* What the ACL and classifiers match on, parsed from a packet. IPv4 addresses fill the first 4 of
 * 16 bytes. */
struct tg_tuple {
	__u8 src[TG_ADDR_LEN];
	__u8 dst[TG_ADDR_LEN];
	__u16 sport; /* network byte order; 0 when the protocol has no ports */
	__u16 dport; /* network byte order; 0 when the protocol has no ports */
	__u8 proto;
	__u8 family;     /* TG_FAMILY_* */
	__u8 l4_present; /* 0 for non-first fragments: ports unknown */
	__u8 fragment;   /* part of a fragmented datagram (first or not; an atomic fragment is whole) */
	__u8 tcp_flags;  /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 icmp_type;  /* ICMP/ICMPv6 (first fragments) */
	__u8 icmp_code;
	__u8 reserved;
	__u16 icmp_id;   /* ICMP/ICMPv6 echo request and reply: the identifier, network byte order */
	__u16 reserved2;
};
_Static_assert(sizeof(struct tg_tuple) == 48, "tg_tuple layout");

/* Handed from the ingress entry to a stage it tail-calls, per CPU (one packet at a time there). */
struct tg_stage_scratch {
	struct tg_tuple t; /* the packet's (outer) tuple */
	__u32 l4_off;      /* from the frame's start: where the L4 header starts (UDP for tunnels) */
	__u32 l3_end;      /* from the frame's start: where the IP datagram ends */
	__u32 l3_off;      /* from the frame's start: where the IP header starts */
	__u32 reserved;
};
_Static_assert(sizeof(struct tg_stage_scratch) == 64, "tg_stage_scratch layout");

/* allow_established: a flow as its replies will look (key of conntrack), recorded by TC egress
 * from a packet leaving the interface (addresses and ports swapped) and looked up by XDP with the
 * arriving packet's own tuple. ICMP/ICMPv6 echo: sport 0, dport the identifier. */
struct tg_ct_key {
	__u8 src[TG_ADDR_LEN]; /* the remote end */
	__u8 dst[TG_ADDR_LEN]; /* the local end */
	__u16 sport;           /* network byte order */
	__u16 dport;
	__u8 proto;
	__u8 family;           /* TG_FAMILY_* */
	__u8 reserved[2];
};
_Static_assert(sizeof(struct tg_ct_key) == 40, "tg_ct_key layout");

enum tg_ct_state {
	TG_CT_OPEN = 0,
	TG_CT_CLOSING = 1, /* TCP: a FIN or RST went either way: the closing timeout applies */
};

struct tg_ct_entry {
	__u64 seen_ns; /* bpf_ktime_get_ns() of the last packet that refreshed it, either direction */
	__u8 state;    /* enum tg_ct_state */
	__u8 reserved[7];
};
_Static_assert(sizeof(struct tg_ct_entry) == 16, "tg_ct_entry layout");

/* XDP metadata in front of the packet, read by the TC ingress program. */
struct tg_meta {
	__u32 magic; /* TG_META_MAGIC */
	__u32 mark;  /* 0: no classifier matched */
	__u32 vni;   /* VNI the packet was decapped from, when TG_META_F_DECAPPED */
	__u32 flags; /* TG_META_F_* */
};
_Static_assert(sizeof(struct tg_meta) == 16, "tg_meta layout");
_Static_assert(sizeof(struct tg_meta) % 4 == 0, "xdp metadata must be 4-byte aligned");

/*
 * Policy events: one record per packet denied by a rule or by the default action, and per packet
 * allowed by a rule with TG_RULE_F_LOG, in the policy_events ring buffer. Other drops (malformed,
 * truncated, tunnel errors) are counted by reason only.
 */
struct tg_event_record {
	__u64 ts_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, not wall time */
	__u32 ifindex; /* ingress interface */
	__u32 rule_id; /* the operator's rule id; 0: no rule matched (default action) */
	__u32 vni;     /* tunnel the packet was decapped from, when TG_EVENT_RECORD_F_DECAPPED */
	__u32 length;  /* bytes of the judged frame (the inner frame when decapped), as rule counters count */
	__u8 src[TG_ADDR_LEN]; /* IPv4 in the first four bytes */
	__u8 dst[TG_ADDR_LEN];
	__u16 sport;   /* host byte order; 0 when the protocol has no ports or for non-first fragments */
	__u16 dport;   /* host byte order */
	__u8 reason;   /* enum tg_reason */
	__u8 action;   /* enum tg_action: what happened to the packet */
	__u8 family;   /* TG_FAMILY_* */
	__u8 proto;    /* IP protocol */
	__u8 flags;    /* TG_EVENT_RECORD_F_* */
	__u8 reserved[7];
};
_Static_assert(sizeof(struct tg_event_record) == 72, "tg_event_record layout");

/*
 * Per-CPU token bucket for policy events, with credit kept in nanoseconds: an event costs
 * NSEC_PER_SEC / event_rate, credit grows by the time elapsed, up to event_burst events' worth.
 * All zero means full (a fresh bucket, or one user space reset).
 */
struct tg_event_bucket {
	__u64 credit_ns;
	__u64 last_ns; /* bpf_ktime_get_ns() of the last event; 0: never used */
};
_Static_assert(sizeof(struct tg_event_bucket) == 16, "tg_event_bucket layout");

#endif /* TIDEGATE_ABI_H */
