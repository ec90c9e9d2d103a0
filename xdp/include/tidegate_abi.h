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

#define TG_FAMILY_V4 4
#define TG_FAMILY_V6 6
#define TG_ADDR_LEN 16

/*
 * The classifier (xdp/include/match.h; docs/classifier.md): tuple space search over subtables,
 * shared by the ACL and the service-chain classifiers, each with its own maps.
 *
 * Every rule sits in one subtable whose masks are no longer than the rule's own prefixes
 * (source, destination, protocol exact or not, and the common prefix of each port range's low
 * and high end). A subtable's bucket for a key (the packet's fields under the subtable's masks)
 * lists at most TG_BUCKET_MAX rule slots, first-match order first; the program checks each
 * candidate against the full rule (slot -> struct tg_rule). Subtables are listed by the lowest
 * order of their rules, so the search stops at the first subtable that cannot hold a better
 * match than the one found. Per packet: at most TG_SUBTABLES_MAX hash probes and
 * TG_BUCKET_MAX candidates each, usually far fewer.
 *
 * Two banks of subtables and buckets: a policy change writes the bank the program does not use,
 * then flips match_bank (one array write, read once per packet), then removes the old bank.
 * Rule slots are shared by both banks (a rule both policies hold keeps its slot and counters).
 *
 * A bank's subtables element sits in one of two places of the subtables array (its index: the
 * bank + 0 or + 2, so index & 1 is the bank), and match_bank holds the index searched: an edit of
 * the live bank writes the element to the bank's other place and then switches match_bank to it,
 * so that no search reads an element while it is written (an array is written in place; a hash
 * would cost the search a hash lookup more).
 */
#define TG_SUBTABLES_MAX 32 /* per bank: the outer loop's bound */
#define TG_BUCKET_MAX 16    /* candidates per bucket: the inner loop's bound */
#define TG_BANKS 2
#define TG_SUBTABLE_PLACES 4 /* entries of the subtables array: 2 per bank; match_bank's values */
_Static_assert(TG_SUBTABLE_PLACES == 2 * TG_BANKS, "two places per bank, place & 1 its bank");
/* "No match yet": no order comes after it (a rule may have it: priority and id both 2^32-1, so
 * the search compares with > and never skips a rule of that order). */
#define TG_ORDER_NONE 0xffffffffffffffff

/* The two match structures, each with its own maps (key of match_bank). */
enum tg_table {
	TG_TABLE_ACL = 0,
	TG_TABLE_CLS = 1,
	TG_TABLE_MAX = 2,
};

/*
 * The prefilter (match.h; docs/classifier.md): which subtables can hold a rule for a packet's
 * addresses, so that the search probes those only. Per table and bank, a __u64 per block of
 * addresses: in its low half a bit per subtable id whose rules include one whose source prefix
 * meets the block, in its high half the same for destination prefixes. A packet's search probes a
 * subtable only when its bit is set in the source half of its source address's block and in the
 * destination half of its destination address's block (two array reads, where each subtable
 * whose rules lie elsewhere would cost a hash probe). Blocks: an IPv4 address's first 16 bits,
 * as an index; an IPv6 address's first 32 bits hashed to 16 (multiplied by TG_PREFILTER_HASH,
 * the high half), + TG_PREFILTER_V6. A prefix meets every block it overlaps: a short IPv4 one a
 * range of them; an IPv6 one shorter than TG_PREFILTER_V6_BITS every IPv6 block; "any family"
 * every block. Entry (table, bank, block) is at (table * TG_BANKS + bank) * TG_PREFILTER_FIELD +
 * block. (A __u64 because an array's mapping spaces elements 8 bytes apart.)
 */
#define TG_PREFILTER_BLOCK_BITS 16
#define TG_PREFILTER_V6 0x10000    /* 1 << TG_PREFILTER_BLOCK_BITS: IPv6 blocks follow IPv4's */
#define TG_PREFILTER_FIELD 0x20000 /* blocks (entries) per table and bank */
#define TG_PREFILTER_V6_BITS 32    /* the IPv6 prefix a block stands for */
#define TG_PREFILTER_HASH 0x9e3779b1 /* 2^32 / golden ratio: Fibonacci hashing */
#define TG_PREFILTER_DST_SHIFT 32  /* destination bits: the entry's high half */
#define TG_PREFILTER_ENTRIES 0x80000 /* TG_TABLE_MAX * TG_BANKS * TG_PREFILTER_FIELD */
_Static_assert(TG_PREFILTER_V6 == 1 << TG_PREFILTER_BLOCK_BITS, "TG_PREFILTER_V6");
_Static_assert(TG_PREFILTER_FIELD == 2 * TG_PREFILTER_V6, "TG_PREFILTER_FIELD: both families");
_Static_assert(TG_PREFILTER_ENTRIES == TG_TABLE_MAX * TG_BANKS * TG_PREFILTER_FIELD, "TG_PREFILTER_ENTRIES");
_Static_assert(TG_SUBTABLES_MAX <= TG_PREFILTER_DST_SHIFT, "a prefilter half has a bit per subtable id");

/* XDP programs reached by tail call from the ingress entry (the xdp_stages program array), each
 * verified on its own: a rare path's code does not add to the entry's states. They read the
 * packet from the per-CPU scratch (struct tg_scratch), whose contents a tail call keeps. */
enum tg_stage {
	TG_STAGE_JUDGE = 0,  /* every IP packet once parsed (and decapped): the verdict, xdp/xdp_judge.c */
	TG_STAGE_REJECT = 1, /* a reject rule matched: the answer, xdp/xdp_reject.c */
	TG_STAGE_MAX = 2,
};

/* "No rule matched". */
#define TG_SLOT_NONE 0xffffffff

/* XDP -> TC metadata marker ("tgm1"): TC trusts the metadata only when it carries this. */
#define TG_META_MAGIC 0x74676d31

/* Map capacities. Overridable at compile time (-D) from the settings model. Rule slots are
 * shared by both banks, so the rules map holds every rule of the old and the new policy while a
 * change is under way (rules both hold count once); a bucket map holds both banks' buckets (of
 * its family: a bucket of no family is in both). */
#ifndef TG_TUNNELS_MAX
#define TG_TUNNELS_MAX 4096
#endif
#ifndef TG_ACL_RULES_MAX
#define TG_ACL_RULES_MAX 262144
#endif
/* The buckets IPv6 packets probe (and those of no family, also in the IPv4 map): half the IPv4
 * map's entries, since IPv4 rule sets are the common large ones and the maps are preallocated;
 * enough for both banks of 100,000 IPv6 rules (docs/operations.md: 44 MiB at this default, the
 * IPv4 map 76 MiB). */
#ifndef TG_ACL_BUCKETS_MAX
#define TG_ACL_BUCKETS_MAX 262144
#endif
#ifndef TG_ACL_BUCKETS4_MAX
#define TG_ACL_BUCKETS4_MAX 524288 /* the buckets IPv4 packets probe */
#endif
#ifndef TG_CLS_RULES_MAX
#define TG_CLS_RULES_MAX 8192
#endif
#ifndef TG_CLS_BUCKETS_MAX
#define TG_CLS_BUCKETS_MAX 16384
#endif
#ifndef TG_CLS_BUCKETS4_MAX
#define TG_CLS_BUCKETS4_MAX 16384
#endif
/* Flows recorded for allow_established (conntrack.h): an LRU hash, so a full table replaces its
 * least recently used flow rather than refusing a new one. */
#ifndef TG_CT_MAX
#define TG_CT_MAX 65536
#endif
/* Flows the ACL's flow cache holds per map (acl_flows4, acl_flows6; match.h, docs/classifier.md):
 * LRU hashes with a list per CPU, so each CPU holds about this many / CPUs of each family. 0
 * (config `capacities: {acl_flows: 0}`) builds the program without the cache (TG_NO_FLOW_CACHE;
 * the maps are made all the same, with one entry per CPU, so that every build pins the same maps). */
#ifndef TG_ACL_FLOWS_MAX
#define TG_ACL_FLOWS_MAX 65536
#endif
/* A search of the ACL (a flow cache miss) inserts its result with a chance of 1 in this many
 * (config `flow_cache_insert_one_in`): a flood of new flows (random sources) then pays an LRU
 * insert for one packet in N, while a flow of more than a few packets is still cached after its
 * first few. 1: every miss inserts. */
#ifndef TG_FLOW_INSERT_ONE_IN
#define TG_FLOW_INSERT_ONE_IN 8
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
	TG_REASON_PASS_LATER_FRAGMENT = 16, /* a non-first fragment, with TG_CFG_F_FRAGMENTS_FIRST: to the stack's reassembly */
	TG_REASON_MAX = 17,
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
	/* The ACL's flow cache (match.h): every packet the ACL judges is counted under one of these
	 * (neither in a build without the cache, acl_flows 0). */
	TG_EVENT_FLOW_HIT = 21,            /* the verdict came from the flow cache: no search */
	TG_EVENT_FLOW_MISS = 22,           /* searched: not cached, cached before the last change, or a change under way */
	TG_EVENT_MAX = 23,
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
/* fragments: first. A datagram is judged by its first fragment (offset 0: it carries the transport
 * header); a later fragment passes before the ACL, and the stack reassembles it only together with
 * a first fragment that passed. Clear (fragments: judge): a later fragment is judged by the ACL
 * without ports, ICMP header or TCP flags. */
#define TG_CFG_F_FRAGMENTS_FIRST 0x10

/* tg_tunnel.flags: which encapsulations a VNI is accepted with. */
#define TG_TUNNEL_F_VXLAN 0x1
#define TG_TUNNEL_F_GENEVE 0x2

/* tg_rule.flags */
#define TG_RULE_F_LOG 0x1   /* ACL: report packets this rule allows as policy events too */
#define TG_RULE_F_LIVE 0x2  /* set in every written rule: a zeroed (free) slot never matches */
#define TG_RULE_F_PROTO 0x4 /* the rule matches one IP protocol (tg_rule.proto), not any */
#define TG_RULE_F_PORTS 0x8 /* a port range is not 0-65535: packets without ports never match */

/* TCP flags (RFC 9293 3.1). A "new connection" (iptables --syn, nft `tcp flags & (fin|syn|rst|ack)
 * == syn`): SYN set, FIN, RST and ACK clear; PSH, URG, ECE and CWR may be anything. */
#define TG_TCP_FIN 0x01
#define TG_TCP_SYN 0x02
#define TG_TCP_RST 0x04
#define TG_TCP_ACK 0x10
#define TG_TCP_NEW_MASK 0x17 /* FIN | SYN | RST | ACK */
#define TG_TCP_NEW 0x02      /* SYN */
_Static_assert(TG_TCP_NEW_MASK == (TG_TCP_FIN | TG_TCP_SYN | TG_TCP_RST | TG_TCP_ACK), "TG_TCP_NEW_MASK");
/* tg_probe.l4_word of a packet whose transport header was not read (a later fragment): bits no
 * rule's l4_want has, and every l4_mask that is not 0 is widened with (match.h). */
#define TG_L4_NONE 0xffff0000

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

/*
 * The tunnels terminated here (the tunnels map): an array of TG_TUNNEL_BUCKETS buckets of
 * TG_TUNNEL_WAYS ways each, read by the program without a hash map's call. A VNI lives in a way
 * of one of its two buckets, tg_tunnel_bucket(vni, 0) or (vni, 1) (murmur3's 32-bit finaliser of
 * the VNI, and of the VNI with bit TG_TUNNEL_SECOND set, modulo the bucket count), so a lookup
 * reads at most two array entries. User space (dataplane/kernel/maps.py, the same hash) puts a
 * new VNI in the first free way of either; with four times as many ways as tunnels, both being
 * full is refused (naming the VNI) and does not happen in practice. A way is taken when its key
 * holds the VNI with TG_TUNNEL_KEY_USED: written after the rest of the way, and cleared first
 * when the tunnel goes, so that a search finding a key reads that tunnel's settings (an array
 * entry is never freed: at worst a search stalled between its reads, while the way is emptied
 * and given to another VNI, counts one packet under that tunnel).
 */
#define TG_TUNNEL_WAYS 4
#define TG_TUNNEL_BUCKETS TG_TUNNELS_MAX
#define TG_TUNNEL_SECOND 0x1000000     /* above every VNI: the second bucket's hash input */
#define TG_TUNNEL_KEY_USED 0x80000000  /* in tg_tunnel.key: a taken way (every VNI is below it) */
#define TG_TUNNEL_MIX1 0x85ebca6b      /* murmur3 fmix32's multipliers */
#define TG_TUNNEL_MIX2 0xc2b2ae35

/* One way: a tunnel's settings. */
struct tg_tunnel {
	__u32 key;     /* the VNI | TG_TUNNEL_KEY_USED; 0: a free way */
	__u32 flags;   /* TG_TUNNEL_F_* */
	__u32 counter; /* the tunnel's entry in tunnel_counters (below TG_TUNNELS_MAX), its own */
};
_Static_assert(sizeof(struct tg_tunnel) == 12, "tg_tunnel layout");

struct tg_tunnel_bucket {
	struct tg_tunnel ways[TG_TUNNEL_WAYS];
};
_Static_assert(sizeof(struct tg_tunnel_bucket) == 12 * TG_TUNNEL_WAYS, "tg_tunnel_bucket layout");

struct tg_counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct tg_counter) == 16, "tg_counter layout");

/*
 * Addresses in the structs below are the packet's 16 address bytes (IPv4 in the first four, the
 * rest zero) read as two native-order words, bytes 0-7 and 8-15, exactly as the program loads
 * them; user space writes the same bytes. A mask keeps a prefix's bytes.
 */

/* One subtable of a bank. */
struct tg_subtable {
	__u64 src_mask[2];
	__u64 dst_mask[2];
	__u64 best;         /* no rule of the subtable comes before this order (a lower bound) */
	__u16 sport_mask;   /* host byte order */
	__u16 dport_mask;
	__u8 family_mask;   /* 0xff: the key holds the family; 0: it does not */
	__u8 proto_mask;    /* 0xff: the key holds the protocol; 0: it does not */
	__u8 id;            /* the subtable's id in its bank's bucket keys */
	__u8 reserved;
};
_Static_assert(sizeof(struct tg_subtable) == 48, "tg_subtable layout");

/* A bank's subtables, by `best` ascending (the search stops early by that order). Written whole
 * to a place (TG_SUBTABLE_PLACES) no search reads, never edited where it is searched. */
struct tg_subtables {
	__u32 count;
	__u32 reserved;
	struct tg_subtable tables[TG_SUBTABLES_MAX];
};
_Static_assert(sizeof(struct tg_subtables) == 8 + 48 * TG_SUBTABLES_MAX, "tg_subtables layout");

/* A packet's fields under one subtable's masks. */
struct tg_bucket_key {
	__u64 src[2];
	__u64 dst[2];
	__u16 sport;  /* host byte order; 0 when the packet has no ports */
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 bank;
	__u8 table;   /* tg_subtable.id */
};
_Static_assert(sizeof(struct tg_bucket_key) == 40, "tg_bucket_key layout");

/* An IPv4 packet's fields under one subtable's masks: the key of the *_buckets4 maps, which IPv4
 * packets probe (IPv6 packets probe the *_buckets maps, keyed by struct tg_bucket_key). It is
 * tg_bucket_key less address bytes 4-15, which an IPv4 packet has zero: the kernel hashes and
 * compares 16 bytes instead of 40 per probe. A bucket no family's mask keeps (family 0) is in
 * both maps; user space writes each bucket into the map of every family that can probe it
 * (dataplane/match/live.py, families). */
struct tg_bucket_key4 {
	__u32 src;    /* address bytes 0-3 under the mask, read as a native-order word */
	__u32 dst;
	__u16 sport;  /* from here on as tg_bucket_key's (TG_KEY_TAIL_LEN bytes) */
	__u16 dport;
	__u8 family;  /* TG_FAMILY_V4 or 0, as the subtable's family_mask keeps it */
	__u8 proto;
	__u8 bank;
	__u8 table;
};
_Static_assert(sizeof(struct tg_bucket_key4) == 16, "tg_bucket_key4 layout");
/* The fields both keys end with, built in a register and stored as one word (match.h). */
#define TG_KEY_TAIL_LEN 8
_Static_assert(__builtin_offsetof(struct tg_bucket_key, sport) + TG_KEY_TAIL_LEN == sizeof(struct tg_bucket_key) &&
	       __builtin_offsetof(struct tg_bucket_key4, sport) + TG_KEY_TAIL_LEN == sizeof(struct tg_bucket_key4) &&
	       __builtin_offsetof(struct tg_bucket_key4, dst) == 4,
	       "tg_bucket_key and tg_bucket_key4 end alike; src and dst make one word");

/* The rules a bucket key can match, first-match order first. */
struct tg_bucket {
	__u32 count;
	__u32 slots[TG_BUCKET_MAX];
};
_Static_assert(sizeof(struct tg_bucket) == 4 + 4 * TG_BUCKET_MAX, "tg_bucket layout");

/* A rule (array index: its slot): what it matches and what it does. */
struct tg_rule {
	__u64 src[2];       /* masked */
	__u64 src_mask[2];
	__u64 dst[2];
	__u64 dst_mask[2];
	__u64 order;        /* (priority << 32) | rule id: the lowest matching order wins */
	__u32 rule_id;      /* the operator's rule id (classifier id) */
	__u32 mark;         /* classifiers: written to XDP metadata, then skb->mark by TC */
	__u16 sport_lo;     /* inclusive, host byte order */
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 family;        /* TG_FAMILY_*, 0: any */
	__u8 proto;         /* IP protocol, with TG_RULE_F_PROTO */
	__u8 action;        /* ACL: enum tg_action */
	__u8 flags;         /* TG_RULE_F_* */
	/* The packet's l4 word (tg_probe.l4_word) under l4_mask must be l4_want: an ICMP/ICMPv6 type
	 * (mask 0xff00), code (0x00ff) or both, or SYN (mask TG_TCP_NEW_MASK, want TG_TCP_NEW); 0/0:
	 * anything. The rule's protocol (icmp, icmpv6 or tcp) says which the word holds. A packet
	 * without a transport header (a later fragment) never matches a rule with a mask: match.h
	 * widens a mask that is not 0 with 0xffff0000, which such a packet's word has set. */
	__u16 l4_want;
	__u16 l4_mask;
};
_Static_assert(sizeof(struct tg_rule) == 96, "tg_rule layout: l4_want and l4_mask took the reserved bytes");

/* What the ACL and classifiers match on, parsed from a packet. The addresses are their bytes in
 * network order (IPv4 in the first 4 of 16, the rest zero), held as words so that the parsers store
 * them, and the probe reads them, whole (clang stores a byte array byte by byte, and a word read
 * back from narrower stores waits for them instead of being forwarded: several ns per packet). */
struct tg_tuple {
	__u64 src[2];
	__u64 dst[2];
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

/* A packet's fields as the classifier compares them (built once per packet from the parse). */
struct tg_probe {
	__u64 src[2];  /* address bytes read as native-order words, like the maps' */
	__u64 dst[2];
	__u16 sport;   /* host byte order; 0 without ports */
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 ports;    /* 1: the packet has ports (TCP/UDP/SCTP, not a later fragment) */
	__u8 reserved;
	/* ICMP/ICMPv6: type << 8 | code; TCP: the flags byte (TG_TCP_*); 0 for other protocols;
	 * 0xffff0000 when the transport header was not read (a later fragment): no rule's l4_want. */
	__u32 l4_word;
	__u32 reserved2;
};
_Static_assert(sizeof(struct tg_probe) == 48, "tg_probe layout");

/*
 * The ACL's flow cache (match.h, tg_acl_slot; docs/classifier.md): a packet's probe -> the slot
 * the search found for it (TG_SLOT_NONE: no rule matched) and the generation of the ACL it was
 * found in. match_gen[enum tg_table] is that generation: user space makes it odd before the
 * first write of a change to the table's maps and even again (one more) after the last, so an
 * entry found in an earlier generation is never used again, and no entry is used while a change
 * is under way. 64 bits: it never wraps back to the generation of an entry still held.
 *
 * An IPv4 packet's key (acl_flows4): its addresses as one word (bytes 0-3 of each, as the
 * buckets' tg_bucket_key4 holds them), then the probe's bytes from sport on (tg_probe: sport,
 * dport, family, proto, ports, reserved, l4_word, reserved2; the reserved bytes zero). Every
 * field the search compares is in it, so the same key always has the same first match. An IPv6
 * packet's key (acl_flows6) is the probe itself (struct tg_probe).
 */
struct tg_flow_key4 {
	__u32 src;      /* address bytes 0-3, read as a native-order word */
	__u32 dst;
	__u16 sport;    /* from here on as tg_probe's (TG_FLOW_TAIL_LEN bytes) */
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 ports;
	__u8 reserved;
	__u32 l4_word;
	__u32 reserved2;
};
_Static_assert(sizeof(struct tg_flow_key4) == 24, "tg_flow_key4 layout");
#define TG_FLOW_TAIL_LEN 16
_Static_assert(__builtin_offsetof(struct tg_flow_key4, sport) + TG_FLOW_TAIL_LEN == sizeof(struct tg_flow_key4) &&
	       __builtin_offsetof(struct tg_probe, sport) + TG_FLOW_TAIL_LEN == sizeof(struct tg_probe) &&
	       __builtin_offsetof(struct tg_flow_key4, dst) == 4,
	       "tg_flow_key4 ends as tg_probe does; src and dst make one word");

struct tg_flow {
	__u64 gen;  /* match_gen[TG_TABLE_ACL] when the search ran (even) */
	__u32 slot; /* the first match, TG_SLOT_NONE: none (the default action decides) */
	__u32 reserved;
};
_Static_assert(sizeof(struct tg_flow) == 16, "tg_flow layout");

/* The hooks, each with its own scratch entry: a TC program run in process context (a test
 * run) may be interrupted by XDP on the same CPU, never the other way round. */
enum tg_hook {
	TG_HOOK_XDP = 0,
	TG_HOOK_TC = 1,
	TG_HOOK_MAX = 2,
};

/* Per-CPU scratch of one packet (match_scratch, key: enum tg_hook). Between the program's stages
 * (parse, tunnel, decap, judge) what the next stage needs is stored here, pointers as offsets,
 * and read back: a value loaded from a map is one the verifier knows nothing about, so every
 * path into a stage looks the same to it and the stage is checked once, not once per path
 * (each leaves other known constants and packet offsets behind). The classifier keeps its
 * search state here for the same reason, and the stages the entry tail-calls (enum tg_stage)
 * find the packet here: a per-CPU map's contents survive the tail call. */
struct tg_scratch {
	struct tg_probe p;   /* the packet being judged: outer until decapped, then inner */
	__u64 best;          /* search: order of the best match so far */
	__u32 slot;          /* search: its slot, TG_SLOT_NONE: none yet */
	__u32 vni;           /* XDP: the tunnel's VNI (decapped, or left alone) */
	__u32 meta_flags;    /* XDP: TG_META_F_* so far */
	__u32 l4_off;        /* XDP: where the outer L4 header starts, from the frame's start */
	__u32 l3_end;        /* XDP: where the outer IP datagram ends */
	__u32 outer_len;     /* XDP: bytes a decap strips */
	__u32 payload_end;   /* XDP: where the outer UDP payload ends */
	__u8 tunnel_type;    /* XDP: enum tg_tunnel_type */
	__u8 not_ip;         /* XDP: a tunnel payload left encapsulated (not IP) */
	__u8 reason;         /* XDP: enum tg_reason of the ACL verdict, while the classifiers run */
	__u8 fragment;       /* XDP: a first fragment to a tunnel port, left to the stack to reassemble */
	__u32 l3_off;        /* XDP: where the outer IP header starts, from the frame's start */
	__u32 counter;       /* XDP: the decapped tunnel's entry in tunnel_counters (tg_tunnel.counter) */
	struct tg_tuple t;   /* the packet being judged, as parsed (allow_established, reject) */
	/* search: the bucket key of the subtable being probed (k4 for an IPv4 packet), here rather
	 * than on the stack: the verifier then sees one state whether a subtable the prefilter
	 * skips was keyed or not */
	struct tg_bucket_key k;
	struct tg_bucket_key4 k4;
	/* the flow cache (match.h, tg_acl_slot): the IPv4 packet's key, and the ACL's generation
	 * when the packet came, here for the same reason: every way into the search is one state */
	struct tg_flow_key4 fk4;
	__u64 gen;
};
_Static_assert(sizeof(struct tg_scratch) == 232, "tg_scratch layout");

/* Which programs are inside a search, per CPU and hook (match_readers): user space waits until
 * every CPU's reader has left, or entered after it advanced match_epoch, before it reuses
 * anything a search may still hold (dataplane/match/table.py, docs/classifier.md: the kernel
 * hands a replaced or deleted hash element's memory to the next update at once). */
struct tg_reader {
	__u64 epoch;  /* match_epoch when the outermost search on this CPU and hook began */
	__u32 active; /* searches under way (a process-context test run can be interrupted) */
	__u32 reserved;
};
_Static_assert(sizeof(struct tg_reader) == 16, "tg_reader layout");


/* allow_established: a flow as its replies will look (key of conntrack), recorded by TC egress
 * from a packet leaving the interface (addresses and ports swapped) and looked up by XDP with the
 * arriving packet's own tuple. ICMP/ICMPv6 echo: sport 0, dport the identifier. */
struct tg_ct_key {
	__u64 src[2];          /* the remote end; addresses as struct tg_tuple holds them (words) */
	__u64 dst[2];          /* the local end */
	__u16 sport;           /* network byte order */
	__u16 dport;
	__u8 proto;
	__u8 family;           /* TG_FAMILY_* */
	__u8 reserved[2];
};
_Static_assert(sizeof(struct tg_ct_key) == 40, "tg_ct_key layout");
_Static_assert(__builtin_offsetof(struct tg_ct_key, sport) == 32, "conntrack.h stores sport..reserved as one word");

enum tg_ct_state {
	TG_CT_OPEN = 0,
	TG_CT_CLOSING = 1, /* TCP: a FIN or RST went either way: the closing timeout applies */
};

struct tg_ct_entry {
	__u64 seen_ns; /* bpf_ktime_get_coarse_ns() of the last packet that refreshed it, either way */
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
 * Per-CPU token bucket for policy events (and reject answers), with credit kept in nanoseconds:
 * an event costs NSEC_PER_SEC / event_rate, credit grows by the time elapsed, up to event_burst
 * events' worth. All zero means full (a fresh bucket, or one user space reset).
 */
struct tg_event_bucket {
	__u64 credit_ns;
	__u64 last_ns;      /* bpf_ktime_get_coarse_ns() when last asked; 0: never used */
	__u64 refused_tick; /* bpf_jiffies64() when it last refused: refused again until it moves */
};
_Static_assert(sizeof(struct tg_event_bucket) == 24, "tg_event_bucket layout");

#endif /* TIDEGATE_ABI_H */
