/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The classifier shared by the ACL and the service-chain classifiers: tuple space search with
 * priority order and early exit (layout: tidegate_abi.h; design, limits and memory:
 * docs/classifier.md; compiler: dataplane/match/).
 *
 * Per packet: read the place searched (and with it the bank) once, ask the prefilter which
 * subtables can hold a rule for the packet's addresses, fetch that place's subtables (one array
 * element), then for each subtable the prefilter names, by the lowest order it holds, look up
 * the packet's masked fields and check the bucket's candidates against their full rules; stop as
 * soon as the best match so far comes before everything the next subtable holds. Both loops are bounded by named constants
 * (TG_SUBTABLES_MAX, TG_BUCKET_MAX): BCC (0.26 here) cannot relocate the callback of bpf_loop(),
 * so the verifier walks them, once: the search reads the packet and its own state from the
 * per-CPU scratch (struct tg_scratch), which makes every path into it look the same to the
 * verifier. tests/dataplane/kernel/test_verifier.py keeps the count well inside its limit.
 */
#ifndef TG_MATCH_H
#define TG_MATCH_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

/* BCC resolves map names at compile time (no map pointers as arguments), so each lookup picks
 * its map here; `table` is a constant after inlining. */
static __always_inline struct tg_subtables *tg_subtables_of(enum tg_table table, __u32 *place)
{
	return table == TG_TABLE_ACL ? acl_subtables.lookup(place) : cls_subtables.lookup(place);
}

static __always_inline struct tg_bucket *tg_bucket_of(enum tg_table table, struct tg_bucket_key *k)
{
	return table == TG_TABLE_ACL ? acl_buckets.lookup(k) : cls_buckets.lookup(k);
}

/* (*_buckets4: the same for IPv4 packets, tidegate_abi.h) */
static __always_inline struct tg_bucket *tg_bucket4_of(enum tg_table table, struct tg_bucket_key4 *k)
{
	return table == TG_TABLE_ACL ? acl_buckets4.lookup(k) : cls_buckets4.lookup(k);
}

static __always_inline struct tg_rule *tg_rule_at(enum tg_table table, __u32 *slot)
{
	return table == TG_TABLE_ACL ? acl_rules.lookup(slot) : cls_rules.lookup(slot);
}

static __always_inline __u8 tg_has_ports(const struct tg_tuple *t)
{
	return t->l4_present &&
	       (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP || t->proto == TG_IPPROTO_SCTP);
}

/* After this, values stored before are loaded again from memory where read, not taken from what
 * the compiler remembers (and the verifier knows) about them. */
static __always_inline void tg_forget(void)
{
	asm volatile("" ::: "memory");
}

/* Marks this CPU's `hook` as searching (struct tg_reader), before anything of the classifier is
 * read: the atomic add orders the mark before those reads, so user space, which advances
 * match_epoch and then reads the marks, never misses a search that could hold an element it is
 * about to reuse. Returns what tg_read_end takes. */
static __always_inline struct tg_reader *tg_read_begin(enum tg_hook hook)
{
	__u32 key = hook, zero = 0;
	struct tg_reader *r = match_readers.lookup(&key);
	__u64 *epoch = match_epoch.lookup(&zero);

	if (!r || !epoch)
		return r; /* unreachable: arrays always have their entries */
	if (!r->active)
		r->epoch = *epoch; /* the outermost search on this CPU sets it */
	__sync_fetch_and_add(&r->active, 1);
	return r;
}

/* Unmarks the search: a plain store, after every read of it (the compiler barrier keeps them
 * before it; x86 never lets a store pass earlier loads). Only the mark needs the atomic's full
 * barrier (a store followed by loads is the one order x86 does not keep); each costs ~5 ns per
 * packet. Not atomic, but nothing is lost: what interrupts a search on this CPU (XDP in softirq
 * over a process-context test run) runs whole in between and leaves `active` as it found it. */
static __always_inline void tg_read_end(struct tg_reader *r)
{
	if (r) {
		tg_forget();
		r->active = r->active - 1;
	}
}

static __always_inline struct tg_scratch *tg_scratch_of(enum tg_hook hook)
{
	__u32 key = hook;

	return match_scratch.lookup(&key);
}

/* The probe of the tuple, stored as whole words built in registers: the judge stage reads its
 * fields back as words right after (the flow cache's key, tg_flow_key4_of; the IPv6 key is the
 * probe itself, which the kernel hashes in words), and a word that narrower stores make up is not
 * forwarded from them (tg_bucket_for). */
static __always_inline void tg_probe_init(struct tg_probe *p, const struct tg_tuple *t)
{
	__u64 ports = tg_has_ports(t), family = t->family, proto = t->proto, sport = 0, dport = 0, tail, l4;

	if (ports) {
		sport = bpf_ntohs(t->sport);
		dport = bpf_ntohs(t->dport);
	}
	/* The parser leaves ICMP type and code 0 but for ICMP/ICMPv6, TCP flags 0 but for TCP. */
	l4 = t->l4_present ? ((__u32)t->icmp_type << 8 | t->icmp_code | t->tcp_flags) : TG_L4_NONE;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	tail = sport | dport << 16 | family << 32 | proto << 40 | ports << 48; /* reserved 0 */
#else
	tail = sport << 48 | dport << 32 | family << 24 | proto << 16 | ports << 8;
	l4 <<= 32; /* l4_word, then reserved2 0 */
#endif
	__builtin_memcpy(p->src, t->src, sizeof(p->src));
	__builtin_memcpy(p->dst, t->dst, sizeof(p->dst));
	__builtin_memcpy(&p->sport, &tail, sizeof(tail));
	__builtin_memcpy(&p->l4_word, &l4, sizeof(l4));
}
_Static_assert(__builtin_offsetof(struct tg_probe, l4_word) + 8 == sizeof(struct tg_probe) &&
	       __builtin_offsetof(struct tg_probe, sport) + 16 == sizeof(struct tg_probe),
	       "tg_probe ends with sport..reserved and l4_word..reserved2, a word each");

/* Nonzero when the rule does not match the packet: every field as the operator wrote it, in
 * arithmetic rather than branches (one branch per candidate: the verifier walks one path through
 * a candidate, not one per field that can differ; and no mispredictions). */
static __always_inline __u64 tg_rule_misses(const struct tg_rule *r, const struct tg_probe *p)
{
	__u64 flags = r->flags, family = r->family, sport = p->sport, dport = p->dport, outside, miss;
	__u32 mask;

	miss = ((p->src[0] & r->src_mask[0]) ^ r->src[0]) | ((p->src[1] & r->src_mask[1]) ^ r->src[1]) |
	       ((p->dst[0] & r->dst_mask[0]) ^ r->dst[0]) | ((p->dst[1] & r->dst_mask[1]) ^ r->dst[1]);
	miss |= family * (family ^ p->family);                     /* a family, and not the packet's */
	miss |= (flags & TG_RULE_F_PROTO) * (r->proto ^ p->proto); /* a protocol, and not the packet's */
	/* Below a range's low end or above its high end, the 64-bit difference wraps: bit 63 set. */
	outside = ((sport - r->sport_lo) | (r->sport_hi - sport) | (dport - r->dport_lo) | (r->dport_hi - dport)) >> 63;
	miss |= (flags & TG_RULE_F_PORTS) * (outside | (p->ports ^ 1)); /* ranges need ports */
	/* ICMP type/code, SYN: the compiler gives them only to rules of protocol icmp, icmpv6 or tcp,
	 * so the protocol check above says what the word holds. A mask that is not 0 is widened by
	 * its negation's upper half (-mask has bits 16-31 set exactly when mask is not 0), so a
	 * later fragment's word (TG_L4_NONE) misses. Masks rather than flags and products, and no
	 * second term for the fragment: the verifier walks this check for every candidate of every
	 * subtable, and each such term doubled the verified instructions of the programs that
	 * judge (testbed/bench/budget.py); this form adds little. */
	mask = r->l4_mask;
	miss |= (p->l4_word & (mask | (-mask & TG_L4_NONE))) ^ r->l4_want;
	miss |= (flags & TG_RULE_F_LIVE) ^ TG_RULE_F_LIVE;               /* a free slot never matches */
	return miss;
}

/* The first candidate of bucket `b` that matches and comes before the best match so far
 * (s->best, s->slot), which it then becomes. Candidates are in order, so the scan ends at the
 * first one that cannot win. */
static __always_inline void tg_scan_bucket(enum tg_table table, const struct tg_bucket *b,
					   struct tg_scratch *s)
{
	struct tg_rule *r;
	__u32 j, slot;

	for (j = 0; j < TG_BUCKET_MAX; j++) {
		tg_forget(); /* each candidate loads the probe afresh: no facts carried between them */
		if (j >= b->count)
			break;
		slot = b->slots[j];
		r = tg_rule_at(table, &slot);
		if (!r || r->order > s->best)
			break; /* orders are unique: only a rule before the best so far can win */
		if (!tg_rule_misses(r, &s->p)) {
			s->best = r->order;
			s->slot = slot;
			break;
		}
	}
}

/* The prefilter's block of an address (tidegate_abi.h), its bytes read one by one so that user
 * space computes the same on either byte order. */
static __always_inline __u32 tg_prefilter_block(const __u64 *addr, __u8 family)
{
	const __u8 *b = (const __u8 *)addr;
	__u32 top = (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];

	if (family == TG_FAMILY_V6)
		return TG_PREFILTER_V6 | (top * TG_PREFILTER_HASH) >> (32 - TG_PREFILTER_BLOCK_BITS);
	return top >> (32 - TG_PREFILTER_BLOCK_BITS);
}

/* The subtables (a bit per id) of `table`'s `bank` that can hold a rule for both of the probe's
 * addresses: the others are not probed. */
static __always_inline __u32 tg_prefilter(enum tg_table table, __u32 bank, const struct tg_probe *p)
{
	__u32 base = (table * TG_BANKS + bank) * TG_PREFILTER_FIELD;
	__u32 src = base + tg_prefilter_block(p->src, p->family);
	__u32 dst = base + tg_prefilter_block(p->dst, p->family);
	__u64 *in_src = match_prefilter.lookup(&src), *in_dst = match_prefilter.lookup(&dst);

	if (!in_src || !in_dst)
		return 0xffffffff; /* unreachable: both indexes lie inside the array */
	return (__u32)*in_src & (__u32)(*in_dst >> TG_PREFILTER_DST_SHIFT);
}

/*
 * The bucket of subtable `st` for the probe: IPv4 packets look in the *_buckets4 map (16-byte
 * keys), others in *_buckets (40 bytes): the kernel hashes and compares the key per probe. The key
 * is stored in whole words built in registers: the kernel reads it in 4- and 8-byte words right
 * after, and a load that several narrower stores make up waits for them to reach the cache (no
 * store-to-load forwarding), a few ns per probe. The verifier walks the bucket's scan once per
 * map (a value of one map is not a value of the other to it), which doubles the judge's verified
 * instructions (testbed/bench/budget.py); copying the bucket into the scratch would make it one
 * walk again, at the cost of the copy per probe.
 */
static __always_inline struct tg_bucket *tg_bucket_for(enum tg_table table, struct tg_scratch *s,
						       const struct tg_subtable *st, __u32 bank)
{
	const struct tg_probe *p = &s->p;
	__u64 sport = p->sport & st->sport_mask, dport = p->dport & st->dport_mask;
	__u64 family = p->family & st->family_mask, proto = p->proto & st->proto_mask;
	__u64 src = p->src[0] & st->src_mask[0], dst = p->dst[0] & st->dst_mask[0];
	__u64 tail, addr4; /* the keys' last TG_KEY_TAIL_LEN bytes; tg_bucket_key4's src and dst */
	struct tg_bucket *b;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	tail = sport | dport << 16 | family << 32 | proto << 40 | (__u64)bank << 48 | (__u64)st->id << 56;
	addr4 = (src & 0xffffffff) | dst << 32; /* bytes 0-3 of each: the low halves */
#else
	tail = sport << 48 | dport << 32 | family << 24 | proto << 16 | (__u64)bank << 8 | st->id;
	addr4 = (src & 0xffffffff00000000) | dst >> 32;
#endif
	if (p->family == TG_FAMILY_V4) {
		__builtin_memcpy(&s->k4.src, &addr4, sizeof(addr4));
		__builtin_memcpy(&s->k4.sport, &tail, TG_KEY_TAIL_LEN);
		b = tg_bucket4_of(table, &s->k4);
		/* Keeps clang from merging the two lookups into one call with the map chosen by a
		 * register: the verifier inlines a hash lookup only where its call sees one map. */
		asm volatile("" : "+r"(b));
		return b;
	}
	s->k.src[0] = src;
	s->k.src[1] = p->src[1] & st->src_mask[1];
	s->k.dst[0] = dst;
	s->k.dst[1] = p->dst[1] & st->dst_mask[1];
	__builtin_memcpy(&s->k.sport, &tail, TG_KEY_TAIL_LEN);
	return tg_bucket_of(table, &s->k);
}

/* Slot of the first rule (by order) of `table` matching the probe s->p, or TG_SLOT_NONE. With
 * `unmatchable` (a constant NULL where unused: it folds away), *unmatchable says whether the
 * prefilter alone answered: no rule's addresses meet the packet's, so nothing was searched. */
static __always_inline __u32 tg_match(enum tg_table table, struct tg_scratch *s, int *unmatchable)
{
	__u32 key = table, place = 0, bank, i, maybe;
	struct tg_subtables *set;
	struct tg_bucket *b;
	__u32 *searched;

	searched = match_bank.lookup(&key);
	if (searched)
		place = *searched & (TG_SUBTABLE_PLACES - 1); /* read once: the whole search uses it */
	bank = place & 1;
	maybe = tg_prefilter(table, bank, &s->p);
	if (unmatchable)
		*unmatchable = !maybe;
	if (!maybe)
		return TG_SLOT_NONE; /* no rule's addresses meet the packet's */
	set = tg_subtables_of(table, &place);
	if (!set)
		return TG_SLOT_NONE;
	s->best = TG_ORDER_NONE;
	s->slot = TG_SLOT_NONE;
	tg_forget();
	for (i = 0; i < TG_SUBTABLES_MAX; i++) {
		const struct tg_subtable *st = &set->tables[i];

		tg_forget();
		if (i >= set->count || st->best > s->best || !maybe)
			break; /* what is left cannot beat the match found, or the prefilter names none of it */
		/* Keyed and probed only when the prefilter names it (no rule of it meets the packet's
		 * addresses otherwise); skipped like a bucket that is not there. Each id is in a bank's
		 * subtables once: its bit, once probed, is taken out of `maybe`, so the walk ends with
		 * the last subtable the prefilter names (prefilter.py gives every id a bit). */
		b = NULL;
		if (st->id >= TG_SUBTABLES_MAX || maybe >> st->id & 1) {
			if (st->id < TG_SUBTABLES_MAX)
				maybe &= ~(1u << st->id);
			b = tg_bucket_for(table, s, st, bank);
		}
		if (b)
			tg_scan_bucket(table, b, s);
	}
	return s->slot;
}

/*
 * The ACL's flow cache (docs/classifier.md, "Flow cache"), in front of tg_match: the slot the
 * search found for the very same probe (struct tg_flow), used while the ACL's generation
 * (match_gen) is the one it was found in. Seqlock style: user space makes the generation odd
 * before the first write of a change and even again after the last. A reader takes the
 * generation g, and when g is even and the flow's entry was found in g, reads the rule the entry
 * names, then reads the generation again: unchanged, nothing of the change that follows g was
 * seen (x86 keeps loads in program order, and user space's stores reach memory in its program
 * order, the same assumption as tg_read_begin's: a reader that saw any write of a change sees
 * the odd or a newer generation on the re-read). Otherwise it searches, marked as a reader
 * (tg_read_begin: a hit reads no bucket, so it needs no mark), and inserts what it found tagged
 * with g when g was even: found in a generation that has ended, an entry is never used.
 */
#ifndef TG_NO_FLOW_CACHE
/* The generation of `table` (match_gen), loaded afresh from memory. */
static __always_inline __u64 tg_gen(enum tg_table table)
{
	__u32 key = table;
	__u64 *gen = match_gen.lookup(&key);

	tg_forget();
	return gen ? *(volatile __u64 *)gen : 1; /* unreachable NULL: "a change under way" */
}

/* The IPv4 key of the probe, stored as whole words built in registers (see tg_bucket_for). */
static __always_inline void tg_flow_key4_of(struct tg_flow_key4 *k, const struct tg_probe *p)
{
	__u64 src = p->src[0], dst = p->dst[0], addrs, tail[2];

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	addrs = (src & 0xffffffff) | dst << 32; /* bytes 0-3 of each: the low halves */
#else
	addrs = (src & 0xffffffff00000000) | dst >> 32;
#endif
	__builtin_memcpy(tail, &p->sport, TG_FLOW_TAIL_LEN);
	__builtin_memcpy(&k->src, &addrs, sizeof(addrs));
	__builtin_memcpy(&k->sport, tail, TG_FLOW_TAIL_LEN);
}

static __always_inline struct tg_flow *tg_flow_lookup(struct tg_scratch *s)
{
	struct tg_flow *f;

	if (s->p.family == TG_FAMILY_V4) {
		f = acl_flows4.lookup(&s->fk4);
		asm volatile("" : "+r"(f)); /* two lookups, each of one map (see tg_bucket_for) */
		return f;
	}
	return acl_flows6.lookup(&s->p);
}

/* After a search in generation s->gen (even) found `slot`: cached, for one search in
 * TG_FLOW_INSERT_ONE_IN (bpf_get_prandom_u32: a flood of new flows pays an insert per N packets). */
static __always_inline void tg_flow_insert(struct tg_scratch *s, __u32 slot)
{
	struct tg_flow f = {.gen = s->gen, .slot = slot, .reserved = 0};

#if TG_FLOW_INSERT_ONE_IN > 1
	if (bpf_get_prandom_u32() % TG_FLOW_INSERT_ONE_IN)
		return;
#endif
	if (s->p.family == TG_FAMILY_V4)
		acl_flows4.update(&s->fk4, &f);
	else
		acl_flows6.update(&s->p, &f);
}

/* The flow cache's answer for the probe s->p: its slot and, in *action, the rule's action, or
 * nonzero when the search must answer (a change under way or since the entry, no entry). */
static __always_inline int tg_flow_hit(struct tg_scratch *s, __u32 *slot, __u8 *action)
{
	struct tg_rule *rule;
	struct tg_flow *f;
	__u64 gen = tg_gen(TG_TABLE_ACL);

	s->gen = gen;
	if (gen & 1)
		return 1;
	if (s->p.family == TG_FAMILY_V4)
		tg_flow_key4_of(&s->fk4, &s->p);
	f = tg_flow_lookup(s);
	if (!f || f->gen != gen)
		return 1;
	*slot = f->slot;
	*action = TG_ACTION_ALLOW;
	if (*slot != TG_SLOT_NONE) {
		rule = acl_rules.lookup(slot);
		if (rule)
			*action = rule->action;
	}
	return tg_gen(TG_TABLE_ACL) != gen;
}
#endif /* TG_NO_FLOW_CACHE */

/* The ACL's first match for the probe s->p (its slot, TG_SLOT_NONE: none) and, in *action, that
 * rule's action (TG_ACTION_ALLOW when none), read while the rule is the one found: on a hit,
 * before the generation is read again; on a miss, inside the search's reader mark. (What the
 * caller reads of the slot after this, its counters and its policy event's rule id, is not
 * fenced: a slot is written again only by a change after the one that freed it, which a packet
 * does not outlast in practice; the verdict never depends on it.) */
static __always_inline __u32 tg_acl_slot(struct tg_scratch *s, __u8 *action)
{
	struct tg_reader *reader;
	struct tg_rule *rule;
	int unmatchable = 0;
	__u32 slot;

#ifndef TG_NO_FLOW_CACHE
	if (!tg_flow_hit(s, &slot, action)) {
		tg_count_event(TG_EVENT_FLOW_HIT);
		return slot;
	}
	tg_count_event(TG_EVENT_FLOW_MISS);
	tg_forget(); /* one state into the search, whichever way the cache missed */
#endif
	reader = tg_read_begin(TG_HOOK_XDP);
	slot = tg_match(TG_TABLE_ACL, s, &unmatchable);
	*action = TG_ACTION_ALLOW;
	if (slot != TG_SLOT_NONE) {
		rule = acl_rules.lookup(&slot);
		if (rule)
			*action = rule->action;
	}
	tg_read_end(reader);
#ifndef TG_NO_FLOW_CACHE
	/* Not what the prefilter alone answered: that costs two array reads already, and a flood
	 * from addresses no rule covers would only evict the flows worth caching. */
	if (!(s->gen & 1) && !unmatchable)
		tg_flow_insert(s, slot);
#endif
	return slot;
}

/* Classifier mark for the probe, counted per classifier; 0 when none matches. */
static __always_inline __u32 tg_classify(struct tg_scratch *s, __u64 bytes)
{
	__u32 slot = tg_match(TG_TABLE_CLS, s, NULL);
	struct tg_rule *rule;

	if (slot == TG_SLOT_NONE)
		return 0;
	rule = cls_rules.lookup(&slot);
	if (!rule)
		return 0;
	tg_count(cls_rule_stats.lookup(&slot), bytes);
	return rule->mark;
}

#endif /* TG_MATCH_H */
