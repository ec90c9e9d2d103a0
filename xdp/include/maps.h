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

/* LPM tries must not be preallocated (kernel requirement). */
#define TG_NO_PREALLOC BPF_F_NO_PREALLOC

/* Runtime settings: ports, default actions, the interface MAC. */
TG_MAP("array", __u32, struct tg_config, config, 1, 0);
/* VNI -> which encapsulations terminate here. */
TG_MAP("hash", __u32, struct tg_tunnel, tunnels, TG_TUNNELS_MAX, 0);
/* VNI -> packets/bytes decapped. */
TG_MAP("percpu_hash", __u32, struct tg_counter, tunnel_stats, TG_TUNNELS_MAX, 0);
/* enum tg_reason -> packets/bytes given that verdict. */
TG_MAP("percpu_array", __u32, struct tg_counter, reason_stats, TG_REASON_MAX, 0);
/* enum tg_event -> occurrences. */
TG_MAP("percpu_array", __u32, struct tg_counter, event_stats, TG_EVENT_MAX, 0);

/* A parser's offset, stored and loaded so the verifier forgets what it knew of it (parse.h). */
TG_MAP("percpu_array", __u32, __u32, parse_scratch, 1, 0);

/* enum tg_stage -> the XDP program the ingress entry tail-calls for it, and what it hands over. */
TG_MAP("prog", __u32, __u32, xdp_stages, TG_STAGE_MAX, 0);
TG_MAP("percpu_array", __u32, struct tg_stage_scratch, stage_scratch, 1, 0);
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

/* enum tg_table -> TG_MATCH_F_*: the fixed-depth forms in use (dataplane/matcher_layout.py). */
TG_MAP("array", __u32, __u32, match_flags, TG_TABLE_MAX, 0);
/* (table, enum tg_hint, word) -> 64 bits of hints: which buckets and exact ports exist. */
TG_MAP("array", __u32, __u64, match_hints, TG_TABLE_MAX * TG_HINT_KINDS * TG_HINT_WORDS, 0);

/* ACL: the three match stages, then slot -> rule and slot -> counters. */
TG_MAP("lpm_trie", struct tg_src_key, __u32, acl_src, TG_ACL_SRC_MAX, TG_NO_PREALLOC);
TG_MAP("lpm_trie", struct tg_dst_key, __u32, acl_dst, TG_ACL_DST_MAX, TG_NO_PREALLOC);
TG_MAP("lpm_trie", struct tg_port_key, __u32, acl_port, TG_ACL_PORT_MAX, TG_NO_PREALLOC);
/* ... and their fixed-depth forms, looked up first when match_flags says so (tidegate_abi.h).
 * Elements are replaced, never edited in place, and not preallocated so that a reader keeps the
 * element it found (RCU). */
TG_MAP("hash", struct tg_bucket_key, struct tg_prefix_list, acl_src_bucket, TG_ACL_SRC_MAX, TG_NO_PREALLOC);
TG_MAP("hash", __u32, struct tg_prefix_list, acl_dst_list, TG_ACL_DST_MAX, TG_NO_PREALLOC);
TG_MAP("hash", struct tg_port_exact_key, __u32, acl_port_exact, TG_ACL_PORT_MAX, TG_NO_PREALLOC);
TG_MAP("array", __u32, struct tg_acl_rule, acl_rules, TG_ACL_RULES_MAX, 0);
TG_MAP("percpu_array", __u32, struct tg_counter, acl_rule_stats, TG_ACL_RULES_MAX, 0);

/* Service-chain classifiers: same stages, slot -> mark. */
TG_MAP("lpm_trie", struct tg_src_key, __u32, cls_src, TG_CLS_SRC_MAX, TG_NO_PREALLOC);
TG_MAP("lpm_trie", struct tg_dst_key, __u32, cls_dst, TG_CLS_DST_MAX, TG_NO_PREALLOC);
TG_MAP("lpm_trie", struct tg_port_key, __u32, cls_port, TG_CLS_PORT_MAX, TG_NO_PREALLOC);
TG_MAP("hash", struct tg_bucket_key, struct tg_prefix_list, cls_src_bucket, TG_CLS_SRC_MAX, TG_NO_PREALLOC);
TG_MAP("hash", __u32, struct tg_prefix_list, cls_dst_list, TG_CLS_DST_MAX, TG_NO_PREALLOC);
TG_MAP("hash", struct tg_port_exact_key, __u32, cls_port_exact, TG_CLS_PORT_MAX, TG_NO_PREALLOC);
TG_MAP("array", __u32, struct tg_cls_rule, cls_rules, TG_CLS_RULES_MAX, 0);
TG_MAP("percpu_array", __u32, struct tg_counter, cls_rule_stats, TG_CLS_RULES_MAX, 0);

#endif /* TG_MAPS_H */
