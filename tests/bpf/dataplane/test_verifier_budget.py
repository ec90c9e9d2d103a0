"""Verifier headroom: every BPF program Tidegate loads takes at most half the verifier's budget.

The kernel refuses a program once its verifier has processed 1,000,000 instructions (E2BIG);
the data plane once took 825,579 of them, and a one-line parser change tipped it over. The list
of programs and how each is loaded is testbed.bench.budget's (`make bench` reports the same
numbers in BENCHMARKS.md): the data plane with every feature a policy can use, the benchmark
harness, the benchmark's sender and the packet tracer with every filter.
"""

from __future__ import annotations

import pytest

from dataplane.kernel.bpf_info import BPF_COMPLEXITY_LIMIT_INSNS, prog_info
from dataplane.kernel.features import build_cflags
from testbed.bench import budget

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def loaded(bpf_available):  # noqa: ANN001
    return budget.every_program()


def test_every_program_leaves_half_the_verifier_budget(loaded):
    over = [f"{r.loader}: {r.function} {r.info.verified_insns:,}" for r in loaded if not r.within_budget]
    assert not over, f"over {budget.BUDGET_SHARE:.0%} of {BPF_COMPLEXITY_LIMIT_INSNS:,}: {over}"


def test_the_list_covers_every_program_of_each_loader(loaded):
    names = {(r.loader, r.function) for r in loaded}
    for function in ("tg_xdp_ingress", "tg_xdp_judge", "tg_xdp_reject", "tg_tc_ingress", "tg_tc_egress"):
        assert ("data plane", function) in names
        assert ("benchmark harness", function) in names
    assert {("benchmark harness", "tg_bench_restoring"), ("benchmark harness", "tg_bench_noop"),
            ("benchmark sender (xdpgen)", "tg_gen_redirect")} <= names
    assert any(r.loader == "packet tracer" for r in loaded)
    if "-DTG_NO_XDP_META" in build_cflags():  # the judge with the classifiers' search, verified too
        assert ("data plane (XDP metadata on)", "tg_xdp_judge") in names
    assert all(r.info.verified_insns > 0 and r.info.jited_bytes > 0 for r in loaded)


def test_prog_info_reads_the_kernels_account(bpf_available):
    """Against a program whose verification is known: straight-line code is verified once per
    instruction, so verified_insns is the instruction count."""
    from bcc import BPF

    bpf = BPF(text=b"int tg_straight(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        fn = bpf.load_func(b"tg_straight", BPF.XDP)
        info = prog_info(fn.fd)
    finally:
        bpf.cleanup()
    assert info.name == "tg_straight"
    assert info.verified_insns == info.xlated_bytes // 8 == 2  # r0 = XDP_PASS; exit
    assert len(info.tag) == 8 and info.id > 0
