"""`tidegate`: the command line of the control daemon, in the spirit of `ip`.

    tidegate [-s SOCKET] [-j] [--timeout SECONDS] COMMAND ...

    serve [-c CONFIG] [--netns NAME]      run the daemon (its socket comes from CONFIG: listen.unix)
    attach IFNAME [--mode native|generic|auto] [--replace] [--next-program PATH]
    detach IFNAME
    status                                health, policy generation, interfaces
    acl add --id N [--priority P] --action allow|deny|reject [--src PREFIX] [--dst PREFIX]
            [--protocol tcp|udp|sctp|icmp|icmpv6|0-255] [--sport 53|1024-65535] [--dport 80|80-90]
            [--icmp-type 0-255] [--icmp-code 0-255] [--syn] [--log] [--metrics] [--description TEXT]
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
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from control.cli import fleet, follow, migration, response_format
from control.cli.args import Commands, global_options, ports, protocol_arg, u32, u64
from control.cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    SOCKET_ENV,
    CliError,
    Out,
    Rpc,
    client_tls,
    resolve_target,
)
from control.cli.files import load_model
from control.daemon_config import DEFAULT_SOCKET
from control.policy.models import Policy, ServiceChain
from control.rpc import convert
from control.rpc.api import pb2
from dataplane import protocols

PACKED_FROM = 10_000  # rules from which `policy apply` sends the ACL as columns (AclColumns)
NETNS_DIR = "/run/netns"


# --- commands ------------------------------------------------------------------------------------

def cmd_attach(args: argparse.Namespace, rpc: Rpc) -> Out:
    iface = pb2.Interface(name=args.ifname, mode=convert.xdp_mode_to_proto(args.mode), replace=args.replace,
                          next_program=args.next_program or "")
    answer = rpc.call(rpc.interfaces.AttachInterface, pb2.AttachInterfaceRequest(interface=iface))
    data = {"interface": response_format.interface_data(answer.interface), "generation": answer.generation}
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
    data = response_format.status_data(health, interfaces, policy)
    return Out(data, response_format.status_text(data))


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
    for field in ("icmp_type", "icmp_code"):
        if getattr(args, field) is not None:
            setattr(match, field, getattr(args, field))
    match.syn = args.syn
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
    data = response_format.rules_data(rpc.call(rpc.policy.ListAclRules, pb2.ListAclRulesRequest()))
    return Out(data, response_format.rules_text(data))


def cmd_policy_apply(args: argparse.Namespace, rpc: Rpc) -> Out:
    # "generation" is what listings and `policy show -j` carry: informational, not a condition
    policy: Policy = load_model(args.file, Policy, "a policy: settings, acl, tunnels, chains",
                                informational=("generation",))
    packed = len(policy.acl) >= PACKED_FROM  # the ACL as columns: many times quicker to decode
    request = pb2.ApplyPolicyRequest(policy=convert.policy_to_proto(policy, acl_columns=packed),
                                     dry_run=args.dry_run,
                                     expected_generation=args.expected_generation or 0)
    data = response_format.apply_data(rpc.call(rpc.policy.ApplyPolicy, request), args.dry_run)
    return Out(data, response_format.apply_text(data, "<stdin>" if args.file == "-" else args.file))


def cmd_policy_show(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.GetPolicy, pb2.GetPolicyRequest())
    policy = convert.policy_from_proto(answer.policy)
    return Out(response_format.policy_data(policy, answer.generation),
               response_format.policy_yaml(policy, answer.generation))


def cmd_tunnel_add(args: argparse.Namespace, rpc: Rpc) -> Out:
    tunnel = pb2.Tunnel(vni=args.vni, vxlan=not args.no_vxlan, geneve=not args.no_geneve)
    answer = rpc.call(rpc.policy.AddTunnel, pb2.AddTunnelRequest(tunnel=tunnel))
    return _changed(f"added tunnel VNI {args.vni}", answer)


def cmd_tunnel_del(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.DeleteTunnel, pb2.DeleteTunnelRequest(vni=args.vni))
    return _changed(f"deleted tunnel VNI {args.vni}", answer)


def cmd_tunnel_list(args: argparse.Namespace, rpc: Rpc) -> Out:
    data = response_format.tunnels_data(rpc.call(rpc.policy.ListTunnels, pb2.ListTunnelsRequest()))
    return Out(data, response_format.tunnels_text(data))


def cmd_chain_add(args: argparse.Namespace, rpc: Rpc) -> Out:
    chain: ServiceChain = load_model(args.file, ServiceChain, "one service chain: name, forward, ...")
    answer = rpc.call(rpc.policy.AddChain, pb2.AddChainRequest(chain=convert.service_chain_to_proto(chain)))
    return _changed(f"added chain {chain.name}", answer)


def cmd_chain_del(args: argparse.Namespace, rpc: Rpc) -> Out:
    answer = rpc.call(rpc.policy.DeleteChain, pb2.DeleteChainRequest(name=args.name))
    return _changed(f"deleted chain {args.name}", answer)


def cmd_chain_list(args: argparse.Namespace, rpc: Rpc) -> Out:
    data = response_format.chains_data(rpc.call(rpc.policy.ListChains, pb2.ListChainsRequest()))
    return Out(data, response_format.chains_text(data))


def cmd_stats(args: argparse.Namespace, rpc: Rpc) -> Out:
    request = pb2.GetStatsRequest(interfaces=args.interface or [])
    data = response_format.stats_data(rpc.call(rpc.stats.GetStats, request))
    return Out(data, response_format.stats_text(data))


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


def _policy_commands(commands: Commands) -> None:
    acl = commands.group("acl", "ACL rules, one at a time")
    p = acl.add("add", cmd_acl_add, "add one ACL rule")
    p.add_argument("--id", type=u32, required=True, help="rule id, unique (1 to 2^32-1)")
    p.add_argument("--priority", type=u32, help="lower is judged first (default 1000)")
    p.add_argument("--action", choices=["allow", "deny", "reject"], required=True,
                   help="reject: drop and answer (TCP RST, else ICMP administratively prohibited)")
    p.add_argument("--src", metavar="PREFIX", help="source prefix (default any)")
    p.add_argument("--dst", metavar="PREFIX", help="destination prefix (default any)")
    p.add_argument("--protocol", type=protocol_arg, metavar="NAME|NUMBER",
                   help=f"{', '.join(protocols.NUMBERS)}, or an IP protocol number (47 GRE, 50 ESP, ...)")
    p.add_argument("--sport", type=ports, metavar="PORT[-PORT]", help="source port or range")
    p.add_argument("--dport", type=ports, metavar="PORT[-PORT]", help="destination port or range")
    p.add_argument("--icmp-type", type=u32, metavar="TYPE",
                   help="ICMP/ICMPv6 type, 0-255 (8 echo request; ICMPv6: 128); needs --protocol icmp|icmpv6")
    p.add_argument("--icmp-code", type=u32, metavar="CODE", help="ICMP/ICMPv6 code, 0-255")
    p.add_argument("--syn", action="store_true",
                   help="only TCP opening a connection (SYN without ACK, RST, FIN); needs --protocol tcp")
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
    global_options(parser, top=True)
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    p = commands.add("serve", cmd_serve, "run the daemon in the foreground")
    p.add_argument("-c", "--config", metavar="CONFIG", help="daemon config (YAML; default: built-in)")
    p.add_argument("--netns", metavar="NAME", help="manage the named network namespace /run/netns/NAME")
    p = commands.add("attach", cmd_attach, "attach the data plane to an interface")
    p.add_argument("ifname", metavar="IFNAME")
    p.add_argument("--mode", choices=["native", "generic", "auto"], default="auto")
    p.add_argument("--replace", action="store_true",
                   help="take the interface even from an XDP program Tidegate did not load")
    p.add_argument("--next-program", metavar="PATH",
                   help="a pinned XDP program that gets every packet Tidegate passes")
    commands.add("detach", cmd_detach, "detach the data plane from an interface").add_argument(
        "ifname", metavar="IFNAME")
    commands.add("status", cmd_status, "health, policy generation and interfaces")
    _policy_commands(commands)
    p = commands.add("stats", cmd_stats, "counters per reason, rule, tunnel, chain leg, event, interface")
    p.add_argument("--interface", action="extend", nargs="+", metavar="IF",
                   help="only these interfaces (repeatable; default all attached)")
    follow.add_commands(commands)
    fleet.add_commands(commands)
    migration.add_commands(commands)
    return parser


# --- main ----------------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    if args.handler is cmd_serve:
        return cmd_serve(args)
    if getattr(args.handler, "etcd", False):  # `fleet`: etcd, not the daemon
        out = args.handler(args)
        print(response_format.to_json(out.data) if args.json else out.text)
        return EXIT_OK
    socket = args.socket or os.environ.get(SOCKET_ENV) or str(DEFAULT_SOCKET)
    rpc = Rpc(socket, args.timeout, client_tls(args, socket))
    try:
        out = args.handler(args, rpc)
    finally:
        rpc.close()
    if out is not None:  # the following commands (events, top, trace) print as they go
        print(response_format.to_json(out.data) if args.json else out.text)
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
