/* SPDX-License-Identifier: Apache-2.0 */
/*
 * allow_established (TG_CFG_F_ESTABLISHED): TC egress records each flow leaving the interface in
 * the conntrack LRU hash, keyed by the tuple its replies will carry; XDP passes a packet whose
 * own tuple is such a key before the ACL judges it. Tracked: TCP, UDP, and ICMP/ICMPv6 echo (the
 * identifier standing in for the ports). Every packet of a flow, either way, refreshes it; a flow
 * idle past its protocol's timeout is forgotten, and TCP's timeout shortens to the closing one
 * once a FIN or RST went either way. This is not a stateful firewall: no sequence numbers are
 * checked, and nothing is RELATED (no ICMP errors about a flow, no ALG helpers).
 *
 * The table is an LRU hash: full, it replaces its least recently used flow, whose replies the ACL
 * then judges. conntrack_live holds how many entries the programs put there and did not take out,
 * so that each such replacement is counted (TG_EVENT_CT_EVICTED).
 */
#ifndef TG_CONNTRACK_H
#define TG_CONNTRACK_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

#define TG_NSEC_PER_SEC_CT 1000000000ULL

/* The flows' clock: the kernel's coarse monotonic clock (advanced once per tick). Timeouts are
 * seconds and a flow is refreshed at most once a second, so a tick's resolution is plenty, and
 * every packet of a recorded flow, either way, reads it: bpf_ktime_get_ns() would read the clock
 * source each time. */
static __always_inline __u64 tg_ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* The echo request/reply type of a family's ICMP. */
static __always_inline int tg_icmp_echo(const struct tg_tuple *t, int request)
{
	if (t->proto == IPPROTO_ICMP)
		return t->icmp_type == (request ? TG_ICMP_ECHO_REQUEST : TG_ICMP_ECHO_REPLY);
	if (t->proto == IPPROTO_ICMPV6)
		return t->icmp_type == (request ? TG_ICMPV6_ECHO_REQUEST : TG_ICMPV6_ECHO_REPLY);
	return 0;
}

/* The key for tuple t, read as-is (reply: a packet arriving at XDP) or swapped (a packet leaving
 * at TC egress, whose replies will carry the key). 0 when t is not a packet of a tracked flow (k
 * is then left as it was). The key is stored in whole words, built in registers: the kernel hashes
 * and compares it in words right after, and a word made of narrower stores is not forwarded. */
static __always_inline int tg_ct_key_of(const struct tg_tuple *t, int leaving, struct tg_ct_key *k)
{
	const __u64 *src = leaving ? t->dst : t->src, *dst = leaving ? t->src : t->dst;
	__u64 sport = 0, dport, tail; /* network byte order, as the tuple holds them */

	if (!t->l4_present)
		return 0; /* a non-first fragment: no ports to match */
	if (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP) {
		sport = leaving ? t->dport : t->sport;
		dport = leaving ? t->sport : t->dport;
	} else if (tg_icmp_echo(t, leaving)) {
		dport = t->icmp_id;
	} else {
		return 0;
	}
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	tail = sport | dport << 16 | (__u64)t->proto << 32 | (__u64)t->family << 40;
#else
	tail = sport << 48 | dport << 32 | (__u64)t->proto << 24 | (__u64)t->family << 16;
#endif
	k->src[0] = src[0];
	k->src[1] = src[1];
	k->dst[0] = dst[0];
	k->dst[1] = dst[1];
	__builtin_memcpy(&k->sport, &tail, sizeof(tail)); /* sport, dport, proto, family, reserved */
	return 1;
}

static __always_inline __u64 tg_ct_timeout_ns(const struct tg_config *cfg, __u8 proto, __u8 state)
{
	__u32 s = cfg->ct_icmp_s;

	if (proto == IPPROTO_TCP)
		s = state == TG_CT_CLOSING ? cfg->ct_tcp_closing_s : cfg->ct_tcp_s;
	else if (proto == IPPROTO_UDP)
		s = cfg->ct_udp_s;
	return (__u64)s * TG_NSEC_PER_SEC_CT;
}

static __always_inline void tg_ct_live_add(__s64 n)
{
	__u32 zero = 0;
	__u64 *live = conntrack_live.lookup(&zero);

	if (live)
		__sync_fetch_and_add(live, n);
}

/* A packet of flow `e` seen now (either direction): refreshed at most every TG_CT_REFRESH_NS,
 * closing once a FIN or RST passed. */
static __always_inline void tg_ct_touch(struct tg_ct_entry *e, const struct tg_tuple *t, __u64 now)
{
	if (t->proto == IPPROTO_TCP && (t->tcp_flags & (TG_TCP_FIN | TG_TCP_RST)) && e->state != TG_CT_CLOSING)
		e->state = TG_CT_CLOSING;
	if (now - e->seen_ns > TG_CT_REFRESH_NS)
		e->seen_ns = now;
}

/* XDP: whether `t` is a reply of a recorded flow still alive. An expired one is taken out. */
static __always_inline int tg_ct_established(const struct tg_config *cfg, const struct tg_tuple *t)
{
	struct tg_ct_key k;
	struct tg_ct_entry *e;
	__u64 now;

	if (!(cfg->flags & TG_CFG_F_ESTABLISHED) || !tg_ct_key_of(t, 0, &k))
		return 0;
	e = conntrack.lookup(&k);
	if (!e)
		return 0;
	now = tg_ct_now();
	if (now > e->seen_ns && now - e->seen_ns > tg_ct_timeout_ns(cfg, k.proto, e->state)) {
		if (!conntrack.delete(&k))
			tg_ct_live_add(-1);
		tg_count_event(TG_EVENT_CT_EXPIRED);
		return 0;
	}
	tg_ct_touch(e, t, now);
	return 1;
}

/* TC egress: records (or refreshes) the flow of the leaving packet `t`. */
static __always_inline void tg_ct_record(const struct tg_config *cfg, const struct tg_tuple *t)
{
	struct tg_ct_entry fresh = {}, *e;
	struct tg_ct_key k;
	__u64 now;

	if (!(cfg->flags & TG_CFG_F_ESTABLISHED) || !tg_ct_key_of(t, 1, &k))
		return;
	now = tg_ct_now();
	e = conntrack.lookup(&k);
	if (e && !(now > e->seen_ns && now - e->seen_ns > tg_ct_timeout_ns(cfg, k.proto, e->state))) {
		tg_ct_touch(e, t, now);
		return;
	}
	/* A RST or FIN opens nothing (its flow is unknown here, or over). */
	if (t->proto == IPPROTO_TCP && (t->tcp_flags & (TG_TCP_FIN | TG_TCP_RST)))
		return;
	fresh.seen_ns = now;
	if (e) {
		*e = fresh; /* expired: it starts over, in the same entry */
		tg_count_event(TG_EVENT_CT_NEW);
		return;
	}
	/* Another CPU may have recorded it meanwhile: then this one adds nothing. */
	if (conntrack.insert(&k, &fresh))
		return;
	tg_count_event(TG_EVENT_CT_NEW);
	{
		__u32 zero = 0;
		__u64 *live = conntrack_live.lookup(&zero);

		if (live && *live >= TG_CT_MAX)
			tg_count_event(TG_EVENT_CT_EVICTED); /* one in, one out: the count stays */
		else
			tg_ct_live_add(1);
	}
}

#endif /* TG_CONNTRACK_H */
