"""The two bucket maps of a table in the real programs (BPF_PROG_TEST_RUN): IPv4 packets probe
acl_buckets4 (16-byte keys), the others acl_buckets (40 bytes). What the kernel maps hold after
full compiles and edits, the verdicts packets get from them, and refusals when one map is short."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dataplane.acl import acl_rule
from dataplane.kernel.bpf_info import map_info
from dataplane.map_config import RuntimeConfig
from dataplane.match import live as lv
from dataplane.match.adapter import to_columns

from ..conftest import IF_MAC

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2


@pytest.fixture
def cdp(dp):  # noqa: ANN001
    dp.configure(RuntimeConfig(decap=False), if_mac=IF_MAC)  # UDP to any port judged as itself
    return dp


def udp(src: str, dst: str = "192.0.2.1", dport: int = 80) -> bytes:
    ip = IP if ipaddress.ip_address(src).version == 4 else IPv6
    if ip is IPv6 and dst == "192.0.2.1":
        dst = "2001:db8:ffff::1"
    return bytes(Ether(src="02:00:00:00:00:02", dst="02:aa:00:00:00:01") / ip(src=src, dst=dst)
                 / UDP(sport=1234, dport=dport) / (b"x" * 32))


def kernel_buckets(dp) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The keys the kernel holds: (acl_buckets4's as tg_bucket_key4, acl_buckets' as tg_bucket_key)."""
    k4, _ = dp.acl._writer("acl_buckets4").read_all()
    k, _ = dp.acl._writer("acl_buckets").read_all()
    return np.frombuffer(k4, dtype=lv.KEY4), np.frombuffer(k, dtype=lv.KEY)


def src4(keys4: np.ndarray) -> list[str]:
    return sorted(str(ipaddress.ip_address(k["src"].tobytes())) for k in keys4)


def verdicts(dp, packets: dict[str, bytes]) -> dict[str, int]:  # noqa: ANN001
    return {name: dp.run_xdp(data).action for name, data in packets.items()}


def test_an_ipv4_and_an_ipv6_rule_of_one_subtable_each_in_its_map(cdp):
    cdp.acl.replace(to_columns([acl_rule(1, 1, src="10.1.0.0/16"), acl_rule(2, 2, src="2001::/16")]))
    assert len(cdp.acl.current.tables) == 1, "both in one subtable (source /16)"
    keys4, keys = kernel_buckets(cdp)
    assert src4(keys4) == ["10.1.0.0"] and keys4["family"].tolist() == [4]
    assert keys["family"].tolist() == [6]
    assert keys["src"].tobytes() == bytes.fromhex("2001") + bytes(14)
    assert verdicts(cdp, {"v4 in": udp("10.1.2.3"), "v4 out": udp("10.2.0.1"),
                          "v4 with the v6 rule's first bytes": udp("32.1.0.1"),
                          "v6 in": udp("2001:abcd::1"), "v6 out": udp("2002::1")}) == \
        {"v4 in": XDP_DROP, "v4 out": XDP_PASS, "v4 with the v6 rule's first bytes": XDP_PASS,
         "v6 in": XDP_DROP, "v6 out": XDP_PASS}


def test_a_rule_of_any_family_is_in_both_maps_and_matches_both(cdp):
    cdp.acl.replace(to_columns([acl_rule(1, 1, proto=17, dport=(53, 53))]))
    keys4, keys = kernel_buckets(cdp)
    assert (keys4["family"].tolist(), keys4["dport"].tolist()) == ([0], [53])
    assert (keys["family"].tolist(), keys["dport"].tolist()) == ([0], [53])
    assert verdicts(cdp, {"v4 53": udp("10.0.0.1", dport=53), "v6 53": udp("2001:db8::1", dport=53),
                          "v4 54": udp("10.0.0.1", dport=54), "v6 54": udp("2001:db8::1", dport=54)}) == \
        {"v4 53": XDP_DROP, "v6 53": XDP_DROP, "v4 54": XDP_PASS, "v6 54": XDP_PASS}
    assert cdp.acl.occupancy()["acl_buckets4"][0] == cdp.acl.occupancy()["acl_buckets"][0] == 1


def test_edits_move_a_rule_between_the_maps(cdp):
    """A rule replaced by id with one of the other family leaves one map for the other (an edit
    of the live bank, no bank switch), and packets follow at once."""
    cdp.acl.replace(to_columns([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(2, 10)]))
    v4, v6 = udp("10.1.0.9"), udp("2001:db8:1::9")
    bank = cdp.acl.current.bank
    steps = [([acl_rule(1, 1, src="10.1.0.0/16")], ["10.1.0.0"], 0, (XDP_DROP, XDP_PASS)),
             ([acl_rule(1, 1, src="2001:db8:1::/48")], [], 1, (XDP_PASS, XDP_DROP)),
             ([acl_rule(1, 1, src="10.1.0.0/16")], ["10.1.0.0"], 0, (XDP_DROP, XDP_PASS))]
    for rule, in4, in6, want in steps:
        compiled = cdp.acl.add(to_columns(rule))
        assert compiled.edit is not None and cdp.acl.current.bank == bank
        keys4, keys = kernel_buckets(cdp)
        assert [a for a in src4(keys4) if a.startswith("10.1.")] == in4
        assert len(keys) == in6
        assert (cdp.run_xdp(v4).action, cdp.run_xdp(v6).action) == want
        assert cdp.acl.current.bucket_counts() == (len(keys4), len(keys))
    cdp.acl.delete([1])
    keys4, keys = kernel_buckets(cdp)
    assert len(keys4) == 8 and len(keys) == 0
    assert (cdp.run_xdp(v4).action, cdp.run_xdp(v6).action) == (XDP_PASS, XDP_PASS)


def test_a_short_map_refuses_naming_its_setting_and_nothing_changes(bpf_available):
    from dataplane.kernel.build_settings import Capacities, DataplaneSettings
    from dataplane.kernel.interface import Dataplane

    caps = Capacities(acl_rules=64, acl_buckets4=6, acl_buckets=2)
    dp = Dataplane.load(settings=DataplaneSettings(capacities=caps))
    try:
        dp.configure(RuntimeConfig(decap=False), if_mac=IF_MAC)
        assert map_info(dp.program.map_fd("acl_buckets4")).max_entries == 6
        assert map_info(dp.program.map_fd("acl_buckets")).max_entries == 2
        dp.acl.replace(to_columns([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(1, 4)]))
        before, current = kernel_buckets(dp), dp.acl.current
        probe = udp("10.1.0.1")
        assert dp.run_xdp(probe).action == XDP_DROP
        others = to_columns([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(11, 15)])
        with pytest.raises(ValueError, match=r"raise capacities.acl_buckets4$"):
            dp.acl.replace(others)  # 3 held and 4 new: 7 of 6 until the old ones go
        v6 = to_columns([acl_rule(100 + i, 100 + i, src=f"200{i}::/16") for i in range(3)])
        with pytest.raises(ValueError, match=r"raise capacities.acl_buckets$"):
            dp.acl.add(v6)  # an edit: 3 of 2
        after = kernel_buckets(dp)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True))
        assert dp.acl.current is current and dp.run_xdp(probe).action == XDP_DROP
        dp.acl.add(v6.take(np.arange(2)))  # what fits is written
        assert len(kernel_buckets(dp)[1]) == 2 and dp.run_xdp(udp("2001::1")).action == XDP_DROP
    finally:
        dp.close()
