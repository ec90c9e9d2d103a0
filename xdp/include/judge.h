/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What every XDP program does with a parsed packet once its tunnel (if any) is settled: judge it
 * by the ACL, report the decision as a policy event when it is one, and for a passed packet
 * classify it and hand the mark to TC in XDP metadata. Shared by the ingress entry and the
 * stages it tail-calls, each of which counts the reason returned at its one exit.
 */
#ifndef TG_JUDGE_H
#define TG_JUDGE_H

#include "conntrack.h"
#include "counters.h"
#include "events.h"
#include "maps.h"
#include "match.h"
#include "parse.h"
#include "tunnel.h"

/* ACL verdict for a parsed tuple, counted per rule; *hit gets the matching rule (zero: none). */
static __always_inline __u32 tg_acl(const struct tg_tuple *t, const struct tg_config *cfg, __u64 bytes,
				    struct tg_acl_rule *hit)
{
	__u32 slot = tg_match(TG_TABLE_ACL, t);
	struct tg_acl_rule *rule;

	__builtin_memset(hit, 0, sizeof(*hit));
	if (slot == TG_SLOT_NONE) {
		return cfg->default_action == TG_ACTION_DENY ? TG_REASON_DROP_DEFAULT
							      : TG_REASON_PASS_DEFAULT;
	}
	rule = acl_rules.lookup(&slot);
	if (!rule)
		return TG_REASON_DROP_DEFAULT; /* a slot without a rule is a torn write: fail closed */
	tg_count(acl_rule_stats.lookup(&slot), bytes);
	*hit = *rule;
	if (rule->action == TG_ACTION_REJECT)
		return TG_REASON_DROP_REJECTED;
	return rule->action == TG_ACTION_DENY ? TG_REASON_DROP_DENIED : TG_REASON_PASS_ALLOWED;
}

/* Puts the mark in front of the packet for TC. Failure is counted; TC then classifies itself.
 * Built with TG_NO_XDP_META where the kernel refuses the helper to XDP programs at load time
 * (dataplane/kernel/features.py probes it): TC then always classifies by itself. */
static __always_inline void tg_write_meta(struct xdp_md *ctx, __u32 mark, __u32 vni, __u32 flags)
{
#ifdef TG_NO_XDP_META
	return;
#else
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
#endif
}

/* Classifies a passed packet and puts the mark (0: none) in front of it for TC. Without
 * metadata the mark could not reach TC, which classifies (and counts) every packet itself. */
static __always_inline void tg_mark(struct xdp_md *ctx, const struct tg_tuple *t, __u32 vni, __u32 meta_flags)
{
#ifndef TG_NO_XDP_META
	__u32 mark = tg_classify(t, ctx->data_end - ctx->data);

	if (mark) {
		meta_flags |= TG_META_F_CLASSIFIED;
		tg_count_event(TG_EVENT_CLASSIFIED);
	}
	tg_write_meta(ctx, mark, vni, meta_flags);
#endif
}

/* The reason for the packet `t` (the inner one when TG_META_F_DECAPPED is in meta_flags; ti says
 * what the tunnel stage found, all zero for a packet that met none): a reply of a recorded flow
 * (allow_established), else the ACL's verdict. */
static __always_inline __u32 tg_judge(struct xdp_md *ctx, const struct tg_config *cfg, const struct tg_tuple *t,
				      const struct tg_tunnel_info *ti, __u32 meta_flags)
{
	struct tg_acl_rule rule;
	__u32 reason;

	/* A reply of a flow that left through this interface passes before the ACL. */
	if (tg_ct_established(cfg, t)) {
		tg_mark(ctx, t, ti->vni, meta_flags);
		return TG_REASON_PASS_ESTABLISHED;
	}
	reason = tg_acl(t, cfg, ctx->data_end - ctx->data, &rule);
	tg_policy_event(ctx, cfg, t, &rule, reason, ti->vni, meta_flags & TG_META_F_DECAPPED);
	if (TG_REASON_IS_DROP(reason))
		return reason;
	if (ti->not_ip)
		reason = TG_REASON_PASS_TUNNEL_NOT_IP; /* passed whole: counted apart from decapped IP */
	else if (ti->fragment)
		reason = TG_REASON_PASS_TUNNEL_FRAGMENT; /* to the stack, which reassembles it */
	tg_mark(ctx, t, ti->vni, meta_flags);
	return reason;
}

/* The one exit of every XDP program: the packet is counted under its reason, then dropped or
 * passed as the reason says (a passed one through next_program, when set). (TG_BENCH builds, testbed/bench/programs.py, put the packet back
 * here for the next BPF_PROG_TEST_RUN repetition when their harness entry asks for it.) */
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
