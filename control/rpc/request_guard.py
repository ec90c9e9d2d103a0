"""Hostile input at the gRPC boundary: what is refused before a servicer runs, and how long an
error message may be.

- Request bytes that do not parse as the method's message (random bytes, a truncated or
  corrupted message, invalid UTF-8 in a string) are answered INVALID_ARGUMENT naming `request`
  (in the message and in a google.rpc.BadRequest, as every INVALID_ARGUMENT: control.rpc.status_details);
  grpc's own handling answers INTERNAL ("Exception deserializing request!") and logs a traceback.
- A key that can never name anything (DeleteAclRule id 0, DeleteTunnel VNI above 2^24-1,
  DeleteChain or DetachInterface with a name the models would refuse) is INVALID_ARGUMENT naming
  the field, not NOT_FOUND echoing whatever was sent.
- `bounded_details`: gRPC carries the status message in a trailer, percent-encoded, and a client
  refuses trailers over 8 KiB with RESOURCE_EXHAUSTED ("received metadata size exceeds soft
  limit"), losing the real status. Every message the servicers send is cut to fit.
- The servicer of a method in KEEP_BYTES may read the request's bytes as received as well
  (`request_bytes()`): ApplyPolicy reads its ACL from them (control.rpc.acl_scan) rather than
  encoding the parsed message again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc

from control.policy.models import IFNAME_RE, NAME_RE, U32_MAX, shown
from control.rpc.status_details import abort_invalid
from dataplane import abi

# The grpc-message trailer after percent-encoding (printable ASCII but '%' = 1 byte, else 3),
# well below the 8 KiB a client accepts beside the other headers.
DETAILS_MAX_BYTES = 4096


def _encoded_size(text: str) -> int:
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode("utf-8", "replace"))


def bounded_details(text: str, limit: int = DETAILS_MAX_BYTES) -> str:
    """`text`, or as much of it as fits `limit` bytes once percent-encoded, marked as cut."""
    if len(text) * 12 <= limit or _encoded_size(text) <= limit:  # 12: a 4-byte character, encoded
        return text
    suffix = " ... (message cut)"
    budget, size, cut = limit - len(suffix), 0, 0
    for cut, char in enumerate(text):  # noqa: B007 - `cut` is read after the loop
        size += _encoded_size(char)
        if size > budget:
            break
    return text[:cut] + suffix


# --- keys of Delete/Detach requests -----------------------------------------------------------------

def _name(field: str, pattern: str, what: str) -> Callable[[Any], str | None]:
    regex = re.compile(pattern)

    def check(request: Any) -> str | None:
        value = getattr(request, field)
        if regex.fullmatch(value):
            return None
        return f"{field}: {shown(value)} cannot name {what} (it must match {pattern})"
    return check


def _number(field: str, low: int, high: int, what: str) -> Callable[[Any], str | None]:
    def check(request: Any) -> str | None:
        value = getattr(request, field)
        return None if low <= value <= high else f"{field}: {value} cannot name {what} ({low} to {high})"
    return check


_SERVICE = "/tidegate.v1."
KEY_CHECKS: dict[str, Callable[[Any], str | None]] = {
    _SERVICE + "PolicyService/DeleteAclRule": _number("id", 1, U32_MAX, "an ACL rule"),
    _SERVICE + "PolicyService/DeleteTunnel": _number("vni", 0, abi.VNI_MAX, "a tunnel"),
    _SERVICE + "PolicyService/DeleteChain": _name("name", NAME_RE, "a chain"),
    _SERVICE + "InterfaceService/DetachInterface": _name("name", IFNAME_RE, "an interface"),
}


KEEP_BYTES = frozenset({_SERVICE + "PolicyService/ApplyPolicy"})
_REQUEST_BYTES: ContextVar[bytes | None] = ContextVar("request_bytes", default=None)


def request_bytes() -> bytes | None:
    """The bytes of the request being served, as received, for a method of KEEP_BYTES (the
    message the servicer got was parsed from them); None otherwise."""
    return _REQUEST_BYTES.get()


# --- the interceptor --------------------------------------------------------------------------------

class _Parsed:
    """A request message with the bytes it was parsed from (methods of KEEP_BYTES)."""

    __slots__ = ("data", "message")

    def __init__(self, message: Any, data: bytes) -> None:
        self.message, self.data = message, data


class _Undecodable:
    """What the tolerant deserializer hands on instead of a message it could not parse."""

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    message_class = getattr(deserialize, "__self__", None)  # deserializers are Message.FromString
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = descriptor.name if descriptor is not None else method.rsplit("/", 1)[-1] + "Request"
    keep = method in KEEP_BYTES

    def parse(data: bytes) -> Any:
        try:
            message = deserialize(data)
            return _Parsed(message, bytes(data)) if keep else message
        except Exception as exc:  # noqa: BLE001 - DecodeError, or whatever a parser raises on garbage
            reason = str(exc).rsplit(": ", 1)[-1] or type(exc).__name__
            return _Undecodable(f"request: not a valid {type_name} message ({reason}): send the "
                                "method's request message, serialized")
    return parse


def _refuse(context: grpc.ServicerContext, message: str) -> None:
    """INVALID_ARGUMENT with `message` ("field: reason") and the BadRequest naming the field."""
    field, _, reason = message.partition(": ")
    abort_invalid(context, [(field, reason)], bounded_details(message))


KeyCheck = Callable[[Any], str | None]


def _checked(request: Any, context: grpc.ServicerContext, key_check: KeyCheck | None) -> None:
    if isinstance(request, _Undecodable):
        _refuse(context, request.message)
    problem = key_check(request) if key_check is not None else None
    if problem is not None:
        _refuse(context, problem)


def _stream_checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        _checked(request, context, None)
        yield request


class RequestGuard(grpc.ServerInterceptor):
    """Wraps every method handler: tolerant request parsing, then the key checks above."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = details.method
        key_check = KEY_CHECKS.get(method)
        parse = _tolerant(handler.request_deserializer, method)
        if handler.unary_unary is not None or handler.unary_stream is not None:
            kind = "unary_unary" if handler.unary_unary is not None else "unary_stream"
            behaviour = getattr(handler, kind)

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                data = None
                if isinstance(request, _Parsed):
                    request, data = request.message, request.data
                _checked(request, context, key_check)
                token = _REQUEST_BYTES.set(data)
                try:
                    return behaviour(request, context)
                finally:
                    _REQUEST_BYTES.reset(token)
            return handler._replace(request_deserializer=parse, **{kind: unary})
        kind = "stream_unary" if handler.stream_unary is not None else "stream_stream"
        stream_behaviour = getattr(handler, kind)

        def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return stream_behaviour(_stream_checked(requests, context), context)
        return handler._replace(request_deserializer=parse, **{kind: streaming})
