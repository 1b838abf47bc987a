"""Nothing from outside reaches a shared document unchecked.

A client's update is read strictly (``yupdate.read_update``), checked against the state of
the document it is meant for, applied, and the document's new state is compared with what
the update said it would be. Any failure is a ``BadUpdate`` for the sender; only a failure
after the document was touched (``DocumentDamaged``: yrs raised or panicked while
integrating, or integrated something other than the update described) means the document
itself can no longer be trusted, and its room must start again from the store.
"""

from __future__ import annotations

import anyio
from pycrdt import Doc

from .ydoc import CRDTError, crdt_errors
from .yupdate import InvalidUpdate, MissingDependencies, UpdateSummary, parse_state_vector, read_update

#: Updates at least this big are read in a worker thread (a whole notebook sent by a client
#: reconnecting with offline edits: ~5 µs a struct, 60 ms for 13,000 of them).
READ_IN_THREAD = 64 * 1024


class BadUpdate(Exception):
    """A client's update was refused; nothing of it was applied, stored or relayed.

    ``stale``: the update is well formed but builds on changes this document does not hold
    (the tab knew a history the server no longer has): the tab must reload.
    """

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class DocumentDamaged(BadUpdate):
    """Applying the update went wrong inside the CRDT library: the document may be damaged."""


async def read_checked(update: bytes) -> UpdateSummary:
    """``update`` read strictly (in a thread when big); ``BadUpdate`` says why not."""
    try:
        if len(update) >= READ_IN_THREAD:
            return await anyio.to_thread.run_sync(read_update, update)
        return read_update(update)
    except InvalidUpdate as exc:
        raise BadUpdate(f"malformed update: {exc}") from None


def apply_checked(doc: Doc, update: bytes, summary: UpdateSummary) -> None:
    """Apply ``update`` (read as ``summary``) to ``doc`` if it fits. Raises ``BadUpdate``
    before touching ``doc``, ``DocumentDamaged`` after."""
    try:
        expected = summary.check_against(parse_state_vector(doc.get_state()))
    except MissingDependencies as exc:
        raise BadUpdate(str(exc), stale=True) from None
    except InvalidUpdate as exc:
        raise BadUpdate(str(exc)) from None
    try:
        with crdt_errors():
            doc.apply_update(update)
    except CRDTError as exc:
        raise DocumentDamaged(f"the CRDT library failed on it: {exc}") from None
    after = parse_state_vector(doc.get_state())
    if _nonzero(after) != _nonzero(expected):
        raise DocumentDamaged(
            f"the document's state became {_nonzero(after)} where the update described "
            f"{_nonzero(expected)}"
        )


def _nonzero(state: dict[int, int]) -> dict[int, int]:
    return {client: clock for client, clock in state.items() if clock}


def describe(update: bytes, limit: int = 48) -> str:
    """A short form of an update for the log: its size and first bytes in hex."""
    head = update[:limit].hex()
    return f"{len(update)} bytes: {head}{'…' if len(update) > limit else ''}"

