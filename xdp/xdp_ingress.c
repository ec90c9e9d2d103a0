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

/* Strips the outer headers (s->outer_len, s->payload_end) and parses the inner frame (Ethernet,
 * VLAN tags, IP) into the probe s->p. Returns a reason on failure, 0 on success. */
static __always_inline __u32 tg_decap(struct xdp_md *ctx, const struct tg_config *cfg, struct tg_scratch *s)
{
	__u64 outer_bytes = ctx->data_end - ctx->data;
	__u32 payload_end = s->payload_end, vni = s->vni;
	struct tg_tuple t = {};
	struct tg_cursor c;
	struct ethhdr *eth;
	int proto, rc;

	if (bpf_xdp_adjust_head(ctx, s->outer_len))
		return TG_REASON_DROP_DECAP_FAILED;
	/* Bytes past the outer UDP payload (its length says so) are not part of the inner frame. */
	if (outer_bytes > payload_end && bpf_xdp_adjust_tail(ctx, -(int)(outer_bytes - payload_end)))
		return TG_REASON_DROP_DECAP_FAILED;
	tg_count(tunnel_stats.lookup(&vni), outer_bytes);
	tg_count_event(s->tunnel_type == TG_TUNNEL_VXLAN ? TG_EVENT_DECAP_VXLAN : TG_EVENT_DECAP_GENEVE);

	/* adjust_head invalidated every packet pointer: start over on the inner frame. */
	tg_cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data);
	proto = tg_parse_l2(&c, &eth, TG_VLAN_MAX);
	if (proto < 0)
		return tg_parse_reason(proto);
	tg_rewrite_inner_dmac(eth, cfg);
	if (!tg_is_ip(proto))
		return TG_REASON_DROP_DECAP_FAILED; /* unreachable: tg_tunnel_finish checked it */
	rc = tg_parse_ip(&c, proto, &t);
	if (rc < 0)
		return tg_parse_reason(rc);
	tg_probe_init(&s->p, &t);
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

	if (!tg_tunnel_port(&s->p, cfg))
		return 0;
	if (!tg_cursor_at(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->data_end - ctx->data,
			  s->l4_off, s->l3_end))
		return TG_REASON_DROP_TRUNCATED; /* unreachable: the parse stage found the header there */
	rc = tg_tunnel_inspect(&c, &s->p, cfg, &ti);
	if (rc == TG_TUN_DROP)
		return ti.reason;
	s->vni = ti.vni;
	if (rc == TG_TUN_LEAVE) {
		s->not_ip = ti.not_ip;
		tg_count_event(ti.event);
		return 0;
	}
	s->outer_len = ti.outer_len;
	s->payload_end = ti.payload_end;
	s->tunnel_type = ti.type;
	tg_forget(); /* stage barrier: one verification of the decap (struct tg_scratch) */
	return tg_decap(ctx, cfg, s);
}

/* ACL verdict for the probe, counted per rule; *hit gets the matching rule (NULL: none). */
static __always_inline __u32 tg_acl(struct tg_scratch *s, const struct tg_config *cfg, __u64 bytes,
				    const struct tg_rule **hit)
{
	__u32 slot = tg_match(TG_TABLE_ACL, s);
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

/* The ACL verdict (and its policy event), then for what passes the classifiers' mark in the
 * metadata; returns the reason the packet is counted under. Reads the packet from the scratch. */
static __always_inline __u32 tg_judge(struct xdp_md *ctx, const struct tg_config *cfg, struct tg_scratch *s)
{
	__u64 bytes = ctx->data_end - ctx->data;
	const struct tg_rule *rule;
	__u32 reason;

	reason = tg_acl(s, cfg, bytes, &rule);
	tg_policy_event(ctx, cfg, &s->p, rule, reason, s->vni, s->meta_flags & TG_META_F_DECAPPED);
	if (reason == TG_REASON_DROP_DENIED || reason == TG_REASON_DROP_DEFAULT)
		return reason;
	if (s->not_ip)
		reason = TG_REASON_PASS_TUNNEL_NOT_IP; /* passed whole: counted apart from decapped IP */
#ifndef TG_NO_XDP_META
	/* Built without where the kernel refuses bpf_xdp_adjust_meta to XDP programs at load time
	 * (dataplane/kernel/features.py probes it): XDP could not hand the mark over, so it leaves
	 * classifying to TC, which then counts each packet once. */
	__u32 mark, flags;

	s->reason = reason;
	tg_forget(); /* stage barrier: one verification of the classifiers, whatever the verdict */
	mark = tg_classify(s, bytes);
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

int tg_xdp_ingress(struct xdp_md *ctx)
{
	struct tg_tuple t = {};
	struct tg_reader *reader;
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
	rc = tg_parse_ip(&c, proto, &t);
	if (rc < 0) {
		reason = tg_parse_reason(rc);
		goto out;
	}

	/* Stage barrier (struct tg_scratch): from here on every stage reads the packet from the
	 * scratch, so the verifier checks each once, whatever way the parse went. */
	tg_probe_init(&s->p, &t);
	s->l4_off = (c.pos - c.frame) - sizeof(struct udphdr); /* read only for UDP (tg_tunnel) */
	s->l3_end = c.l3_end;
	s->vni = 0;
	s->meta_flags = 0;
	s->not_ip = 0;
	tg_forget();
	reason = tg_tunnel(ctx, cfg, s);
	if (reason)
		goto out;
	/* Judged as itself when not decapped: that is what reaches the stack. */
	tg_forget();
	reader = tg_read_begin(TG_HOOK_XDP);
	reason = tg_judge(ctx, cfg, s);
	tg_read_end(reader);

out:
	tg_count_reason(reason, ctx->data_end - ctx->data);
	return TG_REASON_IS_DROP(reason) ? XDP_DROP : XDP_PASS;
}
