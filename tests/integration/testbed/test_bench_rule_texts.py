"""The baselines' inputs (testbed.bench.column_rules) load into the real tools: a ClassBench set,
IPv4 and moved into IPv6, as iptables-restore / ip6tables-restore and nft -f text in a namespace
of its own, every rule there afterwards."""

from __future__ import annotations

import gzip

import pytest

from testbed import classbench
from testbed.bench import column_rules
from testbed.bench.control_rig import restore_loaders
from testbed.netns import Namespace

pytestmark = pytest.mark.skipif(not classbench.available(), reason="ClassBench sets not found")
TABLE = "tgtexts"


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_classbench_set_loads_into_every_baseline_tool(ipv6: bool) -> None:
    text = gzip.decompress(classbench.path_of("fw1", 1_000).read_bytes()).decode()
    cols = classbench.parse(classbench.moved_to_ipv6(text) if ipv6 else text)
    loaders = restore_loaders(ipv6=ipv6)
    assert loaders, "no rule loader found"
    for label, cmd in loaders:
        with Namespace(prefix="tgtxt") as ns:
            if label == "nft -f":
                ns.run(cmd, input=column_rules.nft_chain(cols, TABLE), timeout=120)
                listed = ns.run(["nft", "list", "chain", "ip6" if ipv6 else "ip", TABLE, "prerouting"]).stdout
                rules = [line for line in listed.splitlines() if " counter " in line]
                assert ("ip6 saddr" in listed) == ipv6
            else:
                ns.run(cmd, input=column_rules.iptables_restore(cols), timeout=120)
                save = "ip6tables-save" if ipv6 else "iptables-save"
                listed = ns.run([save.replace("-save", "-legacy-save") if "legacy" in label else save,
                                 "-t", "raw"]).stdout
                rules = [line for line in listed.splitlines() if line.startswith("-A PREROUTING")]
            assert len(rules) == len(cols), label
