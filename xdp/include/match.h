/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The three-stage match shared by the ACL and the classifiers (layout: tidegate_abi.h).
 * Each stage first tries its fixed-depth form when match_flags turns it on (a bucket, a list, an
 * exact entry: one hash probe each, whatever the rule count), then, where that form has no
 * entry, its LPM trie (which holds every entry either way).
 * A miss at any stage means no rule covers the packet.
 */
#ifndef TG_MATCH_H
#define TG_MATCH_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

#define TG_PORT_KEY_BITS (TG_SET_BITS + TG_PROTO_BITS + TG_PORT_BITS)

/* BCC resolves map names at compile time (no map pointers as arguments, no map calls inside
 * macros), so each stage picks its map here; `table` is a constant after inlining. */
static __always_inline __u32 *tg_stage_src(enum tg_table table, struct tg_src_key *k)
{
	return table == TG_TABLE_ACL ? acl_src.lookup(k) : cls_src.lookup(k);
}

static __always_inline struct tg_prefix_list *tg_stage_src_bucket(enum tg_table table, struct tg_bucket_key *k)
{
	return table == TG_TABLE_ACL ? acl_src_bucket.lookup(k) : cls_src_bucket.lookup(k);
}

static __always_inline __u32 *tg_stage_dst(enum tg_table table, struct tg_dst_key *k)
{
	return table == TG_TABLE_ACL ? acl_dst.lookup(k) : cls_dst.lookup(k);
}

static __always_inline struct tg_prefix_list *tg_stage_dst_list(enum tg_table table, __u32 *set)
{
	return table == TG_TABLE_ACL ? acl_dst_list.lookup(set) : cls_dst_list.lookup(set);
}

static __always_inline __u32 *tg_stage_port(enum tg_table table, struct tg_port_key *k)
{
	return table == TG_TABLE_ACL ? acl_port.lookup(k) : cls_port.lookup(k);
}

static __always_inline __u32 *tg_stage_port_exact(enum tg_table table, struct tg_port_exact_key *k)
{
	return table == TG_TABLE_ACL ? acl_port_exact.lookup(k) : cls_port_exact.lookup(k);
}

/* The first prefix of `l` (longest first) covering the address, as its value; 0 when none does.
 * `hi`/`lo` are the address bytes 0-7 and 8-15 read as native-order words, like the entries.
 * Entries past `count` are never read (the loop is bounded by the array's size for the verifier). */
static __always_inline int tg_list_find(const struct tg_prefix_list *l, __u8 family, __u64 hi, __u64 lo,
					__u32 *value)
{
	int i;

	for (i = 0; i < TG_LIST_MAX; i++) {
		const struct tg_prefix_entry *e = &l->entries[i];

		if (i >= l->count)
			break;
		if (e->family && e->family != family)
			continue;
		if ((hi & e->mask_hi) == e->addr_hi && (lo & e->mask_lo) == e->addr_lo) {
			*value = e->value;
			return 1;
		}
	}
	return 0;
}

/* Whether hint `index` of (table, kind) is set (tidegate_abi.h, TG_HINT_WORDS). */
static __always_inline int tg_hinted(enum tg_table table, enum tg_hint kind, __u32 index)
{
	__u32 key = (table * TG_HINT_KINDS + kind) * TG_HINT_WORDS + ((index >> 6) & (TG_HINT_WORDS - 1));
	__u64 *word = match_hints.lookup(&key);

	return word && (*word >> (index & 63)) & 1;
}

/* Stage 1: source address -> class (or ruleset | TG_SET_F_RULESET). The address's bucket, when it
 * has one, holds every source prefix that can cover the address; else the trie. 0: none. */
static __always_inline int tg_find_src(enum tg_table table, __u32 flags, const struct tg_tuple *t,
				       __u32 *value)
{
	struct tg_bucket_key bk = {};
	struct tg_src_key sk = {};
	struct tg_prefix_list *list;
	__u64 hi, lo;
	__u32 *found;

	if (flags & TG_MATCH_F_SRC_BUCKETS) {
		enum tg_hint kind = TG_HINT_SRC_V4;
		__u32 index = (__u32)t->src[0] << 8 | t->src[1];

		bk.family = t->family;
		if (t->family == TG_FAMILY_V4) {
			__builtin_memcpy(bk.addr, t->src, TG_BUCKET_BYTES_V4);
		} else {
			__builtin_memcpy(bk.addr, t->src, TG_BUCKET_BYTES_V6);
			kind = TG_HINT_SRC_V6;
			index ^= ((__u32)t->src[2] << 8 | t->src[3]) ^ ((__u32)t->src[4] << 8 | t->src[5]);
		}
		list = tg_hinted(table, kind, index) ? tg_stage_src_bucket(table, &bk) : NULL;
		if (list) {
			__builtin_memcpy(&hi, t->src, sizeof(hi));
			__builtin_memcpy(&lo, t->src + sizeof(hi), sizeof(lo));
			return tg_list_find(list, t->family, hi, lo, value);
		}
	}
	sk.prefixlen = TG_FAMILY_BITS + TG_ADDR_BITS;
	sk.family = t->family;
	__builtin_memcpy(sk.addr, t->src, TG_ADDR_LEN);
	found = tg_stage_src(table, &sk);
	if (!found)
		return 0;
	*value = *found;
	return 1;
}

/* Stage 2: (class, destination address) -> ruleset: the class's list, else the trie. 0: none. */
static __always_inline int tg_find_dst(enum tg_table table, __u32 flags, __u32 class,
				       const struct tg_tuple *t, __u32 *value)
{
	struct tg_dst_key dk = {};
	struct tg_prefix_list *list = NULL;
	__u64 hi, lo;
	__u32 *found;

	if (flags & TG_MATCH_F_DST_LISTS)
		list = tg_stage_dst_list(table, &class);
	if (list) {
		__builtin_memcpy(&hi, t->dst, sizeof(hi));
		__builtin_memcpy(&lo, t->dst + sizeof(hi), sizeof(lo));
		return tg_list_find(list, t->family, hi, lo, value);
	}
	dk.prefixlen = TG_SET_BITS + TG_FAMILY_BITS + TG_ADDR_BITS;
	dk.set = class;
	dk.family = t->family;
	__builtin_memcpy(dk.addr, t->dst, TG_ADDR_LEN);
	found = tg_stage_dst(table, &dk);
	if (!found)
		return 0;
	*value = *found;
	return 1;
}

/* Stage 3: (ruleset, protocol, port) -> slot: the exact entry, else the trie's port blocks. */
static __always_inline __u32 tg_find_port(enum tg_table table, __u32 flags, __u32 ruleset,
					  const struct tg_tuple *t)
{
	struct tg_port_exact_key ek = {};
	struct tg_port_key pk = {};
	__u32 *slot;

	if (flags & TG_MATCH_F_PORT_EXACT && tg_hinted(table, TG_HINT_PORT, bpf_ntohs(t->dport))) {
		ek.set = ruleset;
		ek.proto = t->proto;
		__builtin_memcpy(ek.port, &t->dport, sizeof(ek.port));
		slot = tg_stage_port_exact(table, &ek);
		if (slot)
			return *slot;
	}
	pk.prefixlen = TG_PORT_KEY_BITS;
	pk.set = ruleset;
	pk.proto = t->proto;
	__builtin_memcpy(pk.port, &t->dport, sizeof(pk.port));
	slot = tg_stage_port(table, &pk);
	return slot ? *slot : TG_SLOT_NONE;
}

/* Slot of the first rule (by priority) of `table` matching the tuple, or TG_SLOT_NONE. */
static __always_inline __u32 tg_match(enum tg_table table, const struct tg_tuple *t)
{
	__u32 key = table, flags = 0, ruleset;
	__u32 *f = match_flags.lookup(&key);

	if (f)
		flags = *f;
	if (!tg_find_src(table, flags, t, &ruleset))
		return TG_SLOT_NONE;
	if (ruleset & TG_SET_F_RULESET)
		ruleset &= ~TG_SET_F_RULESET; /* the class's rules ignore the destination */
	else if (!tg_find_dst(table, flags, ruleset, t, &ruleset))
		return TG_SLOT_NONE;
	return tg_find_port(table, flags, ruleset, t);
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
