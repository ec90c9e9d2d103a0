"""The persisted desired state: one JSON file, replaced atomically.

A write goes to a temporary file in the same directory, is fsynced, renamed over the old file
and the directory is fsynced: after a crash at any point the file holds the old state or the
new one, never a torn mix. A file that does not parse (disk corruption, a hand edit) is
refused with its path and the reason rather than silently replaced by an empty policy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from control.models import DesiredState, describe_errors

log = logging.getLogger(__name__)

STATE_FILE = "desired-state.json"
STATE_MODE = 0o600  # policy is an operator's business: root only


class StateError(RuntimeError):
    pass


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> DesiredState:
        """The last state saved, or an empty one on first start."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return DesiredState()
        try:
            return DesiredState.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise StateError(f"{self.path}: not valid JSON ({exc}); restore it or move it away") from exc
        except ValidationError as exc:
            reasons = "; ".join(f"{f}: {m}" for f, m in describe_errors(exc))
            raise StateError(f"{self.path}: not a valid desired state ({reasons})") from exc

    def save(self, state: DesiredState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = state.model_dump_json(indent=1).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self.directory)
        try:
            os.fchmod(fd, STATE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)
        log.info("desired state saved", extra={"path": str(self.path), "generation": state.generation})
