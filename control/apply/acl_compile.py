"""The reconciler's one door to the classifier's compiler (dataplane.match.planner) for the ACL.

A table (control.policy.acl_table) is compiled against what the maps hold (`base`), handed the
table last written there (`previous`): a table one edit away from it (AclTable.edit_from: what
AddAclRule and DeleteAclRule make) is compiled as that edit, which costs the rule added or
deleted, not the rule set; anything else (a whole policy, a replayed journal) is compiled whole,
and the compiler itself finds what it can keep (unchanged rules keep their slots and counters).
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
        step = table.edit_from(previous) if previous is not None else None
        if step is not None:
            added, removed = step
            if added is not None:
                return planner.add_rules(added, base, capacity, TABLE)
            if removed is not None:
                return planner.delete_rules([removed], base, capacity, TABLE)
        return planner.compile_rules(table.columns, base, capacity, TABLE)
