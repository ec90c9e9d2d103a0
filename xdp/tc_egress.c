/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TC egress (clsact, direct action): with allow_established, records every flow leaving the
 * interface so that XDP passes its replies (conntrack.h). Never drops, never changes a packet.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "conntrack.h"
#include "maps.h"
#include "parse.h"

/* Ethernet, 2 VLAN tags, IPv6 with extension headers and the L4 header (as TC ingress pulls). */
#define TG_TC_EGRESS_PULL_LEN 136

int tg_tc_egress(struct __sk_buff *skb)
{
	struct tg_tuple t = {};
	struct tg_config *cfg;
	struct tg_cursor c;
	struct ethhdr *eth;
	__u32 zero = 0;
	int proto;

	cfg = config.lookup(&zero);
	if (!cfg || !(cfg->flags & TG_CFG_F_ESTABLISHED))
		return TC_ACT_OK;
	if (bpf_skb_pull_data(skb, skb->len < TG_TC_EGRESS_PULL_LEN ? skb->len : TG_TC_EGRESS_PULL_LEN))
		tg_count_event(TG_EVENT_TC_PULL_FAILED);
	tg_cursor_init(&c, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len);
	/* On egress a VLAN tag to be offloaded sits in skb->vlan_tci, not in the data. */
	proto = tg_parse_l2(&c, &eth, skb->vlan_present ? TG_VLAN_MAX - 1 : TG_VLAN_MAX);
	if (proto < 0 || !tg_is_ip(proto) || tg_parse_ip(&c, proto, &t, TG_ENDS_AT_END) < 0)
		return TC_ACT_OK;
	tg_ct_record(cfg, &t);
	return TC_ACT_OK;
}
