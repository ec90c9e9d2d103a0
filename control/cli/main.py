"""`tidegate`: the command line of the control daemon, in the spirit of `ip`.

    tidegate [-s SOCKET] [-j] [--timeout SECONDS] COMMAND ...

    serve [-c CONFIG] [--netns NAME]      run the daemon (its socket comes from CONFIG: listen.unix)
    attach IFNAME [--mode native|generic|auto]
    detach IFNAME
    status                                health, policy generation, interfaces
    acl add --id N [--priority P] --action allow|deny [--src PREFIX] [--dst PREFIX]
            [--protocol tcp|udp|sctp|icmp|icmpv6|0-255] [--sport 53|1024-65535] [--dport 80|80-90]
            [--log] [--metrics] [--description TEXT]
    acl del ID | acl list
    policy apply -f FILE [--dry-run] [--expected-generation N]    FILE: YAML or JSON, '-' = stdin
    policy show                           YAML (the model's JSON with -j)
    tunnel add VNI [--no-vxlan] [--no-geneve] | tunnel del VNI | tunnel list
    chain add -f FILE | chain del NAME | chain list
    stats [--interface IF ...]
    events [--rule N] [--reason NAME] [--interface IF] [--src P] [--dst P] [--count N]
                                          follow policy events (JSON lines with -j); Ctrl-C stops
    top [--interval S] [--once | --count N] [--rows N] [--interface IF ...]
                                          rates per interface, reason and rule, redrawn every second
    trace [--host H] [--protocol P] [--port N] [--duration S] [--max-events N] | trace --capabilities
                                          load a packet tracer for the duration and print what it sees
    fleet push -f FILE --policy NAME [--expected-revision N] | fleet assign NODE... --policy NAME
    fleet unassign NODE... | fleet status [--wait S] | fleet show --policy NAME
                                          policy for many daemons through etcd (control/cli/fleet.py)
    import [--iptables F] [--ip6tables F] [--nft F] [--ipset F] [--live] [--interface IF] [--apply]
                                          an iptables/nftables policy as Tidegate's (docs/migration.md)

Global options (before the command, or after it):
    -s SOCKET   the daemon's socket: a path (or unix:PATH), or HOST:PORT for its TCP listener
                (always TLS); default $TIDEGATE_SOCKET, else /run/tidegate/tidegate.sock
    --ca FILE   (TCP) the CA certificate that signed the daemon's; default $TIDEGATE_CA, else
                the system's trusted CAs
    --cert FILE, --key FILE
                (TCP) this client's certificate and private key, for a daemon that requires
                client certificates (mutual TLS); default $TIDEGATE_CERT, $TIDEGATE_KEY
    --tls-server-name NAME
                (TCP) the name to expect in the daemon's certificate, when it is not HOST
    -j          print one JSON object instead of tables; listings (acl/tunnel/chain list, policy
                show) in the shape of the policy file plus "generation", which `policy apply`
                takes back (e.g. `tidegate -j acl list > acl.json`)
    --timeout   seconds to wait for an answer (default 120: big policies take a while to apply)

Exit codes, for scripts:
    0  success
    1  the daemon refused the request; stderr says `tidegate: <STATUS_CODE_NAME>: <details>`,
       e.g. `tidegate: INVALID_ARGUMENT: policy.acl[3].match.dport: ...` (also DEADLINE_EXCEEDED
       when no answer came within --timeout; `serve` returns 1 when the daemon fails)
    2  usage error, or a local file (policy, chain, daemon config) that does not parse or
       validate; stderr names the file and the field, and nothing was sent (also `serve` when
       another daemon runs with the same state_dir: stderr names its pid)
    3  the daemon cannot be reached (no socket, nobody listening, no permission); stderr names
       the socket and says how to start the daemon (`tidegate serve`)

Files are validated here through the policy models (control.policy.models) before anything is sent;
values given as flags (`acl add`, `tunnel add`) are checked only for their syntax and are
judged by the daemon, whose INVALID_ARGUMENT names the field (e.g. `rule.match.dport.low`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from control.cli import response_format as fmt
from control.daemon_config import DEFAULT_SOCKET
from control.errors import InvalidArgument
from control.policy.models import Policy, ServiceChain
from control.rpc import convert
from control.rpc.api import pb2, pb2_grpc

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SOCKET_ENV = "TIDEGATE_SOCKET"
TLS_ENV = {"ca": "TIDEGATE_CA", "cert": "TIDEGATE_CERT", "key": "TIDEGATE_KEY"}
DEFAULT_TIMEOUT = 120.0
MAX_MESSAGE_BYTES = 256 << 20  # as control.daemon: a 100k-rule policy is tens of MiB of protobuf
U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1
ERRORS_SHOWN = 20
PACKED_FROM = 10_000  # rules from which `policy apply` sends the ACL as columns (AclColumns)
NETNS_DIR = "/run/netns"
_TCP_TARGET = re.compile(r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$")
_PORTS = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


class CliError(Exception):
    """Ends the command: `lines` go to stderr, each as `tidegate: <line>`, and `code` is the exit."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = list(lines)


@dataclass
class Out:
    """What a command prints: `data` as JSON with -j, else `text`."""

    data: dict[str, Any]
    text: str


# --- the connection -------------------------------------------------------------------------------

def resolve_target(socket: str) -> tuple[str, Path | None]:
    """(gRPC target, socket path or None for TCP) of a -s value."""
    if socket.startswith("unix:"):
        path = socket.removeprefix("unix:")
        path = "/" + path.lstrip("/") if path.startswith("//") else path  # unix:///abs
    elif "/" not in socket and _TCP_TARGET.fullmatch(socket):
        return socket, None
    else:
        path = socket
    absolute = Path(os.path.abspath(path))
    return f"unix:{absolute}", absolute


_START_HINT = "start the daemon with `tidegate serve` (or point -s / $TIDEGATE_SOCKET at its socket)"
_TLS_HINT = ("is the daemon listening there? If it is, the TLS handshake failed: --ca must be the CA that "
             "signed the daemon's certificate, whose names must include HOST (else --tls-server-name), "
             "and --cert/--key a client certificate that the daemon's client_ca signed, not expired")


@dataclass(frozen=True)
class ClientTls:
    """PEM contents for a TCP connection (None: not given)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None


def _pem(path: str, option: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{option} {path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise CliError(EXIT_USAGE, f"{option} {path}: not a PEM file (no -----BEGIN line)")
    return data


def client_tls(args: argparse.Namespace, socket: str) -> ClientTls | None:
    """The TLS material of the command line (and $TIDEGATE_CA/_CERT/_KEY) for a TCP target;
    None for a Unix socket, where TLS options are a usage error."""
    given = {"ca": args.ca, "cert": args.cert, "key": args.key}
    if resolve_target(socket)[1] is not None:
        flags = [f"--{k}" for k, v in given.items() if v]
        flags += ["--tls-server-name"] if args.tls_server_name else []
        if flags:
            raise CliError(EXIT_USAGE, f"{', '.join(flags)}: TLS options are for a daemon's TCP listener "
                                       f"(-s HOST:PORT), not the Unix socket {socket}")
        return None
    paths = {k: v or os.environ.get(TLS_ENV[k]) or None for k, v in given.items()}
    if (paths["cert"] is None) != (paths["key"] is None):
        raise CliError(EXIT_USAGE, "--cert and --key go together: this client's certificate and its "
                                   "private key")
    files = {k: None if v is None else _pem(v, f"--{k}") for k, v in paths.items()}
    return ClientTls(ca=files["ca"], cert=files["cert"], key=files["key"], server_name=args.tls_server_name)


class Rpc:
    """Stubs of the daemon's services over one channel; every call has a deadline.

    Nothing touches the socket before the first call, so a command validates its files first.
    A TCP target is always reached over TLS (`tls`: the CA, client certificate and key to use).
    """

    def __init__(self, socket: str, timeout: float, tls: ClientTls | None = None) -> None:
        self.socket = socket
        self.timeout = timeout
        self.target, self.path = resolve_target(socket)
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if self.path is not None:
            self.channel = grpc.insecure_channel(self.target, options=options)
        else:  # the daemon serves TCP only with TLS
            tls = tls or ClientTls()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                                       certificate_chain=tls.cert)
            self.channel = grpc.secure_channel(self.target, credentials, options=options)
        self.interfaces = pb2_grpc.InterfaceServiceStub(self.channel)
        self.policy = pb2_grpc.PolicyServiceStub(self.channel)
        self.stats = pb2_grpc.StatsServiceStub(self.channel)
        self.events = pb2_grpc.EventServiceStub(self.channel)
        self.trace = pb2_grpc.TraceServiceStub(self.channel)

    def _check_socket(self) -> None:
        path = self.path
        if path is None:
            return
        if not path.exists():
            raise CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: no daemon socket at {path}: {_START_HINT}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: no permission to use the daemon socket {path} "
                                             "(mode 0600, owned by the daemon's user): run as that user")

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        self._check_socket()
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self.error(exc) from None

    def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """A server stream (no deadline unless given); iterate it with `follow`."""
        self._check_socket()
        return method(request, timeout=timeout)

    def error(self, exc: grpc.RpcError) -> CliError:
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        where = self.path or self.target
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = _START_HINT if self.path is not None else _TLS_HINT
            return CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: cannot reach the daemon at {where} "
                                              f"({details}): {hint}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(EXIT_REFUSED, f"DEADLINE_EXCEEDED: no answer from the daemon at {where} within "
                                          f"{self.timeout:g} s; a change may still be under way: check with "
                                          "`tidegate status`, and raise --timeout for big policies")
        return CliError(EXIT_REFUSED, f"{code.name}: {details}")

    def health(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        self._check_socket()
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return "UNKNOWN"
            raise self.error(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def close(self) -> None:
        self.channel.close()


# --- local files ---------------------------------------------------------------------------------

def _read(path: str) -> tuple[str, str]:
    """(text, name to show) of a file, or of stdin for '-'."""
    name = "<stdin>" if path == "-" else path
    try:
        return (sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")), name
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{name}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(EXIT_USAGE, f"{name}: not UTF-8 text (byte {exc.start})") from None


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(EXIT_USAGE, f"{name}: line {exc.lineno}, column {exc.colno}: not valid JSON: "
                                   f"{exc.msg}") from None


def _parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CliError(EXIT_USAGE, f"{name}: {where}not valid YAML: {problem}") from None


def load_document(path: str) -> tuple[Any, str]:
    """(parsed content, name to show): JSON for *.json, YAML otherwise (JSON text is tried first)."""
    text, name = _read(path)
    if path.endswith(".json"):
        return _parse_json(text, name), name
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text), name
        except json.JSONDecodeError:
            pass  # YAML flow style, or broken: YAML says where
    return _parse_yaml(text, name), name


def load_model(path: str, model: Any, what: str, informational: tuple[str, ...] = ()) -> Any:
    """A file validated as `model`; exit 2 naming the file and each bad field otherwise.
    Top-level keys in `informational` are dropped first (a listing's "generation")."""
    data, name = load_document(path)
    if data is None:
        raise CliError(EXIT_USAGE, f"{name}: empty document: write {what} (an empty policy is `{{}}`)")
    if not isinstance(data, dict):
        raise CliError(EXIT_USAGE, f"{name}: expected a mapping ({what}), found a {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in informational}
    try:
        return convert.validated(model.model_validate, data)
    except InvalidArgument as exc:
        lines = [f"{name}: {path_.replace('(policy)', '(top level)')}: {reason}"
                 for path_, reason in exc.errors[:ERRORS_SHOWN]]
        if len(exc.errors) > ERRORS_SHOWN:
            lines.append(f"{name}: and {len(exc.errors) - ERRORS_SHOWN} more errors")
        raise CliError(EXIT_USAGE, *lines) from None


# --- commands ------------------------------------------------------------------------------------

def cmd_attach(args: argparse.Namespace, rpc: Rpc) -> Out:
    iface = pb2.Interface(name=args.ifname, mode=convert.xdp_mode_to_proto(args.mode))
    answer = rpc.call(rpc.interfaces.AttachInterface, pb2.AttachInterfaceRequest(interface=iface))
    data = {"interface": fmt.interface_data(answer.interface), "generation": answer.generation}
    i = data["interface"]
    return Out(data, f"attached {i['name']}: requested {i['requested_mode']}, active {i['active_mode']} "
                     f"(generation {answer.generation})")


def cmd_detach(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.interfaces.DetachInterface, pb2.DetachInterfaceRequest(name=args.ifname))
    return _changed(f"detached {args.ifname}", answer)


def cmd_status(args: argparse.Namespace, rpc: Rpc) -> Out:
    health = rpc.health()
    interfaces = rpc.call(rpc.interfaces.ListInterfaces, pb2.ListInterfacesRequest())
    policy = rpc.call(rpc.policy.GetPolicy, pb2.GetPolicyRequest())
    data = fmt.status_data(health, interfaces, policy)
    return Out(data, fmt.status_text(data))


def _changed(what: str, answer: Any) -> Out:
    return Out({"generation": answer.generation}, f"{what} (generation {answer.generation})")


def cmd_acl_add(args: argparse.Namespace, rpc: Rpc) -> Out:
    match = pb2.Match(src=args.src or "", dst=args.dst or "")
    if isinstance(args.protocol, int):
        match.protocol_number = args.protocol
    elif args.protocol:
        match.protocol = pb2.Protocol.Value(f"PROTOCOL_{args.protocol.upper()}")
    for side in ("sport", "dport"):
        ports_given = getattr(args, side)
        if ports_given is not None:
            getattr(match, side).CopyFrom(pb2.PortRange(low=ports_given[0], high=ports_given[1]))
    rule = pb2.AclRule(id=args.id, action=pb2.Action.Value(f"ACTION_{args.action.upper()}"), match=match,
                       log=args.log, metrics=args.metrics, description=args.description)
    if args.priority is not None:
        rule.priority = args.priority
    answer = rpc.call(rpc.policy.AddAclRule, pb2.AddAclRuleRequest(rule=rule))
    return _changed(f"added ACL rule {args.id}", answer)


def cmd_acl_del(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.DeleteAclRule, pb2.DeleteAclRuleRequest(id=args.rule_id))
    return _changed(f"deleted ACL rule {args.rule_id}", answer)


def cmd_acl_list(args: argparse.Namespace, rpc: Rpc) -> Out:
    data = fmt.rules_data(rpc.call(rpc.policy.ListAclRules, pb2.ListAclRulesRequest()))
    return Out(data, fmt.rules_text(data))


def cmd_policy_apply(args: argparse.Namespace, rpc: Rpc) -> Out:
    # "generation" is what listings and `policy show -j` carry: informational, not a condition
    policy: Policy = load_model(args.file, Policy, "a policy: settings, acl, tunnels, chains",
                                informational=("generation",))
    packed = len(policy.acl) >= PACKED_FROM  # the ACL as columns: many times quicker to decode
    request = pb2.ApplyPolicyRequest(policy=convert.policy_to_proto(policy, acl_columns=packed),
                                     dry_run=args.dry_run,
                                     expected_generation=args.expected_generation or 0)
    data = fmt.apply_data(rpc.call(rpc.policy.ApplyPolicy, request), args.dry_run)
    return Out(data, fmt.apply_text(data, "<stdin>" if args.file == "-" else args.file))


def cmd_policy_show(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.GetPolicy, pb2.GetPolicyRequest())
    policy = convert.policy_from_proto(answer.policy)
    return Out(fmt.policy_data(policy, answer.generation), fmt.policy_yaml(policy, answer.generation))


def cmd_tunnel_add(args: argparse.Namespace, rpc: Rpc) -> Out:
    tunnel = pb2.Tunnel(vni=args.vni, vxlan=not args.no_vxlan, geneve=not args.no_geneve)
    answer = rpc.call(rpc.policy.AddTunnel, pb2.AddTunnelRequest(tunnel=tunnel))
    return _changed(f"added tunnel VNI {args.vni}", answer)


def cmd_tunnel_del(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.DeleteTunnel, pb2.DeleteTunnelRequest(vni=args.vni))
    return _changed(f"deleted tunnel VNI {args.vni}", answer)


def cmd_tunnel_list(args: argparse.Namespace, rpc: Rpc) -> Out:
    data = fmt.tunnels_data(rpc.call(rpc.policy.ListTunnels, pb2.ListTunnelsRequest()))
    return Out(data, fmt.tunnels_text(data))


def cmd_chain_add(args: argparse.Namespace, rpc: Rpc) -> Out:
    chain: ServiceChain = load_model(args.file, ServiceChain, "one service chain: name, forward, ...")
    answer = rpc.call(rpc.policy.AddChain, pb2.AddChainRequest(chain=convert.service_chain_to_proto(chain)))
    return _changed(f"added chain {chain.name}", answer)


def cmd_chain_del(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.DeleteChain, pb2.DeleteChainRequest(name=args.name))
    return _changed(f"deleted chain {args.name}", answer)


def cmd_chain_list(args: argparse.Namespace, rpc: Rpc) -> Out:
    data = fmt.chains_data(rpc.call(rpc.policy.ListChains, pb2.ListChainsRequest()))
    return Out(data, fmt.chains_text(data))


def cmd_stats(args: argparse.Namespace, rpc: Rpc) -> Out:
    request = pb2.GetStatsRequest(interfaces=args.interface or [])
    data = fmt.stats_data(rpc.call(rpc.stats.GetStats, request))
    return Out(data, fmt.stats_text(data))


def cmd_serve(args: argparse.Namespace) -> int:
    from control.daemon_config import ConfigError, load_config

    config_path = Path(args.config) if args.config else None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    if args.socket is not None and config.listen.unix != resolve_target(args.socket)[1]:
        raise CliError(EXIT_USAGE, f"-s {args.socket}: the daemon listens where its config says "
                                   f"(listen.unix: {config.listen.unix}); set it there")
    netns = args.netns or config.netns
    if netns and not os.path.exists(os.path.join(NETNS_DIR, netns)):
        raise CliError(EXIT_USAGE, f"--netns {netns}: no namespace {NETNS_DIR}/{netns} "
                                   f"(create it with `ip netns add {netns}`)")
    from control import daemon  # imports BCC: only the daemon needs it
    from control.daemon_lock import AlreadyRunning

    try:
        return daemon.serve(config_path, args.netns)
    except AlreadyRunning as exc:
        raise CliError(EXIT_USAGE, f"serve: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - report it as the daemon's failure, with the trace logged
        import logging

        logging.getLogger("control.cli").exception("the daemon failed")
        raise CliError(EXIT_REFUSED, f"serve: {exc}") from None


# --- arguments -----------------------------------------------------------------------------------

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


PROTOCOL_NAMES = ("tcp", "udp", "sctp", "icmp", "icmpv6")


def protocol(text: str) -> str | int:
    """A protocol name, or a number (the daemon judges its range: 0-255)."""
    if text.lower() in PROTOCOL_NAMES:
        return text.lower()
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= U32_MAX:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a protocol: write {', '.join(PROTOCOL_NAMES)} or a "
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


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
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


class _Commands:
    """Adds leaf commands to a subparsers object, each with the global options and a handler."""

    def __init__(self, subparsers: Any) -> None:
        self.subparsers = subparsers

    def add(self, name: str, handler: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.subparsers.add_parser(name, help=help_, description=help_)
        _global_options(parser, top=False)
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_: str) -> _Commands:
        parser = self.subparsers.add_parser(name, help=help_, description=help_)
        return _Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"))


def _policy_commands(commands: _Commands) -> None:
    acl = commands.group("acl", "ACL rules, one at a time")
    p = acl.add("add", cmd_acl_add, "add one ACL rule")
    p.add_argument("--id", type=u32, required=True, help="rule id, unique (1 to 2^32-1)")
    p.add_argument("--priority", type=u32, help="lower is judged first (default 1000)")
    p.add_argument("--action", choices=["allow", "deny"], required=True)
    p.add_argument("--src", metavar="PREFIX", help="source prefix (default any)")
    p.add_argument("--dst", metavar="PREFIX", help="destination prefix (default any)")
    p.add_argument("--protocol", type=protocol, metavar="NAME|NUMBER",
                   help="tcp, udp, sctp, icmp, icmpv6, or an IP protocol number (47 GRE, 50 ESP, ...)")
    p.add_argument("--sport", type=ports, metavar="PORT[-PORT]", help="source port or range")
    p.add_argument("--dport", type=ports, metavar="PORT[-PORT]", help="destination port or range")
    p.add_argument("--log", action="store_true", help="also report allowed matches as events")
    p.add_argument("--metrics", action="store_true",
                   help="export the rule's counters on the metrics endpoint (tidegate_acl_rule_*)")
    p.add_argument("--description", default="", metavar="TEXT")
    acl.add("del", cmd_acl_del, "delete one ACL rule").add_argument("rule_id", type=u32, metavar="ID")
    acl.add("list", cmd_acl_list, "list the ACL rules in policy order")

    policy = commands.group("policy", "the whole policy")
    p = policy.add("apply", cmd_policy_apply, "replace the whole policy with a file's")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="YAML or JSON policy; '-' = stdin")
    p.add_argument("--dry-run", action="store_true", help="validate and show the diff, change nothing")
    p.add_argument("--expected-generation", type=u64, metavar="N",
                   help="apply only if the policy is still at generation N (else ABORTED)")
    policy.add("show", cmd_policy_show, "print the policy (YAML; with -j its JSON and generation)")

    tunnel = commands.group("tunnel", "VxLAN/Geneve VNIs terminated here")
    p = tunnel.add("add", cmd_tunnel_add, "terminate one VNI")
    p.add_argument("vni", type=u32, metavar="VNI")
    p.add_argument("--no-vxlan", action="store_true", help="do not decapsulate VxLAN for it")
    p.add_argument("--no-geneve", action="store_true", help="do not decapsulate Geneve for it")
    tunnel.add("del", cmd_tunnel_del, "stop terminating one VNI").add_argument("vni", type=u32, metavar="VNI")
    tunnel.add("list", cmd_tunnel_list, "list the tunnels")

    chain = commands.group("chain", "service chains")
    chain.add("add", cmd_chain_add, "add one service chain from a file").add_argument(
        "-f", "--file", required=True, metavar="FILE", help="YAML or JSON service chain; '-' = stdin")
    chain.add("del", cmd_chain_del, "delete one service chain").add_argument("name", metavar="NAME")
    chain.add("list", cmd_chain_list, "list the service chains, one row per leg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidegate", description="Control the Tidegate daemon (or run it: tidegate serve).",
        epilog="exit codes: 0 ok, 1 refused by the daemon, 2 usage or bad file, 3 daemon unreachable",
    )
    _global_options(parser, top=True)
    commands = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    p = commands.add("serve", cmd_serve, "run the daemon in the foreground")
    p.add_argument("-c", "--config", metavar="CONFIG", help="daemon config (YAML; default: built-in)")
    p.add_argument("--netns", metavar="NAME", help="manage the named network namespace /run/netns/NAME")
    p = commands.add("attach", cmd_attach, "attach the data plane to an interface")
    p.add_argument("ifname", metavar="IFNAME")
    p.add_argument("--mode", choices=["native", "generic", "auto"], default="auto")
    commands.add("detach", cmd_detach, "detach the data plane from an interface").add_argument(
        "ifname", metavar="IFNAME")
    commands.add("status", cmd_status, "health, policy generation and interfaces")
    _policy_commands(commands)
    p = commands.add("stats", cmd_stats, "counters per reason, rule, tunnel, chain leg, event, interface")
    p.add_argument("--interface", action="extend", nargs="+", metavar="IF",
                   help="only these interfaces (repeatable; default all attached)")
    from control.cli import fleet as cli_fleet  # it uses this module's Out, CliError and load_model
    from control.cli import follow as cli_follow  # they use this module's Rpc and CliError
    from control.cli import migration as cli_migration

    cli_follow.add_commands(commands)
    cli_fleet.add_commands(commands)
    cli_migration.add_commands(commands)
    return parser


# --- main ----------------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    if args.handler is cmd_serve:
        return cmd_serve(args)
    if getattr(args.handler, "etcd", False):  # `fleet`: etcd, not the daemon
        out = args.handler(args)
        print(fmt.to_json(out.data) if args.json else out.text)
        return EXIT_OK
    socket = args.socket or os.environ.get(SOCKET_ENV) or str(DEFAULT_SOCKET)
    rpc = Rpc(socket, args.timeout, client_tls(args, socket))
    try:
        out = args.handler(args, rpc)
    finally:
        rpc.close()
    if out is not None:  # the following commands (events, top, trace) print as they go
        print(fmt.to_json(out.data) if args.json else out.text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except CliError as exc:
        for line in exc.lines:
            print(f"tidegate: {line}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `tidegate acl list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
