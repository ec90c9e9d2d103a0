/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cursor-based, bounds-checked header parsers shared by the XDP and TC programs.
 * Each parser checks the bytes it reads right before reading them and advances the cursor.
 * Return values: >= 0 the next protocol (or 0 for "done"), TG_PARSE_TRUNCATED when the frame
 * ends inside the header, TG_PARSE_MALFORMED when a field is impossible.
 */
#ifndef TG_PARSE_H
#define TG_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "maps.h"
#include "tidegate_abi.h"

#define TG_PARSE_TRUNCATED (-1)
#define TG_PARSE_MALFORMED (-2)

#define TG_IPV4_MIN_IHL 5        /* 32-bit words in an option-less IPv4 header */
#define TG_IPV4_WORD 4
#define TG_TCP_MIN_DOFF 5
#define TG_TCP_WORD 4            /* doff unit */
#define TG_ICMP_MIN_LEN 4        /* type, code, checksum: what every ICMP message has */
#define TG_ICMP_ECHO_LEN 8       /* ... and an echo's identifier and sequence */
#define TG_ICMP_ECHO_REPLY 0
#define TG_ICMP_ECHO_REQUEST 8
#define TG_ICMPV6_ECHO_REQUEST 128
#define TG_ICMPV6_ECHO_REPLY 129
#define TG_TCP_FLAGS_OFF 13      /* the flags byte of the TCP header */
#define TG_IPPROTO_SCTP 132      /* not in every UAPI in.h the headers fallback may ship */
/* Extension headers walked to find L4: RFC 8200 4.1's order has at most 6 of those we walk
 * (hop-by-hop, destination, routing, fragment, authentication, destination). A longer chain is
 * dropped. */
#define TG_IPV6_EXT_MAX 6
#define TG_IPV6_EXT_UNIT 8       /* hdr ext len unit (RFC 8200 4.3) */
#define TG_IPPROTO_AH 51         /* Authentication Header (RFC 4302): an extension header in IPv6 */
#define TG_AH_UNIT 4             /* AH Payload Len: 32-bit words, minus 2 (RFC 4302 2.2) */
#define TG_AH_LEN_BIAS 2
#define TG_IPV6_FRAG_OFFSET_MASK 0xfff8
#define TG_IPV6_FRAG_MORE 0x0001         /* M flag: more fragments follow */
#define TG_IPV4_FRAG_OFFSET_MASK 0x1fff
#define TG_IPV4_FRAG_MORE 0x2000         /* MF flag */
/* VLAN tags between the Ethernet header and the packet: 802.1Q (C-tag) and 802.1ad (S-tag, the
 * outer tag of QinQ). A trunk delivers them to the stack, whose VLAN subinterfaces strip them and
 * receive the IP packet inside, so the ACL must see through them. More than TG_VLAN_MAX tags is
 * dropped as malformed: the stack could still reach an IP packet we never judged. */
#define TG_ETH_P_8021Q 0x8100
#define TG_ETH_P_8021AD 0x88A8
#define TG_VLAN_MAX 2

/* An ICMP/ICMPv6 header as far as an echo's identifier (RFC 792, RFC 4443 4.1). */
struct tg_icmp_echo {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 seq;
};

/* SCTP common header (RFC 9260 3.1): only the ports are read. */
struct tg_sctp_ports {
	__be16 source;
	__be16 dest;
};

/* IPv6 Fragment header (RFC 8200 4.5); the kernel's frag_hdr lives in a non-UAPI header. */
struct tg_ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* A VLAN tag after the MAC addresses (IEEE 802.1Q 9.3): TCI, then the next ethertype. */
struct tg_vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct tg_cursor {
	void *pos;
	void *end;   /* end of the bytes the program can read */
	void *frame; /* start of the frame */
	__u32 len;   /* bytes in the whole frame: past `end` in a non-linear skb (TC) */
	__u32 l3_end; /* where the IP datagram ends, from `frame`, once its header is parsed */
	__u32 l3_off; /* where the IP header starts, from `frame` */
	__u32 l4_off; /* where the L4 header starts, from `frame` */
};

static __always_inline void tg_cursor_init(struct tg_cursor *c, void *data, void *data_end, __u32 len)
{
	c->pos = data;
	c->end = data_end;
	c->frame = data;
	c->len = len;
	c->l3_end = 0;
	c->l3_off = 0;
	c->l4_off = 0;
}

/* Bound of an offset turned back into a packet pointer (tg_cursor_at). The verifier takes a
 * bounds check on such a pointer only while offset + the bytes read stay within its
 * MAX_PACKET_OFF (0xffff), so this leaves room for the headers read behind it; any frame a
 * program sees without frags support is shorter (it fits one page). */
#define TG_PACKET_OFF_MAX 0x3fff

/* A cursor `off` bytes into the frame: an offset kept across a stage barrier (struct tg_scratch)
 * becomes a pointer again. 0 when the offset is out of the verifier's reach. */
static __always_inline int tg_cursor_at(struct tg_cursor *c, void *data, void *data_end, __u32 len,
					__u32 off, __u32 l3_end)
{
	tg_cursor_init(c, data, data_end, len);
	if (off > TG_PACKET_OFF_MAX)
		return 0;
	c->pos = data + off;
	c->l3_end = l3_end;
	return 1;
}

/* Where the bytes being parsed end. An outer frame ends at c->end (TC pulls the headers in
 * first). A tunnel's inner frame ends with the outer UDP payload, at c->len: bytes after it
 * (the rest of the outer datagram, Ethernet padding) are readable but not the inner packet's,
 * so a header reaching into them is truncated, whatever they hold. A constant at every call:
 * the outer parse pays no second compare. */
#define TG_ENDS_AT_END 0
#define TG_ENDS_AT_LEN 1

/* Whether n bytes at p are readable and, for an inner frame, inside it. */
static __always_inline int tg_fits(const struct tg_cursor *c, void *p, __u32 n, int ends)
{
	void *e = p + n;

	if (e > c->end)
		return 0;
	return ends != TG_ENDS_AT_LEN || (__u64)(e - c->frame) <= c->len;
}

/* The frame must hold the whole datagram its IP header announces (l3_len bytes from l3): the
 * stack drops a frame shorter than that (ip_rcv/ipv6_rcv: truncated) and trims bytes past it,
 * so a parser reading past it would judge, or decapsulate, bytes no one will receive. */
static __always_inline int tg_ip_fits(struct tg_cursor *c, void *l3, __u32 l3_len)
{
	__u64 l3_end = (__u64)(l3 - c->frame) + l3_len;

	if (l3_end > c->len)
		return 0;
	c->l3_end = l3_end;
	return 1;
}

static __always_inline int tg_parse_eth(struct tg_cursor *c, struct ethhdr **eth)
{
	struct ethhdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return TG_PARSE_TRUNCATED;
	c->pos = h + 1;
	*eth = h;
	return h->h_proto; /* network byte order */
}

static __always_inline int tg_is_vlan(__be16 proto)
{
	return proto == bpf_htons(TG_ETH_P_8021Q) || proto == bpf_htons(TG_ETH_P_8021AD);
}

/* Skips up to max_tags (at most TG_VLAN_MAX) VLAN tags from the cursor, which is just past the
 * ethertype `proto`; returns the ethertype after the last tag (network byte order). A tag must lie
 * inside the frame (c->end, and c->len, which may end before it: a tunnel's UDP payload). */
static __always_inline int tg_parse_vlans(struct tg_cursor *c, __be16 proto, int max_tags)
{
	int i;

	for (i = 0; i < TG_VLAN_MAX; i++) {
		struct tg_vlan_tag *tag = c->pos;

		if (!tg_is_vlan(proto))
			return proto;
		if (i >= max_tags)
			return TG_PARSE_MALFORMED;
		if (!tg_fits(c, tag, sizeof(*tag), TG_ENDS_AT_LEN))
			return TG_PARSE_TRUNCATED;
		proto = tag->proto;
		c->pos = tag + 1;
	}
	/* A tag after the last we walk: the stack would strip it too and reach an unjudged packet. */
	if (tg_is_vlan(proto))
		return TG_PARSE_MALFORMED;
	return proto;
}

/* Ethernet and up to max_tags VLAN tags: returns the ethertype of what follows them. */
static __always_inline int tg_parse_l2(struct tg_cursor *c, struct ethhdr **eth, int max_tags)
{
	int proto = tg_parse_eth(c, eth);

	if (proto < 0)
		return proto;
	return tg_parse_vlans(c, proto, max_tags);
}

/* An IPv4 address as struct tg_tuple holds it: its 4 bytes first, then zeros, in whole words. */
static __always_inline void tg_addr_from_v4(__u64 *out, __be32 addr)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	out[0] = (__u32)addr;
#else
	out[0] = (__u64)(__u32)addr << 32;
#endif
	out[1] = 0;
}

/* Returns the L4 protocol; sets *l4_present to 0 for a non-first fragment. */
static __always_inline int tg_parse_ipv4(struct tg_cursor *c, struct tg_tuple *t, int ends)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	if (!tg_fits(c, ip, sizeof(*ip), ends))
		return TG_PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < TG_IPV4_MIN_IHL)
		return TG_PARSE_MALFORMED;
	hdr_len = ip->ihl * TG_IPV4_WORD;
	/* Options make the header variable-length: check the full length too. */
	if (!tg_fits(c, c->pos, hdr_len, ends))
		return TG_PARSE_TRUNCATED;
	if (bpf_ntohs(ip->tot_len) < hdr_len)
		return TG_PARSE_MALFORMED;
	if (!tg_ip_fits(c, ip, bpf_ntohs(ip->tot_len)))
		return TG_PARSE_TRUNCATED;
	tg_addr_from_v4(t->src, ip->saddr);
	tg_addr_from_v4(t->dst, ip->daddr);
	t->family = TG_FAMILY_V4;
	t->proto = ip->protocol;
	t->l4_present = (bpf_ntohs(ip->frag_off) & TG_IPV4_FRAG_OFFSET_MASK) == 0;
	t->fragment = (bpf_ntohs(ip->frag_off) & (TG_IPV4_FRAG_OFFSET_MASK | TG_IPV4_FRAG_MORE)) != 0;
	c->pos += hdr_len;
	return ip->protocol;
}

/* *out = off, through memory the verifier knows nothing about (parse_scratch), bounded by
 * TG_PACKET_OFF_MAX. The packet pointer a parser derives from it then has the same state on every
 * path that reaches it: walking N extension headers of 3 kinds is verified about once per
 * header, not once per sequence of kinds (3^N). Nonzero past the bound (never in a frame). */
static __always_inline int tg_forget_off(__u32 off, __u32 *out)
{
	__u32 zero = 0;
	__u64 *slot = parse_scratch.lookup(&zero), v;

	if (!slot)
		return -1;
	*slot = off;
	asm volatile("" ::: "memory"); /* the compiler must load what it stored */
	v = *slot;
	if (v > TG_PACKET_OFF_MAX)
		return -1;
	*out = v;
	return 0;
}

static __always_inline int tg_ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT || nexthdr == TG_IPPROTO_AH;
}

/* Walks up to TG_IPV6_EXT_MAX extension headers; returns the L4 protocol (for a non-first
 * fragment, the Fragment header's next header: what follows it is data). */
static __always_inline int tg_parse_ipv6(struct tg_cursor *c, struct tg_tuple *t, int ends)
{
	struct ipv6hdr *ip6 = c->pos;
	__u8 nexthdr;
	int i;

	if (!tg_fits(c, ip6, sizeof(*ip6), ends))
		return TG_PARSE_TRUNCATED;
	if (ip6->version != 6)
		return TG_PARSE_MALFORMED;
	/* Payload length 0 (a jumbogram's) announces no more than the header. */
	if (!tg_ip_fits(c, ip6, sizeof(*ip6) + bpf_ntohs(ip6->payload_len)))
		return TG_PARSE_TRUNCATED;
	__builtin_memcpy(t->src, &ip6->saddr, TG_ADDR_LEN);
	__builtin_memcpy(t->dst, &ip6->daddr, TG_ADDR_LEN);
	t->family = TG_FAMILY_V6;
	t->l4_present = 1;
	nexthdr = ip6->nexthdr;
	c->pos = ip6 + 1;

	for (i = 0; i < TG_IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *ext = c->pos;
		__u32 ext_len, off;

		if (!tg_ipv6_is_ext(nexthdr))
			break;
		if (!tg_fits(c, ext, sizeof(*ext), ends))
			return TG_PARSE_TRUNCATED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			struct tg_ipv6_frag *fh = c->pos;

			if (!tg_fits(c, fh, sizeof(*fh), ends))
				return TG_PARSE_TRUNCATED;
			if (bpf_ntohs(fh->frag_off) & TG_IPV6_FRAG_OFFSET_MASK)
				t->l4_present = 0;
			/* An atomic fragment (offset 0, M clear; RFC 6946) is a whole datagram. */
			if (bpf_ntohs(fh->frag_off) & (TG_IPV6_FRAG_OFFSET_MASK | TG_IPV6_FRAG_MORE))
				t->fragment = 1;
			ext_len = sizeof(*fh);
		} else if (nexthdr == TG_IPPROTO_AH) {
			/* The stack's ipv6_skip_exthdr walks past it too: the transport header follows. */
			ext_len = (ext->hdrlen + TG_AH_LEN_BIAS) * TG_AH_UNIT;
		} else {
			ext_len = (ext->hdrlen + 1) * TG_IPV6_EXT_UNIT;
		}
		if (!tg_fits(c, c->pos, ext_len, ends))
			return TG_PARSE_TRUNCATED;
		nexthdr = ext->nexthdr;
		if (tg_forget_off((c->pos - c->frame) + ext_len, &off))
			return TG_PARSE_TRUNCATED;
		c->pos = c->frame + off;
		if (!t->l4_present)
			break;
	}
	/* The chain goes on past what we walk. The stack would still find the transport header at
	 * its end, so passing the packet with protocol and ports unknown to the ACL would let
	 * padding headers slip past any port rule: fail closed. */
	if (t->l4_present && tg_ipv6_is_ext(nexthdr))
		return TG_PARSE_MALFORMED;
	t->proto = nexthdr;
	return nexthdr;
}

/* Reads ports where the protocol has them and leaves the cursor after the fixed L4 header.
 * Non-first fragments carry no L4 header. */
static __always_inline int tg_parse_l4(struct tg_cursor *c, struct tg_tuple *t, int ends)
{
	if (!t->l4_present)
		return 0;
	if (t->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c->pos;

		if (!tg_fits(c, tcp, sizeof(*tcp), ends))
			return TG_PARSE_TRUNCATED;
		if (tcp->doff < TG_TCP_MIN_DOFF)
			return TG_PARSE_MALFORMED;
		/* Options make the header doff * 4 bytes: all of them inside the datagram (tcp_v4_rcv
		 * and tcp_v6_rcv discard one whose header does not fit, RFC 1858 tiny fragments too). */
		if (c->pos + tcp->doff * TG_TCP_WORD > c->end ||
		    (__u64)(c->pos - c->frame) + tcp->doff * TG_TCP_WORD > c->l3_end)
			return TG_PARSE_TRUNCATED;
		t->sport = tcp->source;
		t->dport = tcp->dest;
		t->tcp_flags = ((__u8 *)tcp)[TG_TCP_FLAGS_OFF];
		c->pos += tcp->doff * TG_TCP_WORD;
	} else if (t->proto == IPPROTO_UDP) {
		struct udphdr *udp = c->pos;

		if (!tg_fits(c, udp, sizeof(*udp), ends))
			return TG_PARSE_TRUNCATED;
		t->sport = udp->source;
		t->dport = udp->dest;
		c->pos = udp + 1;
	} else if (t->proto == TG_IPPROTO_SCTP) {
		struct tg_sctp_ports *sctp = c->pos;

		if (!tg_fits(c, sctp, sizeof(*sctp), ends))
			return TG_PARSE_TRUNCATED;
		t->sport = sctp->source;
		t->dport = sctp->dest;
		c->pos = sctp + 1;
	} else if (t->proto == IPPROTO_ICMP || t->proto == IPPROTO_ICMPV6) {
		struct tg_icmp_echo *icmp = c->pos;

		if (!tg_fits(c, c->pos, TG_ICMP_MIN_LEN, ends))
			return TG_PARSE_TRUNCATED;
		t->icmp_type = icmp->type;
		t->icmp_code = icmp->code;
		/* The identifier where there is one (an echo cut shorter is judged all the same). */
		if ((void *)(icmp + 1) <= c->end && (__u64)((void *)(icmp + 1) - c->frame) <= c->l3_end)
			t->icmp_id = icmp->id;
		c->pos += TG_ICMP_MIN_LEN;
	}
	return 0;
}

/* Parses IPv4/IPv6 + L4 from the cursor into *t, in a frame that ends where `ends` says
 * (TG_ENDS_AT_*). Returns 0, or a TG_PARSE_* error. */
static __always_inline int tg_parse_ip(struct tg_cursor *c, __be16 eth_proto, struct tg_tuple *t, int ends)
{
	int rc;

	c->l3_off = c->pos - c->frame;
	if (eth_proto == bpf_htons(ETH_P_IP))
		rc = tg_parse_ipv4(c, t, ends);
	else
		rc = tg_parse_ipv6(c, t, ends);
	if (rc < 0)
		return rc;
	c->l4_off = c->pos - c->frame;
	return tg_parse_l4(c, t, ends);
}

static __always_inline int tg_is_ip(__be16 eth_proto)
{
	return eth_proto == bpf_htons(ETH_P_IP) || eth_proto == bpf_htons(ETH_P_IPV6);
}

/* The drop reason of a parser error. */
static __always_inline __u32 tg_parse_reason(int rc)
{
	return rc == TG_PARSE_MALFORMED ? TG_REASON_DROP_MALFORMED : TG_REASON_DROP_TRUNCATED;
}

#endif /* TG_PARSE_H */
