"""control.rpc.request_guard over a real gRPC server in process (no root, no daemon): undecodable
bytes and impossible keys answered INVALID_ARGUMENT before a servicer runs, streams included,
and messages cut to fit a trailer. The same against a real daemon: test_api_fuzz.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from control import errors
from control.policy.models import Match, NextHop
from control.rpc.api import pb2, pb2_grpc
from control.rpc.request_guard import (
    DETAILS_MAX_BYTES,
    RequestGuard,
    _encoded_size,
    bounded_details,
    request_bytes,
)
from control.rpc.service import rpc


class Policy(pb2_grpc.PolicyServiceServicer):
    """Answers every call it receives; `seen` records them (none may come through refused)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.bytes_seen: list[bytes | None] = []

    def DeleteAclRule(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append(request)
        self.bytes_seen.append(request_bytes())
        return pb2.DeleteAclRuleResponse(generation=1)

    def ApplyPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append(request)
        self.bytes_seen.append(request_bytes())
        return pb2.ApplyPolicyResponse(generation=len(request.policy.acl))

    @rpc  # control.rpc.service's wrapper: errors to codes, messages cut to fit
    def DeleteChain(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append(request)
        raise errors.NotFound(f"chain {request.name} does not exist: " + "é" * 10_000)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[grpc.Channel, Policy]]:
    policy = Policy()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[RequestGuard()])
    pb2_grpc.add_PolicyServiceServicer_to_server(policy, srv)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, policy
    srv.stop(None)


def _raw(channel: grpc.Channel, method: str, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method, request_serializer=None, response_deserializer=None)(data, timeout=10)
    return info.value


def test_bytes_that_do_not_parse_are_invalid_argument(server: tuple[grpc.Channel, Policy]) -> None:
    channel, policy = server
    before = len(policy.seen)
    error = _raw(channel, "/tidegate.v1.PolicyService/DeleteAclRule", b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.details().startswith("request: not a valid DeleteAclRuleRequest message")  # type: ignore[attr-defined]
    # a string field holding invalid UTF-8 (DeleteChainRequest.name = b"\xff")
    error = _raw(channel, "/tidegate.v1.PolicyService/DeleteChain", b"\x0a\x01\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert len(policy.seen) == before


def test_a_stream_request_that_does_not_parse_is_invalid_argument(
        server: tuple[grpc.Channel, Policy]) -> None:
    channel, _ = server
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None,
                                 response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        list(watch(b"\xff", timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert info.value.details().startswith("request: not a valid HealthCheckRequest message")  # type: ignore[attr-defined]
    ok = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("method", "request_", "says"), [
    ("DeleteAclRule", pb2.DeleteAclRuleRequest(id=0), "id: 0 cannot name an ACL rule"),
    ("DeleteChain", pb2.DeleteChainRequest(name="a\x00b"), "name: 'a\\x00b' cannot name a chain"),
    ("DeleteChain", pb2.DeleteChainRequest(name="x" * 10_000), "(10000 characters) cannot name a chain"),
])
def test_impossible_keys_never_reach_the_servicer(server: tuple[grpc.Channel, Policy], method: str,
                                                  request_: Any, says: str) -> None:
    channel, policy = server
    before = len(policy.seen)
    error = _raw(channel, f"/tidegate.v1.PolicyService/{method}", request_.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert says in error.details()  # type: ignore[attr-defined]
    assert len(policy.seen) == before


def test_a_possible_key_reaches_the_servicer(server: tuple[grpc.Channel, Policy]) -> None:
    channel, policy = server
    answer = pb2_grpc.PolicyServiceStub(channel).DeleteAclRule(pb2.DeleteAclRuleRequest(id=7), timeout=10)
    assert answer.generation == 1 and policy.seen[-1].id == 7


def test_apply_policy_is_served_with_its_request_bytes_as_received(
        server: tuple[grpc.Channel, Policy]) -> None:
    """Its servicer reads the ACL from them: they must be the very bytes the message came from
    (here, an encoding upb would not write: a rule's id given twice); other methods get none."""
    channel, policy = server
    rule = pb2.AclRule(id=1, action=pb2.ACTION_DENY).SerializeToString() + b"\x08\x02"  # id 1, then id 2
    data = pb2.ApplyPolicyRequest(dry_run=True).SerializeToString() + b"\x0a" + bytes([len(rule) + 2]) + \
        b"\x12" + bytes([len(rule)]) + rule
    answer = channel.unary_unary("/tidegate.v1.PolicyService/ApplyPolicy", request_serializer=None,
                                 response_deserializer=pb2.ApplyPolicyResponse.FromString)(data, timeout=10)
    assert answer.generation == 1 and policy.seen[-1].policy.acl[0].id == 2
    assert policy.bytes_seen[-1] == data
    pb2_grpc.PolicyServiceStub(channel).DeleteAclRule(pb2.DeleteAclRuleRequest(id=7), timeout=10)
    assert policy.bytes_seen[-1] is None
    assert request_bytes() is None  # and nothing leaks out of a call


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=3000), st.integers(64, 8192))
def test_bounded_details_fit_once_percent_encoded(text: str, limit: int) -> None:
    cut = bounded_details(text, limit)
    assert _encoded_size(cut) <= limit
    suffix = " ... (message cut)"
    assert cut == text or (cut.endswith(suffix) and text.startswith(cut[:-len(suffix)]))


def test_a_huge_message_is_cut_and_arrives_with_its_code(server: tuple[grpc.Channel, Policy]) -> None:
    """Uncut, 10,000 'é' are 60 KB percent-encoded: the client would refuse the trailer and
    report RESOURCE_EXHAUSTED instead of the servicer's NOT_FOUND."""
    channel, _ = server
    error = _raw(channel, "/tidegate.v1.PolicyService/DeleteChain",
                 pb2.DeleteChainRequest(name="svc").SerializeToString())
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    details = error.details()  # type: ignore[attr-defined]
    assert details.startswith("chain svc does not exist: éé") and details.endswith("(message cut)")
    assert _encoded_size(details) <= DETAILS_MAX_BYTES


@pytest.mark.parametrize("value", ["fe80::%eth0/64", "fe80::%" + "\x00" * 9 + "/64", "fe80::1%" + "z" * 9000])
def test_addresses_with_a_zone_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="take no zone"):
        Match.model_validate({"src": value}) if "/" in value else NextHop.model_validate({"via": value})
