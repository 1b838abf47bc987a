"""Nothing from outside reaches a shared document unchecked.

A client's update is read strictly (``yupdate.read_update``), checked against the state of
the document it is meant for, applied, and the document's new state is compared with what
the update said it would be. Any failure is a ``BadUpdate`` for the sender; only a failure
after the document was touched (``DocumentDamaged``: yrs raised or panicked while
integrating, or integrated something other than the update described) means the document
itself can no longer be trusted, and its room must start again from the store.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import anyio
from pycrdt import Doc

from jupyter_ystore.core import threads
from jupyter_ystore.core.item_index import ItemIndex, Placement
from jupyter_ystore.core.keystrokes import read_keystroke
from jupyter_ystore.core.ydoc import is_panic
from jupyter_ystore.core.yupdate import (
    InvalidUpdate,
    MissingDependencies,
    UpdateSummary,
    parse_state_vector,
    read_update,
)

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
            return await threads.run_sync(read_update, update)
        return _read(update)
    except InvalidUpdate as exc:
        raise BadUpdate(f"malformed update: {exc}") from None


def _read(update: bytes) -> UpdateSummary:
    """``read_update``, with the shortcut for a keystroke's two common shapes."""
    summary = read_keystroke(update)
    return read_update(update) if summary is None else summary


def apply_checked(
    doc: Doc, update: bytes, summary: UpdateSummary, index: Optional[ItemIndex] = None
) -> None:
    """Apply ``update`` (read as ``summary``) to ``doc`` if it fits (with ``index``: if each
    item lands where it fits). Raises ``BadUpdate`` before touching ``doc``,
    ``DocumentDamaged`` after; ``index`` learns the new items."""
    _apply(doc, update, summary, index, known_state(doc))


#: One lib0 varint (unsigned LEB128): bytes with the high bit set, then one without.
_VARINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")


class KnownState:
    """A document's state vector, decoded (``clocks``) and as yrs encoded it (``encoded``).

    Checking the state after a keystroke used to decode the whole state vector in Python,
    ~1.5 µs a client id: 0.5 ms a keystroke in a notebook 300 sessions have edited. yrs
    writes its state vector in the order of its own table, which a keystroke does not
    change; so the state a keystroke must leave is the previous encoding with that one
    client's clock replaced (a deletion: the previous encoding), and comparing the bytes is
    exact. Anything else (a new client, an update of several clients, yrs reordering) is
    decoded as before. ``encoded`` is None when the clocks were known without reading the
    state (the observer saw the keystroke integrate as sent); the next read decodes.
    """

    __slots__ = ("clocks", "encoded", "_where")

    def __init__(self, clocks: Dict[int, int], encoded: Optional[bytes]) -> None:
        self.clocks = clocks
        self.encoded = encoded
        self._where: Optional[Dict[bytes, Tuple[int, int]]] = None

    def advanced(self, clocks: Dict[int, int], client: int, encoded: bytes) -> Optional[KnownState]:
        """The state ``clocks`` (these with ``client``'s clock moved) if ``encoded`` is
        exactly what yrs writes for it; None when that cannot be told this way."""
        where = self._where
        if where is None:
            where = self._where = self._locate()
        place = where.get(_varint(client))
        if place is None:
            return None
        start, size = place
        clock = _varint(clocks[client])
        if encoded != self.encoded[:start] + clock + self.encoded[start + size :]:
            return None
        state = KnownState(clocks, encoded)
        if len(clock) == size:
            state._where = where  # nothing moved
        return state

    def _locate(self) -> Dict[bytes, Tuple[int, int]]:
        """Where each client's clock is in ``encoded``: {client's varint: (offset, size)}."""
        tokens = _VARINT.findall(self.encoded)
        sizes = list(map(len, tokens))
        starts = list(itertools.accumulate(sizes, initial=0))
        return dict(zip(tokens[1::2], zip(starts[2::2], sizes[2::2])))


def _varint(value: int) -> bytes:
    """``value`` as lib0 and yrs write it (the shortest form)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def known_state(doc: Doc) -> KnownState:
    encoded = doc.get_state()
    return KnownState(parse_state_vector(encoded), encoded)


def _apply(
    doc: Doc,
    update: bytes,
    summary: UpdateSummary,
    index: Optional[ItemIndex],
    known: KnownState,
    integrated: Optional[Callable[[], Optional[bytes]]] = None,
) -> KnownState:
    """``apply_checked`` for a document whose state vector is ``known``; returns the new one.
    ``integrated``: what the document's observer saw the update integrate as (see
    ``_state_after``)."""
    state = known.clocks
    try:
        expected = summary.check_against(state)
        placed = index.check(summary, state) if index is not None else Placement()
    except MissingDependencies as exc:
        raise BadUpdate(str(exc), stale=True) from None
    except InvalidUpdate as exc:
        raise BadUpdate(str(exc)) from None
    try:
        doc.apply_update(update)
    except BaseException as exc:  # yrs's own refusals, and its panics (a BaseException)
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        if _nonzero(parse_state_vector(doc.get_state())) == _nonzero(state):
            raise BadUpdate(f"the CRDT library refused it: {exc}") from None
        raise DocumentDamaged(f"the CRDT library failed on it: {exc}") from None
    if integrated is not None and integrated() == update:
        after = KnownState(expected, None)
    else:
        after = _state_after(doc, known, expected, summary)
    if index is not None:
        index.add(placed)
    return after


def _state_after(
    doc: Doc, known: KnownState, expected: Dict[int, int], summary: UpdateSummary
) -> KnownState:
    """The document's state once ``summary``'s update is applied: ``DocumentDamaged`` unless
    it is ``expected``. Compared as bytes when one clock at most moved, else decoded.

    A guarded document skips this when its observer saw the change integrate as exactly the
    update's bytes (``_apply``'s ``integrated``): yrs encodes what a transaction integrated,
    so the same structs and deletions, no more and no fewer, and the state moved by exactly
    what ``check_against`` expected. That is every keystroke seen; reading the state back
    cost a fifth of the guard's time."""
    encoded = doc.get_state()
    if known.encoded is None:  # (its clocks came from such a check)
        pass
    elif not summary.structs:  # deletions only: no clock moved
        if encoded == known.encoded:
            return known
    elif len(summary.structs) == 1:  # a keystroke: one client's clock moved
        (client,) = summary.structs
        advanced = known.advanced(expected, client, encoded)
        if advanced is not None:
            return advanced
    after = parse_state_vector(encoded)
    if _nonzero(after) != _nonzero(expected):
        raise DocumentDamaged(
            f"the document's state became {_nonzero(after)} where the update described "
            f"{_nonzero(expected)}"
        )
    return KnownState(after, encoded)


def _nonzero(state: dict[int, int]) -> dict[int, int]:
    return {client: clock for client, clock in state.items() if clock}


def describe(update: bytes, limit: int = 48) -> str:
    """A short form of an update for the log: its size and first bytes in hex."""
    head = update[:limit].hex()
    return f"{len(update)} bytes: {head}{'…' if len(update) > limit else ''}"



class DocumentGuard:
    """The checks of one shared document: clients' updates go through ``apply``; every other
    change of the document is noted (``note_change``) so the item index stays current."""

    def __init__(self, doc: Doc, roots: Mapping[str, str]) -> None:
        self.doc = doc
        self.roots = roots
        self._index: Optional[ItemIndex] = None
        self._noted: Optional[List[bytes]] = None  # changes to index (None: no index yet)
        self._applying = False
        self._building = anyio.Lock()
        self._state: Optional[KnownState] = None  # the state vector, while known
        self._integrated: Optional[bytes] = None  # what the update being applied became

    def note_change(self, update: bytes) -> None:
        """A change of the document (called from its observer)."""
        if self._applying:  # what a client's update integrated as (twice: never seen, no match)
            self._integrated = update if self._integrated is None else b""
        else:
            self._state = None  # read again at the next client update
            if self._noted is not None:
                self._noted.append(update)

    async def apply(self, update: bytes) -> None:
        """Check ``update`` against the document and apply it (``BadUpdate`` if refused)."""
        if self.apply_now(update):
            return
        summary = await read_checked(update)
        if summary.is_empty:
            return
        index = self._index
        if index is None or self._noted:
            index = await self._current_index()
        self._apply_read(update, summary, index)

    @property
    def prepared(self) -> bool:
        """Whether the item index is built (or being built)."""
        return self._index is not None or self._building.locked()

    async def prepare(self) -> None:
        """Build the item index ahead of the first update (which would otherwise wait for
        it: a few ms for a notebook, in a thread past ``READ_IN_THREAD``)."""
        try:
            await self._current_index()
        except Exception:  # never seen; the first update tries again, and reports it
            pass

    def apply_now(self, update: bytes) -> bool:
        """``apply`` without waiting, when nothing needs a thread or the index being built
        (a small update: nearly every keystroke); whether it was done. ``False`` has not
        touched the update: ``apply`` it. Spares the caller a coroutine and a task."""
        index = self._index
        if len(update) >= READ_IN_THREAD or index is None or self._building.locked():
            return False
        if self._noted and not self._absorb_noted(index):
            return False
        try:
            summary = _read(update)
        except InvalidUpdate as exc:
            raise BadUpdate(f"malformed update: {exc}") from None
        if not summary.is_empty:
            self._apply_read(update, summary, index)
        return True

    def _apply_read(self, update: bytes, summary: UpdateSummary, index: ItemIndex) -> None:
        state = self._state
        if state is None:
            state = known_state(self.doc)
        self._state = None
        self._applying = True
        self._integrated = None
        try:
            self._state = _apply(self.doc, update, summary, index, state, self._integrated_as)
        finally:
            self._applying = False

    def _integrated_as(self) -> Optional[bytes]:
        return self._integrated

    def _absorb_noted(self, index: ItemIndex) -> bool:
        """Bring ``index`` up to date with the changes noted since; ``False`` (and no index)
        if they cannot be read back (never seen: they are our own document's changes)."""
        noted, self._noted = self._noted or [], []
        try:
            for change in noted:
                index.absorb(change)
        except InvalidUpdate:
            self._index = None
            return False
        return True

    async def _current_index(self) -> ItemIndex:
        async with self._building:
            for _attempt in range(2):
                if self._index is None:
                    self._noted = []  # from the snapshot on, every change is noted
                    whole = self.doc.get_update()
                    if len(whole) >= READ_IN_THREAD:
                        self._index = await threads.run_sync(ItemIndex.of_update, whole, self.roots)
                    else:
                        self._index = ItemIndex.of_update(whole, self.roots)
                if self._absorb_noted(self._index):
                    return self._index
            raise BadUpdate("the document's own changes cannot be read back; try again")
