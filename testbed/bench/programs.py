"""BPF programs the benchmarks load besides the data plane itself.

- `noop()`: `return XDP_PASS` (or XDP_DROP), the floor every per-packet cost is compared with;
  on veth, XDP_DROP attached natively is the cheapest an XDP drop can be there.
- `harness()`: the real data plane (the same source, maps and program as `Dataplane.load`)
  plus one extra entry, `tg_bench_restoring`, for BPF_PROG_TEST_RUN.

Why the extra entry: in repeat mode the kernel runs the program again and again on the *same*
xdp_buff without resetting it (net/bpf/test_run.c), so after the first run has stripped a
tunnel, every further repetition sees the inner packet: a decap benchmark would time the decap
once and the inner packet a million times. `tg_bench_restoring` calls the unchanged ingress
logic, then puts the buffer back as it found it (bpf_xdp_adjust_meta to drop the metadata,
bpf_xdp_adjust_head to give back the stripped headers; decap moves only the data pointer and
rewrites the inner MAC to the same value each time), and copies back the first SAVED_BYTES bytes
(the program's XDP metadata went into the stripped headers), so every repetition decaps afresh.
Its own cost (a per-CPU map lookup, a 96-byte copy each way, two helper calls) is measured and
subtracted by the benchmark.
"""

from __future__ import annotations

from typing import Any

from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.program import XDP_FUNC, Program, fill_stages, load_functions, program_cflags
from dataplane.kernel.source import program_text

RESTORING_FUNC = "tg_bench_restoring"
RESTORING_NOOP_FUNC = "tg_bench_restoring_noop"
NOOP_FUNC = "tg_bench_noop"
_ENTRY = f"int {XDP_FUNC}(struct xdp_md *ctx)"
_BODY = f"static __always_inline int {XDP_FUNC}_body(struct xdp_md *ctx)"

SAVED_BYTES = 96  # probe packets are at least this long (see testbed.bench.cost)
_HARNESS_HEAD = f"""
#line 1 "testbed/bench/programs.py (benchmark harness)"
#define TG_BENCH_SAVED {SAVED_BYTES}

struct tg_bench_saved {{
	__u8 bytes[TG_BENCH_SAVED];
}};
/* The first bytes of the packet before the run (the program's own stack leaves no room). */
BPF_PERCPU_ARRAY(tg_bench_saved, struct tg_bench_saved, 1);

int {XDP_FUNC}(struct xdp_md *ctx)
{{
	return {XDP_FUNC}_body(ctx);
}}

static __always_inline int tg_bench_pass(struct xdp_md *ctx)
{{
	return XDP_PASS;
}}
"""


def _restoring(name: str, call: str) -> str:
    """`call`, then the buffer put back for the next BPF_PROG_TEST_RUN repetition: metadata
    dropped, stripped headers given back, their first bytes restored (the metadata was written
    into them). The helpers are called even with offset 0, so the harness costs the same
    whatever `call` did; with `tg_bench_pass` as `call` it measures exactly that cost.
    (BCC allows no map access inside a C macro, hence a Python template.)"""
    return f"""
int {name}(struct xdp_md *ctx)
{{
	__u32 zero = 0;
	struct tg_bench_saved *saved = tg_bench_saved.lookup(&zero);
	void *data = (void *)(long)ctx->data;
	long len = (long)ctx->data_end - (long)ctx->data;
	int verdict;
	long stripped, meta __attribute__((unused));

	asm volatile("" : "+r"(len)); /* scalars for the verifier, never folded into pointer sums */
	/* A probe shorter than TG_BENCH_SAVED is refused up front: one path per verdict after. */
	if (!saved || data + TG_BENCH_SAVED > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__builtin_memcpy(saved->bytes, data, TG_BENCH_SAVED);
	verdict = {call}(ctx);
	stripped = (long)ctx->data_end - (long)ctx->data;
	asm volatile("" : "+r"(stripped));
	stripped = len - stripped;
#ifndef TG_NO_XDP_META /* built so where the kernel refuses the helper: no metadata to drop */
	meta = (long)ctx->data - (long)ctx->data_meta;
#ifndef TG_NO_XDP_META
	bpf_xdp_adjust_meta(ctx, (int)meta);
#endif
	bpf_xdp_adjust_head(ctx, (int)-stripped);
	data = (void *)(long)ctx->data;
	saved = tg_bench_saved.lookup(&zero); /* the call's stack and registers are not ours */
	if (saved && data + TG_BENCH_SAVED <= (void *)(long)ctx->data_end)
		__builtin_memcpy(data, saved->bytes, TG_BENCH_SAVED);
	return verdict;
}}
"""


def _bcc() -> Any:
    import bcc

    return bcc


def harness_text() -> str:
    """The data plane's BCC source with the ingress entry turned into an inlined body."""
    text = program_text()
    if text.count(_ENTRY) != 1:
        raise RuntimeError(
            f"cannot build the benchmark harness: expected `{_ENTRY}` once in the "
            f"data plane source (was the entry renamed?)"
        )
    return (
        text.replace(_ENTRY, _BODY)
        + _HARNESS_HEAD
        + _restoring(RESTORING_FUNC, f"{XDP_FUNC}_body")
        + _restoring(RESTORING_NOOP_FUNC, "tg_bench_pass")
    )


class Harness:
    """A data plane (unpinned, unattached) whose maps serve both entries."""

    def __init__(self, settings: DataplaneSettings | None = None) -> None:
        bcc = _bcc()
        settings = settings or DataplaneSettings()
        cflags = program_cflags(settings)
        bpf = bcc.BPF(text=harness_text().encode(), cflags=cflags)
        xdp_fn, tc_fn, stages = load_functions(bpf)
        self.restoring_fn = bpf.load_func(RESTORING_FUNC.encode(), bcc.BPF.XDP)
        self.restoring_noop_fn = bpf.load_func(RESTORING_NOOP_FUNC.encode(), bcc.BPF.XDP)
        program = Program(bpf, xdp_fn, tc_fn, None, False, stages)
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
