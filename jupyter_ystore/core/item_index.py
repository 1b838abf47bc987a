"""Where every item of a room's document lives, so that a client's update can be placed
before it is applied.

A Yjs item names its neighbours (origin, right origin) or its parent; yrs integrates
whatever it is given, and an item whose neighbours are in different lists, or whose content
does not fit the type it lands in (a string in the cells array, a map entry without a key),
integrates one way into the live document and another way when the document is replayed
from its encoding: the server, the browsers and the store stop agreeing. pycrdt does not
expose an item's parent, so the room keeps this index: for each client, runs of clocks with
the parent type they live in (a root's name, or the id of the item that is the type), their
content kind and whether they are map entries. It is built once from the document's own
encoding, then kept current from every change (typing extends the last run: it stays about
as small as the document's own block list).

``check`` places the items of a client's update (refusing what does not fit) and returns
the runs to ``add`` once the update applied.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from jupyter_ystore.core.yupdate import (
    ID,
    InvalidUpdate,
    ItemInfo,
    UpdateSummary,
    read_update,
)

Parent = Union[str, ID, None]  # a root type's name, the id of the type item, None: unknown

_GC, _DELETED, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY = 0, 1, 3, 4, 5, 6, 7, 8
_TYPE_KINDS = {0: "array", 1: "map", 2: "text"}
#: Content that fits in each kind of shared type.
_FITS = {
    "text": {_DELETED, _STRING, _EMBED, _FORMAT, _TYPE},
    "array": {_DELETED, _BINARY, _TYPE, _ANY},
    "map": {_DELETED, _BINARY, _TYPE, _ANY},
}
_NAMES = {_DELETED: "deleted", _BINARY: "binary", _STRING: "string", _EMBED: "embed", _FORMAT: "format", _TYPE: "type", _ANY: "value"}

#: The root types of each Jupyter document type (jupyter_ydoc) and their kinds.
DOCUMENT_ROOTS: Dict[str, Dict[str, str]] = {
    "notebook": {"cells": "array", "meta": "map", "state": "map"},
    "file": {"source": "text", "state": "map"},
    "unicode": {"source": "text", "state": "map"},
    "blob": {"source": "map", "state": "map"},
}


@dataclass
class Run:
    """Consecutive clocks of one client in one parent, with one kind of content."""

    start: int
    end: int
    parent: Parent
    ref: int
    keyed: bool
    kind: Optional[str] = None  # for a type item: the kind of type it is


class ItemIndex:
    """Runs of every client's clocks: their parent, content kind and map-entry flag."""

    def __init__(self, roots: Mapping[str, str]) -> None:
        self.roots = dict(roots)
        self._starts: Dict[int, List[int]] = {}
        self._runs: Dict[int, List[Run]] = {}

    @classmethod
    def of_update(cls, update: bytes, roots: Mapping[str, str]) -> ItemIndex:
        """The index of a whole document (its own encoding; nothing is refused)."""
        index = cls(roots)
        index.absorb(update)
        return index

    def __len__(self) -> int:
        return sum(len(runs) for runs in self._runs.values())

    # ------------------------------------------------------------------ lookups

    def find(self, target: ID) -> Optional[Run]:
        starts = self._starts.get(target[0])
        if not starts:
            return None
        i = bisect_right(starts, target[1]) - 1
        if i < 0:
            return None
        run = self._runs[target[0]][i]
        return run if target[1] < run.end else None

    # ------------------------------------------------------------------ placing

    def check(self, summary: UpdateSummary, state: Mapping[int, int]) -> List[Tuple[int, Run]]:
        """Place the items of a client's update that the document does not have yet
        (``state``: its state vector). Raises ``InvalidUpdate`` for an item whose neighbours
        live apart or whose content does not fit where it lands."""
        return self._place(summary, state, strict=True)

    def add(self, placed: List[Tuple[int, Run]]) -> None:
        for client, run in placed:
            self._append(client, run)

    def absorb(self, update: bytes, state: Optional[Mapping[int, int]] = None) -> None:
        """Index a change the document made itself (loading, merging, the state map, another
        server's update): trusted, so placed as well as it can be and never refused."""
        self.add(self._place(read_update(update, strict=False), state or {}, strict=False))

    def _place(self, summary: UpdateSummary, state: Mapping[int, int], *, strict: bool) -> List[Tuple[int, Run]]:
        """Place every new item, each after the items of this update it points at (an
        explicit stack: chains of neighbours run as long as the document's history)."""
        items = summary.items
        if len(items) == 1:  # typing: one item, pointing at what the document has
            item = items[0]
            if item.clock + item.length <= max(state.get(item.client, 0), self._end(item.client)):
                return []
            for target in (item.origin, item.right, item.parent):
                if target is not None and self.find(target) is None:
                    if strict:
                        raise InvalidUpdate(f"the item at {(item.client, item.clock)} points at {target}, which cannot be placed")
                    return [(item.client, Run(item.clock, item.clock + item.length, None, item.ref, item.keyed))]
            return [(item.client, self._place_one(item, self.find, strict))]
        todo: Dict[int, List[ItemInfo]] = {}
        for item in items:
            known = max(state.get(item.client, 0), self._end(item.client))
            if item.clock + item.length > known:
                todo.setdefault(item.client, []).append(item)
        starts = {client: [item.clock for item in items] for client, items in todo.items()}
        placed: List[Tuple[int, Run]] = []
        runs_of: Dict[Tuple[int, int], Run] = {}  # this update's items placed so far

        def pending_item(target: ID) -> Optional[ItemInfo]:
            items = todo.get(target[0])
            if not items:
                return None
            i = bisect_right(starts[target[0]], target[1]) - 1
            if i >= 0 and target[1] < items[i].clock + items[i].length:
                return items[i]
            return None

        def lookup(target: ID) -> Optional[Run]:
            item = pending_item(target)
            if item is not None:
                return runs_of.get((item.client, item.clock))
            return self.find(target)

        for items in todo.values():
            for first in items:
                stack = [first]
                visiting = set()
                while stack:
                    item = stack[-1]
                    key = (item.client, item.clock)
                    if key in runs_of:
                        stack.pop()
                        continue
                    visiting.add(key)
                    blocked = None
                    for target in (item.origin, item.right, item.parent):
                        if target is None or lookup(target) is not None:
                            continue
                        dep = pending_item(target)
                        if dep is None or (dep.client, dep.clock) in visiting:
                            blocked = target  # points at nothing, or round in a circle
                            break
                        stack.append(dep)
                        break
                    else:
                        run = self._place_one(item, lookup, strict)
                        runs_of[key] = run
                        placed.append((item.client, run))
                        stack.pop()
                        continue
                    if blocked is not None:
                        if strict:
                            raise InvalidUpdate(
                                f"the item at {key} points at {blocked}, which cannot be placed"
                            )
                        run = Run(item.clock, item.clock + item.length, None, item.ref, item.keyed)
                        runs_of[key] = run
                        placed.append((item.client, run))
                        stack.pop()
        placed.sort(key=lambda entry: (entry[0], entry[1].start))
        return placed

    def _place_one(self, item: ItemInfo, lookup: Callable[[ID], Optional[Run]], strict: bool) -> Run:
        """The run of ``item`` (what it points at is placed already)."""
        span = (item.clock, item.clock + item.length)
        kind = _TYPE_KINDS.get(item.type_ref) if item.type_ref is not None else None
        if item.ref == _GC:
            return Run(*span, None, _GC, False)
        if item.root is not None:
            parent: Parent = item.root
            keyed = item.keyed
            parent_kind = self.roots.get(item.root)
            if parent_kind is None and strict:
                raise InvalidUpdate(f"the document has no shared type {item.root!r}")
        elif item.parent is not None:
            target = lookup(item.parent)
            assert target is not None
            parent, keyed = item.parent, item.keyed
            if target.ref == _TYPE:
                parent_kind = target.kind
            elif target.ref in (_DELETED, _GC):
                parent_kind = None  # lands in a deleted type: integrated as deleted
            elif strict:
                raise InvalidUpdate(f"its parent {item.parent} is {_NAMES.get(target.ref, 'content')}, not a shared type")
            else:
                parent_kind = None
        else:
            left = lookup(item.origin) if item.origin is not None else None
            right = lookup(item.right) if item.right is not None else None
            near = left or right
            assert near is not None
            if left is not None and right is not None and strict:
                if (left.ref == _GC) != (right.ref == _GC) or (
                    left.ref != _GC and (left.parent != right.parent or left.keyed or right.keyed)
                ):
                    raise InvalidUpdate(
                        f"its neighbours {item.origin} and {item.right} are not in one list"
                    )
            if near.ref == _GC:
                return Run(*span, None, item.ref, False, kind)  # its parent is gone: GC'd
            parent, keyed = near.parent, near.keyed
            parent_kind = self._kind_of(parent)
        if strict and parent_kind is not None:
            if (parent_kind == "map") != keyed:
                raise InvalidUpdate(
                    f"an item {'without' if parent_kind == 'map' else 'with'} a key in a {parent_kind}"
                )
            if item.ref not in _FITS[parent_kind]:
                raise InvalidUpdate(
                    f"{_NAMES.get(item.ref, 'this')} content does not belong in a {parent_kind}"
                )
        return Run(*span, parent, item.ref, keyed, kind)

    def _kind_of(self, parent: Parent) -> Optional[str]:
        if isinstance(parent, str):
            return self.roots.get(parent)
        if parent is None:
            return None
        run = self.find(parent)
        return run.kind if run is not None and run.ref == _TYPE else None

    # ------------------------------------------------------------------ storage

    def _end(self, client: int) -> int:
        runs = self._runs.get(client)
        return runs[-1].end if runs else 0

    def _append(self, client: int, run: Run) -> None:
        runs = self._runs.setdefault(client, [])
        starts = self._starts.setdefault(client, [])
        if runs:
            last = runs[-1]
            if run.start < last.end:  # partly known (an update sent again): keep the new part
                if run.end <= last.end:
                    return
                run = Run(last.end, run.end, run.parent, run.ref, run.keyed, run.kind)
            if (
                run.start == last.end
                and run.ref == last.ref
                and run.ref != _TYPE
                and run.parent == last.parent
                and run.keyed == last.keyed
            ):
                last.end = run.end  # typing on: one run
                return
        runs.append(run)
        starts.append(run.start)
