"""The persisted desired state: a snapshot file plus a journal of the edits made since.

The snapshot (`desired-state.json`) holds a whole state. It is replaced atomically: written to
a temporary file in the same directory, fsynced, renamed over the old file, and the directory
fsynced; after a crash at any point the file holds the old state or the new one, never a torn
mix. Rewriting it costs time in proportion to the policy, so a list edit (one ACL rule, tunnel
or chain added or deleted: control.policy.edits.Edit) is appended to the journal
(`desired-state.journal`) instead, one line per edit, fsynced before the change is reported:

    <crc32 of the JSON, 8 hex digits> <JSON: {"generation": N, "op": ..., "arg": ...}>\\n

Loading reads the snapshot, then replays the journal's records whose generation follows it.
A crash while appending can leave only the last record incomplete (or with a wrong checksum):
it is ignored and cut off, i.e. that edit was not made, as its caller was never told it was.
A bad record with good ones after it is not a crash's doing, and the state is refused.

Whole-state changes (ApplyPolicy, attach, detach) write a snapshot, and so does an edit once the
journal would pass COMPACT_MIN_BYTES: the journal is then deleted. The bound keeps a restart's
replay short (each record is a rule validated again); the snapshot itself is cheap to write, its
ACL stored as columns (control.apply.acl_snapshot: 100,000 rules in tens of milliseconds).
A crash between the two leaves records no newer than the snapshot, which loading skips. Both
files are 0600. A file that does not parse (disk corruption, a hand edit) is refused with its
path and the reason rather than silently replaced by an empty policy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from control.apply import acl_snapshot
from control.errors import AlreadyExists, NotFound
from control.policy.edits import Edit, replay
from control.policy.models import DesiredState, describe_errors

log = logging.getLogger(__name__)

STATE_FILE = "desired-state.json"
JOURNAL_FILE = "desired-state.journal"
STATE_MODE = 0o600  # policy is an operator's business: root only
COMPACT_MIN_BYTES = 1 << 20  # the journal's size at most: ~7,000 added rules, replayed in ~0.2 s


class StateError(RuntimeError):
    pass


def encode_record(generation: int, edit: Edit) -> bytes:
    body = json.dumps({"generation": generation, **edit.record()}, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode_record(line: bytes) -> dict[str, Any] | None:
    """The record of a whole line (with its newline), or None when it is torn or damaged."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its newline, or the unterminated tail) of the journal's bytes."""
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end + 1
        yield offset, data[offset:end]
        offset = end


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # a rename, a new file or an unlink must survive a power cut too
    finally:
        os.close(dir_fd)


def _encode(state: DesiredState) -> bytes:
    """The state as JSON, its ACL as columns (control.apply.acl_snapshot, written as JSON text
    by it and put in as the policy's last member)."""
    data = state.model_dump(mode="json", exclude={"policy": {"acl"}})
    policy = json.dumps(data.pop("policy"), separators=(",", ":")).encode()
    acl = (b"," if policy != b"{}" else b"") + b'"acl":' + acl_snapshot.dump_json(state.policy.acl)
    rest = json.dumps(data, separators=(",", ":")).encode()
    return b"".join([rest[:-1], b"," if rest != b"{}" else b"", b'"policy":', policy[:-1], acl, b"}}"])


class StateStore:
    def __init__(self, directory: Path, compact_min_bytes: int = COMPACT_MIN_BYTES) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.journal_path = self.directory / JOURNAL_FILE
        self.compact_min_bytes = compact_min_bytes
        self._snapshot_bytes = 0
        self._journal_bytes: int | None = None  # None: unknown, the next save writes a snapshot
        self._saved: DesiredState | None = None  # the state the files hold, as loaded or saved

    # --- loading ---------------------------------------------------------------------------------
    def load(self) -> DesiredState:
        """The last state saved (snapshot, then journal), or an empty one on first start."""
        state = self._load_snapshot()
        data = self._read_journal()
        edits, good = self._journal_edits(data, state.generation)
        if good < len(data):
            log.warning("journal ends in an incomplete record (a crash while writing it): ignoring it",
                        extra={"path": str(self.journal_path), "bytes": len(data) - good})
            self._truncate(good)
        self._journal_bytes = good
        if edits:
            state = self._replay(state, edits)
        self._saved = state
        return state

    def _replay(self, state: DesiredState, edits: list[tuple[int, Edit]]) -> DesiredState:
        try:
            state = replay(state, [e for _, e in edits])
        except (AlreadyExists, NotFound, ValueError) as exc:
            raise StateError(f"{self.journal_path}: its edits do not apply to {self.path} ({exc}); "
                             "restore the files or move them away") from exc
        log.info("journal replayed", extra={"path": str(self.journal_path), "records": len(edits)})
        return state.model_copy(update={"generation": edits[-1][0]})

    def _load_snapshot(self) -> DesiredState:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return DesiredState()
        self._snapshot_bytes = len(text)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{self.path}: not valid JSON ({exc}); restore it or move it away") from exc
        policy = data.get("policy") if isinstance(data, dict) else None
        if isinstance(policy, dict) and acl_snapshot.is_columns(policy.get("acl")):
            try:
                policy["acl"] = acl_snapshot.load(policy["acl"])
            except ValueError as exc:
                raise StateError(f"{self.path}: not a valid desired state ({exc}); restore it or "
                                 "move it away") from exc
        try:
            return DesiredState.model_validate(data)
        except ValidationError as exc:
            reasons = "; ".join(f"{f}: {m}" for f, m in describe_errors(exc))
            raise StateError(f"{self.path}: not a valid desired state ({reasons})") from exc

    def _read_journal(self) -> bytes:
        try:
            return self.journal_path.read_bytes()
        except FileNotFoundError:
            return b""

    def _journal_edits(self, data: bytes, generation: int) -> tuple[list[tuple[int, Edit]], int]:
        """The edits newer than `generation`, and how many leading bytes are whole records."""
        edits: list[tuple[int, Edit]] = []
        for offset, line in _lines(data):
            record = _decode_record(line)
            if record is None:
                if offset + len(line) < len(data):
                    raise StateError(f"{self.journal_path}: record at byte {offset} is damaged and "
                                     "records follow it; restore the file or move it away")
                return edits, offset  # the last record, torn by a crash: never acknowledged
            number = record.get("generation")
            if not isinstance(number, int) or number <= generation:
                continue  # made before the snapshot was (a crash between the two)
            try:
                edit = Edit.from_record(record)
            except ValueError as exc:
                raise StateError(f"{self.journal_path}: record at byte {offset} is not an edit "
                                 f"({exc})") from exc
            if number != generation + 1:
                raise StateError(f"{self.journal_path}: record at byte {offset} has generation "
                                 f"{number} after {generation}; restore the file or move it away")
            edits.append((number, edit))
            generation = number
        return edits, len(data)

    # --- saving ----------------------------------------------------------------------------------
    def save(self, state: DesiredState, edit: Edit | None = None, base: DesiredState | None = None) -> None:
        """Persists `state`. When it is `edit` applied to `base` and `base` is the very state the
        files hold (loaded or saved last), the edit is journaled; otherwise a snapshot is written."""
        self.begin(state, edit, base).commit()

    def begin(self, state: DesiredState, edit: Edit | None = None,
              base: DesiredState | None = None) -> Saving:
        """save() in two steps, for a caller with other work meanwhile (the controller programs
        the kernel): a snapshot is encoded now and written to a temporary file and fsynced by a
        thread of its own; commit() waits for that and makes it the state file (rename,
        directory fsync), discard() drops it. A journal record is appended by commit() alone.
        Nothing the files hold changes before commit()."""
        if edit is not None and base is not None and base is self._saved and self._journal_bytes is not None:
            record = encode_record(state.generation, edit)
            if self._journal_bytes + len(record) <= self.compact_min_bytes:
                return _Appending(self, state, record)
        return _Writing(self, state)

    def _append(self, record: bytes) -> None:
        assert self._journal_bytes is not None
        size = self._journal_bytes
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = size == 0 and not self.journal_path.exists()
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, STATE_MODE)
        try:
            os.fchmod(fd, STATE_MODE)
            try:
                os.write(fd, record)  # a regular file takes the whole write, or raises
                os.fdatasync(fd)
            except BaseException:
                self._journal_bytes = None  # whatever happens below, the next save is a snapshot
                os.ftruncate(fd, size)  # the record was not made: it must not be replayed
                raise
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)
        self._journal_bytes = size + len(record)

    def _truncate(self, size: int) -> None:
        fd = os.open(self.journal_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temporary(self, data: bytes) -> Path:
        """`data` in a new temporary file of the directory, fsynced."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self.directory)
        try:
            os.fchmod(fd, STATE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _install(self, tmp: Path, size: int, state: DesiredState) -> None:
        """The written snapshot becomes the state file; the journal it holds goes."""
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        self._snapshot_bytes = size
        self._journal_bytes = None
        # The snapshot holds every journaled edit now; a crash before this unlink leaves records
        # that loading skips (not newer than the snapshot).
        self.journal_path.unlink(missing_ok=True)
        self._journal_bytes = 0
        log.info("desired state saved", extra={"path": str(self.path), "generation": state.generation})


class Saving:
    """A save under way (StateStore.begin): commit() or discard(), once."""

    def commit(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class _Appending(Saving):
    def __init__(self, store: StateStore, state: DesiredState, record: bytes) -> None:
        self.store, self.state, self.record = store, state, record

    def commit(self) -> None:
        self.store._append(self.record)
        self.store._saved = self.state

    def discard(self) -> None:
        pass


class _Writing(Saving):
    """A snapshot, encoded at once and written to a temporary file by a thread of its own (the
    write and fsync wait on the disk, not the interpreter)."""

    def __init__(self, store: StateStore, state: DesiredState) -> None:
        self.store, self.state = store, state
        self._data = _encode(state)
        self._tmp: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="state-snapshot", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        try:
            self._tmp = self.store._write_temporary(self._data)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by commit()
            self._error = exc

    def commit(self) -> None:
        self._thread.join()
        self.store._saved = None
        if self._error is not None:
            raise self._error
        assert self._tmp is not None
        self.store._install(self._tmp, len(self._data), self.state)
        self.store._saved = self.state

    def discard(self) -> None:
        self._thread.join()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
