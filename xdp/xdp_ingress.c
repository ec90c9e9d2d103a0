/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP ingress: parse the packet and decapsulate VxLAN/Geneve (the stages parse, tunnel, decap,
 * handing over through the per-CPU scratch, struct tg_scratch, so the verifier checks each once),
 * then hand the packet to the judge stage (xdp_judge.c) by tail call: replies of recorded flows,
 * the ACL, the classifiers' mark for TC, reject answers. The judge is a program of its own so the
 * classifier's search is verified once, from one state, whatever way the parse went. One exit:
 * every packet is counted under exactly one enum tg_reason (tg_xdp_exit), here or by a stage.
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "judge.h"
#include "maps.h"
#include "match.h"
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

/* Strips the outer headers (s->outer_len, s->payload_end): the inner frame, parsed whole by
 * tg_tunnel_finish, is what remains. Returns a reason on failure, 0 on success. */
static __always_inline __u32 tg_decap(struct xdp_md *ctx, const struct tg_config *cfg, struct tg_scratch *s)
{
	__u64 outer_bytes = ctx->data_end - ctx->data;
	__u32 payload_end = s->payload_end, counter = s->counter;

	if (bpf_xdp_adjust_head(ctx, s->outer_len))
		return TG_REASON_DROP_DECAP_FAILED;
	/* Bytes past the outer UDP payload (its length says so) are not part of the inner frame. */
	if (outer_bytes > payload_end && bpf_xdp_adjust_tail(ctx, -(int)(outer_bytes - payload_end)))
		return TG_REASON_DROP_DECAP_FAILED;
	tg_count(tunnel_counters.lookup(&counter), outer_bytes);
	tg_count_event(s->tunnel_type == TG_TUNNEL_VXLAN ? TG_EVENT_DECAP_VXLAN : TG_EVENT_DECAP_GENEVE);
	tg_rewrite_inner_dmac(ctx, cfg);
	s->meta_flags |= TG_META_F_DECAPPED;
	return 0;
}

/* The tunnel stage: the outer UDP header is found again from s->l4_off. Returns 0 to go on and
 * judge the packet in the scratch (decapped or as it is), else the reason to count it under. */
static __always_inline __u32 tg_tunnel(struct xdp_md *ctx, const struct tg_config *cfg, struct tg_scratch *s)
{
	struct tg_tunnel_info ti = {};
	struct tg_cursor c;
	int rc;

	if (!tg_tunnel_port(&s->t, cfg))
		return 0;
	if (!tg_cursor_at(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data,
			  s->l4_off, s->l3_end))
		return TG_REASON_DROP_TRUNCATED; /* unreachable: the parse stage found the header there */
	rc = tg_tunnel_inspect(&c, &s->t, cfg, &ti);
	if (rc == TG_TUN_DROP)
		return ti.reason;
	s->vni = ti.vni;
	s->counter = ti.counter;
	if (rc == TG_TUN_LEAVE) {
		s->not_ip = ti.not_ip;
		s->fragment = ti.fragment;
		if (!ti.fragment)
			tg_count_event(ti.event); /* left whole: judged as itself, what reaches the stack */
		return 0;
	}
	s->outer_len = ti.outer_len;
	s->payload_end = ti.payload_end;
	s->tunnel_type = ti.type; /* s->t is the inner packet now: judged from here on */
	tg_forget(); /* stage barrier: one verification of the decap (struct tg_scratch) */
	return tg_decap(ctx, cfg, s);
}

int tg_xdp_ingress(struct xdp_md *ctx)
{
	struct tg_scratch *s;
	struct tg_cursor c;
	struct ethhdr *eth;
	struct tg_config *cfg;
	__u32 zero = 0, reason;
	int proto, rc;

	/* Without frags support (not requested), data_end is the end of the whole frame. */
	tg_cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data);
	cfg = config.lookup(&zero);
	s = tg_scratch_of(TG_HOOK_XDP);
	if (!cfg || !s) {
		reason = TG_REASON_PASS_NOT_IP; /* unreachable: an array always has its entries */
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
	/* Parsed straight into the scratch: the tunnel stage and the judge read it there. */
	__builtin_memset(&s->t, 0, sizeof(s->t));
	rc = tg_parse_ip(&c, proto, &s->t, TG_ENDS_AT_END);
	if (rc < 0) {
		reason = tg_parse_reason(rc);
		goto out;
	}

	/* Stage barrier (struct tg_scratch): from here on every stage reads the packet from the
	 * scratch, so the verifier checks each once, whatever way the parse went. */
	s->l3_off = c.l3_off;
	s->l4_off = c.l4_off;
	s->l3_end = c.l3_end;
	s->vni = 0;
	s->meta_flags = 0;
	s->not_ip = 0;
	s->fragment = 0;
	tg_forget();
	reason = tg_tunnel(ctx, cfg, s);
	if (reason)
		goto out;
	/* Judged as itself when not decapped: that is what reaches the stack. The probe is built
	 * once, from whichever tuple the tunnel stage left in the scratch. */
	tg_probe_init(&s->p, &s->t);
	xdp_stages.call(ctx, TG_STAGE_JUDGE);
	reason = TG_REASON_DROP_DEFAULT; /* no judge stage loaded: fail closed */

out:
	return tg_xdp_exit(ctx, reason);
}
