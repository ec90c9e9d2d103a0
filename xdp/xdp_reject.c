/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The reject stage, tail-called by the ingress entry when a reject rule matched (the tuple and
 * the header offsets in the per-CPU scratch, struct tg_scratch, whose contents the tail call
 * keeps): turns the packet into its answer in place and sends it back out of the interface with XDP_TX, paced by a per-CPU token bucket (reject_rate,
 * reject_burst). TCP gets a RST (RFC 9293 3.10.7.1: the segment's ACK, else sequence 0 and an ACK
 * of all it occupied); anything else an ICMP destination unreachable, administratively prohibited
 * (type 3 code 13, RFC 1812 5.2.7.1), or ICMPv6 type 1 code 1 (RFC 4443 3.1), quoting the start of
 * the datagram. The answer comes from the rejected packet's destination, as if it had answered.
 * No answer is due to an RST, an ICMP error, a non-first fragment or a multicast or broadcast
 * packet (RFC 1122 3.2.2, RFC 4443 2.4(e)): those are dropped. One reason for every rejected
 * packet, DROP_REJECTED, and one event saying what became of it.
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "events.h"
#include "judge.h"
#include "maps.h"
#include "parse.h"

#define TG_TTL 64
#define TG_IPV4_DF 0x4000
#define TG_ICMP_DEST_UNREACH 3
#define TG_ICMP_PKT_FILTERED 13   /* communication administratively prohibited */
#define TG_ICMPV6_DEST_UNREACH 1
#define TG_ICMPV6_ADM_PROHIBITED 1
#define TG_ICMP_HLEN 8            /* type, code, checksum, 4 unused bytes */
#define TG_L2_MAX 22              /* Ethernet and two VLAN tags: the most a frame has before IP */
#define TG_ETH_MULTICAST_BIT 0x01

/* IPv4/IPv6 pseudo-headers of the transport checksums (RFC 9293 3.1, RFC 8200 8.1). */
struct tg_pseudo4 {
	__be32 src;
	__be32 dst;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

struct tg_pseudo6 {
	__u8 src[16];
	__u8 dst[16];
	__be32 len;
	__u8 zero[3];
	__u8 next;
};

struct tg_icmp_head {
	__u8 type;
	__u8 code;
	__sum16 check;
	__u32 unused;
};

/* One's complement sum, folded to 16 bits and complemented. */
static __always_inline __sum16 tg_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__sum16)~s;
}

/* Whether an answer is due at all (RFC 1122 3.2.2, RFC 1812 4.3.2.7, RFC 4443 2.4(e)). */
static __always_inline int tg_answerable(struct xdp_md *ctx, const struct tg_tuple *t)
{
	const __u8 *src = (const __u8 *)t->src, *dst = (const __u8 *)t->dst; /* network order */
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end || (eth->h_dest[0] & TG_ETH_MULTICAST_BIT))
		return 0;
	if (!t->l4_present)
		return 0; /* a non-first fragment */
	if (t->family == TG_FAMILY_V4) {
		__u8 d0 = dst[0], s0 = src[0];

		/* multicast 224/4, limited broadcast, an unspecified or multicast source */
		if ((d0 & 0xf0) == 0xe0 || (d0 == 0xff && dst[1] == 0xff && dst[2] == 0xff && dst[3] == 0xff))
			return 0;
		if ((s0 & 0xf0) >= 0xe0 || !(s0 | src[1] | src[2] | src[3]))
			return 0;
	} else if (dst[0] == 0xff || src[0] == 0xff) {
		return 0; /* IPv6 multicast */
	}
	if (t->proto == IPPROTO_TCP)
		return !(t->tcp_flags & TG_TCP_RST);
	if (t->proto == IPPROTO_ICMP)
		return !(t->icmp_type == 3 || t->icmp_type == 4 || t->icmp_type == 5 || t->icmp_type == 11 ||
			 t->icmp_type == 12); /* no error about an error */
	if (t->proto == IPPROTO_ICMPV6)
		return t->icmp_type >= 128;
	return 1;
}

/* Swaps the Ethernet addresses at the frame's start (bounds checked by the caller's writes). */
static __always_inline int tg_swap_macs(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return -1;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return 0;
}

/* The answer's IP header at l3 (stack copy in `ip4`/`ip6`), its length, for `payload` bytes. */
static __always_inline __u32 tg_answer_ip(const struct tg_tuple *t, __u8 proto, __u16 payload, struct iphdr *ip4,
					  struct ipv6hdr *ip6)
{
	if (t->family == TG_FAMILY_V4) {
		__builtin_memset(ip4, 0, sizeof(*ip4));
		ip4->version = 4;
		ip4->ihl = 5;
		ip4->tot_len = bpf_htons(sizeof(*ip4) + payload);
		ip4->frag_off = bpf_htons(TG_IPV4_DF);
		ip4->ttl = TG_TTL;
		ip4->protocol = proto;
		__builtin_memcpy(&ip4->saddr, t->dst, 4);
		__builtin_memcpy(&ip4->daddr, t->src, 4);
		ip4->check = tg_fold(bpf_csum_diff(0, 0, (void *)ip4, sizeof(*ip4), 0));
		return sizeof(*ip4);
	}
	__builtin_memset(ip6, 0, sizeof(*ip6));
	ip6->version = 6;
	ip6->payload_len = bpf_htons(payload);
	ip6->nexthdr = proto;
	ip6->hop_limit = TG_TTL;
	__builtin_memcpy(&ip6->saddr, t->dst, TG_ADDR_LEN);
	__builtin_memcpy(&ip6->daddr, t->src, TG_ADDR_LEN);
	return sizeof(*ip6);
}

/* The pseudo-header sum of the answer (source and destination swapped already in ip4/ip6). */
static __always_inline __s64 tg_pseudo_sum(const struct tg_tuple *t, __u8 proto, __u32 len)
{
	if (t->family == TG_FAMILY_V4) {
		struct tg_pseudo4 p = {};

		__builtin_memcpy(&p.src, t->dst, 4);
		__builtin_memcpy(&p.dst, t->src, 4);
		p.proto = proto;
		p.len = bpf_htons(len);
		return bpf_csum_diff(0, 0, (void *)&p, sizeof(p), 0);
	} else {
		struct tg_pseudo6 p = {};

		__builtin_memcpy(p.src, t->dst, TG_ADDR_LEN);
		__builtin_memcpy(p.dst, t->src, TG_ADDR_LEN);
		p.len = bpf_htonl(len);
		p.next = proto;
		return bpf_csum_diff(0, 0, (void *)&p, sizeof(p), 0);
	}
}

/* Writes the IP header (ip4 or ip6, by family) and `l4` (l4_len bytes) at l3_off. */
static __always_inline int tg_write_answer(struct xdp_md *ctx, const struct tg_tuple *t, __u32 l3_off,
					   struct iphdr *ip4, struct ipv6hdr *ip6, void *l4, __u32 l4_len)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	void *l3;

	if (l3_off > TG_L2_MAX)
		return -1;
	l3 = data + l3_off;
	if (t->family == TG_FAMILY_V4) {
		if (l3 + sizeof(*ip4) + sizeof(struct tcphdr) > end)
			return -1;
		__builtin_memcpy(l3, ip4, sizeof(*ip4));
		l3 += sizeof(*ip4);
	} else {
		if (l3 + sizeof(*ip6) + sizeof(struct tcphdr) > end)
			return -1;
		__builtin_memcpy(l3, ip6, sizeof(*ip6));
		l3 += sizeof(*ip6);
	}
	if (l4_len == sizeof(struct tcphdr))
		__builtin_memcpy(l3, l4, sizeof(struct tcphdr));
	else
		__builtin_memcpy(l3, l4, TG_ICMP_HLEN);
	return 0;
}

/* TCP: the frame becomes a RST for the segment (shorter: no options, no payload). */
static __always_inline int tg_reset(struct xdp_md *ctx, const struct tg_tuple *t, const struct tg_scratch *s)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct tcphdr rst = {}, *seg;
	struct ipv6hdr ip6;
	struct iphdr ip4;
	__u32 l3_off = s->l3_off, l4_off = s->l4_off, seg_len, ip_len, frame_len;
	__s64 sum;

	if (l4_off > TG_PACKET_OFF_MAX || l3_off > TG_L2_MAX)
		return -1;
	seg = data + l4_off;
	if ((void *)(seg + 1) > end)
		return -1;
	/* What the segment occupied of the sequence space: its data, SYN and FIN. */
	seg_len = s->l3_end - l4_off - seg->doff * TG_TCP_WORD + !!(t->tcp_flags & TG_TCP_SYN) +
		  !!(t->tcp_flags & TG_TCP_FIN);
	rst.source = seg->dest;
	rst.dest = seg->source;
	rst.doff = TG_TCP_MIN_DOFF;
	rst.rst = 1;
	if (t->tcp_flags & TG_TCP_ACK) {
		rst.seq = seg->ack_seq;
	} else {
		rst.ack = 1;
		rst.ack_seq = bpf_htonl(bpf_ntohl(seg->seq) + seg_len);
	}
	ip_len = tg_answer_ip(t, IPPROTO_TCP, sizeof(rst), &ip4, &ip6);
	sum = tg_pseudo_sum(t, IPPROTO_TCP, sizeof(rst));
	rst.check = tg_fold(bpf_csum_diff(0, 0, (void *)&rst, sizeof(rst), sum));
	frame_len = l3_off + ip_len + sizeof(rst);
	if ((__u64)(end - data) > frame_len && bpf_xdp_adjust_tail(ctx, -(int)((end - data) - frame_len)))
		return -1;
	if (tg_swap_macs(ctx))
		return -1;
	return tg_write_answer(ctx, t, l3_off, &ip4, &ip6, &rst, sizeof(rst));
}

/* Anything else: ICMP/ICMPv6 unreachable, administratively prohibited, quoting the datagram. */
static __always_inline int tg_unreachable(struct xdp_md *ctx, const struct tg_tuple *t,
					  const struct tg_scratch *s)
{
	struct tg_icmp_head icmp = {};
	__u8 quote[TG_REJECT_QUOTE_MAX], l2[TG_L2_MAX];
	struct ipv6hdr ip6;
	struct iphdr ip4;
	__u32 l3_off = s->l3_off, grow, q, ip_len, frame_len;
	__u8 proto = t->family == TG_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
	void *data, *end;
	__s64 sum;

	if (l3_off > TG_L2_MAX || s->l3_end < l3_off)
		return -1;
	q = s->l3_end - l3_off;
	if (q > TG_REJECT_QUOTE_MAX)
		q = TG_REJECT_QUOTE_MAX;
	/* Rounded down to 4 bytes by a mask the verifier sees (0x7c == TG_REJECT_QUOTE_MAX). */
	asm volatile("%0 &= 0x7c" : "+r"(q));
	if (q < sizeof(struct iphdr))
		return -1; /* unreachable: every datagram holds its IP header */
	if (bpf_xdp_load_bytes(ctx, l3_off, quote, q) || bpf_xdp_load_bytes(ctx, 0, l2, TG_L2_MAX))
		return -1;
	icmp.type = proto == IPPROTO_ICMP ? TG_ICMP_DEST_UNREACH : TG_ICMPV6_DEST_UNREACH;
	icmp.code = proto == IPPROTO_ICMP ? TG_ICMP_PKT_FILTERED : TG_ICMPV6_ADM_PROHIBITED;
	ip_len = tg_answer_ip(t, proto, TG_ICMP_HLEN + q, &ip4, &ip6);
	sum = proto == IPPROTO_ICMPV6 ? tg_pseudo_sum(t, proto, TG_ICMP_HLEN + q) : 0;
	sum = bpf_csum_diff(0, 0, (void *)quote, q, sum);
	icmp.check = tg_fold(bpf_csum_diff(0, 0, (void *)&icmp, sizeof(icmp), sum));
	/* Room in front of the datagram for the new IP and ICMP headers; the quote stays in place. */
	grow = ip_len + TG_ICMP_HLEN;
	if (bpf_xdp_adjust_head(ctx, -(int)grow))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	frame_len = l3_off + grow + q;
	if ((__u64)(end - data) > frame_len && bpf_xdp_adjust_tail(ctx, -(int)((end - data) - frame_len)))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + TG_L2_MAX > end)
		return -1;
	__builtin_memcpy(data, l2, TG_L2_MAX); /* the Ethernet header and tags, moved to the front */
	if (tg_swap_macs(ctx))
		return -1;
	return tg_write_answer(ctx, t, l3_off, &ip4, &ip6, &icmp, TG_ICMP_HLEN);
}

int tg_xdp_reject(struct xdp_md *ctx)
{
	struct tg_scratch *s;
	struct tg_config *cfg;
	struct tg_tuple t;
	__u32 zero = 0, event = TG_EVENT_REJECT_UNANSWERED;
	int action = XDP_DROP;

	cfg = config.lookup(&zero);
	s = tg_scratch_of(TG_HOOK_XDP);
	if (!cfg || !s)
		goto out; /* unreachable: arrays always have entry 0 */
	t = s->t;
	if (!tg_answerable(ctx, &t))
		goto out;
	if (!tg_bucket_take(reject_bucket.lookup(&zero), cfg->reject_rate, cfg->reject_burst)) {
		event = TG_EVENT_REJECT_RATE_LIMITED;
		goto out;
	}
	if ((t.proto == IPPROTO_TCP ? tg_reset(ctx, &t, s) : tg_unreachable(ctx, &t, s)) == 0) {
		event = TG_EVENT_REJECT_SENT;
		action = XDP_TX;
	}
out:
	tg_count_event(event);
	return tg_xdp_exit_as(ctx, TG_REASON_DROP_REJECTED, action);
}
