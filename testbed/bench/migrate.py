"""Benchmark 5: `tidegate import` on big rule sets.

Each rule set is loaded into a fresh namespace with the real `iptables-nft-restore` (timed, as
the baseline beside the import) and saved with `iptables-nft-save`; that output is imported in
process, each stage timed: reading it (control.migrate.iptables), the analysis and translation
(flattening, order safety, capability table: control.migrate.translate), the policy models and
the YAML. The host is taken as not forwarding (INPUT rules judge everything at XDP), one attach
interface.

Rule sets, all in filter INPUT, first line first:
- edge: the control-plane benchmark's rules (testbed.bench.rules: narrow sources, one port or a
  range, allow and deny mixed);
- ClassBench acl1 and fw1 (../shared/data/classbench): source and destination prefixes, port
  ranges, protocols; actions alternate (accept, drop). fw1 is the hard case: wildcards and
  source-port ranges (kept in netfilter until Tidegate has source ports), so thousands of kept
  rules that the order-safety analysis must test the others against.
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from control.migrate import host as hostmod
from control.migrate import iptables, output, translate
from testbed.bench import rules
from testbed.bench.common import Profile, Section, Table, Value
from testbed.bench.load import PREFIX, missing_tools
from testbed.netns import Namespace

NAME = "import"
TITLE = "Import: iptables-save to a Tidegate policy"
REPO = Path(__file__).resolve().parents[2]
# $TIDEGATE_CLASSBENCH, else shared/data/classbench beside the checkout (or beside its parent:
# a git worktree lives one level deeper)
CLASSBENCH = Path(os.environ.get("TIDEGATE_CLASSBENCH") or next(
    (p for p in (REPO.parent / "shared/data/classbench", REPO.parent.parent / "shared/data/classbench")
     if p.is_dir()), REPO.parent / "shared/data/classbench"))
SIZES = {"full": (10_000, 100_000), "quick": (1_000,)}


def edge_rules(total: int) -> list[str]:
    return [f"{rules.iptables_match(r)} -j {'DROP' if r.action == 'deny' else 'ACCEPT'}"
            for r in rules.in_order(rules.ruleset(total))]


def classbench_rules(name: str, total: int) -> list[str] | None:
    """The file's rules as iptables rule specs; None if it is not there."""
    path = CLASSBENCH / f"{name}_{total}.rules.gz"
    if not path.exists():
        return None
    out = []
    with gzip.open(path, "rt") as f:
        for n, line in enumerate(f):
            src, dst, sports, dports, proto = line.lstrip("@").split("\t")[:5]
            spec = [f"-s {src}"] if src != "0.0.0.0/0" else []
            spec += [f"-d {dst}"] if dst != "0.0.0.0/0" else []
            value, mask = (int(x, 16) for x in proto.split("/"))
            if mask:
                spec.append(f"-p {value}")
                if value in (6, 17):
                    spec.append("-m tcp" if value == 6 else "-m udp")
                    for flag, ports in (("--sport", sports), ("--dport", dports)):
                        low, high = (int(x) for x in ports.split(":"))
                        if (low, high) != (0, 65535):
                            spec.append(f"{flag} {low}:{high}")
            spec.append(f"-j {'DROP' if n % 2 else 'ACCEPT'}")
            out.append(" ".join(spec))
    return out


def restore_text(specs: list[str]) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A INPUT {s}" for s in specs]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    got = fn()
    return time.perf_counter() - started, got


def _saved(specs: list[str]) -> tuple[str, float]:
    """iptables-save's output of the rules, and how long iptables-nft-restore took."""
    with Namespace(prefix=PREFIX) as ns:
        started = time.perf_counter()
        done = ns.run(["iptables-nft-restore"], input=restore_text(specs), check=False, timeout=600)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"iptables-nft-restore: {done.stderr.strip()[:300]}")
        return ns.run(["iptables-nft-save"], timeout=600).stdout, took


def _import_once(saved: str) -> tuple[dict[str, float], translate.Plan, int]:
    host = hostmod.Host(("eth0",), hostmod.local_from_prefixes(["10.0.0.1"]), {4: False, 6: False})
    times: dict[str, float] = {}
    times["read"], ruleset = _timed(lambda: iptables.parse(saved, 4))
    times["translate"], plan = _timed(lambda: translate.translate(ruleset, host))  # type: ignore[arg-type]
    times["policy"], policy = _timed(lambda: output.to_policy(plan))  # type: ignore[arg-type]
    times["yaml"], _ = _timed(lambda: output.policy_yaml(policy))  # type: ignore[arg-type]
    return times, plan, len(policy.acl)  # type: ignore[attr-defined,return-value]


def _sets(profile: Profile) -> list[tuple[str, int, list[str] | None]]:
    out: list[tuple[str, int, list[str] | None]] = []
    for total in SIZES.get(profile.name, SIZES["quick"]):
        out.append(("edge", total, edge_rules(total)))
        for name in ("acl1", "fw1"):
            out.append((f"ClassBench {name}", total, classbench_rules(name, total)))
    return out


def run(profile: Profile) -> Section:
    section = Section(NAME, TITLE, method=__doc__ or "")
    missing = missing_tools("iptables-nft-restore", "iptables-nft-save")
    if missing:
        section.failures.append(f"not installed: {', '.join(missing)} (Debian package iptables)")
        return section
    table = Table("Import time (in process, after iptables-save)",
                  ["rule set", "rules", "moved / mirrored / kept / blocked", "Tidegate rules", "read",
                   "analyse + translate", "policy + YAML", "import total", "iptables-nft-restore"])
    for name, total, specs in _sets(profile):
        if specs is None:
            section.failures.append(f"{name} {total}: no ClassBench file in {CLASSBENCH}")
            continue
        saved, restore_s = _saved(specs)
        samples: dict[str, list[float]] = {"read": [], "translate": [], "policy": [], "yaml": [], "total": []}
        plan, acl = None, 0
        for _ in range(profile.control_runs):
            times, plan, acl = _import_once(saved)
            for key, value in times.items():
                samples[key].append(value)
            samples["total"].append(sum(times.values()))
        assert plan is not None
        c = Counter(str(f.status) for f in plan.fates)
        fates = f"{c['moved']:,} / {c['mirrored']:,} / {c['kept']:,} / {c['blocked']:,}"
        output_s = [p + y for p, y in zip(samples["policy"], samples["yaml"], strict=True)]
        table.add(name, len(plan.fates), fates, acl, Value.of(samples["read"], "s"),
                  Value.of(samples["translate"], "s"), Value.of(output_s, "s"),
                  Value.of(samples["total"], "s"), Value.of([restore_s], "s"))
    section.tables.append(table)
    section.notes.append("ClassBench actions alternate accept/drop; fw1's source-port ranges keep rules in "
                         "netfilter until Tidegate has source ports (capability table), which is what makes "
                         "its analysis the heavy one.")
    return section
