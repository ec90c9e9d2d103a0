"""The neutral representation both readers (iptables-save, nft -j) produce and the rest reads.

A rule's match is split in two:
- what can be reasoned about exactly: a union of `Box`es, each a product of integer sets
  (protocol, source and destination addresses, ports, ICMP type/code, TCP flags), with
  negations, ranges and set lookups already folded in;
- what cannot: input/output interfaces (judged later against the attach interfaces),
  conntrack states, and `Unsupported` conditions (marks, limits, strings, ...), each with the
  text it came from. A rule with an unsupported condition matches a subset of its boxes.

A `Box` field of None means "any". Ports, ICMP and TCP-flag fields are only ever set together
with a protocol field that makes them meaningful (the readers ensure it), so subtraction, done
protocol first, never produces "port 22 of any protocol".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from control.migrate import intervals as iv
from control.migrate.intervals import Ivs

PROTO_TOP, PORT_TOP, ICMP_TOP, FLAGS_TOP = 255, 65535, 65535, 255
DIMS = ("proto", "src", "dst", "sport", "dport", "icmp", "flags")  # subtraction order
_INDEX = {d: n for n, d in enumerate(DIMS)}


@dataclass(frozen=True, slots=True)
class Box:
    """Packets of one IP family whose every field lies in the given set (None: any value)."""

    family: int
    proto: Ivs | None = None
    src: Ivs | None = None
    dst: Ivs | None = None
    sport: Ivs | None = None
    dport: Ivs | None = None
    icmp: Ivs | None = None  # (type << 8) | code
    flags: Ivs | None = None  # the TCP flags byte

    def top(self, dim: str) -> int:
        if dim in ("src", "dst"):
            return iv.top_of(self.family)
        return {"proto": PROTO_TOP, "sport": PORT_TOP, "dport": PORT_TOP, "icmp": ICMP_TOP,
                "flags": FLAGS_TOP}[dim]

    def get(self, dim: str) -> Ivs | None:
        return getattr(self, dim)  # type: ignore[no-any-return]

    def restrict(self, dim: str, values: Ivs) -> Box | None:
        """This box with `dim` also limited to `values`; None if nothing is left."""
        current = self.get(dim)
        top = self.top(dim)
        new = values if current is None else iv.intersect(current, values)
        if not new:
            return None
        fields = [self.proto, self.src, self.dst, self.sport, self.dport, self.icmp, self.flags]
        fields[_INDEX[dim]] = None if iv.is_full(new, top) else new
        return Box(self.family, *fields)

    @property
    def is_everything(self) -> bool:
        return all(self.get(d) is None for d in DIMS)


def box_and(a: Box, b: Box) -> Box | None:
    if a.family != b.family:
        return None
    out: Box | None = a
    for dim in DIMS:
        values = b.get(dim)
        if values is not None and out is not None:
            out = out.restrict(dim, values)
    return out


def box_overlaps(a: Box, b: Box) -> bool:
    if a.family != b.family:
        return False
    for dim in DIMS:
        x, y = a.get(dim), b.get(dim)
        if x is not None and y is not None and not iv.overlaps(x, y):
            return False
    return True


def box_subtract(a: Box, b: Box) -> list[Box]:
    """a minus b as disjoint boxes (at most one per field b limits)."""
    if not box_overlaps(a, b):
        return [a]
    out = []
    rest: Box | None = a
    for dim in DIMS:
        values = b.get(dim)
        if values is None or rest is None:
            continue
        top = rest.top(dim)
        outside = rest.restrict(dim, iv.complement(values, top))
        if outside is not None:
            out.append(outside)
        rest = rest.restrict(dim, values)
    return out


def region_subtract(region: list[Box], cut: list[Box], limit: int) -> list[Box] | None:
    """The boxes of `region` minus every box of `cut`; None if that takes more than `limit` boxes."""
    out = list(region)
    for c in cut:
        nxt = []
        for box in out:
            nxt.extend(box_subtract(box, c))
            if len(nxt) > limit:
                return None
        out = nxt
    return out


def region_overlaps(a: list[Box], b: list[Box]) -> bool:
    return any(box_overlaps(x, y) for x in a for y in b)


def region_and(a: list[Box], b: list[Box]) -> list[Box]:
    out = []
    for x in a:
        for y in b:
            both = box_and(x, y)
            if both is not None:
                out.append(both)
    return out


# --- conditions ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Unsupported:
    """A condition Tidegate cannot express. `stateful`: matching it changes state (a limit's
    tokens, a recent list), so even packets it drops in the end must still reach it."""

    what: str  # "-m limit", "ct state new", ...
    text: str = ""
    stateful: bool = False


@dataclass(frozen=True, slots=True)
class Iface:
    """-i/-o NAME ("+" at the end: any name starting with the rest), possibly negated."""

    name: str
    negated: bool = False

    def matches(self, ifname: str) -> bool:
        hit = ifname.startswith(self.name[:-1]) if self.name.endswith("+") else ifname == self.name
        return hit != self.negated

    def __str__(self) -> str:
        return f"{'! ' if self.negated else ''}{self.name}"


@dataclass(slots=True)
class Cond:
    """What one rule selects. `boxes` is a union; everything else must hold as well."""

    boxes: list[Box]
    iif: list[Iface] = field(default_factory=list)
    oif: list[Iface] = field(default_factory=list)
    ctstate: frozenset[str] | None = None  # None: any state
    unsupported: list[Unsupported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "ipset blocked: 12 entries, as saved"

    def restrict(self, dim: str, values: Ivs) -> None:
        self.boxes = [b for b in (x.restrict(dim, values) for x in self.boxes) if b is not None]

    def only_family(self, family: int) -> None:
        self.boxes = [b for b in self.boxes if b.family == family]

    def split(self, alternatives: list[tuple[str, Ivs]]) -> None:
        """AND with an OR of (dim, values) alternatives (multiport --ports: sport or dport)."""
        out = []
        for box in self.boxes:
            for dim, values in alternatives:
                limited = box.restrict(dim, values)
                if limited is not None and limited not in out:
                    out.append(limited)
        self.boxes = out


# --- targets ---------------------------------------------------------------------------------------

class Kind(Enum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    RETURN = "return"
    JUMP = "jump"
    GOTO = "goto"
    NONE = "none"            # no target (counting only) or nft `continue`
    SIDE = "side effect"     # non-terminal with an effect others see: LOG, NFLOG, SET, ...
    MODIFY = "modify"        # non-terminal, changes only the packet or its conntrack: MARK, CT, ...
    TRANSLATE = "translate"  # rewrites addresses or ports: DNAT, REDIRECT, TPROXY, ...
    OTHER = "other"          # terminal, something else: QUEUE, NFQUEUE, ...


TERMINAL = frozenset({Kind.ACCEPT, Kind.DROP, Kind.REJECT, Kind.OTHER, Kind.TRANSLATE})


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    name: str = ""     # "DROP", "LOG", the chain of a jump
    detail: str = ""   # reject type ("tcp-reset", "icmp-port-unreachable"), options
    side: str = ""     # an effect others see besides the verdict (nft `log drop`: "log")

    def __str__(self) -> str:
        return self.name or self.kind.value


# --- rules and chains ------------------------------------------------------------------------------

@dataclass(slots=True)
class SourceRule:
    """One rule as the operator's tool printed it; `number` is its row in the report."""

    number: int
    origin: str        # "iptables", "ip6tables", "nft"
    table: str
    chain: str
    position: int      # 1-based within its chain
    line: int          # line of the input (iptables-save) or the nft rule handle
    text: str
    cond: Cond
    target: Target
    comment: str = ""

    @property
    def where(self) -> str:
        return f"{self.origin} {self.table} {self.chain} #{self.position}"


HOOKS = ("ingress", "prerouting", "input", "forward", "output", "postrouting")


@dataclass(slots=True)
class Chain:
    origin: str
    table: str
    name: str
    families: tuple[int, ...]
    hook: str | None = None  # a base chain's hook; None for a user-defined chain
    priority: int = 0
    policy: str = "accept"   # base chains: "accept" or "drop"
    device: str | None = None  # netdev ingress chains
    rules: list[SourceRule] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.origin, self.table, self.name)


@dataclass(slots=True)
class Ruleset:
    """Everything read: chains by (origin, table, name) in the order read."""

    chains: dict[tuple[str, str, str], Chain] = field(default_factory=dict)
    rules: list[SourceRule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # origin -> the text or JSON read

    def add_chain(self, chain: Chain) -> Chain:
        self.chains.setdefault(chain.key, chain)
        return self.chains[chain.key]

    def next_number(self) -> int:
        return len(self.rules) + 1

    def base_chains(self) -> list[Chain]:
        return [c for c in self.chains.values() if c.hook is not None]
