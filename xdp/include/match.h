/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The three-stage match shared by the ACL and the classifiers (layout: tidegate_abi.h).
 * A miss at any stage means no rule covers the packet.
 */
#ifndef TG_MATCH_H
#define TG_MATCH_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

#define TG_PORT_KEY_BITS (TG_SET_BITS + TG_PROTO_BITS + TG_PORT_BITS)

enum tg_table {
	TG_TABLE_ACL = 0,
	TG_TABLE_CLS = 1,
};

/* BCC resolves map names at compile time (no map pointers as arguments, no map calls inside
 * macros), so each stage picks its map here; `table` is a constant after inlining. */
static __always_inline __u32 *tg_stage_src(enum tg_table table, struct tg_src_key *k)
{
	return table == TG_TABLE_ACL ? acl_src.lookup(k) : cls_src.lookup(k);
}

static __always_inline __u32 *tg_stage_dst(enum tg_table table, struct tg_dst_key *k)
{
	return table == TG_TABLE_ACL ? acl_dst.lookup(k) : cls_dst.lookup(k);
}

static __always_inline __u32 *tg_stage_port(enum tg_table table, struct tg_port_key *k)
{
	return table == TG_TABLE_ACL ? acl_port.lookup(k) : cls_port.lookup(k);
}

/* Slot of the first rule (by priority) of `table` matching the tuple, or TG_SLOT_NONE. */
static __always_inline __u32 tg_match(enum tg_table table, const struct tg_tuple *t)
{
	struct tg_src_key sk = {};
	struct tg_dst_key dk = {};
	struct tg_port_key pk = {};
	__u32 *set, *slot;
	__u32 ruleset;

	sk.prefixlen = TG_FAMILY_BITS + TG_ADDR_BITS;
	sk.family = t->family;
	__builtin_memcpy(sk.addr, t->src, TG_ADDR_LEN);
	set = tg_stage_src(table, &sk);
	if (!set)
		return TG_SLOT_NONE;
	ruleset = *set;
	if (ruleset & TG_SET_F_RULESET) {
		ruleset &= ~TG_SET_F_RULESET; /* the class's rules ignore the destination */
	} else {
		dk.prefixlen = TG_SET_BITS + TG_FAMILY_BITS + TG_ADDR_BITS;
		dk.set = ruleset;
		dk.family = t->family;
		__builtin_memcpy(dk.addr, t->dst, TG_ADDR_LEN);
		set = tg_stage_dst(table, &dk);
		if (!set)
			return TG_SLOT_NONE;
		ruleset = *set;
	}
	pk.prefixlen = TG_PORT_KEY_BITS;
	pk.set = ruleset;
	pk.proto = t->proto;
	__builtin_memcpy(pk.port, &t->dport, sizeof(pk.port));
	slot = tg_stage_port(table, &pk);
	return slot ? *slot : TG_SLOT_NONE;
}

/* Classifier mark for a tuple, counted per classifier; 0 when none matches. */
static __always_inline __u32 tg_classify(const struct tg_tuple *t, __u64 bytes)
{
	__u32 slot = tg_match(TG_TABLE_CLS, t);
	struct tg_cls_rule *rule;

	if (slot == TG_SLOT_NONE)
		return 0;
	rule = cls_rules.lookup(&slot);
	if (!rule)
		return 0;
	tg_count(cls_rule_stats.lookup(&slot), bytes);
	return rule->mark;
}

#endif /* TG_MATCH_H */
