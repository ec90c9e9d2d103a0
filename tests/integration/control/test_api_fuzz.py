"""Hostile input to the gRPC API of a real daemon: every RPC of PolicyService and
InterfaceService gets random and mutated requests (hypothesis over the proto fields, and over the
wire format itself: any field, any varint, negative and above 2^32 included), random and hostile
bytes through a raw channel, a 200,000-rule policy and a message over the size limit.

Properties, checked after every request:
- a refusal has a documented code (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, ABORTED; RESOURCE_EXHAUSTED only for an oversized message), never
  UNKNOWN or INTERNAL, and INVALID_ARGUMENT names the field (`policy.acl[3].match.src: ...`);
- the policy, its generation and the interfaces are exactly what they were before a refusal;
  an accepted change moves the generation by one (none for reads, dry runs and an ApplyPolicy of
  the policy in force, which says `unchanged`);
- the daemon keeps serving (health SERVING).

Requests are bounded (hypothesis max_examples below) so the file runs in about a minute;
TIDEGATE_FUZZ_SCALE=N runs N times as many.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from control.rpc.api import pb2
from testbed.daemon import DaemonProcess
from testbed.netns import linked_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

# tgf0 is attached; tgf1 exists and is kept out of generated names (an attach compiles for seconds)
IFNAME, PEER_IFNAME = "tgf0", "tgf1"
ADDR = "10.91.0.1"
CAPACITIES = {"acl_rules": 4096, "acl_buckets": 8192, "acl_buckets4": 8192}
RPC_TIMEOUT = 60.0
# examples per typed RPC, and of random and of mutated bytes over all methods; a longer hunt:
# TIDEGATE_FUZZ_SCALE=10 (ten times as many)
SCALE = float(os.environ.get("TIDEGATE_FUZZ_SCALE", "1"))
EXAMPLES, RAW_EXAMPLES = int(60 * SCALE), int(150 * SCALE)

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
# The fields an INVALID_ARGUMENT message may start with, per method: "request" (the bytes as a
# whole), the request's own fields, and for an add the policy it would make ("policy.chains:
# mark 16 is used by both svc.forward and c.forward").
ROOTS = {"ApplyPolicy": "policy", "AddAclRule": "rule|policy", "DeleteAclRule": "id",
         "AddTunnel": "tunnel|policy", "DeleteTunnel": "vni", "AddChain": "chain|policy",
         "DeleteChain": "name", "AttachInterface": "interface", "DetachInterface": "name"}


def names_a_field(method: str, details: str) -> bool:
    roots = "request" + "".join(f"|{r}" for r in ROOTS.get(method, "").split("|") if r)
    return re.match(rf"^({roots})(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: \S", details) is not None
READS = {"GetPolicy", "ListAclRules", "ListTunnels", "ListChains", "ListInterfaces"}
POLICY, INTERFACE = "/tidegate.v1.PolicyService/", "/tidegate.v1.InterfaceService/"
METHODS = {
    **{POLICY + name: (getattr(pb2, f"{name}Request"), getattr(pb2, f"{name}Response")) for name in (
        "ApplyPolicy", "GetPolicy", "AddAclRule", "DeleteAclRule", "ListAclRules", "AddTunnel",
        "DeleteTunnel", "ListTunnels", "AddChain", "DeleteChain", "ListChains")},
    **{INTERFACE + name: (getattr(pb2, f"{name}Request"), getattr(pb2, f"{name}Response"))
       for name in ("AttachInterface", "DetachInterface", "ListInterfaces")},
}


# --- the daemon, and the check made around every request -----------------------------------------

def _count(outcome: str) -> None:
    """Outcomes, for `pytest --hypothesis-show-statistics`."""
    if currently_in_test_context():
        event(outcome)


@dataclass
class Api:
    daemon: DaemonProcess

    def snapshot(self) -> tuple[Any, Any]:
        policy = self.daemon.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)
        interfaces = self.daemon.interfaces.ListInterfaces(pb2.ListInterfacesRequest(), timeout=RPC_TIMEOUT)
        return policy, interfaces

    def raw(self, method: str) -> Callable[..., bytes]:
        assert self.daemon.channel is not None
        return self.daemon.channel.unary_unary(method, request_serializer=None, response_deserializer=None)

    def send(self, method: str, data: bytes) -> str | None:
        """One request (serialized) and every property; the refusal's message (None: accepted)."""
        before = self.snapshot()
        name = method.rsplit("/", 1)[1]
        try:
            answer = self.raw(method)(data, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            _count(f"{name}: {code.name}")
            assert code in REFUSALS, f"{method} answered {code.name}: {details!r}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert names_a_field(name, details), f"{method}: the message names no field: {details!r}"
            after = self.snapshot()
            assert after == before, f"{method} refused ({code.name}: {details}) yet changed the state"
            self.assert_serving(method)
            return str(details)
        else:
            _count(f"{name}: OK")
            response = METHODS[method][1].FromString(answer)  # a well-formed response
            after_policy = self.snapshot()[0]
            dry = name == "ApplyPolicy" and pb2.ApplyPolicyRequest.FromString(data).dry_run
            same = name == "ApplyPolicy" and response.unchanged  # the policy in force, again
            steps = {0} if name in READS or dry or same else {1}
            assert after_policy.generation - before[0].generation in steps, method
            if same:
                assert after_policy == before[0], f"{method} said unchanged, yet the policy moved"
        self.assert_serving(method)
        return None

    def keep_attached(self) -> None:
        """Attaches tgf0 again if a fuzzed request detached it (valid, when no chain used it), so
        that chains can still be added."""
        listed = self.daemon.interfaces.ListInterfaces(pb2.ListInterfacesRequest(), timeout=RPC_TIMEOUT)
        if IFNAME not in [i.name for i in listed.interfaces]:
            self.daemon.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
                interface=pb2.Interface(name=IFNAME, mode=pb2.XDP_MODE_GENERIC)), timeout=RPC_TIMEOUT)

    def assert_serving(self, method: str) -> None:
        assert self.daemon.serving(), f"the daemon stopped serving after {method}\n{self.daemon.log_tail()}"

    def call(self, method: str, request: Any) -> str | None:
        return self.send(method, request.SerializeToString())


BASELINE = pb2.Policy(
    acl=[pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(src="10.1.0.0/16")),
         pb2.AclRule(id=2, priority=10, action=pb2.ACTION_ALLOW,
                     match=pb2.Match(dst="2001:db8::/32", protocol=pb2.PROTOCOL_TCP,
                                     dport=pb2.PortRange(low=80, high=90)))],
    tunnels=[pb2.Tunnel(vni=100)],
    chains=[pb2.ServiceChain(name="svc", forward=pb2.Leg(interfaces=[IFNAME], mark=0x10, table=1010,
                                                         nexthops=[pb2.NextHop(dev=IFNAME)]))])


@pytest.fixture(scope="module")
def api(daemon_on_veth: Any) -> Iterator[Api]:
    with linked_namespaces("tgfuzz", IFNAME, PEER_IFNAME, ADDR, peer_namespace=False) as link, \
            daemon_on_veth(link.ns, IFNAME, mode="generic", capacities=CAPACITIES) as daemon:
        daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=BASELINE), timeout=RPC_TIMEOUT)
        yield Api(daemon)


# --- strategies over the proto fields --------------------------------------------------------------

def _repeat(chars: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.sampled_from(chars), st.integers(low, high))


# proto strings are UTF-8: no surrogates; anything else, NUL and control characters included
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
NASTY = st.sampled_from(["", " ", "\x00", "a\x00b", "svc\n", "\x1b[2J", "\u202egnp", "é", "🙂", "..", "-x",
                         IFNAME, "svc", "0", "%", "../../etc/passwd", "a" * 33, "b" * 16])
HUGE = _repeat("x\x00é🙂/", 1000, 10_000)
TEXT = st.one_of(ANY_TEXT, NASTY, HUGE)
GOOD_NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
NAMES = st.integers(0, 3).flatmap(lambda k: TEXT if k == 0 else GOOD_NAMES)  # 3/4 well-formed
IFNAMES = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}", fullmatch=True), TEXT)
U32 = st.one_of(st.integers(0, 2**32 - 1),
                st.sampled_from([0, 1, 2, 100, 65535, 65536, 2**24 - 1, 2**24, 2**31, 2**32 - 1]))
U64 = st.one_of(st.just(0), st.integers(0, 2**64 - 1))
ENUM = st.one_of(st.integers(0, 3), st.sampled_from([6, 17, 58, 132, 99, -1]),
                 st.integers(-2**31, 2**31 - 1))
ADDRESSES = st.one_of(st.ip_addresses().map(str), TEXT, st.sampled_from(
    ["fe80::1%eth0", "fe80::1%" + "z" * 5000, "10.0.0.256", "::ffff:10.0.0.1", "0.0.0.0", "::", "1.2.3"]))
GOOD_PREFIXES = st.builds(lambda a, n: str(ipaddress.ip_network((a, min(n, a.max_prefixlen)), strict=False)),
                          st.ip_addresses(), st.integers(0, 128))
PREFIXES = st.one_of(
    GOOD_PREFIXES,
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(0, 128)),  # host bits, /33..
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.0/8", "0.0.0.0/0", "::/0", "10.0.0.0/255.0.0.0", "fe80::%" + "\x00" * 10 + "/64",
                     "10.0.0.0/-1", "10.0.0.0/8/8", "2001:db8::/32", "10.1.0.0/16"]),
    TEXT)
OPTIONAL_U32 = st.one_of(st.none(), U32)


def _set(msg: Any, **fields: Any) -> Any:
    """Sets the fields that are not None (so `optional` and message fields stay absent)."""
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, list):
            getattr(msg, key).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(msg, key).CopyFrom(value)
        else:
            setattr(msg, key, value)
    return msg


ACTIONS = st.one_of(st.sampled_from([pb2.ACTION_ALLOW, pb2.ACTION_DENY]), ENUM)
PROTOCOLS = st.one_of(st.sampled_from(sorted(pb2.Protocol.values())), ENUM)
ports = st.one_of(st.builds(lambda lo, n: pb2.PortRange(low=lo, high=min(lo + n, 65535)),
                            st.integers(0, 65535), st.integers(0, 100)),
                  st.builds(lambda lo, hi: pb2.PortRange(low=lo, high=hi), U32, U32))
matches = st.builds(lambda src, dst, proto, dport: _set(pb2.Match(), src=src, dst=dst, protocol=proto,
                                                       dport=dport),
                    st.one_of(st.just(""), PREFIXES), st.one_of(st.just(""), PREFIXES), PROTOCOLS,
                    st.one_of(st.none(), ports))
rules = st.builds(
    lambda i, prio, action, match, log, desc: _set(pb2.AclRule(), id=i, priority=prio, action=action,
                                                   match=match, log=log, description=desc),
    U32, OPTIONAL_U32, ACTIONS, st.one_of(st.none(), matches), st.booleans(), st.one_of(st.just(""), TEXT))
tunnels = st.builds(lambda vni, vx, ge: _set(pb2.Tunnel(), vni=vni, vxlan=vx, geneve=ge),
                    U32, st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.booleans()))
nexthops = st.builds(lambda via, dev: pb2.NextHop(via=via, dev=dev),
                     st.one_of(st.just(""), ADDRESSES), st.one_of(st.just(""), IFNAMES))
legs = st.builds(
    lambda ifs, match, mark, table, hops: _set(pb2.Leg(), interfaces=ifs, match=match, mark=mark, table=table,
                                               nexthops=hops),
    st.integers(0, 3).flatmap(lambda k: st.just([IFNAME]) if k else st.one_of(
        st.lists(IFNAMES, max_size=3), st.just(["x" * 20] * 300))),
    st.one_of(st.none(), matches), U32, st.one_of(st.integers(990, 2010), U32),
    st.one_of(st.just([pb2.NextHop(dev=IFNAME)]), st.lists(nexthops, max_size=3),
              st.lists(nexthops, min_size=17, max_size=20)))
chains = st.builds(
    lambda name, prio, fwd, ret: _set(pb2.ServiceChain(), name=name, priority=prio, forward=fwd,
                                      return_path=ret),
    NAMES, OPTIONAL_U32, st.integers(0, 3).flatmap(lambda k: st.none() if k == 0 else legs),
    st.one_of(st.none(), legs))
# well-formed chains on the attached interface (random marks, tables, prefixes), so that adds
# also reach the kernel: ip rules and routes, classifier maps
good_legs = st.builds(
    lambda src, proto, mark, table: pb2.Leg(interfaces=[IFNAME], match=pb2.Match(src=src, protocol=proto),
                                            mark=mark, table=table, nexthops=[pb2.NextHop(dev=IFNAME)]),
    st.one_of(st.just(""), GOOD_PREFIXES), st.sampled_from(sorted(pb2.Protocol.values())),
    st.integers(1, 2**32 - 1), st.integers(1000, 1999))
good_chains = st.builds(
    lambda name, fwd, ret: _set(pb2.ServiceChain(), name=name, forward=fwd, return_path=ret),
    GOOD_NAMES, good_legs, st.one_of(st.none(), good_legs))
settings_msgs = st.builds(
    lambda vx, ge, decap, vni, action, dmac: _set(pb2.Settings(), vxlan_port=vx, geneve_port=ge, decap=decap,
                                                  unknown_vni_action=vni, default_action=action,
                                                  rewrite_inner_dmac=dmac),
    OPTIONAL_U32, OPTIONAL_U32, st.one_of(st.none(), st.booleans()), ENUM, ENUM,
    st.one_of(st.none(), st.booleans()))
policies = st.builds(
    lambda s, acl, tun, ch: _set(pb2.Policy(), settings=s, acl=acl, tunnels=tun, chains=ch),
    st.one_of(st.none(), settings_msgs), st.lists(rules, max_size=4), st.lists(tunnels, max_size=3),
    st.lists(st.one_of(chains, good_chains), max_size=2))
interfaces = st.builds(lambda name, mode: pb2.Interface(name=name, mode=mode),
                       IFNAMES.filter(lambda n: n not in {PEER_IFNAME, "lo"}), ENUM)  # those would attach

REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    POLICY + "ApplyPolicy": st.builds(
        lambda p, gen, dry: _set(pb2.ApplyPolicyRequest(), policy=p, expected_generation=gen, dry_run=dry),
        st.one_of(st.none(), policies), U64, st.booleans()),
    POLICY + "GetPolicy": st.just(pb2.GetPolicyRequest()),
    POLICY + "AddAclRule": st.builds(lambda r: _set(pb2.AddAclRuleRequest(), rule=r),
                                     st.one_of(st.none(), rules)),
    POLICY + "DeleteAclRule": st.builds(lambda i: pb2.DeleteAclRuleRequest(id=i), U32),
    POLICY + "ListAclRules": st.just(pb2.ListAclRulesRequest()),
    POLICY + "AddTunnel": st.builds(lambda t: _set(pb2.AddTunnelRequest(), tunnel=t),
                                    st.one_of(st.none(), tunnels)),
    POLICY + "DeleteTunnel": st.builds(lambda v: pb2.DeleteTunnelRequest(vni=v), U32),
    POLICY + "ListTunnels": st.just(pb2.ListTunnelsRequest()),
    POLICY + "AddChain": st.builds(lambda c: _set(pb2.AddChainRequest(), chain=c),
                                   st.one_of(st.none(), chains, good_chains)),
    POLICY + "DeleteChain": st.builds(lambda n: pb2.DeleteChainRequest(name=n), NAMES),
    POLICY + "ListChains": st.just(pb2.ListChainsRequest()),
    INTERFACE + "AttachInterface": st.builds(lambda i: _set(pb2.AttachInterfaceRequest(), interface=i),
                                             st.one_of(st.none(), interfaces)),
    INTERFACE + "DetachInterface": st.builds(lambda n: pb2.DetachInterfaceRequest(name=n),  # keeps tgf0
                                             IFNAMES.filter(lambda n: n != IFNAME)),
    INTERFACE + "ListInterfaces": st.just(pb2.ListInterfacesRequest()),
}
assert set(REQUESTS) == set(METHODS)

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


# --- the tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(m for m in METHODS if m.rsplit("/", 1)[1] not in READS))
@FUZZ
@given(data=st.data())
def test_random_requests_are_refused_cleanly_or_applied(api: Api, method: str, data: st.DataObject) -> None:
    api.keep_attached()
    api.call(method, data.draw(REQUESTS[method], label="request"))


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Byte edits of a serialized message: (kind, position, value) = flip, cut, insert, varint 2^64-1."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= value or 1
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = bytes([value])
        else:
            out[at:at] = b"\xff" * 9 + b"\x01"  # the longest varint: -1 as int64
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


methods = st.sampled_from(sorted(METHODS))
edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
                 min_size=1, max_size=4)


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(method=methods, data=st.one_of(st.binary(max_size=64), st.binary(min_size=200, max_size=2000)))
def test_random_bytes_are_refused_cleanly_or_read_as_a_request(api: Api, method: str, data: bytes) -> None:
    api.keep_attached()
    api.send(method, data)


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(data=st.data(), changes=edits)
def test_mutated_requests_are_refused_cleanly_or_applied(api: Api, data: st.DataObject,
                                                         changes: list[tuple[int, int, int]]) -> None:
    method = data.draw(methods.filter(lambda m: m.rsplit("/", 1)[1] not in READS), label="method")
    request = data.draw(REQUESTS[method], label="request")
    api.keep_attached()
    api.send(method, _mutate(request.SerializeToString(), changes))


def _nested(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = b"\xfa\x07" + _varint(len(data)) + data  # unknown field 127, length-delimited
    return data


# --- the wire itself: any field of the method's message (nested ones included) with any value its
# wire type can carry: 64-bit varints (negative as int64, above 2^32 in a uint32), any text,
# fields repeated, given twice or out of order -------------------------------------------------------

WIDE = st.one_of(st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([-1, -2**31, 0, 1, 2**24, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]))


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _wire(descriptor: Any, depth: int = 0) -> st.SearchStrategy[bytes]:
    """Serialized messages of `descriptor`'s type, built field by field."""
    fields: list[st.SearchStrategy[bytes]] = []
    for f in descriptor.fields:
        if f.type == f.TYPE_MESSAGE:
            if depth < 4:
                fields.append(_wire(f.message_type, depth + 1).map(
                    lambda b, n=f.number: _field(n, 2, _varint(len(b)) + b)))
        elif f.type == f.TYPE_STRING:
            fields.append(TEXT.map(lambda t, n=f.number: _field(n, 2, _varint(len(t.encode())) + t.encode())))
        else:  # uint32, uint64, bool, enums: varints
            fields.append(WIDE.map(lambda v, n=f.number: _field(n, 0, _varint(v & (2**64 - 1)))))
    if not fields:
        return st.just(b"")
    return st.lists(st.one_of(fields), max_size=6).map(b"".join)


WIRE = {method: _wire(request.DESCRIPTOR) for method, (request, _) in METHODS.items()}


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(data=st.data())
def test_any_field_with_any_value_on_the_wire(api: Api, data: st.DataObject) -> None:
    method = data.draw(methods.filter(lambda m: m.rsplit("/", 1)[1] not in READS), label="method")
    api.keep_attached()
    api.send(method, data.draw(WIRE[method], label="bytes"))


HOSTILE_BYTES = {
    "100k nested groups": b"\x0b" * 100_000,
    "2000 nested unknown messages": _nested(2000),
    "a length of 2 GiB announced": b"\x0a" + _varint(2**31) + b"x",
    "a 20-byte varint": b"\x08" + b"\xff" * 20,
    "1 MiB unknown field": b"\xfa\x07" + _varint(1 << 20) + bytes(1 << 20),
    "field number 0": b"\x00\x01",
    "invalid UTF-8 in a string": b"\x0a\x03\xff\xfe\xfd",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BYTES))
def test_hostile_bytes_to_every_method(api: Api, case: str) -> None:
    for method in sorted(METHODS):
        api.send(method, HOSTILE_BYTES[case])


def test_an_unparsable_request_names_the_request(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as info:
        api.raw(POLICY + "ApplyPolicy")(b"\xff\xff\xff\xff", timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: not a valid ApplyPolicyRequest message")


def _add_rule(match: Any) -> Any:
    return pb2.AddAclRuleRequest(rule=pb2.AclRule(id=9, action=pb2.ACTION_ALLOW, match=match))


@pytest.mark.parametrize(("method", "request_", "field"), [
    ("DeleteAclRule", pb2.DeleteAclRuleRequest(id=0), "id"),
    ("DeleteTunnel", pb2.DeleteTunnelRequest(vni=2**24), "vni"),
    ("DeleteChain", pb2.DeleteChainRequest(name="x\x00" * 5000), "name"),
    ("AddChain", pb2.AddChainRequest(chain=pb2.ServiceChain(name="c", forward=pb2.Leg(
        interfaces=["absent0"], mark=7, table=1007, nexthops=[pb2.NextHop(dev=IFNAME)]))),
     "chain.forward.interfaces[0]"),
    ("AddAclRule", _add_rule(pb2.Match(src="é" * 10**4)), "rule.match.src"),
    ("AddAclRule", _add_rule(pb2.Match(src="fe80::%a/64")), "rule.match.src"),
    ("AttachInterface", pb2.AttachInterfaceRequest(interface=pb2.Interface(name="absent0")),
     "interface.name"),
])
def test_refusals_name_the_request_field(api: Api, method: str, request_: Any, field: str) -> None:
    service = INTERFACE if method.endswith("Interface") else POLICY
    before = api.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        api.raw(service + method)(request_.SerializeToString(), timeout=RPC_TIMEOUT)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert info.value.details().startswith(f"{field}: "), info.value.details()
    assert len(info.value.details()) < 1000
    assert api.snapshot() == before


def test_a_200k_rule_policy_with_one_bad_rule_is_refused_naming_it(api: Api) -> None:
    acl = [pb2.AclRule(id=i + 1, action=pb2.ACTION_DENY,
                       match=pb2.Match(src=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"))
           for i in range(200_000)]
    acl[-1].match.src = "x" * 10_000
    details = api.call(POLICY + "ApplyPolicy", pb2.ApplyPolicyRequest(policy=pb2.Policy(acl=acl)))
    assert details is not None and details.startswith("policy.acl[199999].match.src: "), details


def test_a_message_over_the_size_limit_is_resource_exhausted(api: Api) -> None:
    from control.daemon import MAX_MESSAGE_BYTES

    before = api.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        api.raw(POLICY + "ApplyPolicy")(bytes(MAX_MESSAGE_BYTES + 1), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert api.snapshot() == before
    assert api.daemon.serving()
