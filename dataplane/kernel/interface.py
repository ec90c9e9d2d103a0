"""One interface's data plane: the loaded programs, their maps, and attach/detach.

    dp = Dataplane.load("eth1")          # compile once; pin (or adopt pinned) maps
    dp.configure(RuntimeConfig())        # ports, default actions, this interface's MAC
    dp.acl.replace([...MatchRule...])    # compiled into the LPM stages, applied consistently
    dp.attach("auto")                    # XDP native (else generic) + TC clsact ingress
    dp.detach()                          # programs off, pins gone; idempotent

Works in the current network namespace. Without an ifname nothing is pinned: that is the form
the BPF_PROG_TEST_RUN tests and benchmarks use.
"""

from __future__ import annotations

import logging
import shutil

from dataplane.acl import acl_capacity, cls_capacity
from dataplane.kernel import attach as attach_mod
from dataplane.kernel import memory
from dataplane.kernel import program as program_mod
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.maps import DataplaneMaps
from dataplane.kernel.testrun import SkbResult, XdpResult, run_skb, run_xdp
from dataplane.map_config import RuntimeConfig
from dataplane.tables import ACL_SLOT, ACL_TABLES, CLS_SLOT, CLS_TABLES, MatchTable

log = logging.getLogger(__name__)


class Dataplane:
    def __init__(self, program: program_mod.Program, ifname: str | None, settings: DataplaneSettings) -> None:
        self.program = program
        self.ifname = ifname
        self.settings = settings
        self.maps = DataplaneMaps(program.table)
        caps = settings.capacities
        self.acl = MatchTable(program.table, ACL_TABLES, acl_capacity(caps), ACL_SLOT, self.maps)
        self.classifiers = MatchTable(program.table, CLS_TABLES, cls_capacity(caps), CLS_SLOT, self.maps)
        self.xdp_mode: str | None = None

    @classmethod
    def load(cls, ifname: str | None = None, settings: DataplaneSettings | None = None) -> Dataplane:
        settings = settings or DataplaneSettings()
        return cls(program_mod.compile_program(settings, ifname), ifname, settings)

    @property
    def adopted(self) -> bool:
        """True when this load took over maps a previous load pinned (a daemon restart)."""
        return self.program.adopted

    def configure(self, cfg: RuntimeConfig, if_mac: bytes | None = None) -> None:
        if if_mac is None:
            if self.ifname is None:
                raise ValueError("if_mac: required when the data plane is not bound to an interface")
            if_mac = attach_mod.link_mac(self.ifname)
        self.maps.write_config(cfg, if_mac)

    def attach(self, mode: attach_mod.XdpMode = "auto") -> str:
        ifname = self._require_ifname("attach")
        attach_mod.attach_tc(ifname, self.program.tc_fn, self.settings.run_dir(ifname))
        self.xdp_mode = attach_mod.attach_xdp(ifname, self.program.xdp_fn, mode)
        self.program.pin_programs()
        log.info("data plane attached", extra={"ifname": ifname, "xdp_mode": self.xdp_mode})
        return self.xdp_mode

    def detach(self) -> None:
        """Programs off the interface, pins removed. Safe to call twice or after a crash."""
        ifname = self._require_ifname("detach")
        detach_interface(ifname, self.settings)
        self.close()

    def map_memory(self) -> dict[str, int]:
        """Kernel memory of each of this data plane's maps, in bytes (the kernel's own figure:
        dataplane.kernel.memory)."""
        return memory.map_memory(self.program)

    def close(self) -> None:
        """Drops this process's handles; attached programs and pinned maps stay in the kernel."""
        if self.program is not None:
            self.program.close()
            self.program = None  # type: ignore[assignment]

    # --- packet-level harness (BPF_PROG_TEST_RUN) ----------------------------------------
    def run_xdp(self, packet: bytes, repeat: int = 1) -> XdpResult:
        return run_xdp(self.program.xdp_fn.fd, packet, repeat)

    def run_tc(self, packet: bytes, mark: int = 0, repeat: int = 1) -> SkbResult:
        return run_skb(self.program.tc_fn.fd, packet, mark, repeat)

    def _require_ifname(self, what: str) -> str:
        if self.ifname is None:
            raise ValueError(f"{what}: this data plane was loaded without an interface")
        return self.ifname


def detach_interface(ifname: str, settings: DataplaneSettings | None = None) -> None:
    """Detaches whatever Tidegate left on `ifname` (also from a process that died)."""
    settings = settings or DataplaneSettings()
    run_dir = settings.run_dir(ifname)
    try:
        attach_mod.detach_xdp(ifname)
        attach_mod.detach_tc(ifname, run_dir)
    except attach_mod.AttachError:
        pass  # the interface is gone, and its programs with it
    program_mod.unpin(settings, ifname)
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (run_dir.parent, settings.run_root):
        try:
            parent.rmdir()  # only when no other interface of this root is attached
        except OSError:
            pass
    log.info("data plane detached", extra={"ifname": ifname})


