"""The only module that knows the two document libraries apart.

Stores accept a ``pycrdt.Doc`` (what jupyter-ydoc uses today) or a ``y_py.YDoc`` (the older
stack). Both speak Yjs update format v1, so stores deal in bytes and call these helpers at the
edges. ``y_py`` is optional and imported lazily.

Bytes from outside (browsers, damaged stores) can make yrs panic. pyo3 raises a panic as
``pyo3_runtime.PanicException``, a ``BaseException`` that slips through ``except Exception``
and would end whatever task met it; every helper here turns it into ``CRDTError`` (a
``ValueError``), and ``crdt_errors()`` does the same for code that calls pycrdt directly.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import wraps
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pycrdt

_F = TypeVar("_F", bound=Callable[..., Any])


class CRDTError(ValueError):
    """The CRDT library failed on some bytes (an error or a panic inside yrs)."""


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a panic of the Rust code under pycrdt or y_py."""
    return type(exc).__name__ == "PanicException"


@contextmanager
def crdt_errors() -> Iterator[None]:
    """Turn a yrs panic raised inside the block into ``CRDTError`` (other errors pass)."""
    try:
        yield
    except Exception:
        raise
    except BaseException as exc:
        if is_panic(exc):
            raise CRDTError(f"the CRDT library panicked: {exc}") from None
        raise


def _panic_safe(func: _F) -> _F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with crdt_errors():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def one_transaction(ydoc: Any) -> Iterator[None]:
    """Updates applied inside share one transaction of a pycrdt document (its commit cleans
    up the whole document: once for a load, not once per applied group); y_py: no-op."""
    if isinstance(ydoc, pycrdt.Doc):
        with ydoc.transaction():
            yield
    else:
        yield


def _is_ypy(ydoc: Any) -> bool:
    y_py = sys.modules.get("y_py")  # never import it just to say no
    return y_py is not None and isinstance(ydoc, y_py.YDoc)


def _check(ydoc: Any) -> None:
    if isinstance(ydoc, pycrdt.Doc) or _is_ypy(ydoc):
        return
    raise TypeError(
        f"expected a pycrdt.Doc or a y_py.YDoc, got {type(ydoc).__module__}.{type(ydoc).__name__}"
    )


@_panic_safe
def encode_state_as_update(ydoc: Any) -> bytes:
    """The whole state of ``ydoc`` as one Yjs v1 update."""
    _check(ydoc)
    if isinstance(ydoc, pycrdt.Doc):
        return ydoc.get_update()
    import y_py

    return bytes(y_py.encode_state_as_update(ydoc))


@_panic_safe
def encode_state_vector(ydoc: Any) -> bytes:
    """The state vector of ``ydoc`` (what it has seen), Yjs v1 encoding."""
    _check(ydoc)
    if isinstance(ydoc, pycrdt.Doc):
        return ydoc.get_state()
    import y_py

    return bytes(y_py.encode_state_vector(ydoc))


@_panic_safe
def apply_update(ydoc: Any, update: bytes) -> None:
    """Apply one Yjs v1 update to ``ydoc``."""
    _check(ydoc)
    if isinstance(ydoc, pycrdt.Doc):
        ydoc.apply_update(update)
        return
    import y_py

    y_py.apply_update(ydoc, update)


_MERGE_GROUP = 64


#: Updates merged into one before they are applied. yrs applies a merge of n updates at a
#: cost in time and memory that grows with n squared (12,000 appended lines merged into one:
#: 2.7 s and 750 MB to apply; in groups of 256: 0.1 s and 2 MB).
_APPLY_GROUP = 256


def merged_groups(updates: Sequence[bytes]) -> list[bytes]:
    """``updates`` merged in consecutive groups, each cheap to apply (in this order). Every
    update is decoded here, a group of one too: an update that is not Yjs raises before
    anything is applied."""
    groups = []
    for i in range(0, len(updates), _APPLY_GROUP):
        group = updates[i : i + _APPLY_GROUP]
        if len(group) == 1:
            with crdt_errors():
                pycrdt.get_state(group[0])  # merging one update decodes nothing
        groups.append(merge_updates(group))
    return groups


@_panic_safe
def merge_updates(updates: Sequence[bytes]) -> bytes:
    """Merge updates into one without a document (keeps deleted content; cheap)."""
    if len(updates) == 1:
        return updates[0]
    # yrs merges n updates at a cost that grows much faster than n (50,000 updates: ~17 s);
    # merging small groups, then the groups, gives the same document in ~0.1 s.
    level = list(updates)
    while len(level) > _MERGE_GROUP:
        level = [
            pycrdt.merge_updates(*level[i : i + _MERGE_GROUP])
            for i in range(0, len(level), _MERGE_GROUP)
        ]
    return pycrdt.merge_updates(*level)


def squash(updates: Sequence[bytes]) -> bytes:
    """One update that restores the same document as ``updates`` (see ``squash_clean``)."""
    return squash_clean(updates)[0]


@_panic_safe
def squash_clean(updates: Sequence[bytes]) -> tuple[bytes, bool]:
    """One update that restores the same document as ``updates``, as small as it gets, and
    whether it is *clean*: nothing in it waits for missing updates, so that it loads whole
    and a load need not check it (backends record that beside the snapshot).

    This is what compaction stores. Merging first lets a fresh document integrate everything
    in one apply (much faster than one apply per update); encoding that document's state
    garbage-collects deleted content. But a document keeps an update whose predecessor it
    never saw (a write that was cancelled or failed) *pending*, and its encoded state leaves
    that out: squashing alone would lose it for good. So whatever the merged history holds
    beyond the encoded state is merged back in, still waiting for its predecessor as it did
    in the log. Runs in any thread: the document is created and dropped here.
    """
    doc = pycrdt.Doc()
    groups = merged_groups(updates)
    for group in groups:
        doc.apply_update(group)
    snapshot = doc.get_update()
    state = pycrdt.get_state(snapshot)
    # Per group, not on one merge of them all: each update is decoded once more, not twice.
    rests = (pycrdt.get_update(group, state) for group in groups)
    lacking = [rest for rest in rests if rest[:1] != b"\x00"]
    if lacking:  # structs of at least one client are missing from the state
        return pycrdt.merge_updates(snapshot, *lacking), False
    return snapshot, True


def is_valid_update(update: bytes) -> bool:
    """Whether ``update`` decodes as a Yjs v1 update (on its own: see ``yupdate`` for the
    strict check against a document)."""
    try:
        with crdt_errors():
            pycrdt.get_state(update)
    except Exception:
        return False
    return True


@_panic_safe
def get_update(doc: pycrdt.Doc, state_vector: bytes | None = None) -> bytes:
    """What a peer whose state vector is ``state_vector`` lacks (everything if None)."""
    return doc.get_update(state_vector) if state_vector is not None else doc.get_update()


@_panic_safe
def get_state(doc: pycrdt.Doc) -> bytes:
    """The state vector of a pycrdt document."""
    return doc.get_state()


def snapshot_waits(state_bytes: bytes, snapshot: bytes) -> str | None:
    """``missing_dependencies`` for a snapshot our compaction wrote, structs only: encoded
    from a document, it can only hold what waits for missing updates where ``squash`` kept
    structs the document could not integrate (with their deletions). Skips reading the
    snapshot's whole delete set in Python, most of the check's cost on a big document."""
    from jupyter_ystore.core.codec import read_var_uint

    with crdt_errors():
        rest = pycrdt.get_update(snapshot, state_bytes)
    clients, pos = read_var_uint(rest, 0)
    if not clients:
        return None
    _structs, pos = read_var_uint(rest, pos)
    client, pos = read_var_uint(rest, pos)
    clock, pos = read_var_uint(rest, pos)
    return (
        f"updates of client {client} from clock {clock} wait for earlier ones that are not "
        "stored (kept in the snapshot)"
    )


def missing_dependencies(state_bytes: bytes, applied: Sequence[bytes]) -> str | None:
    """Why a document whose state vector is ``state_bytes`` did not integrate all of
    ``applied`` (updates it keeps pending because what they build on is missing; deletions of
    items it never saw), or None. Works on bytes only, so it runs in any thread.

    A history with such holes loads without an error but not as it was written: e.g. a
    document whose history was deleted while a room kept appending to it loads (almost)
    empty. Cheap: the part of each update beyond the document's state, read in Python.
    """
    from jupyter_ystore.core.yupdate import (
        InvalidUpdate,
        parse_state_vector,
        read_update,
    )

    with crdt_errors():
        state = parse_state_vector(state_bytes)
        for update in applied:
            try:
                rest = read_update(pycrdt.get_update(update, state_bytes))
            except InvalidUpdate as exc:
                return f"a stored update cannot be read: {exc}"
            for client, structs in rest.structs.items():
                if any(not is_skip for _clock, _length, is_skip in structs):
                    clock = structs[0][0]
                    return (
                        f"updates of client {client} from clock {clock} wait for earlier ones "
                        f"that are not stored (the document has {state.get(client, 0)})"
                    )
            for client, ranges in rest.deletions.items():
                have = state.get(client, 0)
                for clock, length in ranges:
                    if clock + length > have:
                        return (
                            f"deletions of client {client} clocks {clock}..{clock + length} "
                            f"refer to items that are not stored (the document has {have})"
                        )
    return None
