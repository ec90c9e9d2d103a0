"""The daemon end to end: a real `tidegate serve` process driven only through its gRPC API.

Topology (testbed.chain_topology): a peer tunnels (kernel vxlan, VNI 100) to the appliance, where
the daemon has attached Tidegate to the underlay ul0 and to fw1, the link on which a firewall
namespace hands traffic back; behind the appliance the upstream 198.51.100.10. The policy is
examples/policy.yaml: tunnel 100, deny 10.100.0.128/25, chain `fw` (forward leg on ul0 -> the
firewall; return_path leg on fw1 -> the upstream). Which way a datagram went is read from three
independent witnesses: the firewall's nftables counter, the TTL on arrival (61 through the
firewall, 63 direct) and the daemon's own counters (GetStats).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from control.policy.models import Policy
from control.rpc import convert
from control.rpc.api import pb2
from dataplane.kernel.features import xdp_meta_supported
from testbed import chain_topology as c
from testbed.counters import ApiSnapshot, api_snapshot
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.traffic import (
    Datagram,
    ping,
    receive_udp,
    receive_udp_ttl,
    send_udp,
    udp_echo_once,
    udp_socket,
)

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

DATAGRAMS = 5
PINGS = 3
SINK_PORT, ECHO_PORT = 9009, 7007
ARRIVAL = 1.0
SILENCE = 0.3  # how long "nothing (else) arrives" is waited for
# How `ip rule` / `ip route` print Tidegate's protocol (84; "tidegate" once rt_protos.d names it).
RTPROT_TIDEGATE = ("proto 84", "proto tidegate")


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topo(bpf_available: None) -> Iterator[c.ChainTopology]:
    with c.build() as t:
        yield t


@pytest.fixture(scope="module")
def daemon(topo: c.ChainTopology, daemon_on_veth: Any) -> Iterator[DaemonProcess]:
    """One daemon for the module, attached natively to ul0 and fw1 through the API (tests take
    it as `live`: started again if a test left it stopped)."""
    with daemon_on_veth(topo.appliance, topo.attached) as daemon:
        yield daemon


@pytest.fixture
def policy(live: DaemonProcess) -> Policy:
    """examples/policy.yaml applied as a whole (so each test starts from it)."""
    model = c.load_example_policy()
    live.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=convert.policy_to_proto(model)),
                              timeout=RPC_TIMEOUT)
    return model


# --- helpers ---------------------------------------------------------------------------------------


def stats(daemon: DaemonProcess, *interfaces: str) -> ApiSnapshot:
    request = pb2.GetStatsRequest(interfaces=interfaces)
    return api_snapshot(daemon.stats.GetStats(request, timeout=RPC_TIMEOUT))


def payloads(tag: str, n: int = DATAGRAMS) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def to_upstream(topo: c.ChainTopology, src: str, sent: list[bytes]) -> list[Datagram]:
    """Send `sent` from the peer's inner `src` to the upstream; what arrived there (with TTLs)."""
    with (udp_socket(topo.upstream, c.UPSTREAM_ADDR, SINK_PORT) as server,
          udp_socket(topo.peer, src) as client):
        send_udp(client, c.UPSTREAM_ADDR, SINK_PORT, sent)
        return receive_udp_ttl(server, expect=len(sent) + 1, timeout=SILENCE)


def assert_arrives(got: list[Datagram], sent: list[bytes], src: str, ttl: int) -> None:
    """Exactly `sent`, in order, from `src`, having crossed the routers `ttl` says."""
    assert [(d.payload, d.src, d.ttl) for d in got] == [(p, src, ttl) for p in sent]


def echoed(topo: c.ChainTopology, src: str, n: int = DATAGRAMS) -> int:
    """Round trips peer -> upstream -> peer (the reply comes back through the tunnel)."""
    answered = 0
    with (udp_socket(topo.upstream, c.UPSTREAM_ADDR, ECHO_PORT) as server,
          udp_socket(topo.peer, src) as client):
        for payload in payloads("echo", n):
            send_udp(client, c.UPSTREAM_ADDR, ECHO_PORT, [payload])
            if udp_echo_once(server, ARRIVAL) and \
                    receive_udp(client, expect=1, timeout=ARRIVAL) == [(payload, c.UPSTREAM_ADDR)]:
                answered += 1
    return answered


def tidegate_routing(topo: c.ChainTopology) -> list[str]:
    """Every rule and route in the appliance tagged with Tidegate's protocol, as iproute2 prints it."""
    lines = []
    for cmd in (["ip", "-4", "rule"], ["ip", "-6", "rule"],
                ["ip", "-4", "route", "show", "table", "all"], ["ip", "-6", "route", "show", "table", "all"]):
        lines += [line for line in topo.appliance.run(cmd).stdout.splitlines()
                  if any(p in line for p in RTPROT_TIDEGATE)]
    return lines


def current_policy(daemon: DaemonProcess) -> tuple[Any, int]:
    got = daemon.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)
    return got.policy, got.generation


# --- 1. decap --------------------------------------------------------------------------------------


def test_tunnelled_traffic_is_decapped_by_tidegate(live, topo, policy):
    kernel_before = c.kernel_decapped(topo)
    before = stats(live)

    assert ping(topo.peer, c.APP_INNER, src=c.PEER_HOST, count=PINGS).ok  # answered through vx100
    assert_arrives(to_upstream(topo, c.PEER_HOST, payloads("decap")), payloads("decap"), c.PEER_HOST,
                   c.TTL_CHAINED)

    moved = stats(live) - before
    tunnelled = PINGS + DATAGRAMS
    assert moved.tunnel(c.VNI) == tunnelled
    assert moved.event("DECAP_VXLAN") == tunnelled
    assert moved.event("INNER_DMAC_REWRITTEN") == tunnelled
    # Tidegate decapped them on ul0, not the appliance's own vxlan device (it only sends replies)
    assert (stats(live, c.UNDERLAY) - before).tunnel(c.VNI) == tunnelled
    assert c.kernel_decapped(topo) == kernel_before


# --- 2. deny at XDP --------------------------------------------------------------------------------


def test_denied_prefix_is_dropped_at_xdp_and_never_reaches_the_service(live, topo, policy):
    service_before = c.service_packets(topo)
    before = stats(live)

    assert to_upstream(topo, c.PEER_DENIED, payloads("denied")) == []
    assert not ping(topo.peer, c.APP_INNER, src=c.PEER_DENIED, count=1, timeout=SILENCE).ok

    moved = stats(live) - before
    assert c.service_packets(topo) == service_before
    assert moved.reason("DROP_DENIED") == DATAGRAMS + 1
    assert moved.acl_rule(c.DENY_RULE) == DATAGRAMS + 1
    assert moved.tunnel(c.VNI) == DATAGRAMS + 1  # decapped first, then judged by the inner source
    assert moved.leg(c.CHAIN, "forward") == 0  # dropped before classification


# --- 3. the chain ----------------------------------------------------------------------------------


def test_allowed_traffic_is_chained_through_the_service_and_answered(live, topo, policy):
    assert any("fwmark 0x10 lookup 1010" in line for line in tidegate_routing(topo))
    assert any("fwmark 0x11 lookup 1011" in line for line in tidegate_routing(topo))
    service_before = c.service_packets(topo)
    before = stats(live)

    sent = payloads("chained")
    assert_arrives(to_upstream(topo, c.PEER_HOST, sent), sent, c.PEER_HOST, c.TTL_CHAINED)
    assert echoed(topo, c.PEER_HOST) == DATAGRAMS

    requests = 2 * DATAGRAMS  # the one-way flow and the echo requests; replies skip the chain
    assert c.service_packets(topo) - service_before == requests
    moved = stats(live) - before
    assert moved.leg(c.CHAIN, "forward") == requests
    assert moved.leg(c.CHAIN, "return_path") == requests
    assert moved.acl_rule(c.ALLOW_RULE) == 2 * requests  # judged on ul0, and again on fw1
    # each leg is installed on its own interface only
    on_return_link = stats(live, c.SERVICE_OUT.app_if) - before
    assert on_return_link.leg(c.CHAIN, "forward") == 0
    assert on_return_link.leg(c.CHAIN, "return_path") == requests
    if xdp_meta_supported():  # the mark reached TC in XDP metadata
        assert moved.event("TC_META_MARK") >= 2 * requests
        assert moved.event("TC_FALLBACK") == 0
    else:  # this kernel refuses bpf_xdp_adjust_meta: TC classified every packet itself
        assert moved.event("TC_FALLBACK") >= 2 * requests
        assert moved.event("TC_META_MARK") == 0


# --- 4. removing the chain -------------------------------------------------------------------------


def test_deleting_the_chain_restores_the_plain_path(live, topo, policy):
    generation = live.policy.DeleteChain(pb2.DeleteChainRequest(name=c.CHAIN),
                                           timeout=RPC_TIMEOUT).generation
    assert current_policy(live)[1] == generation
    assert list(live.policy.ListChains(pb2.ListChainsRequest(), timeout=RPC_TIMEOUT).chains) == []
    assert tidegate_routing(topo) == []
    service_before = c.service_packets(topo)
    before = stats(live)

    sent = payloads("plain")
    assert_arrives(to_upstream(topo, c.PEER_HOST, sent), sent, c.PEER_HOST, c.TTL_DIRECT)
    assert echoed(topo, c.PEER_HOST) == DATAGRAMS

    assert c.service_packets(topo) == service_before
    moved = stats(live) - before
    assert moved.legs == {}
    assert moved.tunnel(c.VNI) == 2 * DATAGRAMS  # still decapped by Tidegate
    assert moved.event("CLASSIFIED") == 0


# --- 5. a daemon crash does not stop the data plane -----------------------------------------------


def test_data_plane_keeps_forwarding_across_a_daemon_crash_and_restart(live, topo, policy):
    policy_before, generation_before = current_policy(live)
    before = stats(live)
    live.kill(signal.SIGKILL)
    assert not live.running

    service_before = c.service_packets(topo)
    assert to_upstream(topo, c.PEER_DENIED, payloads("denied-while-down")) == []
    sent = payloads("allowed-while-down")
    assert_arrives(to_upstream(topo, c.PEER_HOST, sent), sent, c.PEER_HOST, c.TTL_CHAINED)
    assert echoed(topo, c.PEER_HOST) == DATAGRAMS
    assert c.service_packets(topo) - service_before == 2 * DATAGRAMS

    live.start(detach_on_exit=False)  # same state dir and pin root: adopts the pinned maps
    assert current_policy(live) == (policy_before, generation_before)
    listed = live.interfaces.ListInterfaces(pb2.ListInterfacesRequest(), timeout=RPC_TIMEOUT).interfaces
    assert [(i.name, i.active_mode, i.attached) for i in listed] == \
        [(name, pb2.XDP_MODE_NATIVE, True) for name in topo.attached]
    # the verdict counters live in the pinned maps: what happened while no daemon ran is there
    assert (stats(live) - before).reason("DROP_DENIED") == DATAGRAMS

    after_restart = stats(live)
    sent = payloads("after-restart")
    assert_arrives(to_upstream(topo, c.PEER_HOST, sent), sent, c.PEER_HOST, c.TTL_CHAINED)
    assert to_upstream(topo, c.PEER_DENIED, payloads("denied-after-restart")) == []
    moved = stats(live) - after_restart
    assert moved.acl_rule(c.DENY_RULE) == DATAGRAMS
    assert moved.leg(c.CHAIN, "forward") == moved.leg(c.CHAIN, "return_path") == DATAGRAMS


def test_per_rule_counters_survive_a_daemon_restart(live, topo, policy):
    """The adopted slots are kept for the rules they hold, so their counters carry over."""
    assert to_upstream(topo, c.PEER_DENIED, payloads("denied")) == []
    before = stats(live)
    assert before.acl_rule(c.DENY_RULE) >= DATAGRAMS
    live.kill(signal.SIGKILL)
    live.start(detach_on_exit=False)
    after = stats(live)
    assert after.reason("DROP_DENIED") >= before.reason("DROP_DENIED")
    assert after.acl_rule(c.DENY_RULE) >= before.acl_rule(c.DENY_RULE)
    assert after.leg(c.CHAIN, "forward") >= before.leg(c.CHAIN, "forward")


def test_single_edits_survive_a_daemon_crash(live, topo, policy):
    """AddAclRule/DeleteAclRule/AddTunnel are journaled (not a rewrite of the whole state): a
    SIGKILLed daemon restarts into exactly the policy and generation it acknowledged."""
    add = [pb2.AclRule(id=9000 + i, priority=50 + i, action=pb2.ACTION_DENY,
                       match=pb2.Match(src=f"192.0.2.{16 * i}/28", protocol=pb2.PROTOCOL_UDP,
                                       dport=pb2.PortRange(low=53, high=53)))
           for i in range(3)]
    for rule in add:
        live.policy.AddAclRule(pb2.AddAclRuleRequest(rule=rule), timeout=RPC_TIMEOUT)
    live.policy.DeleteAclRule(pb2.DeleteAclRuleRequest(id=9001), timeout=RPC_TIMEOUT)
    live.policy.AddTunnel(pb2.AddTunnelRequest(tunnel=pb2.Tunnel(vni=4242)), timeout=RPC_TIMEOUT)
    before, generation = current_policy(live)
    assert [r.id for r in before.acl][-2:] == [9000, 9002] and 4242 in [t.vni for t in before.tunnels]
    assert (live.state_dir / "desired-state.journal").exists(), "the edits were journaled"

    live.kill(signal.SIGKILL)
    live.start(detach_on_exit=False)
    assert current_policy(live) == (before, generation)
    live.policy.DeleteAclRule(pb2.DeleteAclRuleRequest(id=9000), timeout=RPC_TIMEOUT)  # and it goes on
    after, generation_after = current_policy(live)
    live.kill(signal.SIGKILL)
    live.start(detach_on_exit=False)
    assert current_policy(live) == (after, generation + 1) == (after, generation_after)
    assert 9000 not in [r.id for r in after.acl]


# --- 6. bad input is refused, the daemon stays ----------------------------------------------------


def _leg(**override: Any) -> pb2.Leg:
    fields: dict[str, Any] = {"interfaces": [c.UNDERLAY], "mark": 0x20, "table": 1020,
                              "nexthops": [pb2.NextHop(via=c.SERVICE_IN.far_ip)]}
    fields.update(override)
    return pb2.Leg(**fields)


BAD_REQUESTS: list[Any] = [
    pytest.param(lambda d: d.policy.AddChain(pb2.AddChainRequest(
        chain=pb2.ServiceChain(name="bad", forward=_leg(mark=0)))),
        grpc.StatusCode.INVALID_ARGUMENT, "chain.forward.mark", id="mark-0"),
    pytest.param(lambda d: d.policy.AddAclRule(pb2.AddAclRuleRequest(rule=pb2.AclRule(
        id=99, action=pb2.ACTION_DENY,
        match=pb2.Match(protocol=pb2.PROTOCOL_UDP, dport=pb2.PortRange(low=70000, high=70000))))),
        grpc.StatusCode.INVALID_ARGUMENT, "rule.match.dport", id="port-70000"),
    pytest.param(lambda d: d.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
        interface=pb2.Interface(name="nosuch0"))),
        grpc.StatusCode.NOT_FOUND, "nosuch0", id="attach-unknown-interface"),
    pytest.param(lambda d: d.policy.AddChain(pb2.AddChainRequest(
        chain=pb2.ServiceChain(name="bad", forward=_leg(interfaces=["nosuch0"])))),
        grpc.StatusCode.INVALID_ARGUMENT, "nosuch0", id="chain-on-unknown-interface"),
    pytest.param(lambda d: d.policy.AddChain(pb2.AddChainRequest(
        chain=pb2.ServiceChain(name="bad", forward=_leg(nexthops=[pb2.NextHop(dev="nosuch0")])))),
        grpc.StatusCode.NOT_FOUND, "policy.chains[1].forward.nexthops[0].dev", id="next-hop-unknown-device"),
    pytest.param(lambda d: d.stats.GetStats(pb2.GetStatsRequest(interfaces=["nosuch0"])),
                 grpc.StatusCode.NOT_FOUND, "nosuch0", id="stats-unknown-interface"),
    pytest.param(lambda d: d.policy.DeleteChain(pb2.DeleteChainRequest(name="nosuch")),
                 grpc.StatusCode.NOT_FOUND, "nosuch", id="delete-unknown-chain"),
    pytest.param(lambda d: d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=pb2.Policy(),
                                                                       expected_generation=1)),
                 grpc.StatusCode.ABORTED, "generation", id="stale-generation"),
]


@pytest.mark.parametrize("call,code,mentions", BAD_REQUESTS)
def test_bad_input_is_refused_and_the_policy_stays(live, topo, policy, call: Callable[[Any], Any],
                                                   code: grpc.StatusCode, mentions: str):
    before = current_policy(live)
    with pytest.raises(grpc.RpcError) as refused:
        call(live)
    assert refused.value.code() == code, refused.value.details()
    assert mentions in refused.value.details()
    assert live.serving()
    assert current_policy(live) == before
    assert len(tidegate_routing(topo)) == 2 * 2 + 2  # fw's two legs: a rule per family, an IPv4 route


# --- 7. graceful stop: keep enforcing, or leave nothing ---------------------------------------------


def _xdp_attached(topo: c.ChainTopology, ifname: str) -> bool:
    return "xdp" in topo.appliance.run(["ip", "-d", "link", "show", ifname]).stdout


def test_sigterm_keeps_the_data_plane_unless_told_to_detach(live, topo, policy):
    if live.detach_on_exit:
        live.restart(detach_on_exit=False)
    live.stop(keep=True)  # SIGTERM, detach_on_exit false: a hitless upgrade's first half
    assert all(_xdp_attached(topo, i) for i in topo.attached)
    sent = payloads("after-sigterm")
    assert_arrives(to_upstream(topo, c.PEER_HOST, sent), sent, c.PEER_HOST, c.TTL_CHAINED)
    assert to_upstream(topo, c.PEER_DENIED, payloads("denied-after-sigterm")) == []

    live.start(detach_on_exit=True)
    live.stop(keep=True)  # SIGTERM, detach_on_exit true: nothing of Tidegate may remain
    assert not any(_xdp_attached(topo, i) for i in topo.attached)
    for ifname in topo.attached:
        filters = topo.appliance.run(["tc", "filter", "show", "dev", ifname, "ingress"]).stdout
        assert "bpf" not in filters
    assert tidegate_routing(topo) == []
    assert not live.pin_root.exists()
    # with Tidegate gone the appliance's own vxlan device decaps, and nothing denies any more
    sent = payloads("detached")
    assert_arrives(to_upstream(topo, c.PEER_DENIED, sent), sent, c.PEER_DENIED, c.TTL_DIRECT)

