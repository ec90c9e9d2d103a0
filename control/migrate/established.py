"""When `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` (nft `ct state established,related
accept`) can move onto the policy's allow_established, and what stays with netfilter.

The two are not the same table. netfilter's conntrack knows every connection of the host, in
either direction, whoever opened it; a packet is ESTABLISHED once its connection has seen a
packet each way, RELATED when it is an ICMP error about a connection (or a flow a conntrack
helper expects). Tidegate's table (docs/dataplane.md, "Established") records a flow when a packet
of it leaves by the attach interface (TC egress: TCP, UDP, ICMP echo requests) and passes, before
the ACL, the packets that carry the reversed tuple: replies to what left, and the peer's later
packets of a connection it opened and this host answered. So a packet netfilter calls ESTABLISHED
is in Tidegate's table when (a) it is TCP or UDP with ports, or an ICMP echo reply, (b) packets
to its source leave by the attach interface (the routes say so, and no policy routing rule can
say otherwise), (c) Tidegate's idle timeouts are at least netfilter's (the import sets them so),
and (d) the flow left since allow_established was on and was not evicted from a full table.
RELATED is never in it.

What the translator makes of a mappable rule (translate.py):
- allow_established on, when ESTABLISHED is among the states;
- the rule stays in netfilter; the packets it may accept that Tidegate's table cannot stand in
  for (`residual`: RELATED's ICMP errors, ESTABLISHED of other protocols and ICMP types, of
  sources routed back by another interface) are left to it: a later deny of the same chain moves
  only for its part outside them, written so that it never matches a later fragment either
  (netfilter judges the reassembled datagram; a fragment's ports are unknown at XDP);
- every deny Tidegate judges that a recorded flow's packet could match stays in netfilter too:
  allow_established passes those before the ACL, and the packet may be one netfilter does not
  call ESTABLISHED (its entry gone, an INVALID segment).
(d) and fragments are what remains: the report and docs/migration.md say so.
"""

from __future__ import annotations

from control.migrate import intervals as iv
from control.migrate import names
from control.migrate.host import Host
from control.migrate.ir import ICMP_TOP, PROTO_TOP, Box, Ruleset, region_and
from control.policy.models import CT_TIMEOUT_MAX

MAPPABLE = frozenset({"established", "related"})
ICMP_OF = {4: names.ICMP, 6: names.ICMPV6}
ECHO_REPLY = {4: 0, 6: 129}  # the only ICMP type Tidegate's table passes (its echo request left)
# ICMP types netfilter reads as errors about a connection (RELATED): nf_conntrack_proto_icmp.c
# icmp_is_err(); ICMPv6: every type below 128 (nf_conntrack_proto_icmpv6.c).
ICMP_ERRORS = {4: (3, 4, 5, 11, 12), 6: tuple(range(128))}
TRACKED_PROTOCOLS = (names.TCP, names.UDP)

# netfilter's defaults (seconds), for what the machine does not tell.
NF_DEFAULTS = {
    "tcp_timeout_established": 432000, "tcp_timeout_syn_sent": 120, "tcp_timeout_syn_recv": 60,
    "tcp_timeout_unacknowledged": 300, "tcp_timeout_max_retrans": 300,
    "tcp_timeout_fin_wait": 120, "tcp_timeout_close_wait": 60, "tcp_timeout_last_ack": 30,
    "tcp_timeout_time_wait": 120, "tcp_timeout_close": 10,
    "udp_timeout": 30, "udp_timeout_stream": 120, "icmp_timeout": 30, "icmpv6_timeout": 30,
}
# Tidegate's timeout -> the netfilter timeouts it must outlast. Tidegate's "tcp_closing" starts
# with the first FIN or RST either way, where netfilter's closing states start.
COVERS = {
    "tcp": ("tcp_timeout_established", "tcp_timeout_syn_sent", "tcp_timeout_syn_recv",
            "tcp_timeout_unacknowledged", "tcp_timeout_max_retrans"),
    "tcp_closing": ("tcp_timeout_fin_wait", "tcp_timeout_close_wait", "tcp_timeout_last_ack",
                    "tcp_timeout_time_wait", "tcp_timeout_close"),
    "udp": ("udp_timeout", "udp_timeout_stream"),
    "icmp": ("icmp_timeout", "icmpv6_timeout"),
}
REFRESH_SLACK = 1  # Tidegate refreshes a flow at most once a second (TG_CT_REFRESH_NS)


def timeouts(host: Host) -> dict[str, int] | str:
    """Tidegate's established_timeouts that outlast netfilter's, or why none can."""
    nf = {**NF_DEFAULTS, **host.conntrack_timeouts}
    out = {}
    for ours, theirs in COVERS.items():
        longest = max(theirs, key=lambda k: nf[k])
        value = nf[longest] + REFRESH_SLACK
        if value > CT_TIMEOUT_MAX:
            return (f"netfilter's nf_conntrack_{longest} ({nf[longest]} s) is longer than Tidegate's flows "
                    f"can live ({CT_TIMEOUT_MAX} s): its replies would meet the ACL earlier")
        out[ours] = value
    return out


def conntrack_setup(ruleset: Ruleset) -> list[tuple[int, str]]:
    """Rules that give connections helpers or timeouts of their own (`-j CT --helper/--timeout`,
    nft `ct helper`/`ct timeout`/`ct expectation`): (rule number, what)."""
    out = []
    for rule in ruleset.rules:
        t = rule.target
        if rule.origin != "nft" and t.name == "CT" and ("--helper" in t.detail or "--timeout" in t.detail):
            out.append((rule.number, "helper" if "--helper" in t.detail else "timeout"))
        elif rule.origin == "nft":
            for what in ("ct helper", "ct expectation", "ct timeout"):
                if what in rule.text:
                    out.append((rule.number, what.split()[1]))
                    break
    return out


def refusal(states: frozenset[str], host: Host, setup: list[tuple[int, str]],
            plan_timeouts: dict[str, int] | str) -> str:
    """Why a plain ACCEPT of these conntrack states cannot move onto allow_established ("" if it can)."""
    other = states - MAPPABLE
    if other:
        return f"Tidegate cannot express conntrack state {','.join(sorted(other))}"
    helpers = [n for n, what in setup if what in ("helper", "expectation")]
    if "related" in states and helpers:
        return (f"rule {helpers[0]} gives connections a conntrack helper: RELATED may then be any flow it "
                "expects, which Tidegate cannot tell")
    if "established" not in states:
        return ""
    timers = [n for n, what in setup if what == "timeout"]
    if timers:
        return (f"rule {timers[0]} gives connections timeouts of their own: Tidegate cannot tell how long "
                "netfilter keeps them")
    if isinstance(plan_timeouts, str):
        return plan_timeouts
    if not any(host.routed_back.values()):
        why = "; ".join(dict.fromkeys(host.routed_back_why.values())) or "no route is known"
        return (f"no address is known to be routed back by the attach interface ({why}): Tidegate records "
                "flows as they leave by it, so no ESTABLISHED reply could be told apart")
    return ""


def untracked(family: int) -> list[Box]:
    """What Tidegate's table never holds: protocols other than TCP and UDP, ICMP other than the
    echo reply."""
    icmp = ICMP_OF[family]
    others = iv.complement(iv.normalize((p, p) for p in (*TRACKED_PROTOCOLS, icmp)), PROTO_TOP)
    reply = ECHO_REPLY[family] << 8
    not_reply = iv.complement(iv.span(reply, reply | 0xFF), ICMP_TOP)
    return [Box(family, proto=others), Box(family, proto=iv.span(icmp, icmp), icmp=not_reply)]


def tracked(family: int) -> list[Box]:
    """What a packet Tidegate's table passes can be: TCP, UDP, an ICMP echo reply."""
    icmp, reply = ICMP_OF[family], ECHO_REPLY[family] << 8
    return [*(Box(family, proto=iv.span(p, p)) for p in TRACKED_PROTOCOLS),
            Box(family, proto=iv.span(icmp, icmp), icmp=iv.span(reply, reply | 0xFF))]


def related(family: int) -> list[Box]:
    icmp = ICMP_OF[family]
    types = iv.normalize((t << 8, (t << 8) | 0xFF) for t in ICMP_ERRORS[family])
    return [Box(family, proto=iv.span(icmp, icmp), icmp=types)]


def residual(states: frozenset[str], region: list[Box], host: Host) -> tuple[list[Box], list[Box]]:
    """The part of a conntrack rule's packets that only netfilter can judge (what it may accept
    that Tidegate's table does not hold), in two: (by kind of packet: later denies of its chain
    leave it out; by source: routed out elsewhere, passed on to netfilter from the rule's place,
    a few prefixes where leaving them out of every later deny would take many)."""
    kinds: list[Box] = []
    sources: list[Box] = []
    for family in sorted({b.family for b in region}):
        if "related" in states:
            kinds += related(family)
        if "established" in states:
            kinds += untracked(family)
            back = host.routed_back.get(family, iv.EMPTY)
            if not iv.is_full(back, iv.top_of(family)):
                sources.append(Box(family, src=iv.complement(back, iv.top_of(family))))
    return region_and(region, kinds), region_and(region, sources)


def describe(states: frozenset[str], host: Host) -> str:
    """The report's reason for a mapped rule."""
    kept = []
    if "related" in states:
        kept.append("RELATED (ICMP errors about a flow)")
    if "established" in states:
        kept.append("ESTABLISHED of other protocols than TCP and UDP, and of ICMP other than echo replies")
        if any(not iv.is_full(host.routed_back.get(f, iv.EMPTY), iv.top_of(f)) for f in (4, 6)):
            kept.append("packets from sources routed out by another interface")
    head = ("allow_established in XDP (replies of flows that left by the attach interface pass before the "
            "ACL); " if "established" in states else "")
    return head + "netfilter keeps the rule, and XDP leaves to it " + "; ".join(kept)


LIMITS = ("Where netfilter accepts a reply as ESTABLISHED and Tidegate's table does not hold it, its ACL "
          "judges it: flows open before allow_established was on (until a packet of theirs leaves), flows "
          "evicted from a full table (capacities.conntrack, counted as CT_EVICTED), flows this host answered "
          "only with a TCP RST; turn allow_established on ahead of the denies (docs/migration.md)")
