"""ClassBench filter sets (../shared/data/classbench, format in its README) as RuleColumns.

    columns = load("fw1", 10_000)    # fw1_10000.rules.gz, rows in file order (= judging order)

A line is `@src/len <TAB> dst/len <TAB> slo : shi <TAB> dlo : dhi <TAB> proto/mask <TAB> flags/mask`.
ClassBench has no action column and the first line wins, so line i's rule gets priority i (and
ids count up from 1 in file order), and actions alternate, deny on even lines and allow on odd
ones, so that both verdicts occur. TCP flags are ignored (the sets leave them wildcarded).
Protocol mask 0 is any protocol, mask 0xFF that protocol exactly. ClassBench writes port ranges
for every rule:
- a line of any protocol with ports other than 0 : 65535 (fw2's seed makes them) means the
  packets that have ports: it becomes three rules, TCP, UDP and SCTP, with those ports, its
  priority and action (the API refuses ports without a protocol whose header has them);
- a line of a protocol without ports (ICMP, GRE...) gets any port: its packets have none to
  compare (the shipped sets write 0 : 65535 there; fw2's and fw4's seeds write ports there too,
  and such a rule then matches more than the line says).
A prefix with host bits set is refused naming its line (the shipped sets have none).

IPv6 sets (ClassBench's IPv6 variants write the same line with IPv6 prefixes,
`@2001:db8::/32 <TAB> ::/0 <TAB> ...`) read the same way, their rules of family 6; both
prefixes of a line are of one family.
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane import abi
from dataplane.match.columns import PORT_ANY, RuleColumns

_REPO = Path(__file__).resolve().parents[1]
# $TIDEGATE_CLASSBENCH_DIR, else ../shared/data/classbench beside the checkout (or beside the
# directory of worktrees holding it)
_CANDIDATES = [base / "shared" / "data" / "classbench" for base in (_REPO.parent, _REPO.parents[1])]
DEFAULT_DIR = Path(os.environ.get("TIDEGATE_CLASSBENCH_DIR") or
                   next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0]))
SEEDS = ("acl1", "fw1", "ipc1")
SIZES = (1_000, 10_000, 100_000)
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: the protocols whose ports the data plane reads
ACTIONS = (int(abi.Action["DENY"]), int(abi.Action["ALLOW"]))  # row i gets ACTIONS[i % 2]
_LINE = re.compile(r"@(\S+)/(\d+)\s+(\S+)/(\d+)\s+(\d+) : (\d+)\s+(\d+) : (\d+)\s+"
                   r"0x([0-9a-fA-F]+)/0x([0-9a-fA-F]+)")


def path_of(seed: str, size: int, directory: Path | None = None) -> Path:
    return (directory or DEFAULT_DIR) / f"{seed}_{size}.rules.gz"


def available(directory: Path | None = None) -> bool:
    return all(path_of(s, SIZES[0], directory).exists() for s in SEEDS)


_FILE = re.compile(r"([A-Za-z][A-Za-z0-9]*)_(\d+)\.rules\.gz")


def sets(directory: Path | None = None) -> list[tuple[str, int]]:
    """Every (seed, size) with a file in the directory: the shipped sets and any other set
    generated the same way (acl2..5, fw2..5, ipc2, or a set of one's own), by size, then the
    shipped seeds first, the others by name."""
    base = directory or DEFAULT_DIR
    found = [(m.group(1), int(m.group(2))) for p in (base.iterdir() if base.is_dir() else [])
             if (m := _FILE.fullmatch(p.name))]
    rank = {seed: i for i, seed in enumerate(SEEDS)}
    return sorted(found, key=lambda s: (s[1], rank.get(s[0], len(SEEDS)), s[0]))


def seeds(size: int, directory: Path | None = None) -> list[str]:
    """The seeds with a set of this size in the directory (sets' order)."""
    return [seed for seed, n in sets(directory) if n == size]


def load(seed: str, size: int, directory: Path | None = None) -> RuleColumns:
    return parse(gzip.decompress(path_of(seed, size, directory).read_bytes()).decode())


def moved_to_ipv6(text: str) -> str:
    """A set's text with every IPv4 prefix moved into IPv6, its 32 bits at the top (a.b.c.d/n
    becomes the IPv6 prefix whose first 32 bits are a.b.c.d, still /n): the same rule structure
    over IPv6, for tests and the bench (ClassBench publishes no IPv6 seeds of its own)."""
    def move(m: re.Match[str]) -> str:
        return f"{ipaddress.IPv6Address(int(ipaddress.IPv4Address(m.group(1))) << 96)}/{m.group(2)}"
    return re.sub(r"(\d+\.\d+\.\d+\.\d+)/(\d+)", move, text)


def _addresses(texts: npt.NDArray[Any], length: npt.NDArray[np.int64], v6: npt.NDArray[np.bool_],
               side: str) -> npt.NDArray[np.uint8]:
    """(n, 16) address bytes of one side (IPv4 in the first four); a bad address, a prefix
    length past the family's or host bits set are refused naming the line."""
    out = np.zeros((len(texts), 16), dtype=np.uint8)

    def exact(row: int) -> None:  # one prefix through ipaddress, which says what is wrong
        try:
            net = ipaddress.ip_network(f"{texts[row]}/{length[row]}", strict=True)
            if (net.version == 6) != bool(v6[row]):
                raise ValueError("the two prefixes of a rule are of different families")
        except ValueError as exc:
            why = f"{exc}" if v6[row] else f"not an IPv4 prefix without host bits ({exc})"
            raise ValueError(f"line {row + 1}: {side} prefix {texts[row]}/{length[row]}: {why}") from None
        out[row, : len(net.network_address.packed)] = np.frombuffer(net.network_address.packed, np.uint8)

    four = np.flatnonzero(~v6 & (length <= 32))
    try:  # dotted quads of plain IPv4 prefixes, all at once
        quads = np.array([t.split(".") for t in texts[four]], dtype=np.int64).reshape(-1, 4)
    except ValueError:  # some text is not four numbers: every row the exact way
        quads = None
    if quads is not None:
        value = (quads[:, 0] << 24) | (quads[:, 1] << 16) | (quads[:, 2] << 8) | quads[:, 3]
        good = ((quads >= 0) & (quads <= 255)).all(axis=1) & ((value & ((1 << (32 - length[four])) - 1)) == 0)
        out[four[good], :4] = quads[good].astype(np.uint8)
        four = four[~good]
    for row in sorted([*np.flatnonzero(v6 | (length > 32)).tolist(), *four.tolist()]):
        exact(row)
    return out


def parse(text: str) -> RuleColumns:
    """The rules of a ClassBench file, in its order (see the module docstring)."""
    lines = [line for line in text.splitlines() if line.startswith("@")]
    fields = []
    for number, line in enumerate(lines, 1):
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"line {number}: not a ClassBench rule: {line[:80]!r}")
        fields.append(m.groups())
    n = len(fields)
    f = np.array(fields, dtype=object).reshape(n, 10) if n else np.zeros((0, 10), dtype=object)
    cols = RuleColumns.empty(n)
    v6 = np.array([":" in a or ":" in b for a, b in zip(f[:, 0], f[:, 2], strict=True)], dtype=bool)
    for side, at in (("src", 0), ("dst", 2)):
        length = f[:, at + 1].astype(np.int64)
        getattr(cols, f"{side}_addr")[:] = _addresses(f[:, at], length, v6, side)
        getattr(cols, f"{side}_len")[:] = length.astype(np.uint8)
    cols.family[:] = np.where(v6, 6, 4)
    ports = f[:, 4:8].astype(np.int64)  # sport lo, hi, dport lo, hi
    past = np.flatnonzero((ports > PORT_ANY[1]).any(axis=1))
    if past.size:
        raise ValueError(f"line {int(past[0]) + 1}: a port past 65535")
    proto = np.array([int(v, 16) for v in f[:, 8]], dtype=np.int64)
    mask = np.array([int(v, 16) for v in f[:, 9]], dtype=np.int64)
    cols.proto_any[:] = mask == 0
    cols.proto[:] = np.where(mask == 0, 0, proto).astype(np.uint8)
    ported = ~cols.proto_any & np.isin(cols.proto, PORT_PROTOCOLS)
    wildcard = ((ports[:, [0, 2]] == PORT_ANY[0]) & (ports[:, [1, 3]] == PORT_ANY[1])).all(axis=1)
    any_ported = cols.proto_any & ~wildcard  # any protocol, some ports: TCP, UDP or SCTP, below
    has_ports = ported | any_ported
    for at, name in enumerate(("sport_lo", "sport_hi", "dport_lo", "dport_hi")):
        getattr(cols, name)[:] = np.where(has_ports, ports[:, at], PORT_ANY[at % 2]).astype(np.uint16)
    copies = np.where(any_ported, len(PORT_PROTOCOLS), 1)
    line_of = np.repeat(np.arange(n), copies)  # each rule's line
    cols = cols.take(line_of)
    copy = np.arange(len(line_of)) - np.repeat(np.cumsum(copies) - copies, copies)
    expanded = any_ported[line_of]
    cols.proto_any[expanded] = False
    cols.proto[expanded] = np.array(PORT_PROTOCOLS, dtype=np.uint8)[copy[expanded]]
    rows = np.arange(len(line_of), dtype=np.uint64)
    priority = line_of.astype(np.uint64)
    cols.rule_id[:] = (rows + 1).astype(np.uint32)
    cols.order[:] = (priority << np.uint64(32)) | (rows + np.uint64(1))
    cols.action[:] = np.array(ACTIONS, dtype=np.uint8)[(line_of % 2).astype(np.intp)]
    return cols
