"""A load with no build of its flags in the process (a restarted daemon) takes pins that are this
very build without compiling (dataplane.kernel.warm), and compiles whenever anything says
otherwise; either way it holds the same maps and programs, which judge as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel import bpf_info, warm
from dataplane.kernel import program as program_mod
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.events import EventReader
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.owner import InterfaceKey
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.topology import pin_root_owned

from ..conftest import IF_MAC
from ..verdicts import XDP_DROP

pytestmark = [pytest.mark.root, pytest.mark.slow]  # a build of its own (a compile)
PORT = 5124
PACKET = bytes(Ether(dst=IF_MAC) / IP(src="10.1.0.2", dst="10.2.0.1") / UDP(sport=40000, dport=PORT) / b"x")
# capacities no other test builds with: this test's loads are the only users of their build
CAPS = Capacities(acl_rules=4096)


def _load(settings: DataplaneSettings, key: InterfaceKey) -> Dataplane:
    return Dataplane(program_mod.compile_program(settings, key), key, settings)


@pytest.fixture
def pinned(bpf_available: None, tmp_path: Path) -> Iterator[tuple[DataplaneSettings, InterfaceKey]]:
    """A data plane compiled and pinned (for "lo": pins only, nothing attached), with a policy,
    a tunnel and a count; the process then holds no build of its flags."""
    with pin_root_owned() as root:
        settings = DataplaneSettings(pin_root=root, run_root=tmp_path / "run", capacities=CAPS)
        key = InterfaceKey.of("lo")
        dp = _load(settings, key)
        try:
            assert dp.program.compiled and not dp.adopted
            dp.configure(RuntimeConfig(vxlan_port=4790, event_rate=1000), if_mac=IF_MAC)
            dp.maps.put_tunnel(TunnelEntry(vni=77, vxlan=True, geneve=False))
            dp.acl.replace([acl_rule(1, 10, "deny")])
            assert dp.run_xdp(PACKET).action == XDP_DROP
            dp.program.pin_programs()
        finally:
            dp.close()
        yield settings, key


def _same_as_before(dp: Dataplane) -> None:
    cfg, _mac = dp.maps.read_config()
    assert cfg.vxlan_port == 4790
    assert [t.vni for t in dp.maps.tunnels()] == [77]
    assert dp.maps.reason_counts()[abi.Reason.DROP_DENIED].packets == 1  # per-CPU counters read
    assert dp.run_xdp(PACKET).action == XDP_DROP  # the policy came along with the maps
    assert [(e.reason, e.dport) for e in EventReader(dp).poll(0) if e.dport == PORT][-1:] == \
        [(abi.Reason.DROP_DENIED, PORT)]  # the ring buffer, through the pins


def test_a_restart_takes_pins_of_this_very_build_without_compiling(pinned) -> None:  # noqa: ANN001
    settings, key = pinned
    dp = _load(settings, key)
    try:
        assert dp.adopted and not dp.program.compiled
        ids = {bpf_info.prog_info(fn.fd).id for fn in (dp.program.xdp_fn, dp.program.tc_fn)}
        _same_as_before(dp)
    finally:
        dp.close()
    assert ids, "the pinned programs themselves"


@pytest.mark.parametrize("damage", ["other build", "other program tag", "no record"])
def test_anything_else_compiles(pinned, damage: str) -> None:  # noqa: ANN001
    settings, key = pinned
    path = settings.run_dir(key) / warm.RECORD
    data = json.loads(path.read_text())
    if damage == "other build":
        data["build"] = "0" * 64
    elif damage == "other program tag":
        data["tags"]["tg_xdp_ingress"] = "00" * 8
    if damage == "no record":
        path.unlink()
    else:
        path.write_text(json.dumps(data))
    dp = _load(settings, key)
    try:
        assert dp.adopted and dp.program.compiled
        _same_as_before(dp)
    finally:
        dp.close()
    built = warm.digest(program_mod.program_text(), program_mod.program_cflags(settings))
    assert json.loads(path.read_text())["build"] == built, "the compile wrote its record again"
