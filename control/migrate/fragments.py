"""Which `fragments` setting the import writes, and which denies netfilter must keep for it.

XDP sees one fragment at a time (docs/dataplane.md, "Fragments"); netfilter, depending on the
machine, judges each fragment or the reassembled datagram:

- With conntrack (a rule that reads or sets connection state, marks or helpers, NAT, `-j CT` or
  `NOTRACK`; `-m socket` and TPROXY reassemble without it), the family's defragmentation hook
  runs in PREROUTING at priority -400, so every chain after it (raw at -300 included) judges
  reassembled datagrams. An nft chain at -400 or before, and a netdev ingress chain, still
  judge fragments.
- Without it, the stack reassembles IPv4 datagrams for this host before INPUT (`ip_local_deliver`
  reassembles, then runs the LOCAL_IN hook); everything else (PREROUTING, FORWARD, IPv6's INPUT,
  which reassembles after its hook) judges one fragment at a time, and a later fragment matches
  no rule that reads ports, ICMP types or TCP flags.

`fragments: first` (a datagram judged by its first fragment, later fragments passed to the stack)
is netfilter's behaviour where a chain judges datagrams whole; `judge` (every fragment judged,
a later one without ports) where it judges fragments. The setting is per policy, so:
- `first` when a deny Tidegate judges comes from a chain that sees whole datagrams; then a
  deny of a chain that sees fragments, and that can match a later fragment (it reads no port,
  ICMP type or TCP flag), stays in netfilter too (mirrored): a later fragment passes XDP, and
  netfilter must judge it as it did;
- `judge` otherwise: both judge fragment by fragment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from control.migrate.ir import Box, Chain, Ruleset

DEFRAG_PRIORITY = -400  # NF_IP_PRI_CONNTRACK_DEFRAG (and IPv6's): before raw (-300)
# iptables modules and targets that need conntrack (nf_ct_netns_get), or only its defragmentation
CONNTRACK_MODULES = frozenset({"conntrack", "state", "connmark", "connlimit", "connbytes", "connlabel",
                               "helper", "cluster", "socket"})
CONNTRACK_TARGETS = frozenset({"CT", "NOTRACK", "CONNMARK", "CONNSECMARK", "DNAT", "SNAT", "MASQUERADE",
                               "REDIRECT", "NETMAP", "TPROXY"})
# nft expressions and statements that do (keys of the JSON objects)
NFT_KEYS = frozenset({"ct", "ct helper", "ct timeout", "ct expectation", "ct count", "notrack", "snat",
                      "dnat", "masquerade", "redirect", "tproxy", "socket"})
NFT_FAMILIES = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}  # netdev ingress runs before any defrag
TRANSPORT_DIMS = ("sport", "dport", "icmp", "flags")  # what a later fragment does not carry
_WORD = re.compile(r"(?:^|\s)(-m|--match|-j|--jump)\s+(\S+)")

JUDGE_NOTE = ("fragments: judge: netfilter judges fragments one by one in every chain whose denies Tidegate "
              "judges (no conntrack; for IPv4 not INPUT), as XDP does")
KEPT_REASON = ("denied in XDP; netfilter keeps it too: under fragments: first a later fragment passes XDP, "
               "and this chain judges IPv{family} fragments one by one (no conntrack), so a later fragment "
               "must still meet this deny there")


def reassembling(ruleset: Ruleset) -> dict[int, str]:
    """Family -> why netfilter's defragmentation runs for it (the first rule or table that needs it)."""
    out: dict[int, str] = {}
    for chain in ruleset.chains.values():
        if chain.origin != "nft" and chain.table == "nat":
            for family in chain.families:
                out.setdefault(family, f"{chain.origin} has a nat table")
    for rule in ruleset.rules:
        owner = ruleset.chains.get((rule.origin, rule.table, rule.chain))
        if rule.origin == "nft" or owner is None or all(f in out for f in owner.families):
            continue
        for flag, word in _WORD.findall(rule.text):
            if word in (CONNTRACK_MODULES if flag in ("-m", "--match") else CONNTRACK_TARGETS):
                for family in owner.families:
                    out.setdefault(family, f"rule {rule.number}: {flag} {word}")
                break
    for families, why in _nft_reasons(ruleset):
        for family in families:
            out.setdefault(family, why)
    return dict(sorted(out.items()))


def _nft_reasons(ruleset: Ruleset) -> Iterator[tuple[tuple[int, ...], str]]:
    text = ruleset.sources.get("nft")
    if not text:
        return
    numbers = {(r.table, r.chain, r.line): r.number for r in ruleset.rules if r.origin == "nft"}
    for item in json.loads(text).get("nftables", []):
        kind, obj = next(iter(item.items()))
        if not isinstance(obj, dict) or obj.get("family") not in NFT_FAMILIES:
            continue
        families = NFT_FAMILIES[obj["family"]]
        table = f"{obj['family']} {obj.get('table', obj.get('name'))}"
        if kind == "chain" and obj.get("type") == "nat":
            yield families, f"nft chain {table} {obj['name']} is a nat chain"
        elif kind == "rule":
            found = next(_nft_keys(obj.get("expr", [])), None)
            if found is not None:
                number = numbers.get((table, str(obj.get("chain")), int(obj.get("handle", 0))))
                where = f"rule {number}" if number else f"nft table {table} chain {obj.get('chain')}"
                yield families, f"{where}: {found}"


def _nft_keys(value: Any) -> Iterator[str]:
    """The conntrack-needing keys anywhere in an nft JSON expression (iptables-nft's `xt` too)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in NFT_KEYS:
                yield key
            elif key == "xt" and isinstance(inner, dict) and \
                    inner.get("name") in CONNTRACK_MODULES | CONNTRACK_TARGETS:
                yield f"xt {inner['name']}"
            else:
                yield from _nft_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _nft_keys(inner)


def sees_whole(chain: Chain, family: int, defrag: dict[int, str]) -> bool:
    """Whether this chain judges reassembled datagrams of the family (else one fragment at a time)."""
    if family in defrag and chain.hook not in ("ingress", None) and chain.priority > DEFRAG_PRIORITY:
        return True
    return family == 4 and chain.hook == "input"


def matches_later_fragments(region: list[Box]) -> bool:
    """Whether a rule selecting `region` can match a later fragment: some part of it reads no
    port, ICMP type or TCP flag (which a later fragment does not carry)."""
    return any(all(b.get(dim) is None for dim in TRANSPORT_DIMS) for b in region)


def first_note(families: list[int], defrag: dict[int, str]) -> str:
    """The report's note for fragments: first, saying where netfilter judges whole datagrams."""
    why = "; ".join(f"IPv{f}: conntrack reassembles them first ({defrag[f]})" if f in defrag else
                    f"IPv{f}: the stack reassembles datagrams for this host before INPUT" for f in families)
    return ("fragments: first: netfilter judges reassembled datagrams (" + why + "), so XDP judges a "
            "datagram by its first fragment and passes the later ones to the stack, which reassembles "
            "them only with a first fragment that passed")
