"""allow_established with real sessions across namespaces, under `default_action: deny`.

The appliance (Tidegate on its underlay veth, testbed.topology) opens TCP, UDP and ping sessions
to the peer; nothing in the ACL allows the replies, so they arrive only because TC egress recorded
each flow as it left. Then: what is no reply stays out, a flow idle past its timeout is
forgotten, and a table too small for the flows replaces its least recently used ones.
"""

from __future__ import annotations

import time

import pytest

from dataplane import abi
from dataplane.kernel.build_settings import Capacities
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.verify import Mismatch
from dataplane.map_config import RuntimeConfig
from testbed import topology as t
from testbed.counters import snapshot
from testbed.netns import linked_namespaces
from testbed.traffic import ping, receive_udp, send_udp, tcp_echo_server, tcp_exchange, udp_socket

pytestmark = [pytest.mark.root, pytest.mark.netns]

R, E = abi.Reason, abi.Event
APP, PEER = t.APP_UNDERLAY_V4, t.PEER_UNDERLAY_V4
APP6, PEER6 = t.APP_UNDERLAY_V6, t.PEER_UNDERLAY_V6
TCP_PORT, UDP_PORT = 7443, 7053
WAIT = 1.0  # on a veth everything arrives in well under a millisecond
DENY = RuntimeConfig(default_action="deny")
ESTABLISHED = RuntimeConfig(default_action="deny", allow_established=True)


def configure(dp: Dataplane, topo: t.Topology, cfg: RuntimeConfig) -> None:
    with topo.appliance.enter():
        dp.configure(cfg)
    dp.maps.clear_conntrack()


@pytest.mark.parametrize("local,remote", [(APP, PEER), (APP6, PEER6)], ids=["ipv4", "ipv6"])
def test_replies_to_our_sessions_pass_a_default_deny_policy(dp, topo, local, remote):
    with tcp_echo_server(topo.peer, remote, TCP_PORT):
        configure(dp, topo, DENY)  # the control: without allow_established nothing comes back
        assert tcp_exchange(topo.appliance, remote, TCP_PORT, b"hello") is None
        assert not ping(topo.appliance, remote, src=local, count=1, timeout=0.3).ok

        configure(dp, topo, ESTABLISHED)
        with topo.appliance.enter():  # TC egress attached and pinned, the conntrack map in use
            dp.verify()
        before = snapshot(dp)
        assert tcp_exchange(topo.appliance, remote, TCP_PORT, b"hello over tcp") == b"hello over tcp"
        assert ping(topo.appliance, remote, src=local, count=3).ok
        with udp_socket(topo.peer, remote, UDP_PORT) as server, udp_socket(topo.appliance, local) as client:
            send_udp(client, remote, UDP_PORT, [b"question"])
            data, addr = server.recvfrom(64)
            server.sendto(b"answer", addr)
            assert receive_udp(client, expect=2, timeout=0.3) == [(b"answer", remote)]
    moved = snapshot(dp) - before
    assert moved.reason(R.PASS_ESTABLISHED) >= 1 + 3 + 1  # SYN-ACK and the rest, pongs, the answer
    assert moved.event(E.CT_NEW) >= 3  # the TCP connection, the ping, the UDP flow


def test_what_is_no_reply_stays_out(dp, topo):
    configure(dp, topo, ESTABLISHED)
    with udp_socket(topo.appliance, APP, UDP_PORT) as listener, udp_socket(topo.peer, PEER) as peer:
        send_udp(peer, APP, UDP_PORT, [b"unsolicited"])  # the peer opens: no flow left from here
        assert receive_udp(listener, expect=1, timeout=0.3) == []
        # ... until the appliance itself sends to that peer port: then its datagrams are replies
        port = peer.getsockname()[1]
        send_udp(listener, PEER, port, [b"hi"])
        assert receive_udp(peer, expect=1, timeout=WAIT) == [(b"hi", APP)]
        send_udp(peer, APP, UDP_PORT, [b"now a reply"])
        assert receive_udp(listener, expect=2, timeout=0.3) == [(b"now a reply", PEER)]


def test_a_flow_idle_past_its_timeout_is_judged_by_the_acl_again(dp, topo):
    configure(dp, topo, RuntimeConfig(default_action="deny", allow_established=True, ct_udp_s=1))
    with udp_socket(topo.peer, PEER, UDP_PORT) as server, udp_socket(topo.appliance, APP) as client:
        send_udp(client, PEER, UDP_PORT, [b"ping"])
        _, addr = server.recvfrom(64)
        server.sendto(b"fresh", addr)
        assert receive_udp(client, expect=2, timeout=0.3) == [(b"fresh", PEER)]
        time.sleep(2.2)  # the flow's 1 s, and then some (refreshes are at most one a second apart)
        before = snapshot(dp)
        server.sendto(b"stale", addr)
        assert receive_udp(client, expect=1, timeout=0.3) == []
    moved = snapshot(dp) - before
    assert moved.event(E.CT_EXPIRED) == 1
    # >=: under default deny the underlay's own IPv6 ND/MLD, sent at any time, is dropped too
    assert moved.reason(R.DROP_DEFAULT) >= 1


CAPACITY, FLOWS = 256, 300


@pytest.mark.slow  # compiles a data plane of its own (~3 s)
def test_a_full_table_replaces_its_least_recently_used_flows(bpf_available, pin_root):
    with linked_namespaces("tgctfull", "ct0", "ct0", "198.18.0.1", "198.18.0.2") as link:
        ns_a, ns_b = link.ns, link.peer
        with t.tidegate(ns_a, "ct0", config=ESTABLISHED, pin_root=pin_root,
                        capacities=Capacities(conntrack=CAPACITY)) as dp:
            clients = [udp_socket(ns_a, "198.18.0.1") for _ in range(FLOWS)]
            try:
                with udp_socket(ns_b, "198.18.0.2", UDP_PORT) as server:
                    server.settimeout(WAIT)
                    senders = []
                    for i, c in enumerate(clients):  # one at a time: the server's buffer holds fewer
                        send_udp(c, "198.18.0.2", UDP_PORT, [b"%d" % i])
                        senders.append(server.recvfrom(64)[1])
                    recorded = len(dp.maps.conntrack())
                    for addr in senders:
                        server.sendto(b"reply", addr)
                answered = sum(bool(receive_udp(c, expect=1, timeout=0.05)) for c in clients)
            finally:
                for c in clients:
                    c.close()
            events = dp.maps.event_counts()
            # The recorder is part of what verify() reads back: gone from the hook, it is named.
            with ns_a.enter():
                dp.verify()
            ns_a.run(["tc", "filter", "del", "dev", "ct0", "egress"])
            with ns_a.enter(), pytest.raises(Mismatch, match="no tc_egress program is attached"):
                dp.verify()
    assert events[E.CT_NEW].packets == FLOWS
    assert events[E.CT_EVICTED].packets == FLOWS - CAPACITY  # counted: one in, one out
    assert recorded <= CAPACITY
    assert answered == recorded  # the flows still in the table got their reply; the rest met the ACL
