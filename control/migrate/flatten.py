"""User-defined chains inlined into their base chains, first-match order and RETURN kept.

A jump's condition is ANDed into every rule of the chain it jumps to. RETURN cannot be inlined
as a rule (first match has no "skip the rest of this chain"), so it becomes an *exclusion* of
every later rule of the same chain invocation: the packets it returns are subtracted from them.
A goto's chain returns to the caller's caller, so the goto excludes the rest of its own chain
too; from a base chain (and a RETURN in a base chain) what comes back gets the chain's policy,
written out as an implicit rule at that place.

What comes out is one `Stage` per base chain: a flat first-match list of `FlatRule`s whose
targets are all terminal or non-terminal effects (never RETURN, jump or goto).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.migrate.ir import (
    Box,
    Chain,
    Cond,
    Iface,
    Kind,
    Ruleset,
    SourceRule,
    Target,
    Unsupported,
    region_and,
)

POLICY = "the chain's policy"
MAX_DEPTH = 64  # nested jumps; the kernel refuses loops, this catches a broken input


class FlattenError(ValueError):
    """A jump to a chain that does not exist, or deeper nesting than any real ruleset has."""


@dataclass(frozen=True, slots=True)
class Excl:
    """Packets an earlier RETURN (or goto) took out of this part of the chain."""

    cond: Cond
    source: SourceRule


@dataclass(slots=True)
class Path:
    """Everything that must hold to get here: the jumps on the way and the RETURNs passed."""

    boxes: list[Box]
    iif: list[Iface] = field(default_factory=list)
    oif: list[Iface] = field(default_factory=list)
    ctstate: frozenset[str] | None = None
    unsupported: list[Unsupported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exclusions: list[Excl] = field(default_factory=list)
    via: tuple[SourceRule, ...] = ()

    def enter(self, cond: Cond, excl: list[Excl], via: SourceRule | None = None) -> Path:
        state = cond.ctstate if self.ctstate is None else (
            self.ctstate if cond.ctstate is None else self.ctstate & cond.ctstate)
        return Path(region_and(self.boxes, cond.boxes), self.iif + cond.iif, self.oif + cond.oif, state,
                    self.unsupported + cond.unsupported, self.notes + cond.notes, self.exclusions + excl,
                    self.via + ((via,) if via is not None else ()))


@dataclass(slots=True)
class FlatRule:
    rule: SourceRule  # whose verdict this is (for an implicit policy rule: the RETURN or goto)
    path: Path
    target: Target
    implicit: str = ""  # why a policy verdict stands here ("RETURN from a base chain")


@dataclass(slots=True)
class Stage:
    chain: Chain
    rules: list[FlatRule]
    structural: list[SourceRule]  # jumps, gotos, RETURNs, rules without effect: inlined away


def flatten(ruleset: Ruleset) -> list[Stage]:
    stages = []
    for chain in ruleset.base_chains():
        out: list[FlatRule] = []
        structural: list[SourceRule] = []
        root = Path([Box(f) for f in chain.families])
        _walk(ruleset, chain, chain, root, 0, out, structural)
        stages.append(Stage(chain, out, structural))
    return stages


def _policy(base: Chain) -> Target:
    return Target(Kind.DROP if base.policy == "drop" else Kind.ACCEPT, f"policy {base.policy}")


def _walk(ruleset: Ruleset, base: Chain, chain: Chain, path: Path, depth: int, out: list[FlatRule],
          structural: list[SourceRule]) -> None:
    if depth > MAX_DEPTH:
        raise FlattenError(f"{chain.origin} {chain.table}: jumps nest deeper than {MAX_DEPTH} at chain "
                           f"{chain.name} (a loop?)")
    top = depth == 0
    excl: list[Excl] = []
    for rule in chain.rules:
        here = path.enter(rule.cond, list(excl))
        kind = rule.target.kind
        if kind is Kind.RETURN:
            structural.append(rule)
            if top:
                out.append(FlatRule(rule, here, _policy(base), "RETURN from a base chain: the policy"))
            else:
                excl.append(Excl(rule.cond, rule))
        elif kind in (Kind.JUMP, Kind.GOTO):
            structural.append(rule)
            sub = ruleset.chains.get((chain.origin, chain.table, rule.target.name))
            if sub is None:
                raise FlattenError(f"{rule.where}: jumps to chain {rule.target.name}, which is not in "
                                   f"table {chain.table}")
            inner = Path(here.boxes, here.iif, here.oif, here.ctstate, here.unsupported, here.notes,
                         here.exclusions, here.via + (rule,))
            _walk(ruleset, base, sub, inner, depth + 1, out, structural)
            if kind is Kind.GOTO:
                if top:
                    out.append(FlatRule(rule, inner, _policy(base),
                                        "end of a chain reached by goto: the policy"))
                excl.append(Excl(rule.cond, rule))
        elif kind is Kind.NONE:
            structural.append(rule)  # counts packets, changes nothing
        else:
            out.append(FlatRule(rule, here, rule.target))
    if top:
        out.append(FlatRule(_policy_rule(base), path, _policy(base), POLICY))


def _policy_rule(base: Chain) -> SourceRule:
    """A stand-in for the policy line (`:INPUT DROP`): number 0, never in the report's rule rows."""
    return SourceRule(0, base.origin, base.table, base.name, len(base.rules) + 1, 0,
                      f"policy {base.policy}", Cond([]), _policy(base))
