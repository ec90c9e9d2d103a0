"""`tidegate import`: an iptables/nftables policy -> a Tidegate policy, a report, the rules to keep.

    tidegate import [--iptables FILE] [--ip6tables FILE] [--nft FILE] [--ipset FILE] [--live]
                    [--interface IF ...] [--local auto|PREFIX,...] [--forwarding auto|on|off]
                    [--return-routes auto|PREFIX,...] [--established on|off]
                    [--netns NAME] [-o POLICY.yaml] [--kept-dir DIR] [--max-expansion N] [--apply]

Inputs are what the tools print (`iptables-save`, `ip6tables-save`, `nft -j list ruleset`,
`ipset save`; '-' = stdin), or with --live the machine's own (in --netns NAME if given).
Output: the policy as YAML on stdout and the report on stderr; with -o the YAML goes to the
file and the report to stdout; with -j one JSON object (report, policy, kept rules). --kept-dir
writes the netfilter rules to keep (kept.v4 / kept.v6 for iptables-restore, kept.json for
`nft -j -f`). --apply sends the policy to the daemon: its ACL and default_action replace the
daemon's, everything else stays; a dry run shows the change first, then it is applied only if
the policy did not change meanwhile. See docs/migration.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from control.cli import response_format
from control.cli.args import Commands
from control.cli.client import EXIT_USAGE, CliError, Out, Rpc
from control.cli.files import read_input
from control.migrate import host as hostmod
from control.migrate import ipset, iptables, nft, output, report, residual, translate
from control.migrate.flatten import FlattenError
from control.migrate.ir import Ruleset
from control.migrate.translate import Options, Plan
from control.policy.models import Policy
from control.rpc import convert
from control.rpc.api import pb2

KEPT_FILES = {"iptables": "kept.v4", "ip6tables": "kept.v6", "iptables-legacy": "kept-legacy.v4",
              "ip6tables-legacy": "kept-legacy.v6"}
IPTABLES = (("iptables", 4), ("ip6tables", 6), ("iptables-legacy", 4), ("ip6tables-legacy", 6))


def _inputs(args: argparse.Namespace) -> dict[str, str]:
    texts: dict[str, str] = {}
    for key in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy", "nft", "ipset"):
        path = getattr(args, key.replace("-", "_"))
        if path:
            texts[key] = read_input(path)[0]
    if args.live:
        try:
            live = hostmod.read_live(args.netns)
        except hostmod.HostError as exc:
            raise CliError(EXIT_USAGE, f"--live: {exc}") from None
        for key, text in live.items():
            texts.setdefault(key, text)
    if not any(k in texts for k in ("nft", *(k for k, _ in IPTABLES))):
        raise CliError(EXIT_USAGE, "nothing to import: give --iptables, --ip6tables or --nft (files the "
                                   "tools printed), or --live to read this machine's rules")
    return texts


def read_ruleset(texts: dict[str, str], names: dict[str, str] | None = None) -> Ruleset:
    names = names or {}
    try:
        sets = ipset.parse(texts["ipset"], names.get("ipset", "ipset save")) if "ipset" in texts else None
        ruleset = Ruleset()
        for key, family in IPTABLES:
            if key in texts:
                iptables.parse(texts[key], family, ruleset, sets, names.get(key, key), origin=key)
        if "nft" in texts:
            nft.parse(texts["nft"], ruleset, names.get("nft", "nft -j"), skip=_iptables_tables(ruleset))
    except (ipset.IpsetError, iptables.IptablesError, nft.NftError) as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    return ruleset


def _iptables_tables(ruleset: Ruleset) -> set[str]:
    """nft tables iptables-nft keeps ("ip filter"): read from iptables-save already (nft.parse
    skips them only if they have iptables' built-in chains)."""
    return {f"{'ip' if c.origin == 'iptables' else 'ip6'} {c.table}" for c in ruleset.chains.values()
            if c.origin in ("iptables", "ip6tables")}


def host_facts(args: argparse.Namespace, interfaces: tuple[str, ...]) -> hostmod.Host:
    try:
        if args.local == "auto":
            local, source = hostmod.read_local(args.netns), "local routes read from the " + (
                f"namespace {args.netns}" if args.netns else "machine")
        else:
            prefixes = args.local.split(",") if args.local else []
            local, source = hostmod.local_from_prefixes(prefixes), "--local"
        if args.forwarding == "auto":
            forwarding = hostmod.read_forwarding(args.netns)
        else:
            on = args.forwarding == "on"
            forwarding = {4: on, 6: on}
        routed, why = _routed_back(args, interfaces)
        timeouts, ct_source = hostmod.read_conntrack_timeouts(args.netns) if args.established == "on" else \
            ({}, "not read (--established off)")
    except hostmod.HostError as exc:
        raise CliError(EXIT_USAGE, f"{exc} (or give --local, --forwarding and --return-routes)") from None
    return hostmod.Host(interfaces, local, forwarding, source, routed, why, timeouts, ct_source)


def _routed_back(args: argparse.Namespace, interfaces: tuple[str, ...]
                 ) -> tuple[dict[int, Any], dict[int, str]]:
    """The addresses replies to which leave by the attach interface (established.py)."""
    if args.established == "off":
        return {4: (), 6: ()}, {}
    if args.return_routes == "auto" or len(interfaces) != 1:
        return hostmod.read_routed_back(interfaces, args.netns)
    given = hostmod.local_from_prefixes(args.return_routes.split(",") if args.return_routes else [],
                                        "--return-routes")
    return given, {f: f"--return-routes names no IPv{f} prefix" for f in (4, 6) if not given[f]}


def plan_of(args: argparse.Namespace, interfaces: tuple[str, ...]) -> tuple[Ruleset, Plan]:
    ruleset = read_ruleset(_inputs(args))
    try:
        options = Options(max_expansion=args.max_expansion, established=args.established == "on")
        plan = translate.translate(ruleset, host_facts(args, interfaces), options)
    except FlattenError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    return ruleset, plan


def kept_rules(ruleset: Ruleset, plan: Plan) -> dict[str, str]:
    """File name -> content of the netfilter rules to keep."""
    out = {}
    for origin, name in KEPT_FILES.items():
        if origin in ruleset.sources:
            out[name] = residual.iptables_text(ruleset, plan, origin)[0]
    if "nft" in ruleset.sources:
        out["kept.json"] = residual.nft_json(ruleset, plan)[0]
    return out


def _daemon_interfaces(rpc: Rpc, given: tuple[str, ...]) -> tuple[str, ...]:
    answer = rpc.call(rpc.interfaces.ListInterfaces, pb2.ListInterfacesRequest())
    attached = tuple(sorted(i.name for i in answer.interfaces))
    if not attached:
        raise CliError(EXIT_USAGE, "--apply: the daemon has no interface attached: attach the interfaces "
                                   "Tidegate is to judge first (tidegate attach IF)")
    if given and set(given) != set(attached):
        raise CliError(EXIT_USAGE, f"--interface {','.join(given)}: the daemon is attached to "
                                   f"{','.join(attached)}, and its ACL judges all of them: import for "
                                   "exactly those")
    return attached


def _apply(rpc: Rpc, policy_of: Any) -> tuple[dict[str, Any], dict[str, Any], Policy]:
    current = rpc.call(rpc.policy.GetPolicy, pb2.GetPolicyRequest())
    policy: Policy = policy_of(convert.policy_from_proto(current.policy))
    message = convert.policy_to_proto(policy)
    dry = rpc.call(rpc.policy.ApplyPolicy, pb2.ApplyPolicyRequest(policy=message, dry_run=True,
                                                                  expected_generation=current.generation))
    done = rpc.call(rpc.policy.ApplyPolicy, pb2.ApplyPolicyRequest(policy=message,
                                                                   expected_generation=current.generation))
    return response_format.apply_data(dry, True), response_format.apply_data(done, False), policy


def cmd_import(args: argparse.Namespace, rpc: Rpc) -> Out | None:
    interfaces = tuple(args.interface or ())
    if args.apply:
        interfaces = _daemon_interfaces(rpc, interfaces)
    ruleset, plan = plan_of(args, interfaces)
    applied: dict[str, Any] = {}
    if args.apply:
        dry, done, policy = _apply(rpc, lambda base: output.to_policy(plan, base))
        applied = {"dry_run": dry, "applied": done}
    else:
        policy = output.to_policy(plan)
    kept = kept_rules(ruleset, plan)
    if args.kept_dir:
        directory = Path(args.kept_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in kept.items():
            (directory / name).write_text(content)
    text_policy = output.policy_yaml(policy)
    if args.output and args.output != "-":
        Path(args.output).write_text(text_policy)
    data = report.data(plan)
    if args.json:
        body = {"report": data, "policy": response_format.policy_data(policy), "kept": kept, **applied}
        return Out(body, "")
    lines = [response_format.table(report.HEADERS, report.rows(plan)), *report.summary_lines(plan)]
    if applied:
        lines += ["", response_format.apply_text(applied["dry_run"], "the import"),
                  response_format.apply_text(applied["applied"], "the import")]
    text = "\n".join(lines)
    if args.output or args.apply:
        if args.output == "-":
            print(text_policy, end="")
            print(text, file=sys.stderr)
            return None
        return Out(data, text)
    print(text_policy, end="")
    print(text, file=sys.stderr)
    return None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def add_commands(commands: Commands) -> None:
    p = commands.add("import", cmd_import, "translate an iptables/nftables policy into Tidegate's, rule by "
                                           "rule, and report each rule's fate")
    p.add_argument("--iptables", metavar="FILE", help="iptables-save output ('-' = stdin)")
    p.add_argument("--ip6tables", metavar="FILE", help="ip6tables-save output")
    p.add_argument("--iptables-legacy", metavar="FILE",
                   help="iptables-legacy-save output, when both backends hold rules")
    p.add_argument("--ip6tables-legacy", metavar="FILE", help="ip6tables-legacy-save output")
    p.add_argument("--nft", metavar="FILE", help="nft -j list ruleset output")
    p.add_argument("--ipset", metavar="FILE", help="ipset save output (for -m set)")
    p.add_argument("--live", action="store_true", help="read the machine's rules (in --netns if given)")
    p.add_argument("--interface", action="append", metavar="IF",
                   help="an interface Tidegate judges (repeatable; with --apply: the daemon's)")
    p.add_argument("--local", default="auto", metavar="auto|PREFIX,...",
                   help="this host's own destinations (default: read the local routing table)")
    p.add_argument("--forwarding", choices=["auto", "on", "off"], default="auto",
                   help="whether the host forwards (default: read the sysctls)")
    p.add_argument("--return-routes", default="auto", metavar="auto|PREFIX,...",
                   help="the addresses this host sends to by the attach interface and no other (replies "
                        "from them are in Tidegate's flow table; default: read the main routing table)")
    p.add_argument("--established", choices=["on", "off"], default="on",
                   help="move conntrack ESTABLISHED/RELATED accepts onto allow_established where they agree "
                        "(default on; off: they stay in netfilter)")
    p.add_argument("--netns", metavar="NAME", help="read the machine's facts (and --live rules) in this "
                                                   "namespace")
    p.add_argument("-o", "--output", metavar="FILE", help="write the policy YAML here ('-' = stdout)")
    p.add_argument("--kept-dir", metavar="DIR", help="write the netfilter rules to keep here")
    p.add_argument("--max-expansion", type=_positive, default=Options().max_expansion, metavar="N",
                   help="most Tidegate rules one source rule may become (default %(default)s)")
    p.add_argument("--apply", action="store_true", help="apply through the daemon (dry run shown first)")
