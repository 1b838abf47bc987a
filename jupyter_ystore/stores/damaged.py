"""What the stores share about damaged files: the names of their copies, and what is kept.

A damaged file is never deleted. It is renamed ``<name>.damaged-<UTC time>`` (for example
``.jupyter_ystore.db.damaged-20261203T081500Z``) and what can still be read goes into a fresh
file at the original path. A file with such a name is only ever read: opening it never
repairs or moves it again, so looking at a damaged copy cannot change it.

What is kept of a document must still make sense on its own: salvaged updates that depend on
updates lost with the damaged part would leave structs pending for ever (edits nobody can
see, and a history the room cannot trust), so such a document keeps nothing and opens from
its file instead.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from typing import Callable, Sequence

import pycrdt

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import read_var_uint

MARK = ".damaged-"
_COPY_NAME = re.compile(r"\.damaged-\d{8}T\d{6}Z(?:-\d+)?$")


def utc_stamp() -> str:
    """The UTC time a copy is named after, to the second (``20261203T081500Z``)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def is_damaged_copy(path: str) -> bool:
    """Whether ``path`` names a copy set aside by us (then it is opened read-only)."""
    return _COPY_NAME.search(os.path.basename(path)) is not None


def copy_name(path: str, taken: Callable[[str], bool] = os.path.lexists) -> str:
    """A free name ``<path>.damaged-<UTC time>`` (``-1``, ``-2``... within one second)."""
    base = f"{path}{MARK}{utc_stamp()}"
    name, n = base, 0
    while taken(name):
        n += 1
        name = f"{base}-{n}"
    return name


def usable_update(update: object) -> bool:
    """Whether a salvaged value is bytes that decode as a Yjs v1 update."""
    return isinstance(update, (bytes, bytearray)) and _ydoc.is_valid_update(bytes(update))


def replays_cleanly(updates: Sequence[bytes]) -> bool:
    """Whether ``updates`` integrate into a fresh document with no struct left pending.

    The part of the merged updates a document's state vector does not cover starts with the
    number of clients whose structs are still waiting for a missing predecessor.
    """
    if not updates:
        return False
    try:
        with _ydoc.crdt_errors():
            merged = _ydoc.merge_updates(list(updates))
            doc = pycrdt.Doc()
            for group in _ydoc.merged_groups(list(updates)):
                doc.apply_update(group)
            rest = pycrdt.get_update(merged, doc.get_state())
        waiting, _ = read_var_uint(rest, 0)
    except Exception:  # does not merge or apply: certainly not usable
        return False
    return waiting == 0
