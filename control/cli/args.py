"""Argument types and the command table of `tidegate`: every leaf command gets the global
options (-s, -j, --timeout, TLS) and a handler."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from control.cli.client import DEFAULT_TIMEOUT, SOCKET_ENV, TLS_ENV
from control.daemon_config import DEFAULT_SOCKET
from dataplane import protocols

U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1
_PORTS = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def _uint(limit: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value} is not {what} (0 to {limit})")
        return value
    return parse


def ports(text: str) -> tuple[int, int]:
    """"80" or "80-90" -> (low, high). Ranges are the daemon's to judge; only the syntax is checked."""
    m = _PORTS.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port or a low-high range (e.g. 80 or 8000-8080)")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    if max(low, high) > U32_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: ports go up to 65535")
    return low, high


def protocol_arg(text: str) -> str | int:
    """A protocol name, or a number (the daemon judges its range: 0-255)."""
    if text.lower() in protocols.NUMBERS:
        return text.lower()
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= U32_MAX:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a protocol: write {', '.join(protocols.NUMBERS)} or a "
                                     "number 0-255 (47 GRE, 50 ESP, 89 OSPF, ...)")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be above 0")
    return value


u32 = _uint(U32_MAX, "a 32-bit unsigned number")
u64 = _uint(U64_MAX, "a 64-bit unsigned number")


def global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """-s/-j/--timeout on the top parser, and again (without defaults) on every command."""
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("-s", "--socket", default=default(None), metavar="SOCKET",
                        help=f"daemon socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})")
    parser.add_argument("-j", "--json", action="store_true", default=default(False),
                        help="print one JSON object instead of tables")
    parser.add_argument("--timeout", type=seconds, default=default(DEFAULT_TIMEOUT), metavar="SECONDS",
                        help=f"deadline of each request (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--ca", default=default(None), metavar="FILE",
                        help=f"TCP: the CA of the daemon's certificate (default ${TLS_ENV['ca']}, "
                             "else the system's CAs)")
    parser.add_argument("--cert", default=default(None), metavar="FILE",
                        help=f"TCP: this client's certificate, for mutual TLS (default ${TLS_ENV['cert']})")
    parser.add_argument("--key", default=default(None), metavar="FILE",
                        help=f"TCP: the client certificate's private key (default ${TLS_ENV['key']})")
    parser.add_argument("--tls-server-name", default=default(None), metavar="NAME",
                        help="TCP: the name the daemon's certificate must have, when it is not HOST")


class Commands:
    """Adds leaf commands to a subparsers object, each with the global options and a handler."""

    def __init__(self, subparsers: Any) -> None:
        self.subparsers = subparsers

    def add(self, name: str, handler: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.subparsers.add_parser(name, help=help_, description=help_)
        global_options(parser, top=False)
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_: str) -> Commands:
        parser = self.subparsers.add_parser(name, help=help_, description=help_)
        return Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"))
