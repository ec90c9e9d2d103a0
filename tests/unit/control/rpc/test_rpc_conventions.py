"""Pure parts of the gRPC conventions: the BadRequest detail of INVALID_ARGUMENT (bounded, in
order, decodable from the trailer) and the v1 reflection descriptor built from v1alpha. The
live daemon's side is tests/integration/control/test_daemon_ecosystem.py and test_node_client.py."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import code_pb2, error_details_pb2, status_pb2

from control.rpc.reflection import V1_FILE, V1_SERVICE_NAME, register_v1, v1_file_descriptor
from control.rpc.status_details import DESCRIPTION_MAX, DETAILS_MAX_BYTES, bad_request, invalid_argument


def test_violations_keep_their_order_and_text() -> None:
    found = bad_request([("policy.acl[0].id", "Input should be greater than or equal to 1"),
                         ("policy.acl[1].match.src", "10.0.0.1/8 has host bits set: write 10.0.0.0/8")])
    assert [(v.field, v.description) for v in found.field_violations] == [
        ("policy.acl[0].id", "Input should be greater than or equal to 1"),
        ("policy.acl[1].match.src", "10.0.0.1/8 has host bits set: write 10.0.0.0/8")]


def test_many_or_long_violations_stay_within_the_budget() -> None:
    errors = [(f"policy.acl[{i}].match.dport", "x" * 1000) for i in range(5000)]
    found = bad_request(errors)
    assert 0 < len(found.field_violations) < len(errors)
    assert found.ByteSize() <= DETAILS_MAX_BYTES
    first = found.field_violations[0]
    assert first.field == "policy.acl[0].match.dport" and len(first.description) == DESCRIPTION_MAX
    assert first.description.endswith("...")


def test_the_status_decodes_from_the_trailer_as_a_client_reads_it() -> None:
    status = invalid_argument([("rule.id", "Input should be greater than or equal to 1")],
                              "rule.id: Input should be greater than or equal to 1")
    trailer = dict(status.trailing_metadata)["grpc-status-details-bin"]
    decoded = status_pb2.Status.FromString(trailer)
    assert decoded.code == code_pb2.INVALID_ARGUMENT == status.code.value[0]
    assert decoded.message == status.details == "rule.id: Input should be greater than or equal to 1"
    [detail] = decoded.details
    assert detail.type_url == "type.googleapis.com/google.rpc.BadRequest"
    found = error_details_pb2.BadRequest()
    assert detail.Unpack(found) and found.field_violations[0].field == "rule.id"


def test_the_v1_reflection_file_is_v1alpha_under_the_v1_package() -> None:
    proto = v1_file_descriptor()
    assert (proto.name, proto.package) == (V1_FILE, "grpc.reflection.v1")
    assert "v1alpha" not in str(proto) and not proto.options.deprecated
    [service] = proto.service
    [method] = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    register_v1()
    register_v1()  # idempotent
    found = descriptor_pool.Default().FindServiceByName(V1_SERVICE_NAME)
    copy = descriptor_pb2.FileDescriptorProto()
    found.file.CopyToProto(copy)
    assert copy.package == "grpc.reflection.v1"
