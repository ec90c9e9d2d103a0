/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TC ingress (clsact, direct action): turns the XDP verdict into skb->mark for policy routing.
 * The mark comes from XDP metadata when XDP ran; otherwise (generic XDP on a driver without
 * metadata, XDP detached) TC classifies with the same maps, so marking never silently stops.
 * TC never drops: enforcement is XDP's job, and iptables/nftables still see what we pass.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "counters.h"
#include "maps.h"
#include "match.h"
#include "parse.h"

/* Enough linear bytes for Ethernet + IPv6 with extension headers + L4 ports (128), plus the
 * 2 VLAN tags the parser looks through (8). */
#define TG_TC_PULL_LEN 136

static __always_inline __u32 tg_tc_classify(struct __sk_buff *skb)
{
	struct tg_tuple t = {};
	struct tg_reader *reader;
	struct tg_scratch *s;
	struct tg_cursor c;
	struct ethhdr *eth;
	__u32 mark;
	int proto;

	/* Fails only for want of memory: then what is linear already is parsed, bounds-checked as
	 * ever (a header past it leaves the packet unmarked), and the failure is counted. */
	if (bpf_skb_pull_data(skb, skb->len < TG_TC_PULL_LEN ? skb->len : TG_TC_PULL_LEN))
		tg_count_event(TG_EVENT_TC_PULL_FAILED);
	tg_cursor_init(&c, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len);
	/* VLAN offload (or the stack's own untagging) moves the outer tag to skb->vlan_tci: the data
	 * then starts with the ethertype behind it, and that tag counts against the XDP limit. */
	proto = tg_parse_l2(&c, &eth, skb->vlan_present ? TG_VLAN_MAX - 1 : TG_VLAN_MAX);
	if (proto < 0 || !tg_is_ip(proto))
		return 0;
	if (tg_parse_ip(&c, proto, &t, TG_ENDS_AT_END) < 0)
		return 0;
	s = tg_scratch_of(TG_HOOK_TC);
	if (!s)
		return 0; /* unreachable: an array always has its entries */
	tg_probe_init(&s->p, &t);
	tg_forget(); /* the search reads the probe from the scratch (match.h) */
	reader = tg_read_begin(TG_HOOK_TC);
	mark = tg_classify(s, skb->len);
	tg_read_end(reader);
	return mark;
}

int tg_tc_ingress(struct __sk_buff *skb)
{
	struct tg_meta *meta = (void *)(long)skb->data_meta;
	__u32 mark;

	if ((void *)(meta + 1) <= (void *)(long)skb->data && meta->magic == TG_META_MAGIC) {
		mark = meta->mark;
		tg_count_event(TG_EVENT_TC_META_MARK);
	} else {
		mark = tg_tc_classify(skb);
		tg_count_event(TG_EVENT_TC_FALLBACK);
	}
	if (mark)
		skb->mark = mark;
	return TC_ACT_OK;
}
