/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Policy events (struct tg_event_record) to user space through the policy_events ring buffer:
 * one per packet denied by a rule or by the default action, and one per packet allowed by a rule
 * with TG_RULE_F_LOG. A per-CPU token bucket (tg_config.event_rate, event_burst) keeps a flood
 * from drowning the reader, and every event is counted exactly once: sent, rate limited, or
 * refused because the ring buffer is full. Nothing is lost silently.
 */
#ifndef TG_EVENTS_H
#define TG_EVENTS_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

#define TG_NSEC_PER_SEC 1000000000ULL

static __always_inline int tg_event_wanted(__u32 reason, const struct tg_rule *rule)
{
	return reason == TG_REASON_DROP_DENIED || reason == TG_REASON_DROP_DEFAULT ||
	       reason == TG_REASON_DROP_REJECTED ||
	       (reason == TG_REASON_PASS_ALLOWED && rule && (rule->flags & TG_RULE_F_LOG));
}

/* The clock of the token buckets: the kernel's coarse monotonic clock, advanced once per tick. A
 * bucket is asked on every packet of a flood (most of them refused), and bpf_ktime_get_ns() reads
 * the clock source each time (several times what the rest of the bucket costs on a VM's
 * kvm-clock), this a variable. Credit then grows a tick at a time: a bucket refills at most
 * `burst` units per tick, so a rate above burst * HZ per second is not reached (docs/dataplane.md). */
static __always_inline __u64 tg_bucket_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Takes one unit's credit from a per-CPU token bucket (rate per second, burst units); 0 when there
 * is not enough. Per-CPU state is only touched by programs on that CPU, which do not preempt each
 * other: no atomics needed. No overflow: cost <= 1e9, so cap < 2^32 * 1e9 < 2^63, and credit adds
 * at most the uptime. */
static __always_inline int tg_bucket_take(struct tg_event_bucket *b, __u32 rate, __u32 burst)
{
	__u64 cost, cap, credit, now, tick;

	if (!b || !rate || !burst)
		return 0;
	/* Refused already in this tick: the coarse clock has not moved since (the kernel advances
	 * it right after jiffies), so neither has the credit. jiffies is a load, the clock a call;
	 * a flood asks once per tick. (A reset bucket, all zero, was never refused.) */
	tick = bpf_jiffies64();
	if (b->refused_tick == tick)
		return 0;
	now = tg_bucket_now();
	cost = TG_NSEC_PER_SEC / rate;
	cap = cost * burst;
	credit = cap; /* a fresh or reset bucket starts full */
	if (b->last_ns) {
		credit = b->credit_ns + (now > b->last_ns ? now - b->last_ns : 0);
		if (credit > cap)
			credit = cap;
	}
	b->last_ns = now;
	if (credit < cost) {
		b->credit_ns = credit;
		b->refused_tick = tick;
		return 0;
	}
	b->credit_ns = credit - cost;
	return 1;
}

/* Takes one policy event's credit from this CPU's bucket (event_rate, event_burst). */
static __always_inline int tg_event_admit(const struct tg_config *cfg)
{
	__u32 zero = 0;

	return tg_bucket_take(event_bucket.lookup(&zero), cfg->event_rate, cfg->event_burst);
}

/* Reports the ACL's decision about the packet `p` when it is a policy event. `rule` is the rule
 * that matched (NULL when none did); vni is meaningful when `decapped`. */
static __always_inline void tg_policy_event(struct xdp_md *ctx, const struct tg_config *cfg,
					    const struct tg_probe *p, const struct tg_rule *rule,
					    __u32 reason, __u32 vni, int decapped)
{
	struct tg_event_record rec;

	if (!tg_event_wanted(reason, rule))
		return;
	if (!tg_event_admit(cfg)) {
		tg_count_event(TG_EVENT_POLICY_RATE_LIMITED);
		return;
	}
	__builtin_memset(&rec, 0, sizeof(rec)); /* padding too: the whole record reaches user space */
	rec.ts_ns = bpf_ktime_get_ns(); /* the precise clock, for the events sent only */
	rec.ifindex = ctx->ingress_ifindex;
	rec.rule_id = rule ? rule->rule_id : 0;
	rec.length = ctx->data_end - ctx->data;
	if (decapped) {
		rec.vni = vni;
		rec.flags = TG_EVENT_RECORD_F_DECAPPED;
	}
	__builtin_memcpy(rec.src, p->src, TG_ADDR_LEN);
	__builtin_memcpy(rec.dst, p->dst, TG_ADDR_LEN);
	rec.sport = p->sport;
	rec.dport = p->dport;
	rec.reason = reason;
	rec.action = reason == TG_REASON_DROP_REJECTED ? TG_ACTION_REJECT
		     : TG_REASON_IS_DROP(reason) ? TG_ACTION_DENY : TG_ACTION_ALLOW;
	rec.family = p->family;
	rec.proto = p->proto;
	/* Fails only when the ring has no room for the record: the reader is behind. */
	if (policy_events.ringbuf_output(&rec, sizeof(rec), 0))
		tg_count_event(TG_EVENT_POLICY_RINGBUF_FULL);
	else
		tg_count_event(TG_EVENT_POLICY_SENT);
}

#endif /* TG_EVENTS_H */
