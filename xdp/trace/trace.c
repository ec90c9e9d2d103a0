/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The packet tracer: one small program per kernel hook, each turning what it sees into a
 * struct tt_event, keeping it only if the packet matches the spec (compiled in as TT_FILTER_*)
 * and writing it to the ring buffer. Hooks are compiled only when dataplane/trace/kernel_support.py
 * found them on this kernel (TT_HOOK_ON_*); tracepoint fields are read at the offsets the
 * kernel's own format files give (TT_TP_*), kernel struct members at offsets from BTF
 * (TT_OFF_*). No kprobes: tracepoints everywhere, fentry/fexit where the kernel allows them.
 */
#include <uapi/linux/bpf.h>

#include "trace_abi.h"
#include "trace_maps.h"
#include "trace_parse.h"

/* Tracepoint field `field` of hook `hook` into `dst` (the offsets come from tracefs). */
#define TT_TP(dst, ctx, hook, field) TT_READ(dst, ctx, TT_TP_##hook##_##field)

/* Still within the time limit and the event budget? Checked first, so an expired tracer that
 * is still attached costs one map lookup per packet. */
static __always_inline bool tt_active(void)
{
	int zero = 0, emitted_idx = TT_COUNTER_EMITTED;
	struct tt_config *cfg = tt_config.lookup(&zero);
	__u64 *emitted = tt_counters.lookup(&emitted_idx);

	if (!cfg || !emitted || !cfg->max_events || *emitted >= cfg->max_events)
		return false;
	return bpf_ktime_get_ns() <= cfg->deadline_ns;
}

static __always_inline int tt_emit(struct tt_event *ev)
{
	int idx = TT_COUNTER_EMITTED;
	__u64 *counter;

	ev->ts_ns = bpf_ktime_get_ns();
	if (tt_events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
		idx = TT_COUNTER_LOST;
	counter = tt_counters.lookup(&idx);
	if (counter)
		__sync_fetch_and_add(counter, 1);
	return 0;
}

/* An event about an skb: parsed, filtered, emitted. */
static __always_inline int tt_skb_event(__u16 hook, const void *skb, bool data_is_l3, __s32 value,
					__u32 aux2)
{
	struct tt_event ev = {};

	if (!tt_active())
		return 0;
	ev.hook = hook;
	ev.value = value;
	ev.aux2 = aux2;
	tt_parse_skb(&ev, skb, data_is_l3); /* a packet we cannot parse still matches an empty spec */
	if (!tt_match(&ev))
		return 0;
	return tt_emit(&ev);
}

/* --- XDP ----------------------------------------------------------------------------------------- */

#ifdef TT_HOOK_ON_XDP_EXCEPTION
/* The tracepoint carries no packet: reported only to a spec without packet criteria. */
int tt_tp_xdp_exception(void *ctx)
{
	struct tt_event ev = {};

	if (TT_FILTER_ANY || !tt_active())
		return 0;
	ev.hook = TT_HOOK_XDP_EXCEPTION;
	TT_TP(ev.value, ctx, XDP_EXCEPTION, ACT);
	TT_TP(ev.aux, ctx, XDP_EXCEPTION, PROG_ID);
	TT_TP(ev.ifindex, ctx, XDP_EXCEPTION, IFINDEX);
	return tt_emit(&ev);
}
#endif

#ifdef TT_HOOK_ON_XDP_GENERIC
/* Generic (skb) XDP: the verdict, and the frame as the program left it in the xdp_buff. */
KRETFUNC_PROBE(bpf_prog_run_generic_xdp, void *skb, void *xdp, void *prog, __u32 act)
{
	struct tt_event ev = {};
	const void *rxq = 0, *dev = 0;
	const char *data = 0;

	if (!tt_active())
		return 0;
	ev.hook = TT_HOOK_XDP_GENERIC;
	ev.value = act;
	if (!TT_READ(rxq, xdp, TT_OFF_XDP_RXQ) && rxq && !TT_READ(dev, rxq, TT_OFF_RXQ_DEV))
		tt_read_dev(&ev, dev);
	if (!TT_READ(data, xdp, TT_OFF_XDP_DATA))
		tt_parse_frame(&ev, data);
	if (!tt_match(&ev))
		return 0;
	return tt_emit(&ev);
}
#endif

/* --- receive path ------------------------------------------------------------------------------- */

#ifdef TT_HOOK_ON_NETIF_RECEIVE_SKB
/* Fired as __netif_receive_skb_core starts: skb->data is at the network header, which the
 * stack has not recorded yet. */
int tt_tp_netif_receive_skb(void *ctx)
{
	const void *skb = 0;

	TT_TP(skb, ctx, NETIF_RECEIVE_SKB, SKBADDR);
	return tt_skb_event(TT_HOOK_NETIF_RECEIVE_SKB, skb, true, 0, 0);
}
#endif

#ifdef TT_HOOK_ON_TC
/* tcf_classify returns the TC_ACT_* verdict of the classifiers (TC BPF programs included,
 * unless attached through tcx, which bypasses it). tc_at_ingress tells the direction. */
KRETFUNC_PROBE(tcf_classify, void *skb, void *block, void *tp, void *res, bool compat_mode, int ret)
{
	__u8 flags = 0;

	TT_READ(flags, skb, TT_OFF_SKB_TC_AT_INGRESS_BYTE);
	return tt_skb_event(TT_HOOK_TC, skb, false, ret, !!(flags & TT_SKB_TC_AT_INGRESS_MASK));
}
#endif

#ifdef TT_HOOK_ON_IP_RCV
KFUNC_PROBE(ip_rcv, void *skb)
{
	return tt_skb_event(TT_HOOK_IP_RCV, skb, true, 0, 0);
}
#endif

#ifdef TT_HOOK_ON_IPV6_RCV
KFUNC_PROBE(ipv6_rcv, void *skb)
{
	return tt_skb_event(TT_HOOK_IPV6_RCV, skb, true, 0, 0);
}
#endif

/* --- routing ------------------------------------------------------------------------------------ */

/* The fib tracepoints describe the flow looked up, not an skb: the filter judges those fields
 * (tt_match_flow). The flow's input interface (iif; loopback for locally generated packets) is
 * the event's ifindex, its requested output interface (oif) aux2, the chosen device oifname. */
#ifdef TT_HOOK_ON_FIB
int tt_tp_fib(void *ctx)
{
	struct tt_event ev = {};
	__s32 iif = 0, oif = 0;

	if (!tt_active())
		return 0;
	ev.hook = TT_HOOK_FIB;
	ev.family = TT_AF_INET;
	TT_TP(ev.value, ctx, FIB, ERR);
	TT_TP(ev.aux, ctx, FIB, TB_ID);
	TT_TP(iif, ctx, FIB, IIF);
	TT_TP(oif, ctx, FIB, OIF);
	TT_TP(ev.proto, ctx, FIB, PROTO);
	bpf_probe_read_kernel(ev.src, 4, (const char *)ctx + TT_TP_FIB_SRC);
	bpf_probe_read_kernel(ev.dst, 4, (const char *)ctx + TT_TP_FIB_DST);
	/* Not gw4: the tracepoint leaves it unwritten (stale) for a route without a gateway. */
	TT_TP(ev.sport, ctx, FIB, SPORT);
	TT_TP(ev.dport, ctx, FIB, DPORT);
	TT_TP(ev.oifname, ctx, FIB, NAME);
	ev.ifindex = iif > 0 ? iif : 0;
	ev.aux2 = oif > 0 ? oif : 0;
	if (!tt_match_flow(&ev))
		return 0;
	return tt_emit(&ev);
}
#endif

#ifdef TT_HOOK_ON_FIB6
int tt_tp_fib6(void *ctx)
{
	struct tt_event ev = {};
	__s32 iif = 0, oif = 0;

	if (!tt_active())
		return 0;
	ev.hook = TT_HOOK_FIB6;
	ev.family = TT_AF_INET6;
	TT_TP(ev.value, ctx, FIB6, ERR);
	TT_TP(ev.aux, ctx, FIB6, TB_ID);
	TT_TP(iif, ctx, FIB6, IIF);
	TT_TP(oif, ctx, FIB6, OIF);
	TT_TP(ev.proto, ctx, FIB6, PROTO);
	TT_TP(ev.src, ctx, FIB6, SRC);
	TT_TP(ev.dst, ctx, FIB6, DST);
	TT_TP(ev.gw, ctx, FIB6, GW);
	TT_TP(ev.sport, ctx, FIB6, SPORT);
	TT_TP(ev.dport, ctx, FIB6, DPORT);
	TT_TP(ev.oifname, ctx, FIB6, NAME);
	ev.ifindex = iif > 0 ? iif : 0;
	ev.aux2 = oif > 0 ? oif : 0;
	if (!tt_match_flow(&ev))
		return 0;
	return tt_emit(&ev);
}
#endif

/* --- delivery, transmission, drops ---------------------------------------------------------------- */

#ifdef TT_HOOK_ON_DELIVER
/* A socket reads the packet's data (UDP, raw, ping sockets; TCP data goes through other paths). */
int tt_tp_deliver(void *ctx)
{
	const void *skb = 0;

	TT_TP(skb, ctx, DELIVER, SKBADDR);
	return tt_skb_event(TT_HOOK_DELIVER, skb, false, 0, 0);
}
#endif

#ifdef TT_HOOK_ON_XMIT
int tt_tp_xmit(void *ctx)
{
	const void *skb = 0;

	TT_TP(skb, ctx, XMIT, SKBADDR);
	return tt_skb_event(TT_HOOK_XMIT, skb, false, 0, 0);
}
#endif

#ifdef TT_HOOK_ON_KFREE_SKB
int tt_tp_kfree_skb(void *ctx)
{
	struct tt_event ev = {};
	const void *skb = 0;

	if (!tt_active())
		return 0;
	ev.hook = TT_HOOK_KFREE_SKB;
	TT_TP(skb, ctx, KFREE_SKB, SKBADDR);
	TT_TP(ev.location, ctx, KFREE_SKB, LOCATION);
	TT_TP(ev.value, ctx, KFREE_SKB, REASON);
	tt_parse_skb(&ev, skb, false);
	if (!tt_match(&ev))
		return 0;
	return tt_emit(&ev);
}
#endif

#ifdef TT_HOOK_ON_CONSUME_SKB
/* The end of a packet that was not dropped (e.g. a UDP datagram after the socket read it). */
int tt_tp_consume_skb(void *ctx)
{
	struct tt_event ev = {};
	const void *skb = 0;

	if (!tt_active())
		return 0;
	ev.hook = TT_HOOK_CONSUME_SKB;
	TT_TP(skb, ctx, CONSUME_SKB, SKBADDR);
	TT_TP(ev.location, ctx, CONSUME_SKB, LOCATION);
	tt_parse_skb(&ev, skb, false);
	if (!tt_match(&ev))
		return 0;
	return tt_emit(&ev);
}
#endif
