"""gRPC server reflection, both versions: grpc.reflection.v1 and grpc.reflection.v1alpha.

    enable_reflection(["tidegate.v1.PolicyService", ...], server)

Current clients (grpcurl, Postman, grpc-js tooling) ask v1 first and fall back to v1alpha only
on UNIMPLEMENTED; older ones ask only v1alpha. grpcio-reflection serves only v1alpha, so v1 is
served here by the same servicer: the two protocols are the same messages with the same field
numbers in another package (grpc/reflection/v1/reflection.proto is a copy of the v1alpha file
with the package renamed), so the bytes of a v1 request parse as a v1alpha request and the
answer's bytes are a valid v1 answer. Both read the same descriptor pool (the process's
default one, where the generated tidegate_pb2 registers itself), so they describe the same
files. The v1 descriptor is built from the v1alpha one and added to that pool, so a client
can also reflect on grpc.reflection.v1.ServerReflection itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc

ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"  # the name it has in grpc/grpc-proto
ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
METHOD = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto as a descriptor: the v1alpha file, package renamed,
    with the options the published v1 file has (not deprecated)."""
    proto = descriptor_pb2.FileDescriptorProto()
    alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    old, new = f".{ALPHA_PACKAGE}.", f".{V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    return proto


def register_v1(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Adds the v1 file to `pool` (the default one) once."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file_descriptor())


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> list[str]:
    """Serves v1 and v1alpha reflection listing `service_names` and both reflection services;
    returns the names listed."""
    register_v1()
    names = [*service_names, V1_SERVICE_NAME, ALPHA_SERVICE_NAME]
    servicer = reflection.ReflectionServicer(names)
    alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha_pb2.ServerReflectionRequest.FromString,  # the same wire format
        response_serializer=alpha_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {METHOD: v1}),))
    return names
