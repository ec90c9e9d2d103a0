"""`tidegate fleet`: the operator's commands for a fleet of daemons steered through etcd.

    tidegate fleet push -f FILE --policy NAME [--expected-revision N]
    tidegate fleet assign NODE... --policy NAME
    tidegate fleet unassign NODE...
    tidegate fleet status [--wait SECONDS]
    tidegate fleet show --policy NAME

They talk to etcd, not to a daemon. Where etcd is: -c CONFIG (a daemon config: its fleet:
section's endpoints, prefix, TLS and user), or --endpoints/--prefix/--etcd-ca/--etcd-cert/
--etcd-key/--etcd-user/--etcd-password-file, or $TIDEGATE_ETCD_ENDPOINTS (comma-separated),
$TIDEGATE_ETCD_PREFIX, $TIDEGATE_ETCD_CA, $TIDEGATE_ETCD_CERT, $TIDEGATE_ETCD_KEY.

Exit codes as for every command: 0 ok; 1 refused (`ABORTED` for a push built on a stale
revision, `NOT_FOUND` for a policy that does not exist, `FAILED_PRECONDITION` for `status
--wait` that timed out before the fleet converged, `etcd` for anything etcd refused); 2 usage
or a policy file that does not validate (nothing was written); 3 etcd cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.cli import response_format
from control.cli.args import Commands, seconds
from control.cli.client import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, Out
from control.cli.files import load_model
from control.policy.models import Policy

ENV = {"endpoints": "TIDEGATE_ETCD_ENDPOINTS", "prefix": "TIDEGATE_ETCD_PREFIX", "ca": "TIDEGATE_ETCD_CA",
       "cert": "TIDEGATE_ETCD_CERT", "key": "TIDEGATE_ETCD_KEY"}


def _fleet_config(args: argparse.Namespace) -> Any:
    """The daemon config's fleet: section, or one made of the flags and environment."""
    from control.daemon_config import ConfigError, Fleet, load_config
    from control.errors import InvalidArgument

    if args.config:
        try:
            fleet = load_config(Path(args.config)).fleet
        except ConfigError as exc:
            raise CliError(EXIT_USAGE, str(exc)) from None
        if fleet is None:
            raise CliError(EXIT_USAGE, f"-c {args.config}: no fleet: section in this daemon config")
        return fleet
    endpoints = args.endpoints or os.environ.get(ENV["endpoints"])
    if not endpoints:
        raise CliError(EXIT_USAGE, "where is etcd? give --endpoints HOST:PORT[,...] "
                                   f"(or ${ENV['endpoints']}), or -c with a daemon config that has a "
                                   "fleet: section")
    fields: dict[str, Any] = {"endpoints": [e for e in endpoints.split(",") if e.strip()], "node": "operator"}
    prefix = args.prefix or os.environ.get(ENV["prefix"])
    if prefix:
        fields["prefix"] = prefix
    tls = {k: v for k in ("ca", "cert", "key") if (v := getattr(args, f"etcd_{k}") or os.environ.get(ENV[k]))}
    if tls:
        fields["tls"] = tls
    if args.etcd_user:
        fields["user"], fields["password_file"] = args.etcd_user, args.etcd_password_file
    from control.rpc import convert

    try:
        return convert.validated(Fleet.model_validate, fields)
    except InvalidArgument as exc:
        flags = {"endpoints": "--endpoints", "prefix": "--prefix", "tls.ca": "--etcd-ca",
                 "tls.cert": "--etcd-cert", "tls.key": "--etcd-key", "tls": "--etcd-cert/--etcd-key",
                 "password_file": "--etcd-password-file", "user": "--etcd-user"}
        raise CliError(EXIT_USAGE, *[f"{flags.get(path.split('[')[0], path)}: {reason}"
                                     for path, reason in exc.errors]) from None


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    from control.fleet.etcd import EtcdClient, EtcdTls
    from control.fleet.keys import Layout

    config = _fleet_config(args)
    tls = None
    if config.tls is not None:
        ca, cert, key = config.tls.files()
        tls = EtcdTls(ca, cert, key, config.tls.server_name)
    client = EtcdClient(config.endpoints, tls=tls, user=config.user, password=config.password(),
                        timeout=min(args.timeout, 30.0))
    return client, Layout(config.prefix)


def _etcd(handler: Callable[[argparse.Namespace, Any, Any], Out]) -> Callable[[argparse.Namespace], Out]:
    """Runs handler(args, client, layout); etcd's errors become exit codes."""
    def run(args: argparse.Namespace) -> Out:
        from control.fleet.etcd import EtcdError, EtcdUnavailable
        from control.fleet.operator import NoSuchPolicy, StaleRevision

        client, layout = _connect(args)
        try:
            return handler(args, client, layout)
        except StaleRevision as exc:
            raise CliError(EXIT_REFUSED, f"ABORTED: {exc}") from None
        except NoSuchPolicy as exc:
            raise CliError(EXIT_REFUSED, f"NOT_FOUND: {exc}") from None
        except EtcdUnavailable as exc:
            raise CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: {exc}") from None
        except EtcdError as exc:
            raise CliError(EXIT_REFUSED, f"etcd: {exc}") from None
        finally:
            client.close()
    run.etcd = True  # type: ignore[attr-defined]  # control.cli._run: no daemon connection
    return run


def cmd_push(args: argparse.Namespace, client: Any, layout: Any) -> Out:
    from control.fleet.keys import encode_policy
    from control.fleet.operator import push

    policy: Policy = load_model(args.file, Policy, "a policy: settings, acl, tunnels, chains")
    data = encode_policy(policy)
    revision = push(client, layout, args.policy, data, args.expected_revision)
    out = {"policy": args.policy, "revision": revision, "bytes": len(data), "acl_rules": len(policy.acl)}
    return Out(out, f"pushed policy {args.policy}: revision {revision} ({len(policy.acl)} ACL rules, "
                    f"{len(data)} bytes)")


def cmd_assign(args: argparse.Namespace, client: Any, layout: Any) -> Out:
    from control.fleet.operator import assign

    revision = assign(client, layout, args.nodes, args.policy)
    return Out({"policy": args.policy, "nodes": args.nodes, "revision": revision},
               f"assigned policy {args.policy} to {', '.join(args.nodes)} (revision {revision})")


def cmd_unassign(args: argparse.Namespace, client: Any, layout: Any) -> Out:
    from control.fleet.operator import unassign

    revision = unassign(client, layout, args.nodes)
    return Out({"nodes": args.nodes, "revision": revision},
               f"unassigned {', '.join(args.nodes)}: they enforce the empty policy (revision {revision})")


def cmd_show(args: argparse.Namespace, client: Any, layout: Any) -> Out:
    from control.fleet.operator import read_policy

    policy, revision = read_policy(client, layout, args.policy)
    data = {"policy": args.policy, "revision": revision, "content": response_format.policy_data(policy)}
    body = response_format.policy_yaml(policy, 0).split("\n", 1)[1]  # without its "# generation" line
    return Out(data, f"# policy {args.policy}, revision {revision}: push changes with "
                     f"--expected-revision {revision}\n{body}")


def cmd_status(args: argparse.Namespace, client: Any, layout: Any) -> Out:
    from control.fleet.operator import read_fleet, wait_converged

    view = wait_converged(client, layout, args.wait) if args.wait else read_fleet(client, layout)
    data = status_data(view)
    if args.wait and not view.converged:
        text = status_text(data)
        raise CliError(EXIT_REFUSED, "FAILED_PRECONDITION: the fleet did not converge within "
                                     f"{args.wait:g} s", *text.splitlines())
    return Out(data, status_text(data))


def status_data(view: Any) -> dict[str, Any]:
    now = time.time()
    nodes = []
    for n in view.nodes:
        s = n.status
        nodes.append({"node": n.node, "assigned": n.assigned, "latest_revision": n.latest,
                      "policy": s.policy if s else None, "revision": s.revision if s else None,
                      "generation": s.generation if s else None, "health": s.health if s else "absent",
                      "converged": n.converged, "age_s": round(now - s.time, 1) if s else None,
                      "problem": n.problem, "error": _error(s.error) if s and s.error else None,
                      "resyncs": s.resyncs if s else None, "reconnects": s.reconnects if s else None,
                      "last_outage": list(s.last_outage) if s and s.last_outage else None})
    return {"revision": view.revision, "converged": view.converged, "policies": view.policies, "nodes": nodes}


def _error(error: Any) -> dict[str, Any]:
    return {"policy": error.policy, "revision": error.revision, "message": error.message,
            "fields": [{"field": f, "reason": r} for f, r in error.fields]}


def status_text(data: dict[str, Any]) -> str:
    rows = [[n["node"], n["assigned"] or "-", n["latest_revision"] or "-",
             f"{n['policy'] or '(empty)'}@{n['revision']}" if n["revision"] is not None else "-",
             "yes" if n["converged"] else "no", n["health"], n["problem"] or ""] for n in data["nodes"]]
    policies = ", ".join(f"{k}@{v}" for k, v in sorted(data["policies"].items())) or "none"
    head = (f"etcd revision {data['revision']}; policies: {policies}; "
            f"{'converged' if data['converged'] else 'NOT converged'}")
    if not rows:
        return head + "\nno nodes: assign a policy (`tidegate fleet assign NODE --policy NAME`)"
    headers = ["NODE", "ASSIGNED", "LATEST", "ENFORCES", "CONVERGED", "HEALTH", "PROBLEM"]
    return head + "\n" + response_format.table(headers, rows)


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="CONFIG", help="take etcd's address, prefix and credentials "
                                                             "from a daemon config's fleet: section")
    p.add_argument("--endpoints", metavar="E1,E2", help=f"etcd endpoints (default ${ENV['endpoints']})")
    p.add_argument("--prefix", metavar="PREFIX",
                   help=f"key prefix (default ${ENV['prefix']}, else /tidegate/)")
    p.add_argument("--etcd-ca", metavar="FILE", help=f"CA of etcd's certificate (default ${ENV['ca']})")
    p.add_argument("--etcd-cert", metavar="FILE",
                   help=f"client certificate for etcd (default ${ENV['cert']})")
    p.add_argument("--etcd-key", metavar="FILE", help=f"its private key (default ${ENV['key']})")
    p.add_argument("--etcd-user", metavar="NAME", help="etcd user (with --etcd-password-file)")
    p.add_argument("--etcd-password-file", metavar="FILE", help="the etcd user's password")


def add_commands(commands: Commands) -> None:
    from control.fleet.keys import check_name

    def name(text: str) -> str:
        try:
            return check_name(text, "name")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def revision(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value}: revisions are 0 (must not exist yet) or more")
        return value

    fleet = commands.group("fleet", "policy for many daemons, through etcd")
    p = fleet.add("push", _etcd(cmd_push), "write a named policy (validated here first)")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="YAML or JSON policy; '-' = stdin")
    p.add_argument("--policy", required=True, type=name, metavar="NAME")
    p.add_argument("--expected-revision", type=revision, metavar="N",
                   help="write only if the policy is still at revision N (0: only if it does not exist); "
                        "else ABORTED")
    _connection_options(p)
    p = fleet.add("assign", _etcd(cmd_assign), "make nodes follow a named policy (one transaction)")
    p.add_argument("nodes", nargs="+", type=name, metavar="NODE")
    p.add_argument("--policy", required=True, type=name, metavar="NAME")
    _connection_options(p)
    p = fleet.add("unassign", _etcd(cmd_unassign),
                  "remove nodes' assignments (they enforce the empty policy)")
    p.add_argument("nodes", nargs="+", type=name, metavar="NODE")
    _connection_options(p)
    p = fleet.add("status", _etcd(cmd_status), "which node enforces which revision, converged or not, errors")
    p.add_argument("--wait", type=seconds, metavar="SECONDS",
                   help="wait up to SECONDS for every node to converge (exit 1 if they do not)")
    _connection_options(p)
    p = fleet.add("show", _etcd(cmd_show), "print a named policy and its revision")
    p.add_argument("--policy", required=True, type=name, metavar="NAME")
    _connection_options(p)
