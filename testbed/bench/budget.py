"""Benchmark 0: the verifier's work on every BPF program Tidegate loads, and their size.

The kernel refuses a program once its verifier has processed 1,000,000 instructions over all
paths (BPF_COMPLEXITY_LIMIT_INSNS: E2BIG), so what a program takes today is the headroom the next
feature has left. Every program is loaded here as its loader loads it, with every feature the
policy can use compiled in, and the kernel's own account read back (`verified_insns`, the JIT's
machine code size and the instruction count after the verifier's rewrites; bpf_prog_info through
libbpf, dataplane/kernel/bpf_info.py):

- the data plane (`Dataplane.load`): the XDP ingress entry, the stages it tail-calls, TC ingress;
  where this kernel refuses `bpf_xdp_adjust_meta` (the build then leaves classifying to TC),
  also its XDP programs as built for a kernel that allows it, whose judge stage runs the
  classifiers' search too (the helper call stubbed out, so that this kernel verifies the rest);
- the benchmark harness (testbed.bench.programs): the same source built with its restoring
  entries, and the `return XDP_PASS` floor, and xdpgen's frame redirect (testbed.bench.xdpgen);
- the packet tracer (dataplane/trace): one program per hook this kernel offers, with every
  filter (host, protocol, port) compiled in.

Nothing is attached (the tracer's trampoline hooks, where the kernel allows them at all, are
attached for the moment it takes to load them: BCC loads those only by attaching).
tests/bpf/dataplane/test_verifier_budget.py asserts the target below on the same list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from dataplane.kernel.bpf_info import BPF_COMPLEXITY_LIMIT_INSNS, ProgInfo, prog_info
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.features import build_cflags
from dataplane.kernel.program import compile_program
from testbed.bench.common import Profile, Section, Table, Target

log = logging.getLogger(__name__)

NAME = "budget"
TITLE = "Verifier budget of every program Tidegate loads"
BUDGET_SHARE = 0.5  # at most half the verifier's limit, so the next feature cannot hit E2BIG
TRACE_FILTERS = {"host": "10.0.0.0/8", "protocol": "tcp", "port": 443}  # every filter on


@dataclass(frozen=True)
class Loaded:
    loader: str  # what loads it: "data plane", "benchmark harness", "tracer", ...
    function: str  # the C function
    info: ProgInfo

    @property
    def within_budget(self) -> bool:
        return self.info.verified_insns <= BUDGET_SHARE * BPF_COMPLEXITY_LIMIT_INSNS


def _infos(loader: str, fns: list[Any]) -> list[Loaded]:
    return [Loaded(loader, fn.name.decode() if isinstance(fn.name, bytes) else str(fn.name), prog_info(fn.fd))
            for fn in fns]


@contextmanager
def _dataplane() -> Iterator[list[Loaded]]:
    prog = compile_program(DataplaneSettings())  # no interface: nothing pinned
    try:
        yield _infos("data plane", prog.functions())
    finally:
        prog.close()


META_HELPER_CALL = "	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta))) {"
META_STUB = "	if (ctx->data_meta == ctx->data_end) { /* bpf_xdp_adjust_meta: refused by this kernel */"


@contextmanager
def _dataplane_with_meta() -> Iterator[list[Loaded]]:
    """The XDP programs as a kernel allowing XDP metadata gets them (nothing where this one does:
    _dataplane loaded them already)."""
    if not any(flag == "-DTG_NO_XDP_META" for flag in build_cflags()):
        yield []
        return
    from bcc import BPF

    from dataplane.kernel.program import XDP_FUNC, XDP_STAGES, program_cflags
    from dataplane.kernel.source import program_text

    text = program_text()
    if text.count(META_HELPER_CALL) != 1:
        raise RuntimeError(f"testbed/bench/budget.py: expected `{META_HELPER_CALL.strip()}` once in the "
                           "data plane source (update META_HELPER_CALL)")
    cflags = [f for f in program_cflags(DataplaneSettings()) if f != "-DTG_NO_XDP_META"]
    bpf = BPF(text=text.replace(META_HELPER_CALL, META_STUB).encode(), cflags=cflags)
    try:
        fns = [bpf.load_func(f.encode(), BPF.XDP) for f in (XDP_FUNC, *XDP_STAGES.values())]
        yield _infos("data plane (XDP metadata on)", fns)
    finally:
        bpf.cleanup()


@contextmanager
def _harness() -> Iterator[list[Loaded]]:
    from testbed.bench.programs import Harness, Noop

    h, noop = Harness(), Noop()
    try:
        yield _infos("benchmark harness", [*h.dp.program.functions(), h.restoring_fn, h.restoring_noop_fn,
                                           noop.fn])
    finally:
        h.close()
        noop.close()


@contextmanager
def _xdpgen() -> Iterator[list[Loaded]]:
    from testbed.bench import xdpgen

    bpf, _fd = xdpgen.redirect_program(1, bytes(64))
    try:
        yield _infos("benchmark sender (xdpgen)", [bpf.funcs[xdpgen.REDIRECT_FUNC.encode()]])
    finally:
        bpf.cleanup()


@contextmanager
def _tracer() -> Iterator[list[Loaded]]:
    from bcc import BPF

    from dataplane.trace import kernel_support as tk
    from dataplane.trace.spec import TraceSpec
    from dataplane.trace.tracer import compile_tracer

    usable = [s for s in tk.probe_hooks() if s.supported]
    bpf = compile_tracer(TraceSpec(**TRACE_FILTERS), usable)  # type: ignore[arg-type]
    try:
        fns = []
        for s in usable:
            if s.hook.kind == "tracepoint":
                fns.append(bpf.load_func(s.hook.function.encode(), BPF.TRACEPOINT))
            else:  # BCC loads a trampoline program only by attaching it
                attach = bpf.attach_kfunc if s.hook.kind == "fentry" else bpf.attach_kretfunc
                attach(fn_name=s.hook.target.encode())
                fns.append(bpf.funcs[s.hook.function.encode()])
        yield _infos("packet tracer", fns)
    finally:
        bpf.cleanup()


LOADERS: tuple[Callable[[], Any], ...] = (_dataplane, _dataplane_with_meta, _harness, _xdpgen, _tracer)


def every_program() -> list[Loaded]:
    """Loads every program Tidegate loads (one loader at a time) and reads the kernel's account."""
    out: list[Loaded] = []
    for loader in LOADERS:
        with ExitStack() as stack:
            out += stack.enter_context(loader())
    return out


def run(profile: Profile) -> Section:
    section = Section(NAME, TITLE, method=__doc__ or "")
    try:
        loaded = every_program()
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        log.exception("verifier budget")
        section.failures.append(f"loading the programs failed: {type(exc).__name__}: {exc}")
        return section
    t = Table(f"Every program as loaded on this kernel (build flags: {' '.join(build_cflags()) or 'none'}); "
              f"the verifier's limit is {BPF_COMPLEXITY_LIMIT_INSNS:,} instructions",
              ["loaded by", "program", "verified instructions", "share of the limit", "instructions (xlated)",
               "machine code (JIT)"])
    for row in loaded:
        t.add(row.loader, f"`{row.function}`", row.info.verified_insns, f"{row.info.budget_share:.1%}",
              row.info.xlated_bytes // 8, f"{row.info.jited_bytes:,} B")
    section.tables.append(t)
    worst = max(loaded, key=lambda r: r.info.verified_insns)
    section.targets.append(Target(
        "Verifier headroom", f"every program ≤ {BUDGET_SHARE:.0%} of the verifier's "
                             f"{BPF_COMPLEXITY_LIMIT_INSNS:,}-instruction limit",
        f"the largest, `{worst.function}` ({worst.loader}), takes {worst.info.verified_insns:,} "
        f"({worst.info.budget_share:.1%}); {len(loaded)} programs", all(r.within_budget for r in loaded)))
    return section
