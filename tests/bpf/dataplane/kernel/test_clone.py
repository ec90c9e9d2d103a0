"""One compile per build: a second interface's data plane is a copy of the first one's build
(dataplane.kernel.clone), with maps of its own, and a restart adopts the pinned programs.

The relocation of map references is a unit case; the rest loads real programs: copies judge
packets as the build does, write and count only their own maps, keep their own events, and a
copy over pins made otherwise than the build is refused.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel import bpf_info, clone
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.events import EventReader
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.owner import InterfaceKey, PinError
from dataplane.kernel.program import compile_program, map_names
from dataplane.map_config import RuntimeConfig
from testbed.topology import pin_root_owned

from ..conftest import IF_MAC
from ..verdicts import XDP_DROP, XDP_PASS

PORT = 5123  # no other test's packets use it: events of this port are this test's
PACKET = bytes(Ether(dst=IF_MAC) / IP(src="10.1.0.2", dst="10.2.0.1") / UDP(sport=40000, dport=PORT) / b"x")
LD_MAP = (0x18, 0x10)  # BPF_LD_IMM64 with src_reg BPF_PSEUDO_MAP_FD


def insn(code: int, regs: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, regs, 0, imm)


def test_relocation_points_every_map_reference_at_the_copy_and_touches_nothing_else():
    prog = (insn(0xB7, 0x01, 7)  # r1 = 7: an immediate that equals a map fd, left alone
            + insn(*LD_MAP, 7) + insn(0)  # r1 = map fd 7 (two slots)
            + insn(0x18, 0x00, 7) + insn(0)  # r0 = 7 as a 64-bit constant: not a map
            + insn(*LD_MAP, 9) + insn(0, 0, 7)  # second half's imm (high 32 bits) left alone
            + insn(0x95))
    out = clone.relocate(prog, {7: 70, 9: 90})
    imms = [struct.unpack_from("<BBhi", out, i)[3] for i in range(0, len(out), 8)]
    assert imms == [7, 70, 0, 7, 0, 90, 7, 0]
    with pytest.raises(RuntimeError, match="refers to map fd 8"):
        clone.relocate(insn(*LD_MAP, 8) + insn(0), {7: 70})
    with pytest.raises(RuntimeError, match="map reference kind 2"):
        clone.relocate(insn(0x18, 0x20, 7) + insn(0), {7: 70})


def _maps_of(dp: Dataplane) -> set[int]:
    return {bpf_info.map_id(dp.program.map_fd(name)) for name in map_names()}


def _deny_all(dp: Dataplane) -> None:
    dp.configure(RuntimeConfig(event_rate=1000), if_mac=IF_MAC)
    dp.acl.replace([acl_rule(1, 10, "deny")])


def test_a_copy_has_maps_of_its_own_and_judges_as_the_build(dp):
    copy = Dataplane.load()  # the session's data plane compiled this build: no second compile
    try:
        assert isinstance(copy.program.bpf, clone.Copy)
        assert not isinstance(dp.program.bpf, clone.Copy)
        ours, theirs = _maps_of(copy), _maps_of(dp)
        assert ours.isdisjoint(theirs)
        for fn in (copy.program.xdp_fn, copy.program.tc_fn):  # its programs use its maps only
            assert bpf_info.prog_info(fn.fd).map_ids <= ours
        for name in map_names():  # made like the build's
            a, b = (bpf_info.map_info(plane.program.map_fd(name)) for plane in (copy, dp))
            assert (a.type, a.key_size, a.value_size, a.max_entries, a.map_flags) == \
                   (b.type, b.key_size, b.value_size, b.max_entries, b.map_flags)

        _deny_all(copy)
        denied_before = dp.maps.reason_counts()[abi.Reason.DROP_DENIED].packets
        assert copy.run_xdp(PACKET).action == XDP_DROP
        assert dp.run_xdp(PACKET).action == XDP_PASS  # the copy's rule is not the build's
        assert copy.maps.reason_counts()[abi.Reason.DROP_DENIED].packets == 1
        assert dp.maps.reason_counts()[abi.Reason.DROP_DENIED].packets == denied_before
        events = EventReader(copy).poll(0)  # the copy's own ring buffer and consumer
        assert [(e.reason, e.dport) for e in events] == [(abi.Reason.DROP_DENIED, PORT)]
        assert [e for e in EventReader(dp).poll(0) if e.dport == PORT] == []
    finally:
        copy.close()


def test_a_restart_adopts_the_pinned_programs_of_this_build_without_loading(loaded_dataplane):
    with pin_root_owned() as root:
        settings = DataplaneSettings(pin_root=root)
        key = InterfaceKey.of("lo")  # pins only: nothing is attached
        first = Dataplane(compile_program(settings, key), key, settings)
        try:
            assert isinstance(first.program.bpf, clone.Copy) and not first.adopted
            _deny_all(first)
            first.program.pin_programs()
            ids = {bpf_info.prog_info(fn.fd).id for fn in (first.program.xdp_fn, first.program.tc_fn)}
        finally:
            first.close()  # the pins hold maps and programs
        again = Dataplane(compile_program(settings, key), key, settings)
        try:
            assert again.adopted
            assert {bpf_info.prog_info(fn.fd).id for fn in (again.program.xdp_fn, again.program.tc_fn)} == ids
            assert again.run_xdp(PACKET).action == XDP_DROP  # the policy came along with the maps
        finally:
            again.close()


@pytest.mark.slow  # a second build (another compile) with other capacities
def test_pins_made_otherwise_than_the_build_are_refused(loaded_dataplane):
    with pin_root_owned() as root:
        key = InterfaceKey.of("lo")
        small = DataplaneSettings(pin_root=root, capacities=Capacities(acl_rules=1024))
        pinned = Dataplane(compile_program(small, key), key, small)  # the build of these capacities
        try:
            pinned.program.pin_programs()
            default = DataplaneSettings(pin_root=root)
            with pytest.raises(PinError, match=r"acl_rules: the pinned map is made otherwise.*"
                                               r"max_entries 1024 \(this build: 262144\)"):
                compile_program(default, key)  # a copy of the session's (default) build over the small pins
        finally:
            pinned.close()
