"""Whose a pin directory is: one interface of one network namespace, recorded inside it.

bpffs is one file system for the whole host, shared by every network namespace, and interface
names repeat across namespaces (a `ul0` in each). Pins are therefore keyed by what cannot collide
while both exist, the namespace's inode and the interface's index, with the name kept for people:

    <pin_root>/netns-<inode>/if<ifindex>-<ifname>/      the maps, the programs, and
        owner -> {"netns_inode": 4026532306, "netns_cookie": 8192, "ifindex": 3, "ifname": "ul0",
                  "state_dir": "/var/lib/tidegate", "pid": 1234}

bpffs holds BPF objects, directories and symbolic links but no regular files, so the owner record
is the target of a symlink (`readlink DIR/owner` or `ls -l DIR` shows it). A load adopts a
directory only when its record names this very interface of this very namespace. The inode of a
deleted namespace can be given to a new one, so the namespace cookie (SO_NETNS_COOKIE, never
reused while the host runs) is compared too. Refused, whoever left them, and never touched:
pins whose record names another interface or namespace, pins without a record, and pins a live
process with another state directory owns. An interface that was renamed keeps its pins (same
namespace and ifindex): its directory is renamed with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dataplane.kernel.attach import ifindex as ifindex_of

log = logging.getLogger(__name__)

OWNER = "owner"
OWNER_TMP = "owner-new-"  # + pid: the next record, renamed over OWNER (bpffs refuses "." in names)
NETNS_PATH = "/proc/thread-self/ns/net"  # the calling thread's namespace (setns is per thread)
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux >= 5.14)


class PinError(RuntimeError):
    pass


class ForeignPins(PinError):
    """A pin directory that belongs to another interface, namespace or daemon."""


def netns_inode() -> int:
    return os.stat(NETNS_PATH).st_ino


def netns_cookie() -> int | None:
    """The calling thread's namespace cookie, or None on a kernel without SO_NETNS_COOKIE."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # born in the thread's namespace
            return int(struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])
    except OSError:
        return None


@dataclass(frozen=True)
class InterfaceKey:
    """One interface of one network namespace: what a pin directory belongs to."""

    netns_inode: int
    netns_cookie: int | None
    ifindex: int
    ifname: str

    @classmethod
    def of(cls, ifname: str) -> InterfaceKey:
        """`ifname` in the calling thread's namespace (AttachError when it is not there)."""
        return cls(netns_inode(), netns_cookie(), ifindex_of(ifname), ifname)

    @property
    def netns_dir(self) -> str:
        return f"netns-{self.netns_inode}"

    @property
    def relative(self) -> Path:
        """The pin (and run) directory under its root."""
        return Path(self.netns_dir) / f"if{self.ifindex}-{self.ifname}"

    def __str__(self) -> str:
        return f"{self.ifname} (ifindex {self.ifindex}) of network namespace {self.netns_inode}"


@dataclass(frozen=True)
class OwnerRecord:
    netns_inode: int
    netns_cookie: int | None
    ifindex: int
    ifname: str
    state_dir: str | None  # the daemon's state directory (None: not a daemon, e.g. a test)
    pid: int

    @classmethod
    def for_key(cls, key: InterfaceKey, state_dir: Path | None) -> OwnerRecord:
        return cls(key.netns_inode, key.netns_cookie, key.ifindex, key.ifname,
                   None if state_dir is None else str(state_dir), os.getpid())

    @property
    def key(self) -> InterfaceKey:
        return InterfaceKey(self.netns_inode, self.netns_cookie, self.ifindex, self.ifname)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> OwnerRecord:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        inode, cookie, index = data.get("netns_inode"), data.get("netns_cookie"), data.get("ifindex")
        name, state_dir, pid = data.get("ifname"), data.get("state_dir"), data.get("pid")
        if not (isinstance(inode, int) and isinstance(index, int) and isinstance(pid, int)
                and isinstance(name, str)):
            raise ValueError("netns_inode, ifindex and pid must be integers, ifname a string")
        if not isinstance(cookie, int | None) or not isinstance(state_dir, str | None):
            raise ValueError("netns_cookie must be an integer or null, state_dir a string or null")
        return cls(inode, cookie, index, name, state_dir, pid)


def read_owner(pin_dir: Path) -> OwnerRecord | None:
    """The directory's owner record; None when it has none. PinError when it does not parse."""
    try:
        text = os.readlink(pin_dir / OWNER)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PinError(f"{pin_dir / OWNER}: not an owner record ({exc.strerror})") from None
    try:
        return OwnerRecord.loads(text)
    except (ValueError, TypeError) as exc:
        raise PinError(f"{pin_dir / OWNER}: not an owner record ({exc})") from None


def write_owner(pin_dir: Path, record: OwnerRecord) -> None:
    """Replaces the record atomically (a new symlink renamed over the old one)."""
    tmp = pin_dir / f"{OWNER_TMP}{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(record.dumps(), tmp)
    os.replace(tmp, pin_dir / OWNER)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def conflict(record: OwnerRecord | None, key: InterfaceKey, state_dir: Path | None, pinned: bool,
             alive: Callable[[int], bool] = pid_alive) -> str | None:
    """Why a directory with this record (and objects `pinned` in it, or not) is not `key`'s to
    use, or None when it is."""
    if record is None:
        return ("objects are pinned there but it has no owner record (an older Tidegate, or a hand-made "
                "directory): whose they are is unknown") if pinned else None
    theirs = record.key
    if (theirs.netns_inode, theirs.ifindex) != (key.netns_inode, key.ifindex):
        return f"it belongs to {theirs}, not to {key}"
    if None not in (theirs.netns_cookie, key.netns_cookie) and theirs.netns_cookie != key.netns_cookie:
        return (f"it belongs to {theirs} with namespace cookie {theirs.netns_cookie}, a namespace that "
                f"no longer exists, not to {key} (cookie {key.netns_cookie}), which was given its inode")
    ours = None if state_dir is None else str(state_dir)
    if record.state_dir != ours and record.pid != os.getpid() and alive(record.pid):
        return (f"the process {record.pid} (state directory {record.state_dir}) uses it for {theirs}: "
                "one daemon per interface; stop that one, or detach the interface there")
    return None


def _objects(pin_dir: Path) -> bool:
    return any(p.name != OWNER and not p.name.startswith(OWNER_TMP) for p in pin_dir.iterdir())


def _refuse(pin_dir: Path, reason: str) -> ForeignPins:
    return ForeignPins(f"{pin_dir}: {reason}. Not adopting it, and leaving it as it is; if nothing uses "
                       f"it any more, remove it (rm -r {pin_dir}) and attach again")


def _renamed(pin_root: Path, key: InterfaceKey) -> Path | None:
    """The directory of this interface under an earlier name (same namespace and ifindex)."""
    found = sorted((pin_root / key.netns_dir).glob(f"if{key.ifindex}-*"))
    return found[0] if found else None


def claim(pin_root: Path, key: InterfaceKey, state_dir: Path | None) -> Path:
    """The pin directory of `key`, created or checked (ForeignPins) and recorded as ours."""
    pin_dir = pin_root / key.relative
    existing = pin_dir if pin_dir.is_dir() else _renamed(pin_root, key)
    if existing is not None:
        reason = conflict(read_owner(existing), key, state_dir, _objects(existing))
        if reason is not None:
            raise _refuse(existing, reason)
        if existing != pin_dir:
            log.info("interface renamed: its pins follow it",
                     extra={"from": str(existing), "to": str(pin_dir)})
            os.rename(existing, pin_dir)
    pin_dir.mkdir(parents=True, exist_ok=True)
    write_owner(pin_dir, OwnerRecord.for_key(key, state_dir))  # before any map is pinned in it
    return pin_dir


def releasable(pin_dir: Path, key: InterfaceKey) -> bool:
    """Whether the directory is `key`'s to remove (its record names it); a warning when not."""
    reason = conflict(read_owner(pin_dir), key, None, _objects(pin_dir), alive=lambda _pid: False)
    if reason is not None:
        log.warning("not removing pins that are not this interface's",
                    extra={"pin_dir": str(pin_dir), "reason": reason})
    return reason is None


def owned_dirs(pin_root: Path) -> list[tuple[Path, OwnerRecord | None]]:
    """Every interface directory under the root, with its owner record (None: none or unreadable)."""
    out: list[tuple[Path, OwnerRecord | None]] = []
    for pin_dir in sorted(pin_root.glob("netns-*/if*")):
        try:
            out.append((pin_dir, read_owner(pin_dir)))
        except PinError:
            out.append((pin_dir, None))
    return out


def stale_dirs(pin_root: Path, ifname: str) -> list[Path]:
    """Directories of this namespace recorded for an interface named `ifname` (for a detach after
    the interface is gone, when its ifindex can no longer be looked up)."""
    inode, cookie = netns_inode(), netns_cookie()
    out = []
    for pin_dir, record in owned_dirs(pin_root):
        if record is not None and record.ifname == ifname and record.netns_inode == inode and (
                None in (record.netns_cookie, cookie) or record.netns_cookie == cookie):
            out.append(pin_dir)
    return out


def remove_empty_parents(pin_dir: Path, root: Path) -> None:
    """The namespace directory and the root, when nothing else is pinned there."""
    for parent in (pin_dir.parent, root):
        try:
            parent.rmdir()
        except OSError:
            pass
