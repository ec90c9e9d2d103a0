"""The readers on what the real tools print: each rule is loaded with iptables-restore (nf_tables
and legacy backends), nft -f or ipset restore in a namespace, saved with the real tool (which
rewrites: --syn as --tcp-flags, ports and protocols as numbers, a negation's place, ...) and
read back; what the reader understood is compared with what the rule means.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

import pytest

from control.migrate import intervals as iv
from control.migrate import ipset, iptables, nft
from control.migrate.ir import Box, Kind, SourceRule
from testbed.netns import Namespace

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def ns(bpf_available: None) -> Iterator[Namespace]:
    with Namespace(prefix="tgimp") as made:
        yield made


def net(text: str) -> iv.Ivs:
    return iv.prefix_span(ipaddress.ip_network(text))


def one(value: int) -> iv.Ivs:
    return iv.span(value, value)


def box(rule: SourceRule) -> Box:
    assert len(rule.cond.boxes) == 1, rule.cond.boxes
    return rule.cond.boxes[0]


TOP4 = iv.top_of(4)
Check = Callable[[SourceRule], bool]
CASES4: list[tuple[str, Check]] = [
    ("-s 10.0.0.0/8 ! -d 10.1.0.0/16 -p tcp --dport 22:25 -j ACCEPT",
     lambda r: box(r) == Box(4, proto=one(6), src=net("10.0.0.0/8"),
                             dst=iv.complement(net("10.1.0.0/16"), TOP4), dport=iv.span(22, 25))
     and r.target.kind is Kind.ACCEPT),
    ("-p tcp --syn --sport 1024: -j DROP",
     lambda r: box(r).sport == iv.span(1024, 65535) and box(r).flags is not None
     and iv.contains(box(r).flags, one(0x02)) and not iv.overlaps(box(r).flags, one(0x12))),
    ("-p udp -m multiport --dports 53,123,5000:5010 -j ACCEPT",
     lambda r: box(r).dport == iv.normalize([(53, 53), (123, 123), (5000, 5010)])),
    ("-p tcp -m multiport --ports 80,443 -j ACCEPT",
     lambda r: {(b.sport, b.dport) for b in r.cond.boxes}
     == {(iv.normalize([(80, 80), (443, 443)]), None), (None, iv.normalize([(80, 80), (443, 443)]))}),
    ("-m iprange ! --src-range 192.0.2.10-192.0.2.20 -j DROP",
     lambda r: box(r).src == iv.complement(iv.span(int(ipaddress.ip_address("192.0.2.10")),
                                                   int(ipaddress.ip_address("192.0.2.20"))), TOP4)),
    ("-p icmp --icmp-type echo-request -j ACCEPT", lambda r: box(r).icmp == iv.span(0x0800, 0x08FF)),
    ("-p icmp --icmp-type 3/4 -j ACCEPT", lambda r: box(r).icmp == one(0x0304)),
    ("! -p udp -j DROP", lambda r: box(r).proto == iv.complement(one(17), 255)),
    ("-p 47 -j ACCEPT", lambda r: box(r).proto == one(47)),
    ("-i eth0 ! -o eth1 -j ACCEPT",
     lambda r: [str(i) for i in r.cond.iif] == ["eth0"] and [str(o) for o in r.cond.oif] == ["! eth1"]),
    ("-i veth+ -j DROP", lambda r: r.cond.iif[0].matches("veth7") and not r.cond.iif[0].matches("eth0")),
    ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
     lambda r: r.cond.ctstate == frozenset({"related", "established"})),
    ("-m state ! --state INVALID -j ACCEPT",
     lambda r: r.cond.ctstate is not None and "invalid" not in r.cond.ctstate),
    ('-m comment --comment "ssh from the office" -s 198.51.100.0/24 -j ACCEPT',
     lambda r: r.comment == "ssh from the office" and box(r).src == net("198.51.100.0/24")),
    ("-m length --length 0:60 -j DROP", lambda r: [u.what for u in r.cond.unsupported] == ["-m length"]),
    ("-m limit --limit 5/min -j LOG --log-prefix \"in: \"",
     lambda r: r.cond.unsupported[0].stateful and r.target.kind is Kind.SIDE),
    ("-p udp -j REJECT --reject-with icmp-host-prohibited",
     lambda r: r.target.kind is Kind.REJECT and r.target.detail == "icmp-host-prohibited"),
    ("-p tcp -j REJECT --reject-with tcp-reset", lambda r: r.target.detail == "tcp-reset"),
    ("-f -j DROP", lambda r: r.cond.unsupported[0].what == "-f"),
    ("-s 10.0.0.0/255.0.255.0 -j DROP", lambda r: "non-contiguous" in r.cond.unsupported[0].what),
    ("-j MARK --set-mark 7", lambda r: r.target.kind is Kind.MODIFY),
]


def _restore(ns: Namespace, backend: str, family: int, body: str) -> str:
    prefix = "ip6tables" if family == 6 else "iptables"
    done = ns.run([f"{prefix}-{backend}-restore"], input=body, check=False)
    assert done.returncode == 0, done.stderr
    return ns.run([f"{prefix}-{backend}-save"]).stdout


def _table(rules: list[str]) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]", ":MINE - [0:0]"]
    lines += [f"-A FORWARD {r}" for r in rules]
    lines += ["-A FORWARD -p tcp -j MINE", "-A MINE -s 192.0.2.0/24 -j RETURN", "-A FORWARD -p udp -g MINE",
              "COMMIT"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_save_read_back(ns: Namespace, backend: str) -> None:
    saved = _restore(ns, backend, 4, _table([spec for spec, _ in CASES4]))
    ruleset = iptables.parse(saved, 4)
    chains = {c.name: c for c in ruleset.chains.values()}
    assert chains["INPUT"].policy == "accept" and chains["FORWARD"].policy == "drop"
    assert chains["MINE"].hook is None and chains["FORWARD"].hook == "forward"
    printed = [line for line in saved.splitlines() if line.startswith("-A ")]
    assert [r.text for r in ruleset.rules] == printed  # every rule the tool printed, in its order
    inputs = chains["FORWARD"].rules
    for (spec, check), rule in zip(CASES4, inputs, strict=False):
        assert check(rule), f"{spec!r} printed as {rule.text!r} read as {rule.cond} {rule.target}"
    assert inputs[len(CASES4)].target == inputs[len(CASES4)].target.__class__(Kind.JUMP, "MINE")
    assert inputs[len(CASES4) + 1].target.kind is Kind.GOTO
    assert chains["MINE"].rules[0].target.kind is Kind.RETURN


CASES6: list[tuple[str, Check]] = [
    ("-s 2001:db8::/32 ! -d fe80::/10 -p tcp -m multiport --sports 1:1023 -j ACCEPT",
     lambda r: box(r).src == net("2001:db8::/32") and box(r).sport == iv.span(1, 1023)
     and box(r).dst == iv.complement(net("fe80::/10"), iv.top_of(6))),
    ("-p ipv6-icmp --icmpv6-type echo-request -j ACCEPT", lambda r: box(r).icmp == iv.span(0x8000, 0x80FF)
     and box(r).proto == one(58)),
    ("-p sctp --dport 9 -j ACCEPT", lambda r: box(r).proto == one(132) and box(r).dport == one(9)),
    ("-m iprange --dst-range 2001:db8::1-2001:db8::ff -j DROP",
     lambda r: box(r).dst == iv.span(int(ipaddress.ip_address("2001:db8::1")),
                                     int(ipaddress.ip_address("2001:db8::ff")))),
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ip6tables_save_read_back(ns: Namespace, backend: str) -> None:
    table = _table([spec for spec, _ in CASES6]).replace("192.0.2.0/24", "2001:db8::/32")
    saved = _restore(ns, backend, 6, table)
    ruleset = iptables.parse(saved, 6)
    inputs = next(c for c in ruleset.chains.values() if c.name == "FORWARD").rules
    for (spec, check), rule in zip(CASES6, inputs, strict=False):
        assert check(rule), f"{spec!r} printed as {rule.text!r} read as {rule.cond}"
    assert all(b.family == 6 for r in ruleset.rules for b in r.cond.boxes)


def test_ipset_save_read_back(ns: Namespace) -> None:
    ns.run(["ipset", "destroy"], check=False)
    ns.run(["ipset", "restore"], input="create t4 hash:net family inet\nadd t4 10.0.0.0/8\n"
                                        "add t4 10.1.0.0/16 nomatch\nadd t4 10.1.2.0/24\nadd t4 192.0.2.7\n"
                                        "create p4 hash:ip,port family inet\nadd p4 10.0.0.1,tcp:80\n"
                                        "create l4 list:set\nadd l4 t4\n")
    sets = ipset.parse(ns.run(["ipset", "save"]).stdout)
    want = iv.union(iv.subtract(net("10.0.0.0/8"), net("10.1.0.0/16"), TOP4),
                    iv.union(net("10.1.2.0/24"), net("192.0.2.7/32")))
    assert sets.addresses("t4") == (4, want)
    assert sets.addresses("l4") == (4, want)
    assert "hash:ip,port" in str(sets.addresses("p4"))
    ns.run(["ipset", "destroy"], check=False)


NFT = """table inet t {
  set s4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.0.2.5-192.0.2.9 } }
  chain c { type filter hook input priority 0; policy drop;
    ip saddr @s4 tcp dport { 22, 8000-8080 } accept
    ip6 saddr != 2001:db8::/32 udp sport 53 drop
    meta l4proto { tcp, udp } th dport 53 accept
    icmp type echo-request accept
    tcp flags & (syn|ack) == syn tcp dport 25 drop
    iifname "eth0" ct state established,related accept
    meta length 0-60 drop
    tcp dport vmap { 80 : accept, 81 : drop }
  }
}
"""


def test_nft_json_read_back(ns: Namespace) -> None:
    ns.run(["nft", "flush", "ruleset"])
    ns.run(["nft", "-f", "-"], input=NFT)
    ruleset = nft.parse(ns.run(["nft", "-j", "list", "ruleset"]).stdout)
    r = ruleset.rules
    assert box(r[0]).src == iv.union(net("10.0.0.0/8"), iv.span(int(ipaddress.ip_address("192.0.2.5")),
                                                                int(ipaddress.ip_address("192.0.2.9"))))
    assert box(r[0]).dport == iv.normalize([(22, 22), (8000, 8080)]) and box(r[0]).family == 4
    assert box(r[1]).src == iv.complement(net("2001:db8::/32"), iv.top_of(6)) and box(r[1]).sport == one(53)
    assert {b.family for b in r[2].cond.boxes} == {4, 6} and all(b.proto == iv.normalize([(6, 6), (17, 17)])
                                                                  for b in r[2].cond.boxes)
    assert box(r[3]).icmp == iv.span(0x0800, 0x08FF)
    for b in r[4].cond.boxes:
        assert b.flags is not None and iv.contains(b.flags, one(0x02)) and not iv.overlaps(b.flags, one(0x12))
    assert [str(i) for i in r[5].cond.iif] == ["eth0"] and r[5].cond.ctstate == {"established", "related"}
    assert r[6].cond.unsupported and r[6].target.kind is Kind.DROP
    arms = [(x.target.kind, x.cond.boxes[0].dport) for x in r[7:9]]
    assert arms == [(Kind.ACCEPT, one(80)), (Kind.DROP, one(81))]
    chain = next(iter(ruleset.chains.values()))
    assert (chain.hook, chain.policy, chain.families) == ("input", "drop", (4, 6))
    ns.run(["nft", "flush", "ruleset"])


@pytest.mark.parametrize("text, where", [
    ("*filter\n-A INPUT -j ACCEPT\n", "no COMMIT"),
    ("*filter\n:INPUT ACCEPT [0:0]\n-A NOPE -j ACCEPT\nCOMMIT\n", "line 3: chain NOPE is not declared"),
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.300 -j ACCEPT\nCOMMIT\n", "line 3"),
    ("-A INPUT -j ACCEPT\n", "line 1: a line outside of any table"),
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p nosuch -j ACCEPT\nCOMMIT\n", "unknown protocol"),
])
def test_bad_iptables_input_names_the_line(text: str, where: str) -> None:
    with pytest.raises(iptables.IptablesError, match=where):
        iptables.parse(text, 4, name="rules.v4")
