/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the tracer, declared once. A tracer is one BCC module with its own maps: nothing
 * is pinned, so everything goes away when the tracer closes its file descriptors.
 */
#ifndef TT_TRACE_MAPS_H
#define TT_TRACE_MAPS_H

#include "ringbuf.h"
#include "trace_abi.h"

/* Events for user space. */
TG_RINGBUF_IN("maps/ringbuf", struct tt_event, tt_events, TT_RING_PAGES);

/* enum tt_counter: events emitted and events lost to a full ring buffer. */
BPF_ARRAY(tt_counters, __u64, TT_COUNTER_MAX);

/* The one struct tt_config: deadline and event budget. */
BPF_ARRAY(tt_config, struct tt_config, 1);

#endif /* TT_TRACE_MAPS_H */
