"""The packet filters compared in the drop benchmark, behind one small interface.

Each engine is prepared once per rule set (compile, render files) and then enabled in a fresh
receiver namespace for every measured window, so no engine runs beside another's leftovers (an
iptables table once used keeps its hooks registered in its namespace). `dropped()` reads the
engine's own counter for the probe flow's rule: the measurement trusts each tool's count.

    Tidegate      XDP native on r0, the real program, the ACL written through MatchTable
    iptables      raw PREROUTING, the rules in first-match order (Debian: the nft backend)
    iptables-legacy  the same through the x_tables backend, when the kernel has it
    nftables      a prerouting chain (priority raw) with the same rules in order
    nftables set  one concatenated interval set (saddr . daddr . proto . dport) and one rule
    xdp-filter    xdp-tools: exact source addresses only (it matches an IP or a port, not both)
    XDP drop      `return XDP_DROP;`: the cheapest native XDP drop on veth (a reference)
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dataplane import abi
from dataplane.kernel import attach as attach_mod
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import RuntimeConfig
from testbed import cleanup
from testbed.bench import rules
from testbed.bench.load import Rig, link_stats, missing_tools
from testbed.bench.programs import Noop

log = logging.getLogger(__name__)

NFT_TABLE = "tgbench"
NFT_CHUNK = 1000
XDP_FILTER_PIN_DIR = Path("/sys/fs/bpf/xdp-filter")
LIBXDP_PIN_DIR = Path("/sys/fs/bpf/xdp")
XDP_FILTER_MAX_IPV4 = 10_000  # max_entries of its filter_ipv4 map (xdpfilt_prog.h)
XDP_FILTER_FLAG_SRC = 1  # MAP_FLAG_SRC (common_kern_user.h)
XDP_FILTER_COUNTER_SHIFT = 6  # COUNTER_SHIFT: hits counted above the flag bits
_LAST_COUNTER = re.compile(r"counter packets (\d+)")


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Engine:
    key = ""
    label = ""
    note = ""
    xdp = False  # an XDP program on r0 (else it needs an skb: netfilter)

    def unavailable(self) -> str | None:
        """Why this engine cannot run here, or None."""
        return None

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        """Once per rule set."""

    def enable(self, rig: Rig) -> None:
        raise NotImplementedError

    def dropped(self, rig: Rig) -> int:
        raise NotImplementedError

    def disable(self, rig: Rig) -> None:
        """Before the rig's namespaces go (they take interfaces, programs and tables with them)."""

    def close(self) -> None:
        """After the benchmark."""


class Tidegate(Engine):
    key, label = "tidegate", "Tidegate (XDP)"
    xdp = True
    note = "the data plane's XDP program attached natively to r0 (no TC: nothing is passed)"

    def __init__(self) -> None:
        self.dp: Dataplane | None = None

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        if self.dp is None:
            self.dp = Dataplane.load()  # unpinned: nothing on bpffs, gone with the process
        self.dp.acl.replace([r.match_rule() for r in spec])

    def enable(self, rig: Rig) -> None:
        assert self.dp is not None
        self.dp.configure(RuntimeConfig(), if_mac=_mac_bytes(rig.receiver_mac))
        with rig.receiver.enter():
            attach_mod.attach_xdp(rig.receiver_ifname, self.dp.program.xdp_fn, "native")

    def dropped(self, rig: Rig) -> int:
        assert self.dp is not None
        return self.dp.maps.reason_counts()[abi.Reason["DROP_DENIED"]].packets

    def disable(self, rig: Rig) -> None:
        if rig.receiver.exists:
            with rig.receiver.enter():
                attach_mod.detach_xdp(rig.receiver_ifname)

    def close(self) -> None:
        if self.dp is not None:
            self.dp.close()
            self.dp = None


class Iptables(Engine):
    def __init__(self, binary: str = "iptables") -> None:
        self.binary = binary
        self.key = binary
        self.label = f"{binary} (raw PREROUTING)"
        self.note = (
            "Debian 12's default iptables, the nf_tables backend"
            if binary == "iptables"
            else "the x_tables backend"
        )
        self.text = ""

    def unavailable(self) -> str | None:
        missing = missing_tools(self.binary, f"{self.binary}-restore")
        if missing:
            return f"{', '.join(missing)} not installed (scripts/setup.sh installs Debian's iptables)"
        return None

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        self.text = rules.iptables_restore(spec)

    def enable(self, rig: Rig) -> None:
        rig.receiver.run([f"{self.binary}-restore"], input=self.text, timeout=120)

    def dropped(self, rig: Rig) -> int:
        out = rig.receiver.run([self.binary, "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"], timeout=120)
        last = out.stdout.strip().splitlines()[-1].split()
        return int(last[0])  # the probe's DROP rule comes last


class NftChain(Engine):
    key, label = "nft", "nftables chain"
    note = "a base chain at priority raw, the rules in order, the probe's last"

    def __init__(self) -> None:
        self.text = ""

    def unavailable(self) -> str | None:
        return (
            "nft not installed (scripts/setup.sh installs Debian's nftables)"
            if missing_tools("nft")
            else None
        )

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        self.text = rules.nft_chain(spec, NFT_TABLE)

    def enable(self, rig: Rig) -> None:
        rig.receiver.run(["nft", "-f", "-"], input=self.text, timeout=120)

    def dropped(self, rig: Rig) -> int:
        out = rig.receiver.run(["nft", "list", "chain", "ip", NFT_TABLE, "prerouting"], timeout=120)
        return int(_LAST_COUNTER.findall(out.stdout)[-1])


class NftSet(Engine):
    key, label = "nft-set", "nftables set"
    note = (
        "every rule as one element of a concatenated interval set, looked up once: no order and one "
        "verdict, so all rules act as deny (an upper bound for nftables, not the same policy)"
    )

    def __init__(self) -> None:
        self.elements: list[str] = []
        self.accepted: list[str] | None = None
        self.refused = 0

    unavailable = NftChain.unavailable

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        self.elements = [rules.set_element(r) for r in spec]
        self.accepted = None  # learnt on the first load: which elements the kernel takes

    def enable(self, rig: Rig) -> None:
        rig.receiver.run(["nft", "-f", "-"], input=rules.nft_set([], NFT_TABLE), timeout=60)
        if self.accepted is not None:
            for i in range(0, len(self.accepted), NFT_CHUNK):
                self._add(rig, self.accepted[i : i + NFT_CHUNK], check=True)
            return
        accepted: list[str] = []
        for i in range(0, len(self.elements), NFT_CHUNK):
            accepted += self._add_bisecting(rig, self.elements[i : i + NFT_CHUNK])
        self.accepted = accepted
        self.refused = len(self.elements) - len(accepted)

    def _add(self, rig: Rig, elements: Sequence[str], check: bool = False) -> bool:
        cmd = f"add element ip {NFT_TABLE} acl {{ {', '.join(elements)} }}\n"
        return rig.receiver.run(["nft", "-f", "-"], input=cmd, check=check, timeout=60).returncode == 0

    def _add_bisecting(self, rig: Rig, elements: list[str]) -> list[str]:
        """A concatenated interval set refuses an element overlapping one it holds (EEXIST), and
        refuses the whole transaction: find and leave out just those elements."""
        if not elements or self._add(rig, elements):
            return elements
        if len(elements) == 1:
            return []
        half = len(elements) // 2
        return self._add_bisecting(rig, elements[:half]) + self._add_bisecting(rig, elements[half:])

    def dropped(self, rig: Rig) -> int:
        out = rig.receiver.run(["nft", "list", "chain", "ip", NFT_TABLE, "prerouting"], timeout=60)
        return int(_LAST_COUNTER.findall(out.stdout)[-1])


class XdpFilter(Engine):
    key, label = "xdp-filter", "xdp-filter (XDP)"
    xdp = True
    note = (
        "xdp-tools' filter: an exact-match hash of addresses (or of ports, not both): the probe's "
        "source plus one address per other rule, at most 10,000 (its map's size); cost does not "
        "depend on how many"
    )

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.left_out = 0  # addresses beyond its map's size
        self._created: list[Path] = []

    def unavailable(self) -> str | None:
        if missing_tools("xdp-filter", "nsenter"):
            return "xdp-filter (Debian xdp-tools) or nsenter not installed"
        if XDP_FILTER_PIN_DIR.exists():
            return (
                f"another xdp-filter is loaded on this host ({XDP_FILTER_PIN_DIR} exists): its pins are "
                "global, so the benchmark leaves it alone"
            )
        return None

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        others = [a for a in rules.source_addresses(spec) if a != rules.PROBE_SRC]
        self.addresses = others[: XDP_FILTER_MAX_IPV4 - 1]
        self.left_out = len(others) - len(self.addresses)

    def _run(self, rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
        # nsenter keeps the host's /sys (and bpffs): `ip netns exec` would hide libxdp's pins
        return subprocess.run(
            ["nsenter", f"--net={rig.receiver.path}", "xdp-filter", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def enable(self, rig: Rig) -> None:
        self._created = [p for p in (XDP_FILTER_PIN_DIR, LIBXDP_PIN_DIR) if not p.exists()]
        cleanup.install()
        cleanup.REGISTRY.add("bench:xdp-filter", self._remove_pins)
        self._run(
            rig, "load", rig.receiver_ifname, "--mode", "native", "--features", "ipv4", "--policy", "allow"
        )
        self._run(rig, "ip", rules.PROBE_SRC, "--mode", "src")
        self._bulk_add(self.addresses)

    def _map_fd(self) -> int:
        fd = _bcc_lib().bpf_obj_get(ctypes.c_char_p(str(XDP_FILTER_PIN_DIR / "filter_ipv4").encode()))
        if fd < 0:
            raise RuntimeError(f"cannot open xdp-filter's pinned map under {XDP_FILTER_PIN_DIR}")
        return int(fd)

    def _bulk_add(self, addresses: Sequence[str]) -> None:
        """What `xdp-filter ip ADDR --mode src` writes, for thousands of addresses without a
        process each: key = the address in network order, per-CPU value = the SRC flag."""
        lib, fd = _bcc_lib(), self._map_fd()
        ncpu = _possible_cpus()
        value = (ctypes.c_uint64 * ncpu)(*([XDP_FILTER_FLAG_SRC] * ncpu))
        try:
            for addr in addresses:
                key = ctypes.c_uint32.from_buffer_copy(IPv4Address(addr).packed)
                if lib.bpf_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0) != 0:
                    raise RuntimeError(f"xdp-filter map update for {addr} failed")
        finally:
            os.close(fd)

    def dropped(self, rig: Rig) -> int:
        lib, fd = _bcc_lib(), self._map_fd()
        ncpu = _possible_cpus()
        value = (ctypes.c_uint64 * ncpu)()
        key = ctypes.c_uint32.from_buffer_copy(IPv4Address(rules.PROBE_SRC).packed)
        try:
            if lib.bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) != 0:
                raise RuntimeError("the probe's address is missing from xdp-filter's map")
        finally:
            os.close(fd)
        return sum(int(v) >> XDP_FILTER_COUNTER_SHIFT for v in value)

    def disable(self, rig: Rig) -> None:
        try:
            if rig.receiver.exists:
                self._run(rig, "unload", rig.receiver_ifname)
        finally:
            self._remove_pins()
            cleanup.REGISTRY.discard("bench:xdp-filter")

    def _remove_pins(self) -> None:
        """What xdp-filter/libxdp left in bpffs, only if this run created it."""
        for path in self._created:
            if path == LIBXDP_PIN_DIR:
                try:
                    path.rmdir()  # only when empty: libxdp may hold other programs there
                except OSError:
                    pass
            else:
                shutil.rmtree(path, ignore_errors=True)


class XdpDrop(Engine):
    key, label = "xdp-drop", "XDP drop (reference)"
    xdp = True
    note = (
        "`return XDP_DROP;` attached natively: the floor of any XDP filter on veth, mostly veth's own "
        "work (an XDP frame for every skb, copied, since trafgen's skbs lack XDP headroom)"
    )

    def __init__(self) -> None:
        self.noop: Noop | None = None

    def prepare(self, spec: Sequence[rules.RuleSpec]) -> None:
        if self.noop is None:
            self.noop = Noop("XDP_DROP")

    def enable(self, rig: Rig) -> None:
        assert self.noop is not None
        with rig.receiver.enter():
            attach_mod.attach_xdp(rig.receiver_ifname, self.noop.fn, "native")

    def dropped(self, rig: Rig) -> int:
        return int(link_stats(rig.sender, "s0")["tx_packets"])  # everything handed over is dropped

    disable = Tidegate.disable

    def close(self) -> None:
        if self.noop is not None:
            self.noop.close()
            self.noop = None


def _bcc_lib() -> Any:
    import bcc

    return bcc.libbcc.lib


def _possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total
