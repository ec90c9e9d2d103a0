/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the tracer, declared once. A tracer is one BCC module with its own maps: nothing
 * is pinned, so everything goes away when the tracer closes its file descriptors.
 */
#ifndef TT_TRACE_MAPS_H
#define TT_TRACE_MAPS_H

#include "trace_abi.h"

/*
 * A ring buffer of `record`s. This is BPF_RINGBUF_OUTPUT's declaration (the member names are
 * what BCC's rewriter looks for) with the record as the leaf, so user space gets the record's
 * ctypes type as the table's Leaf instead of restating the struct in Python.
 */
#define TT_RINGBUF(record, name, pages) \
	struct name##_table_t { \
		int key; \
		record leaf; \
		int (*ringbuf_output)(void *, u64, u64); \
		u32 max_entries; \
	}; \
	__attribute__((section("maps/ringbuf"))) \
	struct name##_table_t name = { .max_entries = (pages) * PAGE_SIZE }

/* Events for user space. */
TT_RINGBUF(struct tt_event, tt_events, TT_RING_PAGES);

/* enum tt_counter: events emitted and events lost to a full ring buffer. */
BPF_ARRAY(tt_counters, __u64, TT_COUNTER_MAX);

/* The one struct tt_config: deadline and event budget. */
BPF_ARRAY(tt_config, struct tt_config, 1);

#endif /* TT_TRACE_MAPS_H */
