"""Build-time settings of the data plane: map capacities and where objects are pinned.

Capacities become -D defines (BCC sizes maps at compile time); everything that can change at
run time lives in the config map instead (dataplane.map_config). Defaults come from the ABI header.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dataplane import abi

if TYPE_CHECKING:
    from dataplane.kernel.owner import InterfaceKey

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/tidegate")
# bpffs holds only BPF objects, so facts about what we created (the clsact qdisc) live on tmpfs,
# which a reboot clears together with the qdiscs they describe.
DEFAULT_RUN_ROOT = Path("/run/tidegate/dataplane")
_MAX_ENTRIES = 1 << 24  # beyond this a single map's memory is no longer a reasonable default
_MAX_RING_PAGES = 1 << 16
_MAX_INSERT_ONE_IN = 1 << 16  # one search in 65,536 cached: the cache is as good as off
# Capacities of the three-stage match the classifier replaced: refused with a pointer to the new ones.
_RETIRED = {f"{t}_{stage}" for t in ("acl", "cls") for stage in ("src", "dst", "port")}


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _cap(define: str) -> int:
    return Field(default=abi.define(define), ge=1, le=_MAX_ENTRIES, description=f"-D{define}")


def insert_one_in_field() -> Any:
    """The field of `flow_cache_insert_one_in` (here and in the daemon's config)."""
    return Field(default=abi.define("TG_FLOW_INSERT_ONE_IN"), ge=1, le=_MAX_INSERT_ONE_IN,
                 description="-DTG_FLOW_INSERT_ONE_IN")


class Capacities(BaseModel):
    """Entries per map. A policy change keeps the old and the new policy side by side for a moment:
    size for both (docs/classifier.md has the memory each entry costs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tunnels: int = _cap("TG_TUNNELS_MAX")
    acl_rules: int = _cap("TG_ACL_RULES_MAX")
    # Buckets of the classifier (docs/classifier.md): IPv6 packets probe *_buckets, IPv4 packets
    # *_buckets4 (a bucket whose subtable leaves the family out is in both).
    acl_buckets: int = _cap("TG_ACL_BUCKETS_MAX")
    acl_buckets4: int = _cap("TG_ACL_BUCKETS4_MAX")
    cls_rules: int = _cap("TG_CLS_RULES_MAX")
    cls_buckets: int = _cap("TG_CLS_BUCKETS_MAX")
    cls_buckets4: int = _cap("TG_CLS_BUCKETS4_MAX")
    conntrack: int = _cap("TG_CT_MAX")  # flows recorded for allow_established
    # The ACL's flow cache, entries per family's map (docs/classifier.md); 0: built without it.
    acl_flows: int = Field(default=abi.define("TG_ACL_FLOWS_MAX"), ge=0, le=_MAX_ENTRIES,
                           description="-DTG_ACL_FLOWS_MAX")
    # Pages (4 KiB) of the policy event ring buffer; 65536 pages is 256 MiB, already absurd.
    event_ring_pages: int = Field(default=abi.define("TG_EVENT_RING_PAGES"), ge=1, le=_MAX_RING_PAGES,
                                  description="-DTG_EVENT_RING_PAGES")

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in sorted(set(data) & _RETIRED):
                raise ValueError(f"{name}: the three-stage match maps are gone (docs/classifier.md); "
                                 f"remove it and size {name.split('_')[0]}_buckets instead")
        return data

    @field_validator("event_ring_pages")
    @classmethod
    def _power_of_two(cls, pages: int) -> int:
        if pages & (pages - 1):
            raise ValueError(f"the kernel sizes ring buffers in powers of two pages: "
                             f"use {_next_pow2(pages)}, not {pages}")
        return pages

    def cflags(self) -> list[str]:
        fields = Capacities.model_fields
        return [f"{fields[name].description}={value}" for name, value in self.model_dump().items()]


class DataplaneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    capacities: Capacities = Capacities()
    # The bucket hashes made whole when the maps are (xdp/include/maps.h, TG_BUCKET_FLAGS): their
    # memory is fixed by the capacities, and no edit waits on the kernel freeing buckets an
    # earlier change gave up. False: memory as buckets come (docs/operations.md).
    preallocate_buckets: bool = True
    # A search of the ACL inserts its result into the flow cache with a chance of 1 in this many
    # (xdp/include/tidegate_abi.h, TG_FLOW_INSERT_ONE_IN): what a flood of new flows costs.
    flow_cache_insert_one_in: int = insert_one_in_field()
    pin_root: Path = DEFAULT_PIN_ROOT
    run_root: Path = DEFAULT_RUN_ROOT
    # The daemon's state directory, written into the owner record of each pin directory
    # (dataplane.kernel.owner); None for a data plane that no daemon runs (tests, benchmarks).
    state_dir: Path | None = None

    def cflags(self) -> list[str]:
        """The -D defines of these settings (capacities, bucket allocation, the flow cache)."""
        return [*self.capacities.cflags(), *([] if self.preallocate_buckets else ["-DTG_BUCKETS_ON_DEMAND"]),
                *([] if self.capacities.acl_flows else ["-DTG_NO_FLOW_CACHE"]),
                f"-DTG_FLOW_INSERT_ONE_IN={self.flow_cache_insert_one_in}"]

    def pin_dir(self, key: InterfaceKey) -> Path:
        """<pin_root>/netns-<inode>/if<ifindex>-<ifname> (dataplane.kernel.owner)."""
        return self.pin_root / key.relative

    def run_dir(self, key: InterfaceKey) -> Path:
        """Ownership markers of one interface, keyed by the pin root so test roots stay apart."""
        return self.run_root / self.pin_root.name / key.relative
