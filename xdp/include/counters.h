/* SPDX-License-Identifier: Apache-2.0 */
/* Per-CPU counting helpers: no atomics needed, user space sums the CPUs. */
#ifndef TG_COUNTERS_H
#define TG_COUNTERS_H

#include "maps.h"

static __always_inline void tg_count(struct tg_counter *c, __u64 bytes)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void tg_count_reason(__u32 reason, __u64 bytes)
{
	tg_count(reason_stats.lookup(&reason), bytes);
}

static __always_inline void tg_count_event(__u32 event)
{
	tg_count(event_stats.lookup(&event), 0);
}

#endif /* TG_COUNTERS_H */
