"""Whether anything in a directory may have changed since the last look, asked without reading it.

    watch = DirWatch(pin_dir)   # armed: changes from now on are noticed
    ...
    if not watch.unchanged():   # a change (or a doubt) since the last call: read the directory
        ...

Three things are watched, each the kernel's own record of a change, never a clock:
  - the directory's entries (inotify: created, deleted, renamed in or out, attributes changed;
    bpffs reports pins like any file);
  - the mount table of this process's mount namespace (/proc/self/mountinfo signals any mount
    or unmount: a bind mount over the directory or one of its files changes what a path opens,
    and no inotify event says so);
  - the directory's own identity (device, inode) as the path reaches it now.
Anything unusual (the watch could not be set, its queue overflowed, the directory was removed
or moved) counts as a change. Used by dataplane.kernel.verify to skip re-reading the pins of an
interface when nothing in its pin directory changed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from pathlib import Path

_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
# IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF
_MASK = 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_GONE = 0x400 | 0x800 | 0x4000 | 0x8000  # DELETE_SELF, MOVE_SELF, Q_OVERFLOW, IGNORED: watch again
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class DirWatch:
    """See the module docstring. Holds two file descriptors until close()."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._fd = -1
        self._mounts = -1
        self._where: tuple[int, int] | None = None
        self._poll = select.poll()
        self._arm()

    def _arm(self) -> None:
        """Starts watching afresh (what happened before is not reported)."""
        self.close()
        try:
            st = os.stat(self.path)
            self._mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            self._poll = select.poll()
            self._poll.register(self._mounts, select.POLLPRI | select.POLLERR)
            self._poll.poll(0)  # the table as it is now is the reference
            libc = _libc()
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            self._fd = fd
            if libc.inotify_add_watch(fd, self.path.encode(), _MASK) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {self.path}")
        except OSError:
            self.close()  # unwatched: every look reports a change
            return
        self._where = (st.st_dev, st.st_ino)

    def unchanged(self) -> bool:
        """True when nothing may have changed since the last call (or since arming); False
        otherwise, and from then on changes are again reported relative to now."""
        if self._fd < 0:
            self._arm()
            return False
        changed = False
        gone = False
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                gone = True
                break
            changed = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                gone |= bool(mask & _GONE)
                offset += _EVENT.size + length
        if self._poll.poll(0):
            changed = True
        try:
            st = os.stat(self.path)
            gone |= (st.st_dev, st.st_ino) != self._where
        except OSError:
            gone = True
        if gone:
            self._arm()
            return False
        return not changed

    def close(self) -> None:
        for attr in ("_fd", "_mounts"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        self._where = None
