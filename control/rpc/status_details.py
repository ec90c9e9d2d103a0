"""INVALID_ARGUMENT with machine-readable details: a google.rpc.BadRequest in the status.

    abort_invalid(context, [("policy.acl[3].match.dport", "low 90 is above high 80")], message)

The status message stays the human text ("policy.acl[3].match.dport: low 90 is above high 80");
beside it, the `grpc-status-details-bin` trailer carries a google.rpc.Status whose details hold
one google.rpc.BadRequest with a FieldViolation (field path, description) per error, the
richer error model every gRPC language reads (Python: grpc_status.rpc_status.from_call; Go:
status.FromError(err).Details(); grpc-js: the trailer, decoded with google/rpc/*.proto).

Both trailers share gRPC's 8 KiB metadata budget with the message (control.rpc.request_guard
bounds that to 4 KiB percent-encoded), so the details are bounded too: descriptions cut to
DESCRIPTION_MAX characters and violations listed while the serialized BadRequest stays within
DETAILS_MAX_BYTES (base64 in the trailer: a third more).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAILS_MAX_BYTES = 2048
DESCRIPTION_MAX = 300
_CUT = "..."


def bad_request(errors: Sequence[tuple[str, str]],
                limit: int = DETAILS_MAX_BYTES) -> error_details_pb2.BadRequest:
    """A FieldViolation per (field path, reason), in order, as many as fit `limit` bytes."""
    out = error_details_pb2.BadRequest()
    for field, reason in errors:
        text = reason if len(reason) <= DESCRIPTION_MAX else reason[:DESCRIPTION_MAX - len(_CUT)] + _CUT
        out.field_violations.add(field=field[:DESCRIPTION_MAX], description=text)
        if out.ByteSize() > limit:
            del out.field_violations[-1]
            break
    return out


def invalid_argument(errors: Sequence[tuple[str, str]], message: str) -> grpc.Status:
    """The status to abort with: code INVALID_ARGUMENT, `message`, and the BadRequest detail."""
    detail = any_pb2.Any()
    detail.Pack(bad_request(errors))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    return rpc_status.to_status(status)


def abort_invalid(context: grpc.ServicerContext, errors: Sequence[tuple[str, str]], message: str) -> None:
    """Ends the call with INVALID_ARGUMENT, `message` (already bounded) and the BadRequest."""
    context.abort_with_status(invalid_argument(errors, message))


def field_violations(call: grpc.Call | grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest in an error's status details, as a client reads
    them; [] when the status has none."""
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    if status is None:
        return []
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            out += [(v.field, v.description) for v in found.field_violations]
    return out
