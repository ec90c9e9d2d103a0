"""One interface's data plane: the loaded programs, their maps, and attach/detach.

    dp = Dataplane.load("eth1")          # compile once; pin (or adopt this interface's pinned) maps
    dp.configure(RuntimeConfig())        # ports, default actions, this interface's MAC
    dp.acl.replace(rule_columns)         # compiled into the classifier, switched consistently
    dp.attach("auto")                    # XDP native (else generic) + TC clsact ingress
    dp.verify()                          # the attached programs use the maps written here
    dp.detach()                          # our programs off, our pins gone; idempotent

Works in the calling thread's network namespace: the interface is the one of that namespace
(dataplane.kernel.owner keys pins by namespace and ifindex), and attach, verify and detach refuse to
run from another namespace. Without an ifname nothing is pinned: that is the form the
BPF_PROG_TEST_RUN tests and benchmarks use.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path

from dataplane.acl import acl_capacity, cls_capacity
from dataplane.kernel import attach as attach_mod
from dataplane.kernel import bpf_info, memory, owner
from dataplane.kernel import program as program_mod
from dataplane.kernel import verify as verify_mod
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.maps import DataplaneMaps
from dataplane.kernel.owner import InterfaceKey
from dataplane.kernel.testrun import SkbResult, XdpResult, run_skb, run_xdp
from dataplane.map_config import RuntimeConfig
from dataplane.match.table import ACL_TABLES, CLS_TABLES, MatchTable

log = logging.getLogger(__name__)
NEXT_PROGRAM_MAP = "next_program"


class Dataplane:
    def __init__(self, program: program_mod.Program, key: InterfaceKey | None,
                 settings: DataplaneSettings) -> None:
        self.program = program
        self.key = key
        self.ifname = key.ifname if key is not None else None
        self.settings = settings
        self.maps = DataplaneMaps(program.table)
        caps = settings.capacities
        self.acl = MatchTable(program.table, ACL_TABLES, acl_capacity(caps))
        self.classifiers = MatchTable(program.table, CLS_TABLES, cls_capacity(caps))
        self.xdp_mode: str | None = None
        self.next_program: str | None = None
        self._verified = verify_mod.Memo()  # what verify() learnt about this program's fds
        self._map_fds: dict[str, int] = {}  # name -> fd of the maps verify() checks (the program's own)

    @classmethod
    def load(cls, ifname: str | None = None, settings: DataplaneSettings | None = None) -> Dataplane:
        """Loads for `ifname` of the calling thread's namespace (AttachError if it has none)."""
        settings = settings or DataplaneSettings()
        key = InterfaceKey.of(ifname) if ifname is not None else None
        return cls(program_mod.compile_program(settings, key), key, settings)

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

    def attach(self, mode: attach_mod.XdpMode = "auto", replace: bool = False) -> str:
        """XDP and TC on the interface. An XDP program Tidegate did not load is never replaced
        silently: XdpOccupied names it, unless `replace`."""
        key = self._require_key("attach")
        occupant = attach_mod.foreign_xdp(key.ifname)
        if occupant is not None:
            if not replace:
                raise attach_mod.XdpOccupied(occupant)
            log.warning("replacing an XDP program Tidegate did not load", extra={"ifname": key.ifname,
                                                                                "occupant": occupant})
        attach_mod.attach_tc(key.ifname, self.program.tc_fn, self.settings.run_dir(key),
                             self.program.tc_egress_fn)
        self.xdp_mode = attach_mod.attach_xdp(key.ifname, self.program.xdp_fn, mode)
        self.program.pin_programs()
        log.info("data plane attached", extra={"ifname": key.ifname, "xdp_mode": self.xdp_mode})
        return self.xdp_mode

    def verify(self) -> None:
        """Mismatch unless the programs attached to the interface use the very maps this data
        plane writes (dataplane.kernel.verify: program and map ids read back from the kernel)."""
        key = self._require_key("verify")
        names = {*program_mod.map_names(), *self.program.opened}
        if self._map_fds.keys() != names:
            self._map_fds = {name: self.program.map_fd(name) for name in names}
        try:
            problems = verify_mod.check(key, {"xdp": self.program.xdp_fn, "tc": self.program.tc_fn,
                                              "tc_egress": self.program.tc_egress_fn},
                                        self._map_fds,
                                        self.program.pin_dir, self.program.stages.values(), self._verified)
        except OSError as exc:
            problems = [f"cannot read what the kernel runs: {exc}"]
        if problems:
            raise verify_mod.Mismatch(key.ifname, problems)

    def set_next_program(self, path: str | None) -> None:
        """Every packet Tidegate passes goes on, by tail call, to the XDP program pinned at `path`
        (None: to the stack directly). Takes effect at once, for the next packet."""
        slots = self.program.table(NEXT_PROGRAM_MAP)
        if path is None:
            try:
                del slots[ctypes.c_int(0)]
            except KeyError:
                pass
            self.next_program = None
            return
        fd = bpf_info.pinned_prog(path)
        try:
            info = bpf_info.prog_info(fd)
            if info.type != bpf_info.BPF_PROG_TYPE_XDP:
                raise ValueError(f"{path} is a BPF program of type {info.type}, not XDP")
            try:
                slots[ctypes.c_int(0)] = ctypes.c_int(fd)
            except Exception as exc:  # BCC raises a bare Exception with the kernel's errno text
                raise ValueError(f"{path} ({info.name!r}) cannot run behind Tidegate: {exc} (an XDP program "
                                 "loaded for another attach type or with frags support is refused)") from exc
        finally:
            os.close(fd)
        self.next_program = path

    def detach(self) -> None:
        """Our programs off the interface, our pins removed. Safe to call twice or after a crash."""
        key = self._require_key("detach")
        ours = set()
        if self.program is not None:  # (None: detached or closed before)
            ours = {bpf_info.prog_info(fn.fd).id
                    for fn in (self.program.xdp_fn, self.program.tc_fn, self.program.tc_egress_fn)}
        _detach(key, self.settings, ours)
        self.close()

    def map_memory(self) -> dict[str, int]:
        """Kernel memory of each of this data plane's maps, in bytes (the kernel's own figure:
        dataplane.kernel.memory)."""
        return memory.map_memory(self.program)

    def close(self) -> None:
        """Drops this process's handles; attached programs and pinned maps stay in the kernel."""
        if self.program is not None:
            self.acl.close()
            self.classifiers.close()
            self.program.close()
            self.program = None  # type: ignore[assignment]
            self._verified.close()
            self._verified = verify_mod.Memo()  # its fds are closed: what was learnt of them goes
            self._map_fds = {}

    # --- packet-level harness (BPF_PROG_TEST_RUN) ----------------------------------------
    def run_xdp(self, packet: bytes, repeat: int = 1) -> XdpResult:
        return run_xdp(self.program.xdp_fn.fd, packet, repeat)

    def run_tc(self, packet: bytes, mark: int = 0, repeat: int = 1) -> SkbResult:
        return run_skb(self.program.tc_fn.fd, packet, mark, repeat)

    def run_tc_egress(self, packet: bytes, repeat: int = 1) -> SkbResult:
        """The TC egress program (allow_established's recorder) on a packet leaving the interface."""
        return run_skb(self.program.tc_egress_fn.fd, packet, 0, repeat)

    def _require_key(self, what: str) -> InterfaceKey:
        if self.key is None:
            raise ValueError(f"{what}: this data plane was loaded without an interface")
        _require_netns(self.key, what)
        return self.key


def _require_netns(key: InterfaceKey, what: str) -> None:
    """Interfaces are looked up by name in the calling thread's namespace: from another one,
    the same name would be another namespace's interface."""
    here = owner.netns_inode()
    if here != key.netns_inode:
        raise attach_mod.AttachError(f"{what} {key}: called from network namespace {here}; enter the "
                                     "interface's namespace first")


def detach_interface(ifname: str, settings: DataplaneSettings | None = None) -> None:
    """Detaches what Tidegate left on `ifname` of the calling thread's namespace (also from a
    process that died): the programs pinned in its directory, if they are the ones attached,
    and its pins. Pins of another interface or namespace are left alone."""
    settings = settings or DataplaneSettings()
    try:
        key = InterfaceKey.of(ifname)
    except attach_mod.AttachError:  # the interface is gone, and its programs with it
        for pin_dir in owner.stale_dirs(settings.pin_root, ifname):
            record = owner.read_owner(pin_dir)
            if record is not None:
                _detach(record.key, settings, set())
        return
    _detach(key, settings, set())


def _pinned_programs(pin_dir: Path) -> set[int]:
    ids = set()
    for name in (program_mod.XDP_PIN, program_mod.TC_PIN, program_mod.TC_EGRESS_PIN):
        try:
            ids.add(bpf_info.pinned_id(pin_dir / name))
        except OSError:
            pass
    return ids


def _detach(key: InterfaceKey, settings: DataplaneSettings, ours: set[int]) -> None:
    """Takes off the interface those of its programs that are `ours` or pinned in its directory
    (another's program stays, with a warning), then removes its pins and markers."""
    pin_dir, run_dir = settings.pin_dir(key), settings.run_dir(key)
    if pin_dir.is_dir() and owner.releasable(pin_dir, key):
        ours = ours | _pinned_programs(pin_dir)
    try:
        attached = verify_mod.attached_ids(key)
        if attached.get("xdp") in ours:
            attach_mod.detach_xdp(key.ifname)
        if attached.get("tc") in ours or attached.get("tc") is None:  # (None: the clsact we added, if any)
            attach_mod.detach_tc(key.ifname, run_dir)
        for hook, prog_id in attached.items():
            if prog_id is not None and prog_id not in ours:
                log.warning("leaving another's program attached", extra={"ifname": key.ifname,
                                                                          "hook": hook, "prog_id": prog_id})
    except (attach_mod.AttachError, OSError):
        pass  # the interface is gone, and its programs with it
    program_mod.unpin(settings, key)
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (run_dir.parent, run_dir.parent.parent, settings.run_root):
        try:
            parent.rmdir()  # only when no other interface of this root is attached
        except OSError:
            pass
    log.info("data plane detached", extra={"ifname": key.ifname})
