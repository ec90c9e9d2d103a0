"""The timing tool (dataplane.perf_check) keeps working: its workload and its compile-only run."""

from __future__ import annotations

from dataplane import perf_check


def test_the_workload_is_distinct_slash_24s_with_one_port_each():
    rules = perf_check.workload(500)
    assert len({r.src for r in rules}) == 500 and all(r.src.prefixlen == 24 for r in rules)
    assert all(r.dport is not None and r.dport[0] == r.dport[1] for r in rules)
    assert perf_check.workload(500) == rules, "deterministic"


def test_compile_only_runs_without_root(capsys):
    perf_check.main(["--compile-only", "--sizes", "10,100"])
    assert "compile     100 rules" in capsys.readouterr().out
