/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading packets from kernel memory for the tracer: an skb's device and headers, an XDP
 * buffer's frame. Tracing programs may not dereference kernel pointers, so every read is a
 * bpf_probe_read_kernel, which fails (and we give up on the packet) rather than fault.
 *
 * Kernel struct layouts change between releases and BCC compiles against Debian's 6.1 headers,
 * not this kernel's: so no kernel struct is used here. Member offsets come from the running
 * kernel's BTF as -D defines (dataplane/trace/kernel_support.py, TT_OFF_*); only uapi headers (IP,
 * IPv6, Ethernet), which never change, are used as structs.
 */
#ifndef TT_TRACE_PARSE_H
#define TT_TRACE_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "trace_abi.h"

#ifndef TT_OFF_SKB_HEAD
#error "TT_OFF_* (kernel struct offsets from BTF) must be defined: compile through dataplane/trace/tracer.py"
#endif

#define TT_AF_INET 2
#define TT_AF_INET6 10
#define TT_IP_OFFSET_MASK 0x1fff  /* fragment offset bits of iphdr.frag_off */
#define TT_IP6_FRAG_OFFSET_MASK 0xfff8
#define TT_V6_EXT_MAX 4           /* extension headers walked before the transport header */
#define TT_VLAN_TAGS_MAX 2        /* 802.1Q / 802.1ad tags skipped before the ethertype */
#define TT_VLAN_HLEN 4

/* *dst = *(typeof(dst) *)(base + off), from kernel memory; non-zero on failure. */
#define TT_READ(dst, base, off) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))

struct tt_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* Ports of TCP, UDP and SCTP all sit in the first four bytes of their header. */
static __always_inline int tt_parse_l4(struct tt_event *ev, const char *l4)
{
	__be16 ports[2];

	if (ev->proto != IPPROTO_TCP && ev->proto != IPPROTO_UDP && ev->proto != IPPROTO_SCTP)
		return 0;
	if (bpf_probe_read_kernel(ports, sizeof(ports), l4))
		return -1;
	ev->sport = bpf_ntohs(ports[0]);
	ev->dport = bpf_ntohs(ports[1]);
	return 0;
}

static __always_inline int tt_parse_ipv4(struct tt_event *ev, const char *nh)
{
	struct iphdr ip;

	if (bpf_probe_read_kernel(&ip, sizeof(ip), nh) || ip.version != 4 || ip.ihl < 5)
		return -1;
	ev->family = TT_AF_INET;
	ev->proto = ip.protocol;
	__builtin_memcpy(ev->src, &ip.saddr, sizeof(ip.saddr));
	__builtin_memcpy(ev->dst, &ip.daddr, sizeof(ip.daddr));
	if (ip.frag_off & bpf_htons(TT_IP_OFFSET_MASK))
		return 0; /* a non-first fragment carries no transport header */
	return tt_parse_l4(ev, nh + ip.ihl * 4);
}

static __always_inline int tt_parse_ipv6(struct tt_event *ev, const char *nh)
{
	struct ipv6hdr ip6;
	const char *cur = nh + sizeof(ip6);
	__u8 next;

	if (bpf_probe_read_kernel(&ip6, sizeof(ip6), nh) || ip6.version != 6)
		return -1;
	ev->family = TT_AF_INET6;
	__builtin_memcpy(ev->src, &ip6.saddr, sizeof(ip6.saddr));
	__builtin_memcpy(ev->dst, &ip6.daddr, sizeof(ip6.daddr));
	next = ip6.nexthdr;
#pragma unroll
	for (int i = 0; i < TT_V6_EXT_MAX; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			__u8 hdr[2]; /* next header, length in 8-octet units beyond the first 8 */

			if (bpf_probe_read_kernel(hdr, sizeof(hdr), cur))
				return -1;
			next = hdr[0];
			cur += (hdr[1] + 1) * 8;
		} else if (next == IPPROTO_FRAGMENT) {
			struct tt_frag_hdr frag;

			if (bpf_probe_read_kernel(&frag, sizeof(frag), cur))
				return -1;
			ev->proto = frag.nexthdr;
			if (frag.frag_off & bpf_htons(TT_IP6_FRAG_OFFSET_MASK))
				return 0; /* a non-first fragment: no transport header */
			next = frag.nexthdr;
			cur += sizeof(frag);
		} else {
			break;
		}
	}
	ev->proto = next;
	return tt_parse_l4(ev, cur);
}

/* The network header at `nh`; `ethertype` (network order) says which, 0 = look at the version. */
static __always_inline int tt_parse_l3(struct tt_event *ev, const char *nh, __be16 ethertype)
{
	__u8 first;

	if (ethertype == bpf_htons(ETH_P_IP))
		return tt_parse_ipv4(ev, nh);
	if (ethertype == bpf_htons(ETH_P_IPV6))
		return tt_parse_ipv6(ev, nh);
	if (ethertype != 0 || bpf_probe_read_kernel(&first, sizeof(first), nh))
		return -1; /* ARP, LLDP...: no addresses to report */
	if (first >> 4 == 4)
		return tt_parse_ipv4(ev, nh);
	if (first >> 4 == 6)
		return tt_parse_ipv6(ev, nh);
	return -1;
}

/* An Ethernet frame at `frame` (an XDP buffer): skip up to TT_VLAN_TAGS_MAX tags. */
static __always_inline int tt_parse_frame(struct tt_event *ev, const char *frame)
{
	const char *cur = frame + 2 * ETH_ALEN;
	__be16 type;

#pragma unroll
	for (int i = 0; i <= TT_VLAN_TAGS_MAX; i++) {
		if (bpf_probe_read_kernel(&type, sizeof(type), cur))
			return -1;
		cur += sizeof(type);
		if (type != bpf_htons(ETH_P_8021Q) && type != bpf_htons(ETH_P_8021AD))
			return tt_parse_l3(ev, cur, type);
		cur += TT_VLAN_HLEN - sizeof(type);
	}
	return -1;
}

/* ifindex and name of a struct net_device. */
static __always_inline void tt_read_dev(struct tt_event *ev, const void *dev)
{
	if (!dev)
		return;
	TT_READ(ev->ifindex, dev, TT_OFF_DEV_IFINDEX);
	bpf_probe_read_kernel_str(ev->ifname, sizeof(ev->ifname), (const char *)dev + TT_OFF_DEV_NAME);
}

/* Device, length and mark of an skb, and its addresses and ports. The network header is at
 * skb->data when `data_is_l3` (on receive, before the stack has set network_header), else at
 * skb->head + skb->network_header. Non-zero when the packet is not IPv4/IPv6 or unreadable. */
static __always_inline int tt_parse_skb(struct tt_event *ev, const void *skb, bool data_is_l3)
{
	const void *dev = 0;
	const char *head = 0, *nh = 0;
	__u16 network_header = 0;
	__be16 protocol = 0;

	if (!skb)
		return -1;
	TT_READ(dev, skb, TT_OFF_SKB_DEV);
	tt_read_dev(ev, dev);
	TT_READ(ev->aux, skb, TT_OFF_SKB_LEN);
	TT_READ(ev->mark, skb, TT_OFF_SKB_MARK);
	TT_READ(protocol, skb, TT_OFF_SKB_PROTOCOL);
	if (data_is_l3) {
		if (TT_READ(nh, skb, TT_OFF_SKB_DATA))
			return -1;
	} else {
		if (TT_READ(head, skb, TT_OFF_SKB_HEAD) || TT_READ(network_header, skb, TT_OFF_SKB_NETWORK_HEADER))
			return -1;
		nh = head + network_header;
	}
	return tt_parse_l3(ev, nh, protocol);
}

/* --- the filter, compiled from the TraceSpec (dataplane/trace/spec.py) ----------------------- */

#ifdef TT_FILTER_HOST
/* Address (16 bytes, IPv4 left-aligned) within the host prefix: four masked 32-bit words. */
static __always_inline bool tt_addr_match(const __u8 *addr)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, sizeof(w));
	return (w[0] & TT_HOST_M0) == TT_HOST_W0 && (w[1] & TT_HOST_M1) == TT_HOST_W1 &&
	       (w[2] & TT_HOST_M2) == TT_HOST_W2 && (w[3] & TT_HOST_M3) == TT_HOST_W3;
}
#endif

/* Family and host: does the event's packet match the spec's addresses (source or destination)? */
static __always_inline bool tt_match_l3(const struct tt_event *ev)
{
#ifdef TT_FILTER_FAMILY
	if (ev->family != TT_FILTER_FAMILY)
		return false;
#endif
#ifdef TT_FILTER_HOST
	if (!tt_addr_match(ev->src) && !tt_addr_match(ev->dst))
		return false;
#endif
	return true;
}

static __always_inline bool tt_match_proto(const struct tt_event *ev)
{
#ifdef TT_FILTER_PROTO
	if (ev->proto != TT_FILTER_PROTO)
		return false;
#endif
	return true;
}

/* Either port; only TCP, UDP and SCTP have ports. */
static __always_inline bool tt_match_port(const struct tt_event *ev)
{
#ifdef TT_FILTER_PORT
	if (ev->proto != IPPROTO_TCP && ev->proto != IPPROTO_UDP && ev->proto != IPPROTO_SCTP)
		return false;
	if (ev->sport != TT_FILTER_PORT && ev->dport != TT_FILTER_PORT)
		return false;
#endif
	return true;
}

/* Does the event's packet match the spec? A spec without criteria matches everything,
 * packets that are not IP included. */
static __always_inline bool tt_match(const struct tt_event *ev)
{
	return tt_match_l3(ev) && tt_match_proto(ev) && tt_match_port(ev);
}

/* A route lookup's flow. Input lookups carry no ports, and IPv4 ones no protocol either,
 * unless fib rules need them (ip_route_input_slow, ip6_route_input): such a lookup is judged
 * by what it has, when the spec names a host, so a trace by host/protocol/port still shows
 * the routing decision for the packet. */
static __always_inline bool tt_match_flow(const struct tt_event *ev)
{
#ifdef TT_FILTER_HOST
	if (ev->sport == 0 && ev->dport == 0)
		return tt_match_l3(ev) && (ev->proto == 0 || tt_match_proto(ev));
#endif
	return tt_match(ev);
}

/* True when the spec has any packet criterion: events that carry no packet (xdp_exception)
 * cannot be judged and are reported only to a spec without one. */
#if defined(TT_FILTER_FAMILY) || defined(TT_FILTER_PROTO) || defined(TT_FILTER_PORT) || \
	defined(TT_FILTER_HOST)
#define TT_FILTER_ANY 1
#else
#define TT_FILTER_ANY 0
#endif

#endif /* TT_TRACE_PARSE_H */
