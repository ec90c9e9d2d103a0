/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the data plane, declared once. Both entry programs are compiled into one BCC
 * module so they share these. With TG_PIN_DIR defined, maps are pinned there and a later load
 * (a restarted daemon) reuses the pinned maps, keeping the policy the kernel already enforces.
 */
#ifndef TG_MAPS_H
#define TG_MAPS_H

#include "ringbuf.h"
#include "tidegate_abi.h"

#ifdef TG_PIN_DIR
#define TG_MAP(type, key, leaf, name, size, flags) \
	BPF_TABLE_PINNED(type, key, leaf, name, size, TG_PIN_DIR "/" #name, flags)
#define TG_RINGBUF_SECTION(name) "maps/ringbuf:" TG_PIN_DIR "/" #name
#else
#define TG_MAP(type, key, leaf, name, size, flags) BPF_F_TABLE(type, key, leaf, name, size, flags)
#define TG_RINGBUF_SECTION(name) "maps/ringbuf"
#endif

/* A ring buffer of `record`s (ringbuf.h), pinned like TG_MAP. */
#define TG_RINGBUF(record, name, pages) TG_RINGBUF_IN(TG_RINGBUF_SECTION(name), record, name, pages)

/* The classifier's bucket hashes, whose elements are replaced while programs read them. Either
 * way the kernel hands a deleted or replaced element to the next update at once, so user space
 * waits for the searches first (dataplane/match/table.py, `quiesce`). Preallocated (the default):
 * every element is made when the map is, and a delete or replace only moves one on the map's free
 * list. With TG_BUCKETS_ON_DEMAND (config `preallocate_buckets: false`): only the buckets present
 * take memory, but the kernel frees the ones given up in batches after an RCU Tasks Trace grace
 * period; after a large policy shrinks, one such batch holds a CPU for milliseconds, and whatever
 * wakes there waits (docs/operations.md, "Kernel memory per interface"). */
#ifdef TG_BUCKETS_ON_DEMAND
#define TG_BUCKET_FLAGS BPF_F_NO_PREALLOC
#else
#define TG_BUCKET_FLAGS 0
#endif

/* Runtime settings: ports, default actions, the interface MAC. */
TG_MAP("array", __u32, struct tg_config, config, 1, 0);
/* Bucket -> the tunnels (VNIs) in it: which encapsulations terminate here, and where each is
 * counted (tidegate_abi.h, struct tg_tunnel_bucket). */
TG_MAP("array", __u32, struct tg_tunnel_bucket, tunnels, TG_TUNNEL_BUCKETS, 0);
/* tg_tunnel.counter -> packets/bytes decapped: an array entry of the tunnel's own, so a decap
 * counts without a lookup by VNI. */
TG_MAP("percpu_array", __u32, struct tg_counter, tunnel_counters, TG_TUNNELS_MAX, 0);
/* enum tg_reason -> packets/bytes given that verdict. */
TG_MAP("percpu_array", __u32, struct tg_counter, reason_stats, TG_REASON_MAX, 0);
/* enum tg_event -> occurrences. */
TG_MAP("percpu_array", __u32, struct tg_counter, event_stats, TG_EVENT_MAX, 0);

/* A parser's offset, stored and loaded so the verifier forgets what it knew of it (parse.h); a
 * __u64 because per-CPU values are read back 8-byte aligned (BCC, dataplane/kernel/warm.py). */
TG_MAP("percpu_array", __u32, __u64, parse_scratch, 1, 0);

/* enum tg_stage -> the XDP program the ingress entry tail-calls for it (the packet: match_scratch). */
TG_MAP("prog", __u32, __u32, xdp_stages, TG_STAGE_MAX, 0);
/* The XDP program that gets every packet Tidegate passes (next_program; empty: none), slot 0. */
TG_MAP("prog", __u32, __u32, next_program, 1, 0);

/* allow_established: flows as their replies will look -> when last seen (conntrack.h), and how
 * many entries the programs put there and did not take out (so a full table can be counted). */
TG_MAP("lru_hash", struct tg_ct_key, struct tg_ct_entry, conntrack, TG_CT_MAX, 0);
TG_MAP("array", __u32, __u64, conntrack_live, 1, 0);

/* Policy events to user space, and the per-CPU token bucket that paces them. */
TG_RINGBUF(struct tg_event_record, policy_events, TG_EVENT_RING_PAGES);
TG_MAP("percpu_array", __u32, struct tg_event_bucket, event_bucket, 1, 0);
/* The per-CPU token bucket that paces reject answers (reject_rate, reject_burst). */
TG_MAP("percpu_array", __u32, struct tg_event_bucket, reject_bucket, 1, 0);

/* 0 -> the epoch user space advances before it waits for searches to end (struct tg_reader). */
TG_MAP("array", __u32, __u64, match_epoch, 1, 0);
/* enum tg_hook -> this CPU's reader: inside a search since which epoch. */
TG_MAP("percpu_array", __u32, struct tg_reader, match_readers, TG_HOOK_MAX, 0);
/* enum tg_hook -> this CPU's scratch of the packet being judged (match.h). */
TG_MAP("percpu_array", __u32, struct tg_scratch, match_scratch, TG_HOOK_MAX, 0);
/* enum tg_table -> the place of the subtables element the program searches (tidegate_abi.h,
 * TG_SUBTABLE_PLACES); its bank, place & 1, is the bank of the buckets it searches. */
TG_MAP("array", __u32, __u32, match_bank, TG_TABLE_MAX, 0);

/* enum tg_table -> its generation, odd while user space changes the table (the flow cache). */
TG_MAP("array", __u32, __u64, match_gen, TG_TABLE_MAX, 0);
/* The ACL's flow cache (tidegate_abi.h, struct tg_flow): an IPv4 packet's probe (acl_flows4) or
 * another's (acl_flows6) -> the search's result. LRU with a list per CPU (BPF_F_NO_COMMON_LRU):
 * an insert takes no lock other CPUs share; a full CPU's list gives up its least recently used. */
#ifdef TG_NO_FLOW_CACHE
#define TG_ACL_FLOWS_ENTRIES 1 /* made all the same: every build pins the same maps */
#else
#define TG_ACL_FLOWS_ENTRIES TG_ACL_FLOWS_MAX
#endif
TG_MAP("lru_hash", struct tg_flow_key4, struct tg_flow, acl_flows4, TG_ACL_FLOWS_ENTRIES, BPF_F_NO_COMMON_LRU);
TG_MAP("lru_hash", struct tg_probe, struct tg_flow, acl_flows6, TG_ACL_FLOWS_ENTRIES, BPF_F_NO_COMMON_LRU);

/* The prefilter of both tables (tidegate_abi.h): (table, bank, block) -> the subtables, a bit per
 * id, holding a rule whose source (low half) or destination (high half) prefix meets the block.
 * User space writes it through a memory mapping (BPF_F_MMAPABLE): a bank's blocks in one copy. */
TG_MAP("array", __u32, __u64, match_prefilter, TG_PREFILTER_ENTRIES, BPF_F_MMAPABLE);

/* ACL (tidegate_abi.h, docs/classifier.md): place -> a bank's subtables; (bank, subtable, masked
 * fields) -> candidate slots, probed by IPv6 packets (acl_buckets) and by IPv4 packets (the same
 * key with 4-byte addresses, acl_buckets4); slot -> rule; slot -> counters. Buckets are replaced
 * as whole elements, never edited in place (TG_BUCKET_FLAGS); a subtables element is written to a
 * place no search reads (TG_SUBTABLE_PLACES). */
TG_MAP("array", __u32, struct tg_subtables, acl_subtables, TG_SUBTABLE_PLACES, 0);
TG_MAP("hash", struct tg_bucket_key, struct tg_bucket, acl_buckets, TG_ACL_BUCKETS_MAX, TG_BUCKET_FLAGS);
TG_MAP("hash", struct tg_bucket_key4, struct tg_bucket, acl_buckets4, TG_ACL_BUCKETS4_MAX, TG_BUCKET_FLAGS);
TG_MAP("array", __u32, struct tg_rule, acl_rules, TG_ACL_RULES_MAX, 0);
TG_MAP("percpu_array", __u32, struct tg_counter, acl_rule_stats, TG_ACL_RULES_MAX, 0);

/* Service-chain classifiers: the same structure; a rule's mark is what a match gives. */
TG_MAP("array", __u32, struct tg_subtables, cls_subtables, TG_SUBTABLE_PLACES, 0);
TG_MAP("hash", struct tg_bucket_key, struct tg_bucket, cls_buckets, TG_CLS_BUCKETS_MAX, TG_BUCKET_FLAGS);
TG_MAP("hash", struct tg_bucket_key4, struct tg_bucket, cls_buckets4, TG_CLS_BUCKETS4_MAX, TG_BUCKET_FLAGS);
TG_MAP("array", __u32, struct tg_rule, cls_rules, TG_CLS_RULES_MAX, 0);
TG_MAP("percpu_array", __u32, struct tg_counter, cls_rule_stats, TG_CLS_RULES_MAX, 0);

#endif /* TG_MAPS_H */
