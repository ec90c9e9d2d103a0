"""What the Tidegate policy model can express, and how a match becomes its rules.

The translator asks this module one question per rule: "write these packets (a list of boxes)
as Tidegate matches, or say which feature is missing". The baseline is what control.policy.models
holds: one source prefix, one destination prefix, a protocol (a name or any number 0-255),
one source and one destination port range per rule, an ICMP/ICMPv6 type and code, TCP SYN
(iptables' --syn: SYN set, ACK, RST and FIN clear), actions allow and deny, a default action.
Every other feature has a row in CAPABILITIES and an emitter slot in EMITTERS: when the model
gains the field, enabling it is that row set to True plus its emitter. Until then a rule needing
it stays in netfilter with the reason "not yet supported by Tidegate: <feature>".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from control.migrate import intervals as iv
from control.migrate import names
from control.migrate.ir import FLAGS_TOP, ICMP_TOP, Box
from dataplane import protocols

NAMED_PROTOCOLS = protocols.NAMES


class Feature(StrEnum):
    SPORT = "source ports"
    PROTOCOL_NUMBER = "any protocol number"
    ICMP_TYPE = "ICMP type/code"
    TCP_SYN = "TCP SYN match"
    REJECT = "reject action"
    ESTABLISHED = "allow_established"


# What the model expresses today beyond the baseline. One line per feature: set it to True
# when the model has the field and EMITTERS has its emitter (tests check both).
CAPABILITIES: dict[Feature, bool] = {
    Feature.SPORT: True,             # issue 11: Match.sport (the classifier matches source ports)
    Feature.PROTOCOL_NUMBER: True,   # issue 11: Match.protocol as any number 0-255
    Feature.ICMP_TYPE: True,         # issue 14: Match.icmp_type and icmp_code
    Feature.TCP_SYN: True,           # issue 14: Match.syn (SYN set; ACK, RST, FIN clear)
    Feature.REJECT: True,            # issue 14: action reject (answered from XDP)
    Feature.ESTABLISHED: True,       # issue 14: Settings.allow_established (a setting, no field
                                     # emitter: control/migrate/established.py says when it maps)
}

Fragment = dict[str, Any]  # part of a models.Match, e.g. {"dport": {"low": 80, "high": 90}}
# A field emitter: the values of one Box field (and the protocol chosen) -> alternatives, each a
# Fragment; NotExpressible when this model cannot say it.
Emitter = Callable[[iv.Ivs, int], list[Fragment]]
def _sport(values: iv.Ivs, proto: int) -> list[Fragment]:
    return [{"sport": {"low": low, "high": high}} for low, high in values]


def _protocol_number(values: iv.Ivs, proto: int) -> list[Fragment]:
    return [{"protocol": number} for low, high in values for number in range(low, high + 1)]


CODES = 256  # codes per ICMP type: a Box's icmp values are (type << 8) | code


def _icmp_type(values: iv.Ivs, proto: int) -> list[Fragment]:
    """(type << 8 | code) ranges -> a match per whole type (every code), and per (type, code)
    pair of a type only partly covered."""
    if iv.is_full(values, ICMP_TOP):
        return [{}]
    out: list[Fragment] = []
    for low, high in values:
        value = low
        while value <= high:
            kind, code = divmod(value, CODES)
            if code == 0 and value + CODES - 1 <= high:
                out.append({"icmp_type": kind})
                value += CODES
            else:
                out.append({"icmp_type": kind, "icmp_code": code})
                value += 1
    return out


# The flag bytes Match.syn selects: SYN set, FIN, RST and ACK clear, the other four bits any.
SYN_FLAGS: iv.Ivs = iv.normalize((b, b) for b in range(FLAGS_TOP + 1) if b & 0x17 == 0x02)


def _tcp_syn(values: iv.Ivs, proto: int) -> list[Fragment]:
    if iv.is_full(values, FLAGS_TOP):
        return [{}]
    if values == SYN_FLAGS:
        return [{"syn": True}]
    raise NotExpressible("TCP flags other than a connection opening (--syn: SYN set, ACK, RST and FIN "
                         "clear); Tidegate matches those only")


EMITTERS: dict[Feature, Emitter | None] = {
    Feature.SPORT: _sport,
    Feature.PROTOCOL_NUMBER: _protocol_number,
    Feature.ICMP_TYPE: _icmp_type,
    Feature.TCP_SYN: _tcp_syn,
}
# Actions beyond allow/deny: feature -> the models.AclRule action it needs.
ACTIONS = {Feature.REJECT: "reject"}
# What Tidegate's reject answers (docs/dataplane.md, "Reject"): a TCP RST to TCP, ICMP/ICMPv6
# administratively prohibited to the rest. A REJECT asking for another answer still moves (the packet
# is refused alike, at once) and the report says how the answer differs; only a TCP reset (which
# netfilter allows on TCP rules alone) is answered exactly as asked.
SAME_ANSWER = frozenset({"tcp-reset", "tcp reset"})
REJECT_ANSWER_TEXT = ("answered from XDP with a TCP RST to TCP and ICMP/ICMPv6 administratively "
                      "prohibited to the rest")


def reject_note(detail: str) -> str:
    """The report's note for a REJECT moved to XDP: "" when netfilter asked for Tidegate's answer."""
    if detail.strip() in SAME_ANSWER:
        return ""
    return f"{REJECT_ANSWER_TEXT}; the rule asked for {detail.strip() or 'the default answer'}"


class NotExpressible(Exception):
    """Why a set of packets cannot be written as Tidegate rules; `feature` when it is one of the
    features landing in the model (the report says "not yet supported by Tidegate")."""

    def __init__(self, why: str, feature: Feature | None = None) -> None:
        super().__init__(why)
        self.feature = feature

    @property
    def reason(self) -> str:
        return f"not yet supported by Tidegate: {self.feature}" if self.feature else str(self)


def enabled(feature: Feature, capabilities: dict[Feature, bool] | None = None) -> bool:
    return (capabilities if capabilities is not None else CAPABILITIES).get(feature, False)


def _feature(feature: Feature, values: iv.Ivs, proto: int, caps: dict[Feature, bool]) -> list[Fragment]:
    emitter = EMITTERS.get(feature)
    if not enabled(feature, caps) or emitter is None:
        raise NotExpressible(str(feature), feature)
    return emitter(values, proto)


def _prefixes(values: iv.Ivs | None, family: int, key: str) -> list[Fragment]:
    if values is None:
        return [{}]
    return [{key: p} for p in iv.prefixes(values, family)]


def _family_pin(box: Box) -> Fragment:
    """A rule naming no address matches both families in Tidegate; `0.0.0.0/0` (or `::/0`)
    keeps it to the box's family (dataplane.matcher: "0.0.0.0/0 matches all IPv4 only")."""
    return {"src": "0.0.0.0/0" if box.family == 4 else "::/0"}


def _protocols(box: Box, caps: dict[Feature, bool], limit: int) -> list[int | None]:
    if box.proto is None:
        return [None]
    if iv.size(box.proto) > limit:
        raise NotExpressible(f"{iv.size(box.proto)} protocols (negated -p) would take one rule each, "
                             f"above the limit of {limit}")
    return [p for low, high in box.proto for p in range(low, high + 1)]


def _protocol(proto: int | None, caps: dict[Feature, bool]) -> list[Fragment]:
    if proto is None:
        return [{}]
    if proto in NAMED_PROTOCOLS:
        return [{"protocol": NAMED_PROTOCOLS[proto]}]
    return _feature(Feature.PROTOCOL_NUMBER, iv.span(proto, proto), proto, caps)


# Any port, written as ranges: a rule with a port range never matches a packet without ports, so
# these select every TCP/UDP packet but later fragments (see box_matches' `ported`).
PORT_HALVES = ({"low": 0, "high": 0x7FFF}, {"low": 0x8000, "high": 0xFFFF})


def _ports(values: iv.Ivs | None, proto: int | None, key: str, caps: dict[Feature, bool],
           ported: bool = False) -> list[Fragment]:
    if values is None:
        if ported and proto in names.PORT_PROTOCOLS:
            return [{key: half} for half in PORT_HALVES]
        return [{}]
    if proto not in names.PORT_PROTOCOLS:
        raise NotExpressible(f"ports of protocol {proto} (Tidegate matches ports of tcp, udp and sctp)")
    if key == "sport":
        return _feature(Feature.SPORT, values, proto, caps)
    return [{key: {"low": low, "high": high}} for low, high in values]


def box_matches(box: Box, caps: dict[Feature, bool] | None = None, limit: int = 1024,
                ported: bool = False) -> list[Fragment]:
    """Every Tidegate Match (as a dict) that together select exactly the packets of `box`.
    `ported`: TCP, UDP and SCTP packets only with their ports (a later fragment, which carries
    none, is left to the stack's reassembly: the datagram is judged by its first fragment)."""
    caps = CAPABILITIES if caps is None else caps
    out: list[Fragment] = []
    for proto in _protocols(box, caps, limit):
        whole = ported and box.dport is None and box.sport is None
        parts = [_protocol(proto, caps),
                 _prefixes(box.src, box.family, "src"),
                 _prefixes(box.dst, box.family, "dst"),
                 _ports(box.dport, proto, "dport", caps, whole),
                 _ports(box.sport, proto, "sport", caps)]
        if box.icmp is not None:
            if proto not in (names.ICMP, names.ICMPV6):
                raise NotExpressible("ICMP type/code without protocol icmp")
            parts.append(_feature(Feature.ICMP_TYPE, box.icmp, proto, caps))
        if box.flags is not None:
            if proto != names.TCP:
                raise NotExpressible("TCP flags without protocol tcp")
            parts.append(_feature(Feature.TCP_SYN, box.flags, proto, caps))
        count = 1
        for p in parts:
            count *= len(p)
        if len(out) + count > limit:
            raise NotExpressible(f"would take more than {limit} Tidegate rules (--max-expansion)")
        for combo in itertools.product(*parts):
            match: Fragment = {}
            for fragment in combo:
                match.update(fragment)
            if "src" not in match and "dst" not in match:
                match.update(_family_pin(box))
            out.append(match)
    return out


def region_matches(region: list[Box], caps: dict[Feature, bool] | None = None,
                   limit: int = 1024, ported: bool = False) -> list[Fragment]:
    """The matches of a union of boxes; boxes the same but for the family and naming no
    address become one rule for both families."""
    out: list[Fragment] = []
    seen: set[str] = set()
    both = _family_free(region)
    for box in region:
        for match in box_matches(box, caps, limit - len(out), ported):
            key = repr(sorted(match.items()))
            if box in both:
                match = {k: v for k, v in match.items() if k != "src"}
                key = repr(sorted(match.items()))
            if key not in seen:
                seen.add(key)
                out.append(match)
    return out


def _family_free(region: list[Box]) -> set[Box]:
    """Boxes naming no address whose twin of the other family is in the region too."""
    from dataclasses import replace

    out = set()
    for box in region:
        if box.src is None and box.dst is None:
            twin = replace(box, family=6 if box.family == 4 else 4)
            if twin in region:
                out.add(box)
    return out


def action_for(kind: str, caps: dict[Feature, bool] | None = None) -> str:
    """"allow"/"deny", or the feature's action when it is enabled; NotExpressible otherwise."""
    if kind in ("allow", "deny"):
        return kind
    if kind == "reject":
        if not enabled(Feature.REJECT, caps):
            raise NotExpressible("reject", Feature.REJECT)
        return ACTIONS[Feature.REJECT]
    raise NotExpressible(f"action {kind}")
