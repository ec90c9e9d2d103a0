"""The reconciler's one door to the classifier's compiler (dataplane.match.planner) for the ACL.

A table (control.policy.acl_table) is compiled from its columns against what the maps hold
(`base`); the compiler itself finds what it can keep (unchanged rules keep their slots and
counters).
"""

from __future__ import annotations

from control.policy.acl_table import AclTable
from dataplane.match import planner
from dataplane.match.adapter import CompiledMatch, Live, MatchCapacity

TABLE = "acl"


class AclCompiler:
    def compile(self, table: AclTable, base: Live, capacity: MatchCapacity,
                previous: AclTable | None = None) -> CompiledMatch:
        """ValueError (naming the rule or the capacity setting) before anything is written."""
        return planner.compile_rules(table.columns, base, capacity, TABLE)
