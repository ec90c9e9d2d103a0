"""Tidegate attached natively to a veth in a namespace topology, judged by real traffic.

The topology (testbed.topology): a peer namespace whose kernel vxlan devices tunnel over a veth
underlay to the appliance namespace, where Tidegate's XDP and TC programs sit on the underlay
veth; behind the appliance a service namespace (reached by fwmark policy routing) and a direct
namespace (the main table), both owning the same address. Traffic is ICMP echo and UDP from
sockets created inside the namespaces.
"""

from __future__ import annotations

import socket

import pytest

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.kernel.attach import clsact_present, detach_xdp, tc_filter_attached, xdp_attached
from dataplane.kernel.features import xdp_meta_supported
from dataplane.kernel.interface import detach_interface
from dataplane.kernel.program import TC_PIN, XDP_PIN, map_names
from dataplane.map_config import RuntimeConfig
from testbed import topology as t
from testbed.counters import snapshot
from testbed.netns import Namespace, set_mtu, veth_pair
from testbed.packets import VXLAN_PORT
from testbed.traffic import ping, receive_udp, send_udp, udp_echo_once, udp_socket

pytestmark = [pytest.mark.root, pytest.mark.netns]

PINGS = 3
DATAGRAMS = 5
ECHO_PORT = 7007
SINK_PORT = 9009
ARRIVAL_TIMEOUT = 1.0  # generous: on a veth everything arrives in well under a millisecond
SILENCE = 0.3  # how long "nothing else arrives" is waited for, after the expected datagrams
DENY_ID, ALLOW_ID, CLASSIFIER_ID = 10, 20, 1
UDP = 17
UNDERLAY_MTU = 1500  # veth's default, which the topology keeps


def payloads(tag: str, n: int = DATAGRAMS) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def assert_arrives(sock: socket.socket, expected: list[bytes], src: str) -> None:
    """Exactly `expected`, in order, from `src`, and nothing more within SILENCE."""
    got = receive_udp(sock, expect=len(expected) + 1, timeout=SILENCE)
    assert got == [(p, src) for p in expected]


def assert_dropped(sock: socket.socket) -> None:
    assert receive_udp(sock, expect=1, timeout=SILENCE) == []


# --- 1. decap at XDP, answered through the tunnel --------------------------------------------------

DECAP_CASES = [
    pytest.param(t.TUNNEL_V4, t.PEER_HOST, t.APP_INNER, id="outer-v4-inner-v4"),
    pytest.param(t.TUNNEL_V6, t.PEER6_HOST_V4, t.APP6_INNER_V4, id="outer-v6-inner-v4"),
    pytest.param(t.TUNNEL_V6, t.PEER6_HOST, t.APP6_INNER, id="outer-v6-inner-v6"),
]


@pytest.mark.parametrize("plan,src,dst", DECAP_CASES)
def test_tunnelled_traffic_is_decapped_at_xdp_and_answered(dp, topo, plan, src, dst):
    kernel_decapped = t.link_rx_packets(topo.appliance, plan.ifname)
    replies_in = t.link_rx_packets(topo.peer, plan.ifname)
    before = snapshot(dp)

    assert ping(topo.peer, dst, src=src, count=PINGS).ok
    with udp_socket(topo.appliance, dst, ECHO_PORT) as server, udp_socket(topo.peer, src) as client:
        send_udp(client, dst, ECHO_PORT, [b"echo-me"])
        assert udp_echo_once(server, ARRIVAL_TIMEOUT)
        assert receive_udp(client, expect=1, timeout=ARRIVAL_TIMEOUT) == [(b"echo-me", dst)]

    moved = snapshot(dp) - before
    requests = PINGS + 1
    # >=: the IPv6-carrying tunnel also decaps the kernel's own ND/MLD packets
    assert moved.tunnel(plan.vni) >= requests
    assert moved.event(abi.Event.DECAP_VXLAN) >= requests
    assert moved.event(abi.Event.INNER_DMAC_REWRITTEN) >= requests
    assert moved.reason(abi.Reason.PASS_DEFAULT) >= requests
    # Tidegate decapped, not the appliance's kernel vxlan device (which only sends the replies) ...
    assert t.link_rx_packets(topo.appliance, plan.ifname) == kernel_decapped
    # ... and the replies came back encapsulated, through the peer's vxlan device.
    assert t.link_rx_packets(topo.peer, plan.ifname) - replies_in >= requests


def test_a_vni_tidegate_does_not_terminate_is_left_to_the_kernel(dp, topo):
    """The control for the check above: without the tunnel entry, the kernel device decaps."""
    dp.maps.delete_tunnel(t.TUNNEL_V4.vni)
    kernel_decapped = t.link_rx_packets(topo.appliance, t.TUNNEL_V4.ifname)
    before = snapshot(dp)

    assert ping(topo.peer, t.APP_INNER, src=t.PEER_HOST, count=PINGS).ok

    moved = snapshot(dp) - before
    assert moved.event(abi.Event.UNKNOWN_VNI_PASSED) == PINGS
    # The kernel device got every ping, so Tidegate decapped none. Not DECAP_VXLAN == 0: VNI 200
    # is still Tidegate's, and its kernel devices send IPv6 ND/MLD of their own at any time (CI saw
    # one decapped here); nor DECAP_VXLAN == tunnel(200), which two reads of a snapshot can tear.
    assert t.link_rx_packets(topo.appliance, t.TUNNEL_V4.ifname) - kernel_decapped == PINGS


# --- 2. classification -> skb->mark -> ip rule fwmark ----------------------------------------------


def test_classified_packets_take_the_fwmark_route_to_the_service(dp, topo):
    dp.classifiers.replace([classifier(CLASSIFIER_ID, 10, t.SERVICE_MARK, src=t.CLASSIFIED_PREFIX)])
    before = snapshot(dp)
    with (udp_socket(topo.service, t.SERVICE_ADDR, SINK_PORT) as service,
          udp_socket(topo.direct, t.SERVICE_ADDR, SINK_PORT) as direct,
          udp_socket(topo.peer, t.PEER_CLASSIFIED) as marked,
          udp_socket(topo.peer, t.PEER_HOST) as unmarked):
        send_udp(marked, t.SERVICE_ADDR, SINK_PORT, payloads("marked"))
        send_udp(unmarked, t.SERVICE_ADDR, SINK_PORT, payloads("unmarked"))

        assert_arrives(service, payloads("marked"), t.PEER_CLASSIFIED)
        assert_arrives(direct, payloads("unmarked"), t.PEER_HOST)

    moved = snapshot(dp) - before
    assert moved.classifier(CLASSIFIER_ID) == DATAGRAMS
    if xdp_meta_supported():  # XDP handed the mark to TC in metadata (no fallback on native veth)
        assert moved.event(abi.Event.CLASSIFIED) == DATAGRAMS
        assert moved.event(abi.Event.TC_META_MARK) >= 2 * DATAGRAMS
        assert moved.event(abi.Event.TC_FALLBACK) == 0
    else:  # this kernel refuses bpf_xdp_adjust_meta to XDP: TC classified every packet itself
        assert moved.event(abi.Event.TC_FALLBACK) >= 2 * DATAGRAMS
        assert moved.event(abi.Event.TC_META_MARK) == 0


# --- 3. ACL deny drops before the stack ------------------------------------------------------------

ACL_CASES = [
    pytest.param(t.PEER_DENIED, t.PEER_HOST, t.APP_INNER, t.DENIED_PREFIX, "10.100.0.0/24",
                 id="tunnel-outer-v4-inner-v4"),
    pytest.param(t.PEER6_DENIED, t.PEER6_HOST, t.APP6_INNER, t.DENIED6_PREFIX, "fd00:200::/64",
                 id="tunnel-outer-v6-inner-v6"),
    pytest.param(t.PEER_UNDERLAY_DENIED, t.PEER_UNDERLAY_V4, t.APP_UNDERLAY_V4,
                 t.DENIED_UNDERLAY_PREFIX, "192.0.2.0/24", id="plain-underlay-v4"),
]


@pytest.mark.parametrize("denied_src,allowed_src,dst,deny_prefix,allow_prefix", ACL_CASES)
def test_denied_prefix_never_reaches_the_stack(dp, topo, denied_src, allowed_src, dst, deny_prefix,
                                               allow_prefix):
    dp.acl.replace([acl_rule(DENY_ID, 10, "deny", src=deny_prefix),
                    acl_rule(ALLOW_ID, 20, "allow", src=allow_prefix)])
    before = snapshot(dp)
    with (udp_socket(topo.appliance, dst, SINK_PORT) as server,
          udp_socket(topo.peer, denied_src) as denied,
          udp_socket(topo.peer, allowed_src) as allowed):
        send_udp(denied, dst, SINK_PORT, payloads("denied"))
        send_udp(allowed, dst, SINK_PORT, payloads("allowed"))
        # sent after the denied ones: had any of those passed, it would be in front of these
        assert_arrives(server, payloads("allowed"), allowed_src)

    moved = snapshot(dp) - before
    assert moved.reason(abi.Reason.DROP_DENIED) == DATAGRAMS
    assert moved.acl_rule(DENY_ID) == DATAGRAMS
    assert moved.acl_rule(ALLOW_ID) >= DATAGRAMS
    assert moved.reason(abi.Reason.PASS_ALLOWED) >= DATAGRAMS


def test_denied_flow_alone_times_out(dp, topo):
    dp.acl.replace([acl_rule(DENY_ID, 10, "deny", src=t.DENIED_PREFIX)])
    with (udp_socket(topo.appliance, t.APP_INNER, SINK_PORT) as server,
          udp_socket(topo.peer, t.PEER_DENIED) as denied):
        send_udp(denied, t.APP_INNER, SINK_PORT, payloads("denied"))
        assert_dropped(server)
    assert not ping(topo.peer, t.APP_INNER, src=t.PEER_DENIED, count=1, timeout=SILENCE).ok


# --- 4. tunnel ports are UDP ports too (docs/dataplane.md, "Tunnel ports") ------------------------

GENEVE_PORT = 6081  # no Geneve device in the topology: a plain UDP socket may bind it
NOT_TUNNELS = [b"hello over geneve's port", b"\x00\x01", b""]  # version 1, too short, empty


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_udp_service_on_a_tunnel_port_gets_its_datagrams(dp, topo, strict):
    with topo.appliance.enter():
        dp.configure(RuntimeConfig(strict_tunnel_ports=strict))
    before = snapshot(dp)
    with (udp_socket(topo.appliance, t.APP_UNDERLAY_V4, GENEVE_PORT) as service,
          udp_socket(topo.peer, t.PEER_UNDERLAY_V4) as client):
        send_udp(client, t.APP_UNDERLAY_V4, GENEVE_PORT, NOT_TUNNELS)
        if strict:
            assert_dropped(service)
        else:
            assert_arrives(service, NOT_TUNNELS, t.PEER_UNDERLAY_V4)
    moved = snapshot(dp) - before
    assert moved.event(abi.Event.TUNNEL_PORT_PLAIN) == (0 if strict else len(NOT_TUNNELS))
    dropped = moved.reason(abi.Reason.DROP_GENEVE_VERSION) + moved.reason(abi.Reason.DROP_TRUNCATED)
    assert dropped == (len(NOT_TUNNELS) if strict else 0)


FRAGMENTED_MTU = 1280  # the underlay's MTU for the test below; vx100's stays 1450
BIG_PING = bytes(1300)  # inner 1328 bytes: the outer datagram (1378) must be fragmented


def test_fragmented_tunnel_packets_reach_the_stack_and_its_vtep(dp, topo):
    """The peer's kernel fragments the outer datagrams; Tidegate passes the fragments (it cannot
    decap a piece), the appliance's stack reassembles them and its kernel vxlan device decaps."""
    kernel_decapped = t.link_rx_packets(topo.appliance, t.TUNNEL_V4.ifname)
    before = snapshot(dp)
    try:
        for ns in (topo.peer, topo.appliance):
            set_mtu(ns, topo.underlay, FRAGMENTED_MTU)
        assert ping(topo.peer, t.APP_INNER, src=t.PEER_HOST, count=PINGS, payload=BIG_PING).ok
    finally:
        for ns in (topo.peer, topo.appliance):
            set_mtu(ns, topo.underlay, UNDERLAY_MTU)
    moved = snapshot(dp) - before
    # The first echo request crosses as outer fragments; the vxlan driver then lowers the inner
    # route's MTU (its PMTU check), so the later ones are fragmented inside and decapped here.
    first_fragments = moved.reason(abi.Reason.PASS_TUNNEL_FRAGMENT)
    assert first_fragments >= 1
    assert t.link_rx_packets(topo.appliance, t.TUNNEL_V4.ifname) - kernel_decapped >= first_fragments


# --- 5. detach ----------------------------------------------------------------------------------------

IFNAME, IFNAME_PEER = "dt0", "dt1"


@pytest.mark.slow  # compiles a data plane of its own (~3 s)
def test_detach_is_clean_and_idempotent(bpf_available, pin_root):
    with Namespace(prefix="tgdet") as ns:
        veth_pair(ns, IFNAME, ns, IFNAME_PEER)
        with t.tidegate(ns, IFNAME, mode="native", pin_root=pin_root) as dp:
            pin_dir = dp.settings.pin_dir(dp.key)
            assert dp.xdp_mode == "native"
            with ns.enter():
                assert xdp_attached(IFNAME) and tc_filter_attached(IFNAME)
                assert clsact_present(IFNAME), "tidegate created the clsact qdisc"
            assert {p.name for p in pin_dir.iterdir()} >= {*map_names(), XDP_PIN, TC_PIN}

            with ns.enter():
                dp.detach()
                assert not xdp_attached(IFNAME)
                assert not tc_filter_attached(IFNAME)
                assert not clsact_present(IFNAME), "the qdisc tidegate created is removed with it"
            assert not pin_dir.exists()
            assert not dp.settings.run_dir(dp.key).exists()
            assert not pin_root.exists()  # the root held only this interface: removed too

            with ns.enter():
                dp.detach()  # again: nothing left to remove, no error
                detach_interface(IFNAME, dp.settings)  # the form a restarted process uses
                assert not xdp_attached(IFNAME) and not tc_filter_attached(IFNAME)
            assert not pin_dir.exists()


# --- 6. marking without XDP metadata: generic mode, and TC alone ------------------------------------


def test_generic_xdp_still_decaps_and_marks(dp, topo):
    """The fallback mode an operator gets on drivers without native XDP."""
    with topo.appliance.enter():
        assert dp.attach("generic") == "generic"
    try:
        dp.classifiers.replace([classifier(CLASSIFIER_ID, 10, t.SERVICE_MARK, src=t.CLASSIFIED_PREFIX)])
        before = snapshot(dp)
        with (udp_socket(topo.service, t.SERVICE_ADDR, SINK_PORT) as service,
              udp_socket(topo.peer, t.PEER_CLASSIFIED) as marked):
            send_udp(marked, t.SERVICE_ADDR, SINK_PORT, payloads("generic"))
            assert_arrives(service, payloads("generic"), t.PEER_CLASSIFIED)
        moved = snapshot(dp) - before
        assert moved.classifier(CLASSIFIER_ID) == DATAGRAMS
        assert moved.event(abi.Event.DECAP_VXLAN) >= DATAGRAMS
    finally:
        with topo.appliance.enter():
            assert dp.attach("native") == "native"


def test_tc_marks_by_itself_when_xdp_is_gone(dp, topo):
    """Without XDP no metadata arrives: TC classifies with the same maps, so steering goes on.

    The kernel's own vxlan device decaps instead; the mark TC put on the outer packet stays on
    the skb through the decap (same namespace), so the inner packet takes the fwmark route.
    """
    outer = classifier(CLASSIFIER_ID, 10, t.SERVICE_MARK, src=f"{t.PEER_UNDERLAY_V4}/32", proto=UDP,
                       dport=(VXLAN_PORT, VXLAN_PORT))
    dp.classifiers.replace([outer])
    with topo.appliance.enter():
        detach_xdp(t.UNDERLAY)
        assert not xdp_attached(t.UNDERLAY)
    try:
        before = snapshot(dp)
        with (udp_socket(topo.service, t.SERVICE_ADDR, SINK_PORT) as service,
              udp_socket(topo.peer, t.PEER_HOST) as sender):
            send_udp(sender, t.SERVICE_ADDR, SINK_PORT, payloads("tc-only"))
            assert_arrives(service, payloads("tc-only"), t.PEER_HOST)
        moved = snapshot(dp) - before
        assert moved.event(abi.Event.TC_FALLBACK) >= DATAGRAMS
        assert moved.event(abi.Event.TC_META_MARK) == 0
        assert moved.classifier(CLASSIFIER_ID) >= DATAGRAMS
    finally:
        with topo.appliance.enter():
            assert dp.attach("native") == "native"
