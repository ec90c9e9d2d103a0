"""The control plane's error kinds; control.rpc.service maps each to one gRPC status code."""

from __future__ import annotations

# Errors shown in an InvalidArgument message: gRPC carries it in a trailer (8 KiB by default).
MESSAGE_ERRORS_MAX = 10


class InvalidArgument(ValueError):
    """A request that the models reject: `errors` holds every (field path, reason)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        shown = [f"{path}: {reason}" for path, reason in self.errors[:MESSAGE_ERRORS_MAX]]
        more = len(self.errors) - len(shown)
        super().__init__("; ".join(shown) + (f"; and {more} more errors" if more > 0 else ""))

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.errors]


class NotFound(LookupError):
    """The rule, tunnel, chain or interface named does not exist."""


class AlreadyExists(ValueError):
    """An incremental add used an id or name that is taken."""


class InUse(RuntimeError):
    """The object is still referenced (e.g. an interface a chain names)."""


class GenerationMismatch(RuntimeError):
    """The caller's expected_generation is stale (optimistic concurrency)."""


class Exhausted(RuntimeError):
    """A limit of concurrent streams or tracers is reached: retry when one ends."""


class PolicyOwned(RuntimeError):
    """The policy has another source (fleet mode: etcd): local policy changes are refused."""


class Unavailable(RuntimeError):
    """A facility this daemon or kernel cannot provide (e.g. a tracer that does not load)."""
