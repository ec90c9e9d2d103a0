"""examples/policy.yaml is a valid policy and speaks the chain topology's names and addresses.

The demo and tests/integration/testbed/test_daemon_e2e.py apply that file to testbed.chain_topology; this
pure check (no root) says which side drifted when one of them changes.
"""

from __future__ import annotations

import ipaddress

from control.policy.models import DesiredState, Interface
from testbed import chain_topology as c


def test_example_policy_matches_the_chain_topology():
    policy = c.load_example_policy()
    # valid together with the interfaces the demo attaches (chains may only name attached ones)
    attached = (c.UNDERLAY, c.SERVICE_OUT.app_if)
    DesiredState(interfaces=[Interface(name=n, mode="native") for n in attached], policy=policy)

    rules = {r.id: r for r in policy.acl}
    assert rules[c.DENY_RULE].action == "deny"
    assert rules[c.DENY_RULE].match.src == ipaddress.ip_network(c.DENIED_PREFIX)
    assert ipaddress.ip_address(c.PEER_DENIED) in rules[c.DENY_RULE].match.src
    assert rules[c.ALLOW_RULE].action == "allow"
    assert rules[c.ALLOW_RULE].match.src == ipaddress.ip_network(c.PEER_NET)
    assert rules[c.DENY_RULE].priority < rules[c.ALLOW_RULE].priority
    assert [t.vni for t in policy.tunnels] == [c.VNI]

    (chain,) = policy.chains
    assert chain.name == c.CHAIN
    forward, back = chain.forward, chain.return_path
    assert back is not None
    assert forward.interfaces == [c.UNDERLAY]
    assert (forward.mark, forward.table) == (c.FORWARD_MARK, c.FORWARD_TABLE)
    assert back.interfaces == [c.SERVICE_OUT.app_if]
    assert (back.mark, back.table) == (c.RETURN_MARK, c.RETURN_TABLE)
    assert [str(h.via) for h in forward.nexthops] == [c.SERVICE_IN.far_ip]
    assert [str(h.via) for h in back.nexthops] == [c.UPSTREAM.far_ip]
    for leg in (forward, back):
        assert leg.match.dst == ipaddress.ip_network(c.UPSTREAM_NET)
