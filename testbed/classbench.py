"""ClassBench filter sets (../shared/data/classbench, format in its README) as RuleColumns.

    cols = load("fw1", 10_000)          # fw1_10000.rules.gz: rows in file order = priority order

A line is `@src/len  dst/len  slo : shi  dlo : dhi  proto/mask  flags/mask`. ClassBench has no
action column and the first line wins: row i gets priority i and rule id i + 1, and actions
alternate deny/allow (even rows deny) so that a test sees both verdicts. TCP flags are ignored.
ClassBench draws port ranges for every protocol, also for protocols without ports (GRE, ESP...);
a rule of such a protocol gets any port (RuleColumns' convention: the rule then matches what the
packet classifier would match for that protocol, whose packets carry no ports).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from dataplane.match.columns import RuleColumns

DEFAULT_DIR = Path(os.environ.get("TIDEGATE_CLASSBENCH_DIR", Path(__file__).resolve().parents[3]
                                  / "shared" / "data" / "classbench"))
SEEDS = ("acl1", "fw1", "ipc1")
SIZES = (1_000, 10_000, 100_000)
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: the protocols whose ports the data plane reads
DENY, ALLOW = 1, 0  # abi.Action values


def path_of(seed: str, size: int, directory: Path | None = None) -> Path:
    return (directory or DEFAULT_DIR) / f"{seed}_{size}.rules.gz"


def available(directory: Path | None = None) -> bool:
    return path_of(SEEDS[0], SIZES[0], directory).exists()


def load(seed: str, size: int, directory: Path | None = None) -> RuleColumns:
    return parse(gzip.decompress(path_of(seed, size, directory).read_bytes()).decode())


def parse(text: str) -> RuleColumns:
    """Rules of a ClassBench file, in its order (see the module docstring)."""
    lines = [line for line in text.splitlines() if line.startswith("@")]
    n = len(lines)
    cols = RuleColumns.empty(n)
    fields = np.array([line[1:].replace(":", " ").replace("/", " ").split()[:10] for line in lines],
                      dtype=object).reshape(n, 10)
    for which, at in (("src", 0), ("dst", 2)):
        quads = np.array([a.split(".") for a in fields[:, at]], dtype=np.uint8).reshape(n, 4)
        getattr(cols, f"{which}_addr")[:, :4] = quads
        length = fields[:, at + 1].astype(np.uint8)
        getattr(cols, f"{which}_len")[:] = length
        _clear_host_bits(getattr(cols, f"{which}_addr"), length)
    for name, at in (("sport_lo", 4), ("sport_hi", 5), ("dport_lo", 6), ("dport_hi", 7)):
        getattr(cols, name)[:] = fields[:, at].astype(np.uint16)
    proto = np.array([int(v, 16) for v in fields[:, 8]], dtype=np.uint16)
    mask = np.array([int(v, 16) for v in fields[:, 9]], dtype=np.uint16)
    cols.proto_any[:] = mask == 0
    cols.proto[:] = np.where(mask == 0, 0, proto).astype(np.uint8)
    portless = ~cols.proto_any & ~np.isin(cols.proto, PORT_PROTOCOLS)
    for name, value in (("sport_lo", 0), ("sport_hi", 0xFFFF), ("dport_lo", 0), ("dport_hi", 0xFFFF)):
        getattr(cols, name)[portless] = value
    cols.family[:] = 4
    idx = np.arange(n, dtype=np.uint64)
    cols.rule_id[:] = (idx + 1).astype(np.uint32)
    cols.order[:] = (idx << np.uint64(32)) | (idx + np.uint64(1))
    cols.action[:] = np.where(idx % 2 == 0, DENY, ALLOW).astype(np.uint8)
    return cols


def _clear_host_bits(addr: np.ndarray, length: np.ndarray) -> None:
    bits = np.unpackbits(addr, axis=1)
    bits[np.arange(bits.shape[1])[None, :] >= length[:, None].astype(np.int64)] = 0
    addr[:] = np.packbits(bits, axis=1)
