/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP ingress: decapsulate VxLAN/Geneve, judge the (inner) packet by the ACL, classify it for
 * service chaining and hand the mark to TC in XDP metadata. One exit: every packet is counted
 * under exactly one enum tg_reason at `out`. ACL decisions worth an operator's attention are
 * reported as policy events (events.h).
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "events.h"
#include "maps.h"
#include "match.h"
#include "parse.h"
#include "tunnel.h"

#define TG_ETH_MULTICAST_BIT 0x01 /* I/G bit of the first destination MAC octet */

/* The tunnel terminates here, so the inner frame is addressed to us: without this, a frame for
 * the peer's idea of the gateway MAC would be PACKET_OTHERHOST and dropped by the stack. */
static __always_inline void tg_rewrite_inner_dmac(struct ethhdr *eth, const struct tg_config *cfg)
{
	if (!(cfg->flags & TG_CFG_F_REWRITE_INNER_DMAC) || (eth->h_dest[0] & TG_ETH_MULTICAST_BIT))
		return;
	__builtin_memcpy(eth->h_dest, cfg->if_mac, ETH_ALEN);
	tg_count_event(TG_EVENT_INNER_DMAC_REWRITTEN);
}

static __always_inline __u32 tg_parse_reason(int rc)
{
	return rc == TG_PARSE_MALFORMED ? TG_REASON_DROP_MALFORMED : TG_REASON_DROP_TRUNCATED;
}

/* Strips the outer headers and parses the inner frame (Ethernet, VLAN tags, IP) into *t.
 * Returns a reason on failure, 0 on success. */
static __always_inline __u32 tg_decap(struct xdp_md *ctx, const struct tg_config *cfg,
				      struct tg_tunnel_info *ti, struct tg_tuple *t)
{
	struct tg_cursor c;
	struct ethhdr *eth;
	__u64 outer_bytes = ctx->data_end - ctx->data;
	int proto, rc;

	if (bpf_xdp_adjust_head(ctx, ti->outer_len))
		return TG_REASON_DROP_DECAP_FAILED;
	/* Bytes past the outer UDP payload (its length says so) are not part of the inner frame. */
	if (outer_bytes > ti->payload_end && bpf_xdp_adjust_tail(ctx, -(int)(outer_bytes - ti->payload_end)))
		return TG_REASON_DROP_DECAP_FAILED;
	tg_count(tunnel_stats.lookup(&ti->vni), outer_bytes);
	tg_count_event(ti->type == TG_TUNNEL_VXLAN ? TG_EVENT_DECAP_VXLAN : TG_EVENT_DECAP_GENEVE);

	/* adjust_head invalidated every packet pointer: start over on the inner frame. */
	tg_cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data);
	proto = tg_parse_l2(&c, &eth, TG_VLAN_MAX);
	if (proto < 0)
		return tg_parse_reason(proto);
	tg_rewrite_inner_dmac(eth, cfg);
	if (!tg_is_ip(proto))
		return TG_REASON_DROP_DECAP_FAILED; /* unreachable: tg_tunnel_finish checked it */
	__builtin_memset(t, 0, sizeof(*t));
	rc = tg_parse_ip(&c, proto, t);
	return rc < 0 ? tg_parse_reason(rc) : 0;
}

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
	return rule->action == TG_ACTION_DENY ? TG_REASON_DROP_DENIED : TG_REASON_PASS_ALLOWED;
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

int tg_xdp_ingress(struct xdp_md *ctx)
{
	struct tg_tunnel_info ti = {};
	struct tg_acl_rule rule;
	struct tg_tuple t = {};
	struct tg_cursor c;
	struct ethhdr *eth;
	struct tg_config *cfg;
	__u32 zero = 0, reason, mark, meta_flags = 0;
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

	rc = tg_tunnel_inspect(&c, (void *)(long)ctx->data, &t, cfg, &ti);
	if (rc == TG_TUN_DROP) {
		reason = ti.reason;
		goto out;
	}
	if (rc == TG_TUN_LEAVE)
		tg_count_event(ti.event);
	if (rc == TG_TUN_DECAP) {
		reason = tg_decap(ctx, cfg, &ti, &t);
		if (reason)
			goto out;
		meta_flags |= TG_META_F_DECAPPED;
	}

	/* Judged as itself when not decapped: that is what reaches the stack. */
	reason = tg_acl(&t, cfg, ctx->data_end - ctx->data, &rule);
	tg_policy_event(ctx, cfg, &t, &rule, reason, ti.vni, meta_flags & TG_META_F_DECAPPED);
	if (reason == TG_REASON_DROP_DENIED || reason == TG_REASON_DROP_DEFAULT)
		goto out;
	if (ti.not_ip)
		reason = TG_REASON_PASS_TUNNEL_NOT_IP; /* passed whole: counted apart from decapped IP */
#ifndef TG_NO_XDP_META
	/* Built without where the kernel refuses bpf_xdp_adjust_meta to XDP programs at load time
	 * (dataplane/kernel/features.py probes it): XDP could not hand the mark over, so it leaves
	 * classifying to TC, which then counts each packet once. */
	mark = tg_classify(&t, ctx->data_end - ctx->data);
	if (mark) {
		meta_flags |= TG_META_F_CLASSIFIED;
		tg_count_event(TG_EVENT_CLASSIFIED);
	}
	tg_write_meta(ctx, mark, ti.vni, meta_flags);
#endif

out:
	tg_count_reason(reason, ctx->data_end - ctx->data);
	return TG_REASON_IS_DROP(reason) ? XDP_DROP : XDP_PASS;
}
