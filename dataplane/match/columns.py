"""A rule set as columns: one numpy array per field, one row per rule, in judging order.

This is the one representation of a bulk rule set between the edges (decoded protobuf, YAML/JSON)
and the bytes the map writes take; no per-rule Python objects on that path. Row i is the i-th rule
in first-match order (already sorted by the (priority, id) the API defines); the compiler never
reorders rows, it only reads `order` when it needs a priority to compare.

Conventions (the edges translate into these once):
- family: 0 = the rule names no address (matches IPv4 and IPv6), 4 or 6 otherwise.
- addresses: 16 bytes in network order; an IPv4 prefix sits in the first 4 bytes, the rest zero;
  bits past the prefix length are zero (the edges refuse host bits, naming the field).
- proto_any: True = any IP protocol (then `proto` is 0); otherwise `proto` is the IANA number 0-255.
- ports: inclusive ranges; 0-65535 = any (also what a protocol without ports must carry).
- mark: what a service-chain classifier's match writes to skb->mark (1..2^32-1); 0 for ACL rules.
- has_icmp_type / icmp_type, has_icmp_code / icmp_code: an ICMP or ICMPv6 type and code (0-255),
  only in rules of protocol 1 or 58; syn: TCP packets opening a connection (SYN set, FIN, RST and
  ACK clear), only in rules of protocol 6. All zero (the default): any. A later fragment, which
  has no transport header, never matches a rule with any of them.

Changes since the columns first landed (for the control path's merge): `mark` was added (the
classifier engineer, for the service-chain classifiers, which compile through the same code);
the ICMP type/code and SYN columns (issue 14), last, zero meaning any, so that a reader of older
columns (the state file) fills them with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ADDR_BYTES = 16
PORT_ANY = (0, 0xFFFF)
ICMP_FIELDS = ("icmp_type", "icmp_code")  # each with its has_<name> column

# (name, dtype, trailing shape): the schema every RuleColumns holds.
SCHEMA: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    ("rule_id", np.uint32, ()),
    ("order", np.uint64, ()),  # (priority << 32) | id: the API's judging order, increasing
    ("action", np.uint8, ()),  # dataplane.abi action enum value
    ("flags", np.uint8, ()),  # per-rule flags (e.g. log), abi TG_RULE_F_*
    ("family", np.uint8, ()),
    ("src_addr", np.uint8, (ADDR_BYTES,)),
    ("src_len", np.uint8, ()),
    ("dst_addr", np.uint8, (ADDR_BYTES,)),
    ("dst_len", np.uint8, ()),
    ("proto_any", np.bool_, ()),
    ("proto", np.uint8, ()),
    ("sport_lo", np.uint16, ()),
    ("sport_hi", np.uint16, ()),
    ("dport_lo", np.uint16, ()),
    ("dport_hi", np.uint16, ()),
    ("mark", np.uint32, ()),  # service-chain classifiers: the mark a match sets; 0 for ACL rules
    ("has_icmp_type", np.bool_, ()),  # False: any ICMP type
    ("icmp_type", np.uint8, ()),
    ("has_icmp_code", np.bool_, ()),  # False: any ICMP code
    ("icmp_code", np.uint8, ()),
    ("syn", np.bool_, ()),  # True: TCP opening a connection only
)


@dataclass(frozen=True, eq=False)
class RuleColumns:
    """Rules as parallel arrays (see the module docstring for the conventions)."""

    rule_id: npt.NDArray[np.uint32]
    order: npt.NDArray[np.uint64]
    action: npt.NDArray[np.uint8]
    flags: npt.NDArray[np.uint8]
    family: npt.NDArray[np.uint8]
    src_addr: npt.NDArray[np.uint8]
    src_len: npt.NDArray[np.uint8]
    dst_addr: npt.NDArray[np.uint8]
    dst_len: npt.NDArray[np.uint8]
    proto_any: npt.NDArray[np.bool_]
    proto: npt.NDArray[np.uint8]
    sport_lo: npt.NDArray[np.uint16]
    sport_hi: npt.NDArray[np.uint16]
    dport_lo: npt.NDArray[np.uint16]
    dport_hi: npt.NDArray[np.uint16]
    mark: npt.NDArray[np.uint32]
    has_icmp_type: npt.NDArray[np.bool_]
    icmp_type: npt.NDArray[np.uint8]
    has_icmp_code: npt.NDArray[np.bool_]
    icmp_code: npt.NDArray[np.uint8]
    syn: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        n = len(self.rule_id)
        for name, dtype, shape in SCHEMA:
            column = getattr(self, name)
            if column.dtype != dtype or column.shape != (n, *shape):
                raise ValueError(f"column {name}: expected {np.dtype(dtype)} of shape {(n, *shape)}, "
                                 f"got {column.dtype} of shape {column.shape}")

    def __len__(self) -> int:
        return len(self.rule_id)

    @classmethod
    def empty(cls, n: int = 0) -> RuleColumns:
        """n rules that match everything (any family, prefix, protocol and port), action 0."""
        columns: dict[str, Any] = {
            name: np.zeros((n, *shape), dtype=dtype) for name, dtype, shape in SCHEMA}
        columns["proto_any"][:] = True
        for name in ("sport_hi", "dport_hi"):
            columns[name][:] = PORT_ANY[1]
        return cls(**columns)

    def take(self, rows: npt.ArrayLike) -> RuleColumns:
        """The rules at `rows` (indices or a boolean mask), in that order."""
        return RuleColumns(**{name: getattr(self, name)[rows] for name, _, _ in SCHEMA})

    @staticmethod
    def concat(parts: list[RuleColumns]) -> RuleColumns:
        if not parts:
            return RuleColumns.empty()
        return RuleColumns(**{name: np.concatenate([getattr(p, name) for p in parts])
                              for name, _, _ in SCHEMA})
