/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tracer ABI: the event record, the hook enum and the map sizes shared by xdp/trace/trace.c and
 * dataplane/trace/tracer.py. The record reaches Python only as the ring buffer's ctypes Leaf type
 * (BCC generates it); the enum reaches Python through dataplane/trace/kernel_support.py, which parses
 * this file. Keep enum values explicit: they name hooks in the API.
 */
#ifndef TT_TRACE_ABI_H
#define TT_TRACE_ABI_H

#include <linux/types.h>

#define TT_ADDR_LEN 16
#define TT_IFNAMSIZ 16

/* Where an event was seen. The Python name of a hook is its suffix in lower case. */
enum tt_hook {
	TT_HOOK_UNSPECIFIED = 0,
	TT_HOOK_XDP_EXCEPTION = 1,     /* tracepoint xdp:xdp_exception: ABORTED or an invalid action */
	TT_HOOK_XDP_GENERIC = 2,       /* fexit bpf_prog_run_generic_xdp: generic-mode XDP verdict */
	TT_HOOK_NETIF_RECEIVE_SKB = 3, /* tracepoint net:netif_receive_skb: the stack receives it
	                                * (after native XDP passed it; before generic XDP and TC) */
	TT_HOOK_TC = 4,                /* fexit tcf_classify: a TC classifier's verdict */
	TT_HOOK_IP_RCV = 5,            /* fentry ip_rcv: IPv4 layer entry */
	TT_HOOK_IPV6_RCV = 6,          /* fentry ipv6_rcv: IPv6 layer entry */
	TT_HOOK_FIB = 7,               /* tracepoint fib:fib_table_lookup: IPv4 routing decision */
	TT_HOOK_FIB6 = 8,              /* tracepoint fib6:fib6_table_lookup: IPv6 routing decision */
	TT_HOOK_DELIVER = 9,           /* tracepoint skb:skb_copy_datagram_iovec: a socket reads it
	                                * (TCP, raw; UDP only when the skb is not linear) */
	TT_HOOK_XMIT = 10,             /* tracepoint net:net_dev_start_xmit: handed to a driver */
	TT_HOOK_KFREE_SKB = 11,        /* tracepoint skb:kfree_skb: dropped, with the kernel's reason */
	TT_HOOK_CONSUME_SKB = 12,      /* tracepoint skb:consume_skb: freed after normal use */
	TT_HOOK_MAX = 13,
};

/* One observation. Addresses are in network order, left-aligned (IPv4 in the first 4 bytes);
 * ports in host order. `value`, `aux` and `aux2` mean what the hook says:
 *   XDP_EXCEPTION / XDP_GENERIC: value = XDP action, aux = program id (exception only)
 *   TC:                          value = TC_ACT_* verdict, aux = 1 at ingress, 0 at egress
 *   FIB / FIB6:                  value = lookup error (0 or -errno), aux = table id,
 *                                aux2 = the flow's requested oif, oifname = the chosen device,
 *                                gw = the gateway (FIB6 only: fib leaves it stale without one)
 *   KFREE_SKB:                   value = enum skb_drop_reason, location = freeing function
 *   CONSUME_SKB:                 location = freeing function
 *   skb hooks:                   aux = skb->len
 * ifname is the device the skb is on (the fib tracepoints carry none); oifname is a fib result. */
struct tt_event {
	__u64 ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 location;    /* kfree_skb: address of the function that freed the packet */
	__s32 value;
	__u32 aux;
	__u32 aux2;
	__u32 mark;        /* skb->mark (where an skb is at hand) */
	__u32 ifindex;     /* in the packet's own network namespace */
	__u16 hook;        /* enum tt_hook */
	__u8 family;       /* AF_INET, AF_INET6, 0 when unknown */
	__u8 proto;        /* IPPROTO_* */
	__u16 sport;
	__u16 dport;
	__u8 src[TT_ADDR_LEN];
	__u8 dst[TT_ADDR_LEN];
	__u8 gw[TT_ADDR_LEN];
	char ifname[TT_IFNAMSIZ];
	char oifname[TT_IFNAMSIZ];
	__u32 pad;
};
_Static_assert(sizeof(struct tt_event) == 128, "struct tt_event: user space relies on its size");

/* Indexes of the counter array (shared by all CPUs: updated atomically). */
enum tt_counter {
	TT_COUNTER_EMITTED = 0, /* events written to the ring buffer */
	TT_COUNTER_LOST = 1,    /* events dropped because the ring buffer was full */
	TT_COUNTER_MAX = 2,
};

/* Limits, written by user space before the programs are attached. Nothing is emitted while
 * max_events is 0, after deadline_ns (bpf_ktime_get_ns() time) or once max_events were. */
struct tt_config {
	__u64 deadline_ns;
	__u64 max_events;
};
_Static_assert(sizeof(struct tt_config) == 16, "struct tt_config: user space relies on its size");

/* Pages of the event ring buffer (a power of two): 64 pages of 4 KiB hold about 1,900 events
 * (each with the ring's 8-byte header). */
#ifndef TT_RING_PAGES
#define TT_RING_PAGES 64
#endif

#endif /* TT_TRACE_ABI_H */
