/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The tunnel stage, tail-called by the ingress entry for UDP to a tunnel port (the outer tuple
 * and where its UDP payload starts in stage_scratch): VxLAN/Geneve recognition (tunnel.h), the
 * decapsulation, then the judgement of the inner packet, or of the outer one when nothing is
 * stripped (judge.h). Counts the packet's one reason at its one exit.
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "judge.h"
#include "maps.h"
#include "parse.h"
#include "tunnel.h"

#define TG_ETH_MULTICAST_BIT 0x01 /* I/G bit of the first destination MAC octet */

/* The tunnel terminates here, so the inner frame is addressed to us: without this, a frame for
 * the peer's idea of the gateway MAC would be PACKET_OTHERHOST and dropped by the stack. */
static __always_inline void tg_rewrite_inner_dmac(struct xdp_md *ctx, const struct tg_config *cfg)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return; /* unreachable: tg_tunnel_finish parsed it */
	if (!(cfg->flags & TG_CFG_F_REWRITE_INNER_DMAC) || (eth->h_dest[0] & TG_ETH_MULTICAST_BIT))
		return;
	__builtin_memcpy(eth->h_dest, cfg->if_mac, ETH_ALEN);
	tg_count_event(TG_EVENT_INNER_DMAC_REWRITTEN);
}

/* Strips the outer headers (the inner frame was parsed whole by tg_tunnel_finish). Returns a
 * reason on failure, 0 on success. */
static __always_inline __u32 tg_decap(struct xdp_md *ctx, const struct tg_config *cfg,
				      const struct tg_tunnel_info *ti)
{
	__u64 outer_bytes = ctx->data_end - ctx->data;
	__u32 vni = ti->vni;

	if (bpf_xdp_adjust_head(ctx, ti->outer_len))
		return TG_REASON_DROP_DECAP_FAILED;
	/* Bytes past the outer UDP payload (its length says so) are not part of the inner frame. */
	if (outer_bytes > ti->payload_end && bpf_xdp_adjust_tail(ctx, -(int)(outer_bytes - ti->payload_end)))
		return TG_REASON_DROP_DECAP_FAILED;
	tg_count(tunnel_stats.lookup(&vni), outer_bytes);
	tg_count_event(ti->type == TG_TUNNEL_VXLAN ? TG_EVENT_DECAP_VXLAN : TG_EVENT_DECAP_GENEVE);
	tg_rewrite_inner_dmac(ctx, cfg);
	return 0;
}

int tg_xdp_tunnel(struct xdp_md *ctx)
{
	struct tg_tunnel_info ti = {};
	struct tg_tuple outer, inner = {};
	struct tg_stage_scratch *s;
	struct tg_config *cfg;
	struct tg_cursor c;
	__u32 zero = 0, reason;
	int rc;

	cfg = config.lookup(&zero);
	s = stage_scratch.lookup(&zero);
	if (!cfg || !s || s->l4_off > TG_PKT_OFF_MAX) {
		reason = TG_REASON_DROP_DECAP_FAILED; /* unreachable: the entry filled the scratch */
		goto out;
	}
	outer = s->t;
	tg_cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data);
	c.l3_end = s->l3_end;
	rc = tg_tunnel_inspect(&c, c.frame, c.frame + s->l4_off, &outer, cfg, &ti, &inner);
	if (rc == TG_TUN_DROP) {
		reason = ti.reason;
		goto out;
	}
	if (rc == TG_TUN_DECAP) {
		reason = tg_decap(ctx, cfg, &ti);
		if (!reason)
			reason = tg_judge(ctx, cfg, &inner, &ti, TG_META_F_DECAPPED);
		goto out;
	}
	if (!ti.fragment)
		tg_count_event(ti.event); /* left whole: judged as itself, what reaches the stack */
	reason = tg_judge(ctx, cfg, &outer, &ti, 0);
out:
	/* Not answered here: a decapped packet's answer would need the tunnel around it, and a
	 * tunnel port's plain UDP is rare enough to be dropped like it. */
	if (reason == TG_REASON_DROP_REJECTED)
		tg_count_event(TG_EVENT_REJECT_UNANSWERED);
	return tg_xdp_exit(ctx, reason);
}
