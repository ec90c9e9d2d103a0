"""`python -m testbed.demo --dataplane-only`: the data plane alone on a namespace topology, no daemon.

Builds the topology of testbed.topology (a peer with kernel vxlan devices, the appliance with
Tidegate attached in native XDP mode to its underlay veth, a service namespace reached by fwmark
policy routing and a direct one reached by the main table), writes an example policy straight
into the maps (no daemon, no API), sends tunnelled pings and UDP, a denied flow and a classified
flow, prints what happened as tables and tears everything down, also on Ctrl-C and SIGTERM. Exit
status 0 when every flow behaved as the policy says, 1 when one did not, 128 + signal number when
interrupted. The default demo (testbed.demo) shows the product: the daemon, its CLI and a chain.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import TunnelEntry
from testbed import cleanup, orphans
from testbed import topology as t
from testbed.counters import Snapshot, snapshot
from testbed.traffic import ping, receive_udp, send_udp, udp_echo_once, udp_socket

log = logging.getLogger("testbed.demo_dataplane")

DATAGRAMS = 5
PINGS = 3
ECHO_PORT, SINK_PORT = 7007, 9009
TIMEOUT = 1.0
SILENCE = 0.3  # how long to wait for datagrams that must not arrive

# Example policy: the ids are what the per-rule table shows.
DENY_RULE, ALLOW_RULE, SERVICE_CLASSIFIER = 10, 20, 1
ACL = [
    acl_rule(DENY_RULE, 10, "deny", src=t.DENIED_PREFIX),
    acl_rule(ALLOW_RULE, 20, "allow", src="10.100.0.0/24"),
]
CLASSIFIERS = [classifier(SERVICE_CLASSIFIER, 10, t.SERVICE_MARK, src=t.CLASSIFIED_PREFIX)]
RULE_TEXT = {
    DENY_RULE: f"deny  src {t.DENIED_PREFIX}",
    ALLOW_RULE: "allow src 10.100.0.0/24",
}


@dataclass(frozen=True)
class Check:
    """One expectation about the traffic or the counters, and what was observed."""

    what: str
    expected: int
    observed: int
    at_least: bool = False  # counters shared with background traffic (IPv6 ND/MLD) may exceed

    @property
    def ok(self) -> bool:
        return self.observed >= self.expected if self.at_least else self.observed == self.expected


# --- policy and traffic ------------------------------------------------------------------------------


def load_policy(dp: Dataplane) -> None:
    for plan in t.TUNNELS:
        dp.maps.put_tunnel(TunnelEntry(vni=plan.vni, geneve=False))
    dp.acl.replace(ACL)
    dp.classifiers.replace(CLASSIFIERS)
    log.info("policy loaded: %d tunnel(s), %d ACL rule(s), %d classifier(s)", len(t.TUNNELS), len(ACL),
             len(CLASSIFIERS))


def _payloads(tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(DATAGRAMS)]


def ping_checks(topo: t.Topology) -> list[Check]:
    checks = []
    for plan, src, dst in ((t.TUNNEL_V4, t.PEER_HOST, t.APP_INNER),
                           (t.TUNNEL_V6, t.PEER6_HOST_V4, t.APP6_INNER_V4),
                           (t.TUNNEL_V6, t.PEER6_HOST, t.APP6_INNER)):
        result = ping(topo.peer, dst, src=src, count=PINGS, timeout=TIMEOUT)
        log.info("ping %s -> %s (VNI %d): %d/%d replies", src, dst, plan.vni, result.received, result.sent)
        checks.append(Check(f"ping {src} -> {dst} (VNI {plan.vni}): replies", PINGS, result.received))
    return checks


def udp_echo_check(topo: t.Topology) -> Check:
    echoed = 0
    with (udp_socket(topo.appliance, t.APP_INNER, ECHO_PORT) as server,
          udp_socket(topo.peer, t.PEER_HOST) as client):
        for payload in _payloads("echo"):
            send_udp(client, t.APP_INNER, ECHO_PORT, [payload])
            if udp_echo_once(server, TIMEOUT) and receive_udp(client, expect=1, timeout=TIMEOUT):
                echoed += 1
    log.info("UDP echo %s -> %s:%d: %d/%d answered", t.PEER_HOST, t.APP_INNER, ECHO_PORT, echoed, DATAGRAMS)
    return Check(f"UDP {t.PEER_HOST} -> {t.APP_INNER}:{ECHO_PORT}: echoed", DATAGRAMS, echoed)


def denied_check(topo: t.Topology) -> Check:
    with (udp_socket(topo.appliance, t.APP_INNER, SINK_PORT) as server,
          udp_socket(topo.peer, t.PEER_DENIED) as client):
        send_udp(client, t.APP_INNER, SINK_PORT, _payloads("denied"))
        got = receive_udp(server, expect=DATAGRAMS, timeout=SILENCE)
    log.info("denied flow %s -> %s:%d: %d/%d received", t.PEER_DENIED, t.APP_INNER, SINK_PORT, len(got),
             DATAGRAMS)
    return Check(f"UDP {t.PEER_DENIED} (denied) -> {t.APP_INNER}: received", 0, len(got))


def service_checks(topo: t.Topology) -> tuple[list[Check], dict[str, list[str]]]:
    """The classified and an unclassified flow to SERVICE_ADDR: which namespace got which."""
    with (udp_socket(topo.service, t.SERVICE_ADDR, SINK_PORT) as service,
          udp_socket(topo.direct, t.SERVICE_ADDR, SINK_PORT) as direct,
          udp_socket(topo.peer, t.PEER_CLASSIFIED) as marked,
          udp_socket(topo.peer, t.PEER_HOST) as unmarked):
        send_udp(marked, t.SERVICE_ADDR, SINK_PORT, _payloads("classified"))
        send_udp(unmarked, t.SERVICE_ADDR, SINK_PORT, _payloads("plain"))
        at = {name: [src for _, src in receive_udp(sock, expect=2 * DATAGRAMS, timeout=SILENCE)]
              for name, sock in (("service", service), ("direct", direct))}
    for name, sources in at.items():
        log.info("%s namespace received %d datagrams", name, len(sources))
    checks = [
        Check(f"classified {t.PEER_CLASSIFIED} -> service (fwmark {t.SERVICE_MARK:#x})", DATAGRAMS,
              at["service"].count(t.PEER_CLASSIFIED)),
        Check(f"classified {t.PEER_CLASSIFIED} -> direct", 0, at["direct"].count(t.PEER_CLASSIFIED)),
        Check(f"plain {t.PEER_HOST} -> direct (main table)", DATAGRAMS, at["direct"].count(t.PEER_HOST)),
        Check(f"plain {t.PEER_HOST} -> service", 0, at["service"].count(t.PEER_HOST)),
    ]
    return checks, at


def counter_checks(moved: Snapshot, kernel_decapped: int) -> list[Check]:
    tunnelled_v4 = PINGS + 4 * DATAGRAMS  # pings; echo, denied and the two service flows
    return [
        Check("DROP_DENIED counter", DATAGRAMS, moved.reason(abi.Reason["DROP_DENIED"])),
        Check(f"ACL rule {DENY_RULE} counter", DATAGRAMS, moved.acl_rule(DENY_RULE)),
        Check(f"classifier {SERVICE_CLASSIFIER} counter", DATAGRAMS, moved.classifier(SERVICE_CLASSIFIER)),
        Check(f"VNI {t.TUNNEL_V4.vni} decapped by Tidegate", tunnelled_v4, moved.tunnel(t.TUNNEL_V4.vni),
              at_least=True),
        Check(f"VNI {t.TUNNEL_V6.vni} decapped by Tidegate", 2 * PINGS, moved.tunnel(t.TUNNEL_V6.vni),
              at_least=True),
        Check("decapped by the appliance's kernel vxlan devices instead", 0, kernel_decapped),
    ]


# --- output --------------------------------------------------------------------------------------------


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: numbers right-aligned, text left-aligned."""
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = " | ".join(f"{{:{'>' if num else '<'}{w}}}" for num, w in zip(numeric, widths, strict=True))
    out = [f"== {title}", fmt.format(*cells[0]), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in cells[1:]] or ["(none)"]
    return "\n".join(line.rstrip() for line in out)


def summary(moved: Snapshot, at: dict[str, list[str]], checks: list[Check]) -> str:
    underlay = {plan.vni: "IPv4" if ":" not in plan.app_underlay else "IPv6" for plan in t.TUNNELS}
    parts = [
        table("Decapped at XDP, per VNI", ["VNI", "underlay", "packets", "outer bytes"],
              [[vni, underlay.get(vni, "?"), c.packets, c.bytes]
               for vni, c in sorted(moved.tunnels.items())]),
        table("Verdicts (XDP), per reason", ["reason", "packets"],
              [[r.name, c.packets] for r, c in moved.reasons.items() if c.packets]),
        table("ACL rules", ["id", "rule", "packets"],
              [[rid, RULE_TEXT.get(rid, "?"), moved.acl_rule(rid)] for rid in sorted(RULE_TEXT)]),
        table("Classifiers", ["id", "match", "mark", "packets"],
              [[SERVICE_CLASSIFIER, f"src {t.CLASSIFIED_PREFIX}", f"{t.SERVICE_MARK:#x}",
                moved.classifier(SERVICE_CLASSIFIER)]]),
        table(f"Reached {t.SERVICE_ADDR}:{SINK_PORT}", ["namespace", "route", "datagrams", "from"],
              [[name, route, len(at[name]), ", ".join(sorted(set(at[name]))) or "-"]
               for name, route in (("service", f"fwmark {t.SERVICE_MARK:#x} -> table {t.SERVICE_TABLE}"),
                                   ("direct", "main table"))]),
        table("Checks", ["check", "expected", "observed", "result"],
              [[c.what, f"{'>= ' if c.at_least else ''}{c.expected}", c.observed, "ok" if c.ok else "FAIL"]
               for c in checks]),
    ]
    return "\n\n".join(parts)


# --- main ------------------------------------------------------------------------------------------------


def run() -> bool:
    with t.build() as topo, t.tidegate(topo.appliance, topo.underlay, mode="native") as dp:
        load_policy(dp)
        kernel_rx = {p.ifname: t.link_rx_packets(topo.appliance, p.ifname) for p in topo.tunnels}
        before = snapshot(dp)
        checks = ping_checks(topo) + [udp_echo_check(topo), denied_check(topo)]
        flow_checks, at = service_checks(topo)
        moved = snapshot(dp) - before
        kernel_decapped = sum(t.link_rx_packets(topo.appliance, i) - n for i, n in kernel_rx.items())
        checks += flow_checks + counter_checks(moved, kernel_decapped)
        print(summary(moved, at, checks), flush=True)
    failed = [c for c in checks if not c.ok]
    for c in failed:
        log.error("unexpected: %s: expected %s, observed %s", c.what, c.expected, c.observed)
    return not failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo_dataplane",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    orphans.sweep()
    return cleanup.run_torn_down(run, log, ())


if __name__ == "__main__":
    sys.exit(main())
