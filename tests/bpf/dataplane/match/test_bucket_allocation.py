"""The bucket hashes preallocated (the default) or made as buckets come (`preallocate_buckets:
false`, xdp/include/maps.h): the kernel's own flags and memory figures, and verdicts through
switches and edits on the build that is not the session's."""

from __future__ import annotations

import pytest

from dataplane.acl import acl_rule
from dataplane.kernel.bpf_info import map_info
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.memory import fd_memlock
from dataplane.map_config import RuntimeConfig
from dataplane.match.adapter import to_columns
from testbed import classbench
from tests.unit.dataplane.match.probes import frame
from tests.unit.dataplane.reference_matcher import Packet

from ..conftest import IF_MAC
from .test_xdp_classifier import XDP_DROP, XDP_PASS, agree_at_every_edge

pytestmark = pytest.mark.root

BPF_F_NO_PREALLOC = 1  # include/uapi/linux/bpf.h
BUCKET_MAPS = ("acl_buckets", "acl_buckets4", "cls_buckets", "cls_buckets4")


def _element_bytes(name: str, dp: Dataplane) -> int:
    """What the kernel charges per hash element: its 48-byte head, key and value rounded to 8."""
    info = map_info(dp.program.table(name).map_fd)
    return 48 + -(-info.key_size // 8) * 8 + -(-info.value_size // 8) * 8


@pytest.fixture(scope="module")
def on_demand(bpf_available):  # noqa: ANN001
    dp = Dataplane.load(settings=DataplaneSettings(preallocate_buckets=False))
    try:
        dp.configure(RuntimeConfig(decap=False), if_mac=IF_MAC)
        yield dp
    finally:
        dp.close()


@pytest.mark.parametrize("name", BUCKET_MAPS)
def test_the_bucket_hashes_are_preallocated_by_default(loaded_dataplane, name):
    info = map_info(loaded_dataplane.program.table(name).map_fd)
    assert not info.map_flags & BPF_F_NO_PREALLOC
    # Charged whole, whatever the session's tests have written into it.
    charged = fd_memlock(loaded_dataplane.program.table(name).map_fd)
    assert charged >= info.max_entries * _element_bytes(name, loaded_dataplane)


def test_on_demand_bucket_hashes_take_memory_as_buckets_come(on_demand):
    for name in BUCKET_MAPS:
        info = map_info(on_demand.program.table(name).map_fd)
        assert info.map_flags & BPF_F_NO_PREALLOC, name
    fd = on_demand.program.table("acl_buckets4").map_fd  # the IPv4 rules' buckets
    on_demand.acl.replace([])
    empty = fd_memlock(fd)
    assert empty < map_info(fd).max_entries * _element_bytes("acl_buckets4", on_demand)
    n = 2_000
    on_demand.acl.replace([acl_rule(i, i, "deny", src=f"10.{i >> 8}.{i & 255}.0/24") for i in range(n)])
    assert fd_memlock(fd) - empty >= n * _element_bytes("acl_buckets4", on_demand)
    on_demand.acl.replace([])


def test_on_demand_buckets_judge_as_preallocated_ones_through_switches_and_edits(on_demand):
    base = [acl_rule(i, 10 * i, "allow", src=f"10.{i}.0.0/16", proto=6, dport=(80, 80))
            for i in range(1, 200)]
    on_demand.acl.replace(base)
    on_demand.configure(RuntimeConfig(decap=False, default_action="deny"), if_mac=IF_MAC)
    probe = frame(Packet.of("10.7.1.1", "192.0.2.1", 6, 999, 80))
    assert on_demand.run_xdp(probe).action == XDP_PASS
    on_demand.acl.add(to_columns([acl_rule(5000, 5, "deny", src="10.7.1.0/24")]))  # before rule 7
    assert on_demand.run_xdp(probe).action == XDP_DROP
    on_demand.acl.delete([5000, 7])
    assert on_demand.run_xdp(probe).action == XDP_DROP  # the default now
    assert on_demand.run_xdp(frame(Packet.of("10.9.1.1", "192.0.2.1", 6, 999, 80))).action == XDP_PASS
    on_demand.configure(RuntimeConfig(decap=False), if_mac=IF_MAC)
    if classbench.available():  # a whole set's edges, after the switch away from `base`
        agree_at_every_edge(on_demand, classbench.load("fw1", 1_000))
