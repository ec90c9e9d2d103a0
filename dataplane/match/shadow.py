"""Rules no packet reaches (pure numpy): those an earlier rule covers whole.

First match means a rule whose every packet an earlier rule also matches never decides anything.
A rule set full of them is not unusual: rules written twice, an import whose rules differ only in
something Tidegate does not read (ClassBench's fw4 seed gives 173 rules of protocol 7 that differ
only in port ranges, and protocol 7 has no ports), a broad rule above narrower ones. They cost
nothing until they crowd a bucket: more than TG_SUBTABLES_MAX * TG_BUCKET_MAX rules that share
their addresses, protocol and port prefixes cannot be searched in bounded time, but when all but
a few of them are shadowed, only those few need a place. The compiler (dataplane.match.compiler)
asks this module only then, so a rule set that fits is compiled as it always was.

What is found: within rules of equal family, addresses, prefix lengths and protocol, a rule is
shadowed when an earlier one's port ranges hold its own and the earlier one asks no more of the
packet (no ICMP type, code or SYN, or the same). A rule covered only by a broader prefix is not
looked for (it keeps its place; nothing is lost but the room it takes).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dataplane.match.columns import RuleColumns

# Pairs compared at once within a group (memory of one comparison block, in booleans).
BLOCK_PAIRS = 1 << 22


def _group_keys(cols: RuleColumns) -> npt.NDArray[np.void]:
    """Per rule, the bytes of what must be equal for one rule to cover the other here."""
    parts = [cols.family[:, None], cols.src_addr, cols.src_len[:, None], cols.dst_addr, cols.dst_len[:, None],
             cols.proto_any.astype(np.uint8)[:, None], cols.proto[:, None]]
    raw = np.ascontiguousarray(np.concatenate(parts, axis=1))
    return raw.view(f"V{raw.shape[1]}").ravel()


def shadowed(cols: RuleColumns) -> npt.NDArray[np.bool_]:
    """(n,): the rows (rows in first-match order) an earlier row of theirs covers."""
    n = len(cols)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    _, group, counts = np.unique(_group_keys(cols), return_inverse=True, return_counts=True)
    group = group.ravel()
    shared = counts[group] > 1
    rows = np.flatnonzero(shared)
    if not rows.size:
        return out
    rows = rows[np.argsort(group[rows], kind="stable")]  # by group, in row order within one
    bounds = np.flatnonzero(np.r_[True, group[rows][1:] != group[rows][:-1], True])
    slo, shi = cols.sport_lo.astype(np.int32), cols.sport_hi.astype(np.int32)
    dlo, dhi = cols.dport_lo.astype(np.int32), cols.dport_hi.astype(np.int32)
    # An ICMP type or code, or SYN, asked by the earlier rule must be asked alike by the later one.
    l4 = np.stack([cols.has_icmp_type, cols.has_icmp_code, cols.syn], axis=1)
    l4_values = np.stack([cols.icmp_type, cols.icmp_code], axis=1).astype(np.int32)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        earlier = rows[start:end]  # one group, every member a possible cover of the later ones
        step = max(1, BLOCK_PAIRS // len(earlier))
        for at in range(0, len(earlier), step):
            later = earlier[at : at + step]
            covers = (_holds(slo, shi, earlier, later) & _holds(dlo, dhi, earlier, later)
                      & (earlier[None, :] < later[:, None]))
            same_values = np.concatenate([l4_values[later][:, None, :] == l4_values[earlier][None, :, :],
                                          np.ones((len(later), len(earlier), 1), dtype=bool)], axis=2)
            alike = ~l4[earlier][None, :, :] | (l4[later][:, None, :] & same_values)
            out[later] = (covers & alike.all(axis=2)).any(axis=1)
    return out


def _holds(lo: npt.NDArray[np.int32], hi: npt.NDArray[np.int32], earlier: npt.NDArray[np.intp],
           later: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """(later, earlier): whether each earlier row's range holds each later row's."""
    return (lo[earlier][None, :] <= lo[later][:, None]) & (hi[earlier][None, :] >= hi[later][:, None])
