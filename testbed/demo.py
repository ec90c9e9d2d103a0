"""`python -m testbed.demo` (what `make demo` runs): the Tidegate daemon, its CLI and a service chain.

Builds the namespaces of testbed.chain_topology (a tunnel peer, the appliance, a firewall service
and an upstream), starts `tidegate serve` in the appliance's namespace, and drives it the way an
operator would, with the `tidegate` CLI: attach to the underlay and to the firewall's return
link, apply examples/policy.yaml (tunnel VNI 100, a denied prefix, the chain `fw`). Then real
traffic: tunnelled pings, a chained flow and its replies, a denied flow, and, after
`tidegate chain del fw`, the same flow on the direct path. Each expectation is checked (the
firewall's nftables counter, the TTL on arrival, the daemon's counters) and printed with
`tidegate stats`. Everything is torn down at the end, also on Ctrl-C and SIGTERM.

Exit status: 0 when all traffic behaved as the policy says, 1 when some did not, 2 when a CLI
command failed, 128 + signal number when interrupted. `--dataplane-only` runs the older demo
of the data plane alone (testbed.demo_dataplane), without daemon or CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from control.rpc.api import pb2
from testbed import chain_topology as c
from testbed import cleanup, demo_dataplane, orphans
from testbed.counters import ApiSnapshot, api_snapshot
from testbed.daemon import RPC_TIMEOUT, DaemonProcess, cli_available
from testbed.demo_dataplane import Check, table
from testbed.traffic import ping, receive_udp, receive_udp_ttl, send_udp, udp_echo_once, udp_socket

log = logging.getLogger("testbed.demo")

DATAGRAMS = 5
PINGS = 3
SINK_PORT, ECHO_PORT = 9009, 7007
TIMEOUT = 1.0
SILENCE = 0.3  # how long to wait for datagrams that must not arrive
POLICY_FILE = c.EXAMPLE_POLICY.relative_to(c.REPO_ROOT)


class CommandFailed(RuntimeError):
    pass


def tidegate(daemon: DaemonProcess, *args: str) -> str:
    """Runs a CLI command, echoing it and its output like a terminal session."""
    print(f"$ tidegate {' '.join(args)}", flush=True)
    done = daemon.cli(*args)
    output = (done.stdout + done.stderr).rstrip()
    if output:
        print(output, flush=True)
    print(flush=True)
    if done.returncode != 0:
        raise CommandFailed(f"`tidegate {' '.join(args)}` exited with {done.returncode}")
    return done.stdout


def stats(daemon: DaemonProcess) -> ApiSnapshot:
    return api_snapshot(daemon.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT))


# --- traffic -------------------------------------------------------------------------------------


def _payloads(tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(DATAGRAMS)]


def flow(topo: c.ChainTopology, src: str, tag: str) -> list[int]:
    """DATAGRAMS from the peer's `src` to the upstream; the TTLs of those that arrived."""
    with (udp_socket(topo.upstream, c.UPSTREAM_ADDR, SINK_PORT) as server,
          udp_socket(topo.peer, src) as client):
        send_udp(client, c.UPSTREAM_ADDR, SINK_PORT, _payloads(tag))
        got = receive_udp_ttl(server, expect=DATAGRAMS + 1, timeout=SILENCE)
    ttls = [d.ttl for d in got if d.src == src]
    log.info("%s -> %s: %d/%d arrived, TTL %s", src, c.UPSTREAM_ADDR, len(ttls), DATAGRAMS,
             sorted(set(ttls)) or "-")
    return ttls


def echoes(topo: c.ChainTopology, src: str) -> int:
    answered = 0
    with (udp_socket(topo.upstream, c.UPSTREAM_ADDR, ECHO_PORT) as server,
          udp_socket(topo.peer, src) as client):
        for payload in _payloads("echo"):
            send_udp(client, c.UPSTREAM_ADDR, ECHO_PORT, [payload])
            if udp_echo_once(server, TIMEOUT) and receive_udp(client, expect=1, timeout=TIMEOUT):
                answered += 1
    return answered


def chained_traffic(topo: c.ChainTopology, daemon: DaemonProcess) -> tuple[list[Check], ApiSnapshot]:
    """Pings, the chained flow with its replies, and the denied flow; what they moved."""
    before, fw_before, kernel_before = stats(daemon), c.service_packets(topo), c.kernel_decapped(topo)
    pinged = ping(topo.peer, c.APP_INNER, src=c.PEER_HOST, count=PINGS, timeout=TIMEOUT).received
    chained = flow(topo, c.PEER_HOST, "chained")
    answered = echoes(topo, c.PEER_HOST)
    fw_allowed = c.service_packets(topo) - fw_before
    denied = flow(topo, c.PEER_DENIED, "denied")
    fw_denied = c.service_packets(topo) - fw_before - fw_allowed
    moved = stats(daemon) - before
    tunnelled = PINGS + 3 * DATAGRAMS
    checks = [
        Check(f"ping {c.PEER_HOST} -> {c.APP_INNER} through the tunnel: replies", PINGS, pinged),
        Check(f"{c.PEER_HOST} -> upstream: arrived through the firewall (TTL {c.TTL_CHAINED})",
              DATAGRAMS, chained.count(c.TTL_CHAINED)),
        Check("upstream's replies back at the peer, through the tunnel", DATAGRAMS, answered),
        Check("firewall forwarded (flow + echo requests)", 2 * DATAGRAMS, fw_allowed),
        Check(f"{c.PEER_DENIED} (denied) -> upstream: arrived", 0, len(denied)),
        Check(f"{c.PEER_DENIED} (denied) -> firewall", 0, fw_denied),
        Check(f"VNI {c.VNI} decapped by Tidegate", tunnelled, moved.tunnel(c.VNI)),
        Check("decapped by the appliance's kernel vxlan device instead", 0,
              c.kernel_decapped(topo) - kernel_before),
        Check("DROP_DENIED at XDP", DATAGRAMS, moved.reason("DROP_DENIED")),
        Check(f"chain {c.CHAIN} forward leg marked (on {c.UNDERLAY})", 2 * DATAGRAMS,
              moved.leg(c.CHAIN, "forward")),
        Check(f"chain {c.CHAIN} return_path leg marked (on {c.SERVICE_OUT.app_if})", 2 * DATAGRAMS,
              moved.leg(c.CHAIN, "return_path")),
    ]
    return checks, moved


def plain_traffic(topo: c.ChainTopology) -> list[Check]:
    fw_before = c.service_packets(topo)
    direct = flow(topo, c.PEER_HOST, "plain")
    return [
        Check(f"{c.PEER_HOST} -> upstream without the chain: arrived direct (TTL {c.TTL_DIRECT})",
              DATAGRAMS, direct.count(c.TTL_DIRECT)),
        Check("firewall forwarded without the chain", 0, c.service_packets(topo) - fw_before),
    ]


# --- output --------------------------------------------------------------------------------------


def summary(moved: ApiSnapshot, checks: list[Check]) -> str:
    parts = [
        table("Decapped at XDP, per VNI", ["VNI", "packets", "outer bytes"],
              [[vni, n.packets, n.bytes] for vni, n in sorted(moved.tunnels.items()) if n.packets]),
        table("Verdicts at XDP (both interfaces), per reason", ["reason", "packets"],
              [[name, n.packets] for name, n in moved.reasons.items() if n.packets]),
        table("Chain legs (marks -> ip rule fwmark)", ["chain", "leg", "packets"],
              [[chain, leg, n.packets] for (chain, leg), n in sorted(moved.legs.items())]),
        table("Checks", ["check", "expected", "observed", "result"],
              [[k.what, k.expected, k.observed, "ok" if k.ok else "FAIL"] for k in checks]),
    ]
    return "\n\n".join(parts)


def run() -> bool:
    with c.build() as topo, DaemonProcess(topo.appliance, detach_on_exit=True) as daemon:
        print(f"namespaces: peer {topo.peer.name}, appliance {topo.appliance.name} (the daemon), "
              f"firewall {topo.firewall.name}, upstream {topo.upstream.name}\n", flush=True)
        for ifname in topo.attached:
            tidegate(daemon, "attach", ifname, "--mode", "native")
        tidegate(daemon, "policy", "apply", "-f", str(POLICY_FILE))
        tidegate(daemon, "status")
        checks, moved = chained_traffic(topo, daemon)
        tidegate(daemon, "stats")
        tidegate(daemon, "chain", "del", c.CHAIN)
        checks += plain_traffic(topo)
        print(summary(moved, checks), flush=True)
        if not all(k.ok for k in checks):
            print(f"\ndaemon log (last lines):\n{daemon.log_tail()}", flush=True)
    failed = [k for k in checks if not k.ok]
    for k in failed:
        log.error("unexpected: %s: expected %s, observed %s", k.what, k.expected, k.observed)
    return not failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataplane-only", action="store_true",
                        help="the data plane alone, without daemon and CLI (testbed.demo_dataplane)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.dataplane_only:
        return demo_dataplane.main(["-v"] if args.verbose else [])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if not cli_available():
        log.error("control/cli/main.py is missing from this checkout: the demo drives the daemon through it")
        return 2
    orphans.sweep()
    return cleanup.run_torn_down(run, log, (CommandFailed,))


if __name__ == "__main__":
    sys.exit(main())
