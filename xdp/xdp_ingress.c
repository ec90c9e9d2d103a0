/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP ingress: parse the packet, judge it by the ACL, classify it for service chaining and hand
 * the mark to TC in XDP metadata (judge.h). UDP to a tunnel port goes to the tunnel stage
 * (xdp_tunnel.c) by tail call, which decapsulates and judges the inner packet. One exit: every
 * packet is counted under exactly one enum tg_reason, here or by the stage.
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "judge.h"
#include "maps.h"
#include "parse.h"
#include "tunnel.h"

/* Hands the packet to a stage (enum tg_stage) with its tuple and header offsets; returns only
 * when the tail call failed. */
static __always_inline void tg_to_stage(struct xdp_md *ctx, const struct tg_cursor *c, const struct tg_tuple *t,
					__u32 stage)
{
	__u32 zero = 0;
	struct tg_stage_scratch *s = stage_scratch.lookup(&zero);

	if (!s)
		return;
	s->t = *t;
	s->l3_off = c->l3_off;
	s->l4_off = c->l4_off;
	s->l3_end = c->l3_end;
	if (stage == TG_STAGE_TUNNEL)
		xdp_stages.call(ctx, TG_STAGE_TUNNEL);
	else
		xdp_stages.call(ctx, TG_STAGE_REJECT);
}

int tg_xdp_ingress(struct xdp_md *ctx)
{
	struct tg_tunnel_info none = {};
	struct tg_tuple t = {};
	struct tg_cursor c;
	struct ethhdr *eth;
	struct tg_config *cfg;
	__u32 zero = 0, reason;
	int proto, rc;

	/* Without frags support (not requested), data_end is the end of the whole frame. */
	tg_cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data);
	cfg = config.lookup(&zero);
	if (!cfg) {
		reason = TG_REASON_PASS_NOT_IP; /* unreachable: an array always has entry 0 */
		goto out;
	}
	proto = tg_parse_l2(&c, &eth, TG_VLAN_MAX);
	if (proto < 0) {
		reason = tg_parse_reason(proto);
		goto out;
	}
	if (!tg_is_ip(proto)) {
		reason = TG_REASON_PASS_NOT_IP;
		goto out;
	}
	rc = tg_parse_ip(&c, proto, &t);
	if (rc < 0) {
		reason = tg_parse_reason(rc);
		goto out;
	}
	if (tg_tunnel_port(cfg, &t)) {
		tg_to_stage(ctx, &c, &t, TG_STAGE_TUNNEL);
		reason = TG_REASON_DROP_DECAP_FAILED; /* no tunnel stage loaded: fail closed */
		goto out;
	}
	reason = tg_judge(ctx, cfg, &t, &none, 0);
	if (reason == TG_REASON_DROP_REJECTED) {
		tg_to_stage(ctx, &c, &t, TG_STAGE_REJECT); /* answers, and counts */
		tg_count_event(TG_EVENT_REJECT_UNANSWERED); /* no reject stage loaded */
	}
out:
	return tg_xdp_exit(ctx, reason);
}
