"""BPF programs the benchmarks load besides the data plane itself.

- `noop()`: `return XDP_PASS` (or XDP_DROP), the floor every per-packet cost is compared with;
  on veth, XDP_DROP attached natively is the cheapest an XDP drop can be there.
- `harness()`: the real data plane (the same source, maps and programs as `Dataplane.load`,
  built with `-DTG_BENCH`) plus two entries for BPF_PROG_TEST_RUN, `tg_bench_restoring` and
  `tg_bench_restoring_noop`.

Why the extra entry: in repeat mode the kernel runs the program again and again on the *same*
xdp_buff without resetting it (net/bpf/test_run.c), so after the first run has stripped a
tunnel, every further repetition sees the inner packet: a decap benchmark would time the decap
once and the inner packet a million times. `tg_bench_restoring` saves the first SAVED_BYTES
bytes and the length of the packet, arms the restore, and runs the unchanged ingress logic; the
one exit of every XDP program (`tg_xdp_exit`, xdp/include/judge.h), in the ingress entry or in
the stage it tail-called, then sees the restore armed (TG_BENCH builds only) and puts the buffer
back as it found it (bpf_xdp_adjust_meta to drop the metadata, bpf_xdp_adjust_head to give back
the stripped headers; decap moves only the data pointer and rewrites the inner MAC to the same
value each time) and copies back the saved bytes (the program's XDP metadata went into the
stripped headers), so every repetition decaps afresh. Its own cost (two per-CPU map lookups, a
96-byte copy each way, two helper calls) is measured by `tg_bench_restoring_noop`, the same
around `return XDP_PASS`, and subtracted by the benchmark. The plain entry of the same build
runs unarmed: it costs the production program one per-CPU array lookup more.
"""

from __future__ import annotations

from typing import Any

from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.program import XDP_FUNC, Program, fill_stages, load_functions, program_cflags
from dataplane.kernel.source import program_text

RESTORING_FUNC = "tg_bench_restoring"
RESTORING_NOOP_FUNC = "tg_bench_restoring_noop"
NOOP_FUNC = "tg_bench_noop"
BENCH_CFLAG = "-DTG_BENCH"
_ENTRY = f"int {XDP_FUNC}(struct xdp_md *ctx)"
_BODY = f"static __always_inline int {XDP_FUNC}_body(struct xdp_md *ctx)"

# A build without the ACL's flow cache (capacities.acl_flows 0): every repetition of a probe
# searches, where with the cache all but the first come from it (docs/classifier.md, "Flow cache").
SEARCHED = DataplaneSettings(capacities=Capacities(acl_flows=0))

SAVED_BYTES = 96  # probe packets are at least this long (see testbed.bench.cost)
# Before the data plane's source: its exit (tg_xdp_exit) calls tg_bench_exit.
_HARNESS_HEAD = f"""
#line 1 "testbed/bench/programs.py (benchmark harness)"
#define TG_BENCH_SAVED {SAVED_BYTES}

struct tg_bench_saved {{
	__u8 bytes[TG_BENCH_SAVED];
	__u32 len;   /* of the packet before the run */
	__u32 armed; /* a harness entry wants the packet restored at the exit */
}};
/* The first bytes of the packet before the run (the program's own stack leaves no room). */
BPF_PERCPU_ARRAY(tg_bench_saved, struct tg_bench_saved, 1);

/* Saves the packet's first bytes and length and arms the restore; nonzero for a probe shorter
 * than TG_BENCH_SAVED (refused up front: one path per verdict after). */
static __always_inline int tg_bench_arm(struct xdp_md *ctx)
{{
	__u32 zero = 0;
	struct tg_bench_saved *saved = tg_bench_saved.lookup(&zero);
	void *data = (void *)(long)ctx->data;

	if (!saved || data + TG_BENCH_SAVED > (void *)(long)ctx->data_end)
		return -1;
	__builtin_memcpy(saved->bytes, data, TG_BENCH_SAVED);
	saved->len = (long)ctx->data_end - (long)ctx->data;
	saved->armed = 1;
	return 0;
}}

/* At every XDP exit: when armed, the buffer put back for the next repetition (metadata dropped,
 * stripped headers given back, their first bytes restored). The helpers are called even with
 * offset 0, so the harness costs the same whatever the program did. */
static __always_inline void tg_bench_exit(struct xdp_md *ctx)
{{
	__u32 zero = 0;
	struct tg_bench_saved *saved = tg_bench_saved.lookup(&zero);
	void *data;
	long stripped, meta __attribute__((unused)); /* unused without metadata */

	if (!saved || !saved->armed)
		return;
	saved->armed = 0;
	stripped = (long)saved->len - ((long)ctx->data_end - (long)ctx->data);
	meta = (long)ctx->data - (long)ctx->data_meta;
#ifndef TG_NO_XDP_META
	bpf_xdp_adjust_meta(ctx, (int)meta);
#endif
	bpf_xdp_adjust_head(ctx, (int)-stripped);
	data = (void *)(long)ctx->data;
	saved = tg_bench_saved.lookup(&zero); /* the helpers invalidated nothing here, but be plain */
	if (saved && data + TG_BENCH_SAVED <= (void *)(long)ctx->data_end)
		__builtin_memcpy(data, saved->bytes, TG_BENCH_SAVED);
}}
"""
# After it: the ingress entry, renamed to an inlined body, and the harness entries around it.
_HARNESS_TAIL = f"""
#line 1 "testbed/bench/programs.py (benchmark harness entries)"
int {XDP_FUNC}(struct xdp_md *ctx)
{{
	return {XDP_FUNC}_body(ctx);
}}

int {RESTORING_FUNC}(struct xdp_md *ctx)
{{
	if (tg_bench_arm(ctx))
		return XDP_ABORTED;
	return {XDP_FUNC}_body(ctx);
}}

int {RESTORING_NOOP_FUNC}(struct xdp_md *ctx)
{{
	if (tg_bench_arm(ctx))
		return XDP_ABORTED;
	tg_bench_exit(ctx);
	return XDP_PASS;
}}
"""


def _bcc() -> Any:
    import bcc

    return bcc


def harness_text() -> str:
    """The data plane's BCC source with the ingress entry turned into an inlined body, between
    the harness's head (the restore at the exit) and its entries."""
    text = program_text()
    if text.count(_ENTRY) != 1:
        raise RuntimeError(
            f"cannot build the benchmark harness: expected `{_ENTRY}` once in the "
            f"data plane source (was the entry renamed?)"
        )
    return _HARNESS_HEAD + text.replace(_ENTRY, _BODY) + _HARNESS_TAIL


class Harness:
    """A data plane (unpinned, unattached) whose maps serve both entries."""

    def __init__(self, settings: DataplaneSettings | None = None, text: str | None = None) -> None:
        """`text`: another source than harness_text() (testbed.bench.cost_profile's variants)."""
        bcc = _bcc()
        settings = settings or DataplaneSettings()
        cflags = [*program_cflags(settings), BENCH_CFLAG]
        bpf = bcc.BPF(text=(text or harness_text()).encode(), cflags=cflags)
        xdp_fn, tc_fn, tc_egress_fn, stages = load_functions(bpf)
        self.restoring_fn = bpf.load_func(RESTORING_FUNC.encode(), bcc.BPF.XDP)
        self.restoring_noop_fn = bpf.load_func(RESTORING_NOOP_FUNC.encode(), bcc.BPF.XDP)
        program = Program(bpf, xdp_fn, tc_fn, None, False, stages, tc_egress_fn)
        fill_stages(program)
        self.dp = Dataplane(program, None, settings)

    @property
    def ingress_fd(self) -> int:
        return int(self.dp.program.xdp_fn.fd)

    @property
    def restoring_fd(self) -> int:
        return int(self.restoring_fn.fd)

    @property
    def restoring_noop_fd(self) -> int:
        return int(self.restoring_noop_fn.fd)

    def close(self) -> None:
        self.dp.close()


class Noop:
    """`return XDP_PASS;` (or XDP_DROP), compiled with BCC."""

    def __init__(self, action: str = "XDP_PASS") -> None:
        bcc = _bcc()
        src = f"int {NOOP_FUNC}(struct xdp_md *ctx) {{ return {action}; }}\n"
        self.bpf = bcc.BPF(text=src.encode())
        self.fn = self.bpf.load_func(NOOP_FUNC.encode(), bcc.BPF.XDP)

    @property
    def fd(self) -> int:
        return int(self.fn.fd)

    def close(self) -> None:
        self.bpf.cleanup()
