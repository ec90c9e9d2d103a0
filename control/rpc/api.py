"""The generated gRPC modules of proto/tidegate/v1/tidegate.proto, generated on first import.

    from control.rpc.api import pb2, pb2_grpc

`pb2` holds the messages and enums, `pb2_grpc` the service stubs, servicers and
`add_*Servicer_to_server` functions. Translation to and from the policy models lives in
control.rpc.convert, nowhere else.
"""

from __future__ import annotations

from control.rpc.protogen import ensure_generated

ensure_generated()

from control.rpc.gen import tidegate_pb2 as pb2  # noqa: E402
from control.rpc.gen import tidegate_pb2_grpc as pb2_grpc  # noqa: E402

__all__ = ["pb2", "pb2_grpc"]
