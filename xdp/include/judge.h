/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the XDP program does with a packet once its tunnel (if any) is settled, reading it from
 * the per-CPU scratch (struct tg_scratch): pass a reply of a recorded flow (allow_established),
 * else judge it by the ACL and report the decision as a policy event when it is one; for a passed
 * packet classify it and hand the mark to TC in XDP metadata. And the one exit of every XDP
 * program (the ingress entry and the stages it tail-calls), which counts the packet's reason.
 */
#ifndef TG_JUDGE_H
#define TG_JUDGE_H

#include "conntrack.h"
#include "counters.h"
#include "events.h"
#include "maps.h"
#include "match.h"
#include "parse.h"

/* ACL verdict for the probe (from the flow cache or the search, match.h), counted per rule;
 * *hit gets the matching rule (NULL: none). */
static __always_inline __u32 tg_acl(struct tg_scratch *s, const struct tg_config *cfg, __u64 bytes,
				    const struct tg_rule **hit)
{
	__u8 action;
	__u32 slot = tg_acl_slot(s, &action);
	struct tg_rule *rule;

	*hit = NULL;
	if (slot == TG_SLOT_NONE) {
		return cfg->default_action == TG_ACTION_DENY ? TG_REASON_DROP_DEFAULT
							      : TG_REASON_PASS_DEFAULT;
	}
	rule = acl_rules.lookup(&slot);
	if (!rule)
		return TG_REASON_DROP_DEFAULT; /* unreachable: the search read this slot */
	tg_count(acl_rule_stats.lookup(&slot), bytes);
	*hit = rule;
	if (action == TG_ACTION_REJECT)
		return TG_REASON_DROP_REJECTED;
	return action == TG_ACTION_DENY ? TG_REASON_DROP_DENIED : TG_REASON_PASS_ALLOWED;
}

/* Puts the mark in front of the packet for TC. Failure is counted; TC then classifies itself. */
static __always_inline void tg_write_meta(struct xdp_md *ctx, __u32 mark, __u32 vni, __u32 flags)
{
	struct tg_meta *meta;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta))) {
		tg_count_event(TG_EVENT_META_FAILED);
		return;
	}
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return;
	meta->magic = TG_META_MAGIC;
	meta->mark = mark;
	meta->vni = vni;
	meta->flags = flags;
}

/* The reason of the packet in the scratch, whose tunnel (if any) is settled: a reply of a flow
 * that left through this interface passes before the ACL (allow_established); else the ACL's
 * verdict (and its policy event). For what passes, the classifiers' mark in the metadata. */
static __always_inline __u32 tg_judge(struct xdp_md *ctx, const struct tg_config *cfg, struct tg_scratch *s)
{
	__u64 bytes = ctx->data_end - ctx->data;
	const struct tg_rule *rule;
	__u32 reason;

	if ((cfg->flags & TG_CFG_F_FRAGMENTS_FIRST) && !s->t.l4_present) {
		/* fragments: first. Its datagram is judged by its first fragment: the stack reassembles
		 * this one only with a first fragment that passed (docs/dataplane.md, "Fragments"). */
		reason = TG_REASON_PASS_LATER_FRAGMENT;
	} else if (tg_ct_established(cfg, &s->t)) {
		reason = TG_REASON_PASS_ESTABLISHED;
	} else {
		tg_forget(); /* stage barrier: the ACL is verified once, whatever the flow lookup found */
		reason = tg_acl(s, cfg, bytes, &rule);
		tg_policy_event(ctx, cfg, &s->p, rule, reason, s->vni, s->meta_flags & TG_META_F_DECAPPED);
		if (TG_REASON_IS_DROP(reason))
			return reason;
		if (s->not_ip)
			reason = TG_REASON_PASS_TUNNEL_NOT_IP; /* passed whole: counted apart from decapped IP */
		else if (s->fragment)
			reason = TG_REASON_PASS_TUNNEL_FRAGMENT; /* to the stack, which reassembles it */
	}
#ifndef TG_NO_XDP_META
	/* Built without where the kernel refuses bpf_xdp_adjust_meta to XDP programs at load time
	 * (dataplane/kernel/features.py probes it): XDP could not hand the mark over, so it leaves
	 * classifying to TC, which then counts each packet once. */
	struct tg_reader *reader;
	__u32 mark, flags;

	s->reason = reason;
	tg_forget(); /* stage barrier: one verification of the classifiers, whatever the verdict */
	reader = tg_read_begin(TG_HOOK_XDP);
	mark = tg_classify(s, bytes);
	tg_read_end(reader);
	reason = s->reason;
	flags = s->meta_flags;
	if (mark) {
		flags |= TG_META_F_CLASSIFIED;
		tg_count_event(TG_EVENT_CLASSIFIED);
	}
	tg_write_meta(ctx, mark, s->vni, flags);
#endif
	return reason;
}

/* The one exit of every XDP program: the packet is counted under its reason, then dropped or
 * passed as the reason says (a passed one through next_program, when set). (TG_BENCH builds,
 * testbed/bench/programs.py, put the packet back here for the next BPF_PROG_TEST_RUN repetition
 * when their harness entry asks for it.) */
static __always_inline int tg_xdp_exit_as(struct xdp_md *ctx, __u32 reason, int action)
{
	tg_count_reason(reason, ctx->data_end - ctx->data);
#ifdef TG_BENCH
	tg_bench_exit(ctx);
#endif
	/* A passed packet goes on to the program behind us, if one is set (Katran's root-program
	 * pattern): its verdict is the packet's. An empty slot falls through here. */
	if (action == XDP_PASS)
		next_program.call(ctx, 0);
	return action;
}

static __always_inline int tg_xdp_exit(struct xdp_md *ctx, __u32 reason)
{
	return tg_xdp_exit_as(ctx, reason, TG_REASON_IS_DROP(reason) ? XDP_DROP : XDP_PASS);
}

#endif /* TG_JUDGE_H */
