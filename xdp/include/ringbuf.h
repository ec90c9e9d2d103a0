/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A BPF ring buffer of `record`s for BCC modules. BCC's BPF_RINGBUF_OUTPUT can be neither pinned
 * nor given a record type, and BPF_TABLE_PINNED("ringbuf", ...) declares no ringbuf_output
 * method. So this is BPF_RINGBUF_OUTPUT's declaration (the member names are what BCC's rewriter
 * looks for) with the record as the leaf, which gives user space the record's ctypes type as the
 * table's Leaf, placed in section `sec`: "maps/ringbuf", or "maps/ringbuf:<pin path>" to pin it
 * (BCC's "section:pin path" convention, which it applies to any map type).
 */
#ifndef TG_RINGBUF_H
#define TG_RINGBUF_H

#define TG_RINGBUF_IN(sec, record, name, pages) \
	struct name##_table_t { \
		int key; \
		record leaf; \
		int (*ringbuf_output)(void *, u64, u64); \
		u32 max_entries; \
	}; \
	__attribute__((section(sec))) \
	struct name##_table_t name = { .max_entries = (pages) * PAGE_SIZE }

#endif /* TG_RINGBUF_H */
