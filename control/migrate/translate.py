"""Flattened chains + the machine's facts -> a Plan: Tidegate's ACL, and every rule's fate.

Where each base chain's rules land in the one first-match list Tidegate has (X):

    prerouting/ingress chains           judge everything arriving (domain: all)
    INPUT chains                        only this host's destinations: each rule's destination
                                        is intersected with the local addresses (when the
                                        family forwards; else nothing else arrives anyway)
    pass: local and multicast destinations   (only for a family that forwards)
    FORWARD chains                      whatever is left: not local, not multicast

so an INPUT rule never judges forwarded traffic at the driver hook, nor a FORWARD rule local
traffic; the report says which rules that changed. OUTPUT and POSTROUTING rules never see what
XDP sees. A chain's DROP policy becomes a final deny for its domain (default_action when it
covers everything of both families). safety.py says what may move; established.py when a
conntrack ESTABLISHED/RELATED accept becomes allow_established.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from control.migrate import capability as cap
from control.migrate import established, fragments
from control.migrate import intervals as iv
from control.migrate.capability import Feature, NotExpressible
from control.migrate.flatten import POLICY, FlatRule, Stage, flatten
from control.migrate.host import MULTICAST, Host
from control.migrate.ir import Box, Chain, Kind, Ruleset, SourceRule, region_overlaps, region_subtract
from control.migrate.safety import (
    Blocker,
    BlockerIndex,
    Region,
    RegionIndex,
    iface_status,
    outcome,
    reads,
    region_of,
)

SECTION_OF = {"ingress": "pre", "prerouting": "pre", "input": "local", "forward": "fwd"}
HOOK_ORDER = {"ingress": 0, "prerouting": 1, "input": 2, "forward": 2}
DESCRIPTION_MAX = 256


class Status(StrEnum):
    MOVED = "moved"        # denied in XDP; netfilter's copy can go (for the attach interfaces)
    MIRRORED = "mirrored"  # in XDP and still in netfilter (accepts; denies an earlier pass shadows)
    KEPT = "kept"          # stays in netfilter only: Tidegate cannot express it (reason)
    BLOCKED = "blocked"    # expressible, but an earlier kept rule could match the same packets
    INLINED = "inlined"    # a jump, goto or RETURN (its effect is in the rules around it)


SEVERITY = [Status.MOVED, Status.INLINED, Status.MIRRORED, Status.BLOCKED, Status.KEPT]


@dataclass
class Copy:
    """The fate of one place a source rule ends up in (a user chain may be jumped to twice)."""

    status: Status
    reason: str = ""
    blocker: int | None = None
    removable: bool = False
    ids: list[int] = field(default_factory=list)
    scope: str = ""
    via: tuple[int, ...] = ()


@dataclass
class Fate:
    rule: SourceRule
    copies: list[Copy] = field(default_factory=list)

    @property
    def status(self) -> Status:
        if not self.copies:
            return Status.KEPT
        return max((c.status for c in self.copies), key=SEVERITY.index)

    @property
    def removable(self) -> bool:
        return bool(self.copies) and all(c.removable for c in self.copies)

    @property
    def reason(self) -> str:
        seen: list[str] = []
        for c in self.copies:
            text = c.reason
            if len(self.copies) > 1 and c.via:
                text = f"via rule {','.join(map(str, c.via))}: {c.status}"
                text += f" ({c.reason})" if c.reason else ""
            if text and text not in seen:
                seen.append(text)
        return "; ".join(seen) if self.copies else "its chain is never jumped to from a base chain"

    @property
    def blocker(self) -> int | None:
        return next((c.blocker for c in self.copies if c.blocker is not None), None)

    @property
    def ids(self) -> list[int]:
        return [i for c in self.copies for i in c.ids]

    @property
    def scope(self) -> str:
        return next((c.scope for c in self.copies if c.scope), "")


@dataclass
class Entry:
    """One or more Tidegate rules (one per match) from one flat rule, a guard or a policy."""

    action: str
    matches: list[dict[str, object]]
    description: str
    copy: Copy | None = None
    families: frozenset[int] = frozenset()
    catch_all: bool = False  # the whole domain of its family, at the end of X
    region: list[Box] = field(default_factory=list)  # what its matches select
    chain: Chain | None = None  # the base chain a deny came from (fragments.py)


@dataclass
class Options:
    max_expansion: int = 1024
    capabilities: dict[Feature, bool] = field(default_factory=lambda: dict(cap.CAPABILITIES))
    established: bool = True  # conntrack ESTABLISHED/RELATED accepts onto allow_established


@dataclass
class Plan:
    entries: list[Entry]
    default_action: str
    fates: list[Fate]
    host: Host
    notes: list[str]
    families: frozenset[int]
    # allow_established and the timeouts it needs (None: off; established.py)
    established_timeouts: dict[str, int] | None = None
    fragments: str = "judge"  # the policy's settings.fragments (fragments.py)

    @property
    def allow_established(self) -> bool:
        return self.established_timeouts is not None

    @property
    def removable(self) -> set[int]:
        return {f.rule.number for f in self.fates if f.removable}


def _domains(host: Host, families: frozenset[int]) -> dict[tuple[str, int], list[Box] | None | str]:
    """(section, family) -> domain boxes; None = everything; a string: why no traffic."""
    out: dict[tuple[str, int], list[Box] | None | str] = {}
    for f in (4, 6):
        top = iv.top_of(f)
        local = host.local[f]
        out[("pre", f)] = None
        if not host.forwarding[f]:
            out[("local", f)] = None
            out[("fwd", f)] = (f"IPv{f} forwarding is off here: FORWARD sees no traffic "
                               "(import again if it changes)")
            continue
        out[("local", f)] = [Box(f, dst=local)] if local else \
            f"no local IPv{f} address is known (--local): INPUT cannot be told from FORWARD"
        rest = iv.complement(iv.union(local, iv.prefix_span(MULTICAST[f])), top)
        out[("fwd", f)] = [Box(f, dst=rest)]
    return out


class _Translator:
    def __init__(self, ruleset: Ruleset, host: Host, options: Options) -> None:
        self.ruleset = ruleset
        self.host = host
        self.options = options
        self.families = frozenset(f for c in ruleset.base_chains() for f in c.families)
        self.domains = _domains(host, self.families)
        self.fates = {r.number: Fate(r) for r in ruleset.rules}
        self.entries: list[Entry] = []
        self.blockers = BlockerIndex()
        self.passes: dict[int, RegionIndex] = {}  # X's passes, by stage
        self.notes: list[str] = list(ruleset.notes)
        self.ct_setup = established.conntrack_setup(ruleset)
        self.ct_timeouts = established.timeouts(host)
        self.established: list[int] = []  # the rules that turned allow_established on
        self.chains: list[Chain] = []  # the base chains XDP's rules come from, by stage index

    def run(self) -> Plan:
        stages = flatten(self.ruleset)
        ordered = sorted((s for s in stages if s.chain.hook in SECTION_OF),
                         key=lambda s: (SECTION_OF[s.chain.hook or ""] == "fwd",
                                        HOOK_ORDER[s.chain.hook or ""], s.chain.priority))
        for stage in stages:
            for rule in stage.structural:
                if rule.number in self.fates:
                    self.fates[rule.number].copies.append(Copy(Status.INLINED, rule.target.kind.value))
            if stage.chain.hook not in SECTION_OF:
                self._unseen(stage)
        guarded = False
        self.chains = [s.chain for s in ordered]
        for index, stage in enumerate(ordered):
            if SECTION_OF[stage.chain.hook or ""] == "fwd" and not guarded:
                self._guard()
                guarded = True
            self._stage(index, stage)
        timeouts = self._bypass()
        setting = self._fragments()
        default = self._default_action()
        self._prune(default)
        return Plan(self.entries, default, list(self.fates.values()), self.host, self.notes, self.families,
                    timeouts, setting)

    # --- per stage --------------------------------------------------------------------------------
    def _unseen(self, stage: Stage) -> None:
        why = {"output": "OUTPUT judges traffic this host sends, which XDP never sees",
               "postrouting": "POSTROUTING runs after routing; XDP judges before it",
               "egress": "egress runs on the way out; XDP judges arrivals"}.get(
                   stage.chain.hook or "", f"hook {stage.chain.hook} is not on the path XDP judges")
        for flat in stage.rules:
            self._copy(flat, Copy(Status.KEPT, why))

    def _stage(self, index: int, stage: Stage) -> None:
        section = SECTION_OF[stage.chain.hook or ""]
        for flat in stage.rules:
            families = sorted({b.family for b in flat.path.boxes})
            for family in families or [stage.chain.families[0]]:
                sub = _only_family(flat, family)
                domain = self.domains[(section, family)]
                if sub.target.kind is Kind.REJECT and section == "local" and domain is None:
                    domain = self._answered(family)
                if isinstance(domain, str):
                    self._copy(sub, Copy(Status.KEPT, domain))
                    continue
                self._flat(index, section, sub, domain)

    def _answered(self, family: int) -> list[Box] | str:
        """Where a REJECT of INPUT answers when the family does not forward: this host's own
        destinations. The stack drops the rest without a word, so a DROP may cover all of it
        (domain None), a reject may not: XDP would answer packets netfilter never saw."""
        local = self.host.local[family]
        if not local:
            return (f"no local IPv{family} address is known (--local): a reject here would answer "
                    "packets the stack drops silently")
        return [Box(family, dst=local)]

    def _flat(self, index: int, section: str, flat: FlatRule, domain: list[Box] | None) -> None:
        if flat.implicit == POLICY and flat.target.kind is Kind.ACCEPT:
            return  # the end of this chain: on to the next one (and at last to X's default)
        attached = self.host.interfaces
        status = iface_status(flat.path.iif, attached)
        if status == "none":
            names = ", ".join(attached) or "the attach interfaces"
            self._copy(flat, Copy(Status.KEPT, f"never sees traffic arriving on {names} "
                                               f"(-i {' '.join(map(str, flat.path.iif))})"))
            return
        if not flat.path.boxes:
            self._copy(flat, Copy(Status.KEPT, "matches no packet of this family"))
            return
        if flat.path.ctstate is not None and self._conntrack(index, section, flat, domain, status):
            return
        why = self._unsupported(flat, status)
        limit = self.options.max_expansion
        region = region_of(flat, domain, attached, limit, why)
        # FORWARD rules are written without their domain: the guard before them leaves only it
        emit = region_of(flat, None, attached, limit, why) if section == "fwd" else region
        if not region.hi:
            self._copy(flat, Copy(Status.KEPT, _empty_reason(section)))
            return
        scope = _scope(section, flat, domain)
        want = outcome(flat)
        kind = flat.target.kind
        if region.exact is not None and emit.exact is not None and not flat.target.side:
            if kind is Kind.ACCEPT:
                self._pass(index, flat, region, emit, scope)
                return
            if kind in (Kind.DROP, Kind.REJECT):
                self._deny(index, section, flat, region, emit, scope, want)
                return
        effect = bool(flat.target.side) or any(u.stateful for u in flat.path.unsupported) or \
            kind in (Kind.SIDE, Kind.TRANSLATE)
        self._keep(index, section, flat, region, want, effect)

    def _unsupported(self, flat: FlatRule, iif_status: str, ctstate: bool = True) -> str:
        p = flat.path
        if iif_status == "unknown":
            return (f"-i {' '.join(map(str, p.iif))}: give the attach interfaces (--interface) to tell "
                    "whether it applies")
        if iif_status == "some":
            return f"-i {' '.join(map(str, p.iif))} matches only some of the attach interfaces"
        if p.oif:
            return f"Tidegate cannot express -o {' '.join(map(str, p.oif))} (decided by routing, after XDP)"
        states = f"Tidegate cannot express conntrack state {','.join(sorted(p.ctstate or ()))}"
        if p.ctstate is not None and ctstate and not p.ctstate <= established.MAPPABLE:
            return states
        if p.unsupported:
            first = p.unsupported[0]
            return f"Tidegate cannot express {first.what}" + (f" ({first.text})" if first.text else "")
        if flat.target.side:
            return f"Tidegate cannot {flat.target.side} (the rule also does that)"
        return states if p.ctstate is not None and ctstate else ""

    def _conntrack(self, index: int, section: str, flat: FlatRule, domain: list[Box] | None,
                   iif_status: str) -> bool:
        """A plain ACCEPT of conntrack states ESTABLISHED and/or RELATED (established.py): onto
        allow_established, the rule kept in netfilter for what only it can tell (a partial
        blocker). False: not such a rule, or other conditions keep it (the caller says why)."""
        states = flat.path.ctstate
        assert states is not None
        if flat.target.kind is not Kind.ACCEPT or flat.target.side or not states <= established.MAPPABLE or \
                self._unsupported(flat, iif_status, ctstate=False):
            return False
        limit = self.options.max_expansion
        region = region_of(flat, domain, self.host.interfaces, limit, "")
        emit = region_of(flat, None, self.host.interfaces, limit, "") if section == "fwd" else region
        if not region.hi:
            return False
        refused = self._ct_refusal(states)
        if refused or region.exact is None or emit.exact is None:
            self._keep(index, section, flat, region, "accept", False, refused or region.reason)
            return True
        kinds, sources = established.residual(states, region.exact, self.host)
        kinds_emitted, passed = established.residual(states, emit.exact, self.host)
        try:
            matches = cap.region_matches(passed, self.options.capabilities, limit)
        except NotExpressible as exc:
            self._keep(index, section, flat, region, "accept", False, exc.reason)
            return True
        if matches:  # inexact: a later deny it overlaps stays in netfilter (the blocker's `partial`)
            self.entries.append(Entry("allow", matches, _describe(flat) + " (left to netfilter)",
                                      families=frozenset(b.family for b in passed), region=passed))
            self.passes.setdefault(index, RegionIndex()).add(sources, index)
        self.blockers.add(Blocker(region.exact, flat, index, "accept", False, partial=kinds,
                                  ported="established" in states, partial_emitted=kinds_emitted))
        if "established" in states:
            self.established.append(flat.rule.number)
        self._copy(flat, Copy(Status.MIRRORED, established.describe(states, self.host),
                              scope=_scope(section, flat, domain)))
        return True

    def _ct_refusal(self, states: frozenset[str]) -> str:
        if "established" in states and not cap.enabled(Feature.ESTABLISHED, self.options.capabilities):
            return NotExpressible(str(Feature.ESTABLISHED), Feature.ESTABLISHED).reason
        if not self.options.established:
            return "conntrack rules are left to netfilter (--established off)"
        return established.refusal(states, self.host, self.ct_setup, self.ct_timeouts)

    def _bypass(self) -> dict[str, int] | None:
        """With allow_established, a recorded flow's packet passes XDP before any deny: netfilter
        must still hold every deny such a packet could meet (established.py). The timeouts."""
        if not self.established or isinstance(self.ct_timeouts, str):
            return None
        passable = [b for f in (4, 6) for b in established.tracked(f)]
        for entry in self.entries:
            copy = entry.copy
            if entry.action != "allow" and copy is not None and copy.status is Status.MOVED and \
                    region_overlaps(entry.region, passable):
                copy.status, copy.removable = Status.MIRRORED, False
                copy.reason = "; ".join(r for r in (BYPASS, copy.reason) if r)
        rules = ",".join(map(str, dict.fromkeys(self.established)))
        shown = ", ".join(f"{k} {v} s" for k, v in self.ct_timeouts.items())
        self.notes.append(f"allow_established on (rule {rules}); its timeouts outlast netfilter's "
                          f"({self.host.conntrack_source}): {shown}. {established.LIMITS}")
        return self.ct_timeouts

    def _fragments(self) -> str:
        """The policy's `fragments` (fragments.py): first when a deny of X comes from a chain that
        judges reassembled datagrams; then a deny of a chain that judges fragments one by one,
        which a later fragment could meet, stays in netfilter too (a later fragment passes XDP)."""
        defrag = fragments.reassembling(self.ruleset)
        denies = [(e, f, e.chain) for e in self.entries for f in sorted(e.families)
                  if e.action != "allow" and e.chain is not None]
        whole = {(id(e), f) for e, f, chain in denies if fragments.sees_whole(chain, f, defrag)}
        if not whole:
            if denies:
                self.notes.append(fragments.JUDGE_NOTE)
            return "judge"
        for entry, family, _chain in denies:
            copy = entry.copy
            if (id(entry), family) in whole or copy is None or not copy.removable or \
                    not fragments.matches_later_fragments([b for b in entry.region if b.family == family]):
                continue
            copy.status, copy.removable = Status.MIRRORED, False
            kept = fragments.KEPT_REASON.format(family=family)
            copy.reason = "; ".join(r for r in (kept, copy.reason) if r)
        self.notes.append(fragments.first_note(sorted({f for _, f in whole}), defrag))
        return "first"

    def _pass(self, index: int, flat: FlatRule, region: Region, emit: Region, scope: str) -> None:
        assert region.exact is not None and emit.exact is not None
        try:
            matches = cap.region_matches(emit.exact, self.options.capabilities, self.options.max_expansion)
        except NotExpressible as exc:
            self._keep(index, "", flat, region, "accept", False, exc.reason)
            return
        copy = Copy(Status.MIRRORED, "allowed in XDP; netfilter keeps it and still judges what XDP passes",
                    scope=scope)
        self._emit(Entry("allow", matches, _describe(flat), copy, region=emit.exact), flat)
        self.passes.setdefault(index, RegionIndex()).add(region.exact, index)

    def _deny(self, index: int, section: str, flat: FlatRule, region: Region, emit: Region, scope: str,
              want: str) -> None:
        assert region.exact is not None and emit.exact is not None
        kind = "reject" if flat.target.kind is Kind.REJECT else "deny"
        try:
            action = cap.action_for(kind, self.options.capabilities)
            matches = cap.region_matches(emit.exact, self.options.capabilities, self.options.max_expansion)
        except NotExpressible as exc:
            self._keep(index, section, flat, region, want, False, exc.reason)
            return
        restricted = domain_restricted(self.host, section, flat)
        exact, emitted, blocker, partial, what = self._blocked(index, region.exact, emit.exact, want,
                                                              restricted)
        cut = exact != region.exact
        if blocker is not None:
            number = blocker.flat.rule.number
            what = what or blocker.flat.implicit or _blocker_reason(blocker)
            copy = Copy(Status.BLOCKED, f"blocked by rule {number}: {what}", blocker=number, scope=scope)
            self._copy(flat, copy)
            self.blockers.add(Blocker(region.hi, flat, index, want, False))
            return
        if partial:
            try:
                matches = cap.region_matches(emitted, self.options.capabilities, self.options.max_expansion,
                                             ported=any(b.ported for b in partial))
            except NotExpressible as exc:
                self._keep(index, section, flat, region, want, False, exc.reason)
                return
        shadowed = next((s for s, passes in self.passes.items()
                         if s != index and passes.first(exact, lambda _: True) is not None), None)
        if cut:
            numbers = ",".join(str(b.flat.rule.number) for b in partial)
            why = (f"denied in XDP but for what rule {numbers} may accept first and only netfilter can "
                   f"tell ({PARTIAL}); netfilter keeps it for those")
            copy = Copy(Status.MIRRORED, why, scope=scope)
        elif shadowed is not None:
            copy = Copy(Status.MIRRORED, "denied in XDP; netfilter keeps it too: an accept of an earlier "
                                         "chain passes part of it to netfilter", scope=scope)
        elif self._multicast(section, flat):
            why = ("denied in XDP; netfilter keeps it too, for multicast destinations (XDP leaves those to "
                   "netfilter when the host forwards)")
            copy = Copy(Status.MIRRORED, why, scope=scope)
        else:
            # netfilter's copy can say "not from IF" (! -i IF) for one attach interface
            removable = not flat.implicit and len(self.host.interfaces) == 1
            note = cap.reject_note(flat.target.detail or "") if action == "reject" else ""
            copy = Copy(Status.MOVED, note, removable=removable, scope=scope)
        self._emit(Entry(action, matches, _describe(flat), copy,
                         catch_all=not partial and _is_catch_all(flat, emit), region=emitted,
                         chain=self.chains[index]), flat)

    def _blocked(self, index: int, exact: list[Box], emitted: list[Box], want: str, restricted: bool
                 ) -> tuple[list[Box], list[Box], Blocker | None, tuple[Blocker, ...], str]:
        """The first kept rule that blocks a deny of these packets, after taking out of them what
        moved conntrack rules leave to netfilter: (what is left, as judged and as emitted, the
        blocker or None, the conntrack rules taken out, why blocked when it is by one of them)."""
        limit = self.options.max_expansion
        partial: tuple[Blocker, ...] = ()
        while True:
            blocker = self.blockers.first(exact, index, want, reads(exact, restricted), partial)
            if blocker is None or blocker.partial is None:
                return exact, emitted, blocker, partial, ""
            partial += (blocker,)
            left = region_subtract(exact, blocker.partial, limit)
            shown = region_subtract(emitted, blocker.partial_emitted or blocker.partial, limit)
            if left is None or shown is None:
                return exact, emitted, blocker, partial, f"what it leaves to netfilter cuts this rule into " \
                                                         f"more than {limit} pieces"
            if not left:
                return exact, emitted, blocker, partial, ALL_RESIDUAL
            exact, emitted = left, shown

    def _multicast(self, section: str, flat: FlatRule) -> bool:
        """Multicast may reach INPUT (a joined group) and FORWARD (multicast routing) at once, so
        when the family forwards, XDP leaves it to netfilter: a rule that matches some of it
        must stay there for it."""
        if section == "pre":
            return False
        return any(self.host.forwarding[b.family] and
                   (b.dst is None or iv.overlaps(b.dst, iv.prefix_span(MULTICAST[b.family])))
                   for b in flat.path.boxes)

    def _keep(self, index: int, section: str, flat: FlatRule, region: Region, want: str, effect: bool,
              reason: str = "") -> None:
        text = reason or region.reason or _verdict_reason(flat)
        self._copy(flat, Copy(Status.KEPT, text))
        rewrites = ("dst" if section == "pre" else "src") if flat.target.kind is Kind.TRANSLATE else ""
        self.blockers.add(Blocker(region.hi, flat, index, want, effect and not rewrites, rewrites))

    def _guard(self) -> None:
        """Local and multicast destinations pass before the FORWARD rules (which never see them)."""
        for f in sorted(self.families):
            if not self.host.forwarding[f]:
                continue
            values = iv.union(self.host.local[f], iv.prefix_span(MULTICAST[f]))
            matches: list[dict[str, object]] = [{"dst": p} for p in iv.prefixes(values, f)]
            why = f"import: IPv{f} local and multicast destinations go to netfilter (FORWARD never sees them)"
            self.entries.append(Entry("allow", matches, why, families=frozenset({f}),
                                      region=[Box(f, dst=values)]))

    def _emit(self, entry: Entry, flat: FlatRule) -> None:
        entry.families = frozenset(b.family for b in flat.path.boxes)
        self.entries.append(entry)
        self._copy(flat, entry.copy or Copy(Status.MOVED))

    def _copy(self, flat: FlatRule, copy: Copy) -> None:
        copy.via = tuple(v.number for v in flat.path.via)
        fate = self.fates.get(flat.rule.number)
        if fate is not None:
            fate.copies.append(copy)

    def _prune(self, default: str) -> None:
        """Drop the passes no later deny needs: XDP passes what nothing denies anyway."""
        if default == "deny":
            return
        denies = RegionIndex()
        keep: list[Entry] = []
        for entry in reversed(self.entries):
            if entry.action == "allow":
                if denies.first(entry.region, lambda _: True) is None:
                    if entry.copy is not None:
                        entry.copy.status = Status.KEPT
                        entry.copy.reason = "an accept, and no deny after it in XDP: XDP passes it anyway"
                        entry.copy.scope = ""
                    continue
            elif entry.action != "allow":
                denies.add(entry.region, entry)
            keep.append(entry)
        self.entries = keep[::-1]

    def _default_action(self) -> str:
        """deny when X ends in catch-all denies covering every family (and the rules given cover
        both families): those few rules become the default action."""
        tail: list[Entry] = []
        for entry in reversed(self.entries):
            if not entry.catch_all or entry.action != "deny":
                break
            tail.append(entry)
        covered = frozenset(f for e in tail for f in e.families)
        if not tail or covered != frozenset({4, 6}) or self.families != frozenset({4, 6}):
            return "allow"
        del self.entries[len(self.entries) - len(tail):]
        for entry in tail:
            if entry.copy is not None:
                entry.copy.reason = "the default action (deny)"
        return "deny"


BYPASS = ("denied in XDP; netfilter keeps it too: allow_established passes a recorded flow's packets "
          "before the ACL, and netfilter must still judge those it does not call ESTABLISHED")
PARTIAL = "RELATED, ESTABLISHED of other protocols or from sources routed out elsewhere"
ALL_RESIDUAL = "it may accept all of these packets as ESTABLISHED or RELATED where only netfilter can tell"


def _only_family(flat: FlatRule, family: int) -> FlatRule:
    from dataclasses import replace

    path = replace(flat.path, boxes=[b for b in flat.path.boxes if b.family == family])
    return FlatRule(flat.rule, path, flat.target, flat.implicit)


def _empty_reason(section: str) -> str:
    if section == "local":
        return "never matches a packet for this host, all INPUT sees (its destinations are not local)"
    if section == "fwd":
        return "never matches a forwarded packet (its destinations are this host's)"
    return "matches no packet (its RETURNs take all of it)"


def _is_catch_all(flat: FlatRule, region: Region) -> bool:
    """A policy (or RETURN-to-policy) rule whose region is everything of its family."""
    return bool(flat.implicit) and region.exact is not None and \
        all(b.is_everything for b in region.exact) and bool(region.exact)


def domain_restricted(host: Host, section: str, flat: FlatRule) -> bool:
    """INPUT and FORWARD rules also read the destination when the family forwards (local or not)."""
    return section in ("local", "fwd") and any(host.forwarding[b.family] for b in flat.path.boxes)


def _scope(section: str, flat: FlatRule, domain: list[Box] | None) -> str:
    if domain is None or section == "pre":
        return ""
    dst = [b.dst for b in flat.path.boxes]
    inside = all(d is not None and any(iv.contains(x.dst or iv.EMPTY, d) for x in domain) for d in dst)
    if inside:
        return ""
    if section == "local":
        return "INPUT: limited to this host's own destinations"
    return "FORWARD: local and multicast destinations left out"


def _describe(flat: FlatRule) -> str:
    rule = flat.rule
    text = f"{rule.where}" if rule.number else f"{rule.origin} {rule.table} {rule.chain} policy"
    if flat.implicit:
        text += f" ({flat.implicit})"
    if rule.comment:
        text += f": {rule.comment}"
    return text[:DESCRIPTION_MAX]


def _verdict_reason(flat: FlatRule) -> str:
    t = flat.target
    return {Kind.OTHER: f"Tidegate has no {t.name or 'such'} action",
            Kind.TRANSLATE: f"{t.name} rewrites packets (address translation stays in netfilter)",
            Kind.SIDE: f"{t.name} is not a verdict Tidegate has",
            Kind.MODIFY: f"{t.name} changes the packet or its connection, which Tidegate does not",
            }.get(t.kind, f"{t}")


def _blocker_reason(b: Blocker) -> str:
    if b.flat.target.kind is Kind.TRANSLATE:
        return "it rewrites addresses first (netfilter would judge the rewritten packet)"
    if b.effect:
        return f"it {b.flat.target.name or 'acts'} on these packets first (logs or counts them), and " \
               "a drop in XDP would hide them from it"
    return f"it stays in netfilter and may {b.outcome.split(':')[0]} some of these packets first"


def translate(ruleset: Ruleset, host: Host, options: Options | None = None) -> Plan:
    return _Translator(ruleset, host, options or Options()).run()
