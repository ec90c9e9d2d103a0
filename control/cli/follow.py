"""The `tidegate` commands that follow the daemon until told to stop: events, top, trace.

    tidegate events [--rule N] [--reason NAME] [--interface IF] [--src P] [--dst P] [--count N]
    tidegate top [--interval S] [--once | --count N] [--rows N] [--interface IF ...]
    tidegate trace [--host H] [--protocol P] [--port N] [--duration S] [--max-events N]
    tidegate trace --capabilities

They print as they go, one line per event (one JSON object per line with -j, in the shape the
daemon's exporter writes), flushed at once so a pipe sees each line as it happens. Ctrl-C (or
SIGTERM) ends them cleanly, with exit 0: the stream is cancelled, which for `trace` unloads the
tracer in the daemon. Loss reports go to stderr in text mode and, as `"type": "loss"` lines, to
stdout with -j; the first line of `events -j` is always such a report, written once the
subscription is in place (a script can wait for it before making traffic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from control.cli import response_format, stream_format
from control.cli.args import Commands, seconds, u32
from control.cli.client import EXIT_UNREACHABLE, CliError, Out, Rpc
from control.cli.response_format import Data
from control.observe import event_format
from control.rpc.api import pb2
from dataplane import protocols

ANSI_HOME_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: redraw in place
REASONS = [str(n).removeprefix("REASON_") for n, v in pb2.Reason.items() if v]


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt here, even if the shell started us with SIGINT
    ignored (a background job of a non-interactive shell)."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def follow(rpc: Rpc, method: Callable[..., Any], request: Any,
           timeout: float | None = None) -> Iterator[Iterator[Any]]:
    """The messages of a server stream, for a `with` block; leaving it cancels the stream (which
    for a trace is what unloads the tracer in the daemon)."""
    stream = rpc.stream(method, request, timeout)

    def messages() -> Iterator[Any]:
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise rpc.error(exc) from None

    try:
        yield messages()
    finally:
        stream.cancel()


def emit(line: str, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


# --- events ---------------------------------------------------------------------------------------

def reason(text: str) -> int:
    """"DROP_DENIED", "drop_denied" or "REASON_DROP_DENIED" -> the Reason number."""
    name = text.strip().upper().removeprefix("REASON_")
    if name not in REASONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a verdict reason: one of {', '.join(REASONS)}")
    return int(pb2.Reason.Value(f"REASON_{name}"))


def cmd_events(args: argparse.Namespace, rpc: Rpc) -> None:
    request = pb2.WatchEventsRequest(rule_ids=args.rule or [], reasons=args.reason or [],
                                     interfaces=args.interface or [], src=args.src or "", dst=args.dst or "")
    shown = 0
    with interruptible(), contextlib.suppress(KeyboardInterrupt), \
            follow(rpc, rpc.events.WatchEvents, request) as messages:
        for msg in messages:
            if msg.HasField("event"):
                data = event_format.policy_event_data(msg.event)
                emit(json.dumps(data) if args.json else stream_format.policy_event_text(data))
                shown += 1
                if args.count and shown >= args.count:
                    return
            elif msg.HasField("loss"):
                data = event_format.event_loss_data(msg.loss)
                if args.json:
                    emit(json.dumps(data))
                elif any(data[k] for k in ("dropped", "rate_limited", "ringbuf_full")):
                    emit(f"tidegate: {stream_format.event_loss_text(data)}", err=True)
        # the stream never ends by itself: the daemon is stopping
        raise CliError(EXIT_UNREACHABLE, "UNAVAILABLE: the daemon ended the event stream: it is stopping")


# --- top ------------------------------------------------------------------------------------------

def cmd_top(args: argparse.Namespace, rpc: Rpc) -> None:
    request = pb2.GetStatsRequest(interfaces=args.interface or [])

    def sample() -> tuple[Data, float]:
        return response_format.stats_data(rpc.call(rpc.stats.GetStats, request)), time.monotonic()

    frames = 1 if args.once else args.count
    redraw = sys.stdout.isatty() and not args.json
    before, taken = sample()
    shown = 0
    with interruptible(), contextlib.suppress(KeyboardInterrupt):
        while frames is None or shown < frames:
            time.sleep(max(0.0, taken + args.interval - time.monotonic()))
            now, now_taken = sample()
            frame = stream_format.top_data(before, now, now_taken - taken, args.rows)
            if args.json:
                emit(json.dumps(frame))
            else:
                text = stream_format.top_text(frame, clock=time.strftime("%H:%M:%S"))
                emit(ANSI_HOME_CLEAR + text if redraw else text + "\n")
            before, taken = now, now_taken
            shown += 1


# --- trace ----------------------------------------------------------------------------------------

def cmd_trace(args: argparse.Namespace, rpc: Rpc) -> Out | None:
    if args.capabilities:
        answer = rpc.call(rpc.trace.TraceCapabilities, pb2.TraceCapabilitiesRequest())
        data = {"capabilities": {c.hook: c.supported for c in answer.capabilities},
                "active_traces": answer.active_traces}
        return Out(data, stream_format.capabilities_text(answer))
    protocol: Any = pb2.Protocol.Value(f"PROTOCOL_{args.protocol.upper()}") if args.protocol else 0
    request = pb2.TraceRequest(host=args.host or "", protocol=protocol, port=args.port or 0,
                               duration_s=args.duration or 0.0, max_events=args.max_events or 0)
    # loading the tracer compiles it (seconds), then it runs for the duration (30 s by default)
    deadline = (args.duration or 30.0) + args.timeout
    printers: dict[str, tuple[Callable[[Any], Data], Callable[[Data], str], bool]] = {
        "started": (stream_format.trace_started_data, stream_format.trace_started_text, True),
        "event": (stream_format.trace_event_data, stream_format.trace_event_text, False),
        "ended": (stream_format.trace_ended_data, stream_format.trace_ended_text, True),
    }
    with interruptible(), contextlib.suppress(KeyboardInterrupt), \
            follow(rpc, rpc.trace.Trace, request, deadline) as messages:
        for msg in messages:
            kind = msg.WhichOneof("kind")
            if kind not in printers:
                continue
            to_data, to_text, to_stderr = printers[kind]
            data = to_data(getattr(msg, kind))
            if args.json:
                emit(json.dumps(data))
            else:
                emit(to_text(data), err=to_stderr)
    return None


# --- arguments ------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = u32(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def add_commands(commands: Commands) -> None:
    p = commands.add("events", cmd_events, "follow policy events (denied packets, logged allows)")
    p.add_argument("--rule", type=u32, action="append", metavar="N", help="only this rule id (repeatable)")
    p.add_argument("--reason", type=reason, action="append", metavar="NAME",
                   help=f"only this verdict reason (repeatable): {', '.join(REASONS)}")
    p.add_argument("--interface", action="append", metavar="IF", help="only this interface (repeatable)")
    p.add_argument("--src", metavar="PREFIX", help="only sources in this prefix")
    p.add_argument("--dst", metavar="PREFIX", help="only destinations in this prefix")
    p.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")

    p = commands.add("top", cmd_top, "rates per interface, verdict reason and ACL rule, refreshed")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="SECONDS",
                   help="refresh period (default 1)")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--once", action="store_true", help="print one frame (after one interval) and exit")
    frames.add_argument("--count", type=_positive_int, metavar="N", help="print N frames and exit")
    p.add_argument("--rows", type=_positive_int, default=20, metavar="N", help="rules shown (default 20)")
    p.add_argument("--interface", action="extend", nargs="+", metavar="IF", help="only these interfaces")

    p = commands.add("trace", cmd_trace, "trace packets through the kernel's hooks for a while")
    p.add_argument("--host", metavar="ADDR", help="only packets from or to this address or prefix")
    p.add_argument("--protocol", choices=list(protocols.NUMBERS))
    p.add_argument("--port", type=u32, metavar="N", help="only packets from or to this port")
    p.add_argument("--duration", type=seconds, metavar="SECONDS", help="how long (default 30, at most 600)")
    p.add_argument("--max-events", type=_positive_int, metavar="N",
                   help="stop after N events (default 10000)")
    p.add_argument("--capabilities", action="store_true",
                   help="list the hooks this kernel supports, and exit")
