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

It also keeps the *cuts*: the clocks whose left neighbour in their list is not the clock just
before them (an item's first clock, or a place something was inserted). Between two cuts a
client's clocks sit side by side, so an item pointing into such a stretch must name both
neighbours of that place: Yjs orders an item by the pair (origin, right origin), and a pair
that was never side by side (no origin, a right origin in the middle of a word) integrates
according to what else the receiver holds: the server, the browsers and a replay of the store
each put it somewhere else, and the text after it can be lost to replays.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

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


#: Consecutive clocks of one client in one parent, with one kind of content: (start, end,
#: parent, content ref, whether they are map entries, the kind of type a type item is).
#: The index stores runs column by column (``_ClientRuns``); this tuple is what a lookup
#: returns and what placing an update produces.
Run = Tuple[int, int, Parent, int, bool, Optional[str]]
START, END, PARENT, REF, KEYED, KIND = range(6)


class Placement(List[Tuple[int, "Run"]]):
    """The runs of an update's new items (client, run), and the cuts they make."""

    cuts: List[ID]
    starts: List[Tuple[ID, Optional[ID]]]

    def __init__(
        self,
        runs: Iterable[Tuple[int, "Run"]] = (),
        cuts: Iterable[ID] = (),
        starts: Iterable[Tuple[ID, Optional[ID]]] = (),
    ) -> None:
        super().__init__(runs)
        self.cuts = list(cuts)
        self.starts = list(starts)


def _starts_of(items: Iterable[ItemInfo]) -> List[Tuple[ID, Optional[ID]]]:
    """The first clock and origin of each item that does not follow its own previous clock
    (inside an item, and after such a clock, the origin of a clock is the clock before it)."""
    return [
        ((item.client, item.clock), item.origin)
        for item in items
        if item.ref != _GC and item.origin != (item.client, item.clock - 1)
    ]


def _cuts_of(item: ItemInfo) -> List[ID]:
    """The places ``item`` separates: its own start unless it follows its own previous
    clock, the clock after its origin, and its right origin."""
    if item.ref == _GC:
        return []
    cuts: List[ID] = []
    previous = (item.client, item.clock - 1)
    if item.origin != previous:
        cuts.append((item.client, item.clock))
    if item.origin is not None and item.origin != previous:
        cuts.append((item.origin[0], item.origin[1] + 1))
    if item.right is not None:
        cuts.append(item.right)
    return cuts


class ItemIndex:
    """Runs of every client's clocks: their parent, content kind and map-entry flag."""

    def __init__(self, roots: Mapping[str, str]) -> None:
        self.roots = dict(roots)
        # Every client's runs and item starts as columns of machine integers (``array``),
        # whose entries the garbage collector does not visit. As lists of tuples and dicts of
        # origins they were a third of the references every full collection followed at 48
        # rooms x 10 typists (hundreds a room for a loaded notebook), each collection pausing
        # every room. A run is made back into a tuple only when it is looked up.
        self._clients: Dict[int, _ClientRuns] = {}
        self._root_names: List[str] = list(self.roots)  # a root parent is stored as its place here

    @classmethod
    def of_update(cls, update: bytes, roots: Mapping[str, str]) -> ItemIndex:
        """The index of a whole document (its own encoding; nothing is refused)."""
        index = cls(roots)
        index.absorb(update)
        return index

    def __len__(self) -> int:
        return sum(len(runs.starts) for runs in self._clients.values())

    def runs(self) -> Iterator[Tuple[int, Run]]:
        """Every run, client by client, in clock order (for inspection; not on a hot path)."""
        for client, runs in self._clients.items():
            for i in range(len(runs.starts)):
                yield client, self._run(runs, i)

    # ------------------------------------------------------------------ lookups

    def find(self, target: ID) -> Optional[Run]:
        runs, i = self._at(target)
        return None if runs is None else self._run(runs, i)

    def _at(self, target: ID) -> Tuple[Optional[_ClientRuns], int]:
        """The client's runs and the place of the run holding ``target`` (None, -1 if none);
        the checks that read a field or two use it without making the run's tuple."""
        runs = self._clients.get(target[0])
        if runs is not None:
            i = bisect_right(runs.starts, target[1]) - 1
            if i >= 0 and target[1] < runs.fields[i * _STRIDE + _END]:
                return runs, i
        return None, -1

    def _run(self, runs: _ClientRuns, i: int) -> Run:
        fields = runs.fields
        at = i * _STRIDE
        code, flags = fields[at], fields[at + 2]
        parent: Parent
        if code >= 0:
            parent = (code, fields[at + 1])
        elif code == _NO_PARENT:
            parent = None
        else:
            parent = self._root_names[_ROOT_CODE - code]
        kind = flags >> _KIND_SHIFT
        return (
            runs.starts[i],
            fields[at + _END],
            parent,
            flags & _REF_MASK,
            bool(flags & _KEYED_BIT),
            _KIND_NAMES[kind - 1] if kind else None,
        )

    # ------------------------------------------------------------------ placing

    def check(self, summary: UpdateSummary, state: Mapping[int, int]) -> Placement:
        """Place the items of a client's update that the document does not have yet
        (``state``: its state vector). Raises ``InvalidUpdate`` for an item whose neighbours
        live apart or were never side by side, or whose content does not fit where it lands."""
        runs = self._place(summary, state, strict=True)
        items = summary.items
        if len(items) == 1:
            item = items[0]
            if item.right is None and item.origin == (item.client, item.clock - 1):
                return Placement(runs)  # typing on at the end: no new cut, nothing to check
        new = [item for item in items if self._is_new(item, state)]
        cuts = [cut for item in new for cut in _cuts_of(item)]
        starts = _starts_of(new)
        self._check_neighbours(new, cuts, dict(starts))
        return Placement(runs, cuts, starts)

    def add(self, placed: Placement) -> None:
        for client, run in placed:
            self._append(client, run)
        for client, clock in placed.cuts:
            cuts = self._client(client).cuts
            i = bisect_left(cuts, clock)
            if i == len(cuts) or cuts[i] != clock:
                cuts.insert(i, clock)
        for (client, clock), origin in placed.starts:
            self._client(client).set_origin(clock, origin)

    def absorb(self, update: bytes, state: Optional[Mapping[int, int]] = None) -> None:
        """Index a change the document made itself (loading, merging, the state map, another
        server's update): trusted, so placed as well as it can be and never refused."""
        summary = read_update(update, strict=False)
        runs = self._place(summary, state or {}, strict=False)
        cuts = [cut for item in summary.items for cut in _cuts_of(item)]
        self.add(Placement(runs, cuts, _starts_of(summary.items)))

    def _is_new(self, item: ItemInfo, state: Mapping[int, int]) -> bool:
        """Whether ``item`` reaches past what the document (``state``) and the index hold."""
        return item.clock + item.length > max(state.get(item.client, 0), self._end(item.client))

    def _check_neighbours(
        self, items: List[ItemInfo], cuts: List[ID], starts: Dict[ID, Optional[ID]]
    ) -> None:
        """Refuse an item whose two neighbours were never side by side. The sender holds the
        right origin, hence what it has always followed (``before``): the origin must be the
        clock before a right origin inside a side-by-side stretch (the cuts of the update's
        other items count too), not on the far side of ``before`` nor right of the right
        origin, and "first in the list" only before an item that was first too."""
        others = Counter(cuts) if len(items) > 1 else None
        for item in items:
            if item.ref == _GC:
                continue
            own = _cuts_of(item) if others is not None else ()

            def cut(target: ID) -> bool:
                if self._cut_between(target[0], target[1] - 1, target[1]):
                    return True
                return others is not None and others[target] > own.count(target)

            right, origin = item.right, item.origin
            if right is None or not self._in_a_list(right):
                continue
            # (only this side: the sender knows its right origin, so it knows what that item
            # has always followed; the clock after its origin may be a concurrent insert)
            if self._side_by_side(right) and not cut(right) and origin != (right[0], right[1] - 1):
                raise InvalidUpdate(
                    f"the item at {(item.client, item.clock)} goes before {right} but not "
                    f"after {(right[0], right[1] - 1)}, which {right} has always followed"
                )
            before = starts[right] if right in starts else self._origin_of(right)
            if origin is None:
                if before is not None:
                    raise InvalidUpdate(
                        f"the item at {(item.client, item.clock)} goes first, before {right}, "
                        f"but {right} has {before} on its left"
                    )
            elif before is not None and self._left_of(origin, before):
                raise InvalidUpdate(
                    f"the item at {(item.client, item.clock)} goes after {origin} and before "
                    f"{right}, but {before} has always been between them"
                )
            elif self._left_of(right, origin):
                raise InvalidUpdate(
                    f"the item at {(item.client, item.clock)} goes after {origin} and before "
                    f"{right}, which has always been on the left of {origin}"
                )

    def _cut_between(self, client: int, low: int, high: int) -> bool:
        """Whether one of ``client``'s clocks in ``(low, high]`` is a cut."""
        runs = self._clients.get(client)
        if runs is None:
            return False
        cuts = runs.cuts
        return bisect_right(cuts, low) < bisect_right(cuts, high)

    def _left_of(self, left: ID, right: ID) -> bool:
        """``left`` is before ``right`` in one stretch of side-by-side clocks."""
        if left[0] != right[0] or left[1] >= right[1]:
            return False
        runs, i = self._at(right)
        return (
            runs is not None
            and runs.starts[i] <= left[1]
            and runs.in_a_list(i)
            and not self._cut_between(right[0], left[1], right[1])
        )

    def _origin_of(self, target: ID) -> Optional[ID]:
        runs = self._clients.get(target[0])
        if runs is not None:
            found, origin = runs.origin_at(target[1])
            if found:
                return origin
        return (target[0], target[1] - 1)

    def _in_a_list(self, target: ID) -> bool:
        """``target`` is in the document, in a list or text (not a map entry, not collected)."""
        runs, i = self._at(target)
        return runs is not None and runs.in_a_list(i) and runs.fields[i * _STRIDE] != _NO_PARENT

    def _side_by_side(self, target: ID) -> bool:
        """Whether ``target`` and the clock before it are in the document, in one list (not
        a map, not collected), so that only a cut can separate them."""
        if target[1] < 1:
            return False
        runs, i = self._at(target)
        if runs is None or not runs.in_a_list(i) or runs.fields[i * _STRIDE] == _NO_PARENT:
            return False
        if target[1] > runs.starts[i]:
            return True  # the clock before is in the same run
        j = i - 1
        fields, at = runs.fields, i * _STRIDE
        return (
            j >= 0
            and fields[at - _STRIDE + _END] == target[1]  # the clock before is in the document
            and runs.in_a_list(j)
            and fields[at - _STRIDE] == fields[at]  # the same parent
            and fields[at - _STRIDE + 1] == fields[at + 1]
        )

    def _place(self, summary: UpdateSummary, state: Mapping[int, int], *, strict: bool) -> List[Tuple[int, Run]]:
        """Place every new item, each after the items of this update it points at (an
        explicit stack: chains of neighbours run as long as the document's history)."""
        items = summary.items
        if len(items) == 1:  # typing: one item, pointing at what the document has
            item = items[0]
            if not self._is_new(item, state):
                return []
            for target in (item.origin, item.right, item.parent):
                if target is not None and self._at(target)[0] is None:
                    if strict:
                        raise InvalidUpdate(f"the item at {(item.client, item.clock)} points at {target}, which cannot be placed")
                    return [(item.client, (item.clock, item.clock + item.length, None, item.ref, item.keyed, None))]
            return [(item.client, self._place_one(item, self.find, strict))]
        todo: Dict[int, List[ItemInfo]] = {}
        for item in items:
            if self._is_new(item, state):
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
                        run = (item.clock, item.clock + item.length, None, item.ref, item.keyed, None)
                        runs_of[key] = run
                        placed.append((item.client, run))
                        stack.pop()
        placed.sort(key=lambda entry: (entry[0], entry[1][START]))
        return placed

    def _place_one(self, item: ItemInfo, lookup: Callable[[ID], Optional[Run]], strict: bool) -> Run:
        """The run of ``item`` (what it points at is placed already)."""
        span = (item.clock, item.clock + item.length)
        kind = _TYPE_KINDS.get(item.type_ref) if item.type_ref is not None else None
        if item.ref == _GC:
            return (*span, None, _GC, False, None)
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
            if target[REF] == _TYPE:
                parent_kind = target[KIND]
            elif target[REF] in (_DELETED, _GC):
                parent_kind = None  # lands in a deleted type: integrated as deleted
            elif strict:
                raise InvalidUpdate(f"its parent {item.parent} is {_NAMES.get(target[REF], 'content')}, not a shared type")
            else:
                parent_kind = None
        else:
            left = lookup(item.origin) if item.origin is not None else None
            right = lookup(item.right) if item.right is not None else None
            near = left or right
            assert near is not None
            if left is not None and right is not None and strict:
                if (left[REF] == _GC) != (right[REF] == _GC) or (
                    left[REF] != _GC and (left[PARENT] != right[PARENT] or left[KEYED] or right[KEYED])
                ):
                    raise InvalidUpdate(
                        f"its neighbours {item.origin} and {item.right} are not in one list"
                    )
            if near[REF] == _GC:
                return (*span, None, item.ref, False, kind)  # its parent is gone: GC'd
            parent, keyed = near[PARENT], near[KEYED]
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
        return (*span, parent, item.ref, keyed, kind)

    def _kind_of(self, parent: Parent) -> Optional[str]:
        if isinstance(parent, str):
            return self.roots.get(parent)
        if parent is None:
            return None
        runs, i = self._at(parent)
        if runs is None:
            return None
        flags = runs.fields[i * _STRIDE + 2]
        kind = flags >> _KIND_SHIFT
        return _KIND_NAMES[kind - 1] if flags & _REF_MASK == _TYPE and kind else None

    # ------------------------------------------------------------------ storage

    def _client(self, client: int) -> _ClientRuns:
        runs = self._clients.get(client)
        if runs is None:
            runs = self._clients[client] = _ClientRuns()
        return runs

    def _end(self, client: int) -> int:
        runs = self._clients.get(client)
        return runs.fields[-_STRIDE + _END] if runs is not None and runs.starts else 0

    def _parent_code(self, parent: Parent) -> Tuple[int, int]:
        if parent is None:
            return _NO_PARENT, 0
        if isinstance(parent, str):
            try:
                place = self._root_names.index(parent)
            except ValueError:  # a root the document type does not name (trusted changes)
                place = len(self._root_names)
                self._root_names.append(parent)
            return _ROOT_CODE - place, 0
        return parent

    def _append(self, client: int, run: Run) -> None:
        runs = self._client(client)
        parent_client, parent_clock = self._parent_code(run[PARENT])
        flags = run[REF] | (_KEYED_BIT if run[KEYED] else 0) | _KIND_CODES[run[KIND]] << _KIND_SHIFT
        if runs.starts:
            fields = runs.fields
            last_end = fields[-_STRIDE + _END]
            if run[START] < last_end:  # partly known (an update sent again): keep the new part
                if run[END] <= last_end:
                    return
                run = (last_end, *run[END:])
            if (
                run[START] == last_end
                and run[REF] != _TYPE
                and fields[-_STRIDE + 2] == flags
                and fields[-_STRIDE] == parent_client
                and fields[-_STRIDE + 1] == parent_clock
            ):
                fields[-_STRIDE + _END] = run[END]  # typing on: one run
                return
        runs.starts.append(run[START])
        runs.fields.extend((parent_client, parent_clock, flags, run[END]))


_NO_PARENT = -1
_ROOT_CODE = -2  # root n of ``_root_names`` is stored as -2 - n
_KIND_NAMES = ("array", "map", "text")
_KIND_CODES: Dict[Optional[str], int] = {None: 0, "array": 1, "map": 2, "text": 3}
#: A run's fields after its start: its parent (client code, clock), its flags (the content
#: ref, a Yjs content ref is 0-10; whether it is a map entry; its kind's code) and its end
#: (``_END``: only ever indexed, never bisected, so it needs no array of its own).
_STRIDE = 4
_END = 3
_REF_MASK, _KEYED_BIT, _KIND_SHIFT = 0x0F, 0x10, 5


class _ClientRuns:
    """One client's runs, cuts and item starts, in five arrays (each array is an object the
    collector walks, so the fewer the better): the runs' starts (sorted), their other fields
    and ends (``_STRIDE`` a run), the cuts (sorted), the clocks where an item starts (sorted)
    and those items' origins (two a start: client and clock; client -1: none)."""

    __slots__ = ("starts", "fields", "cuts", "origin_clocks", "origins")

    def __init__(self) -> None:
        self.starts = array("q")
        self.fields = array("q")
        self.cuts = array("q")
        self.origin_clocks = array("q")
        self.origins = array("q")

    def in_a_list(self, i: int) -> bool:
        """Run ``i`` is content in a list or text: not collected, not a map entry."""
        flags = self.fields[i * _STRIDE + 2]
        return flags & _REF_MASK != _GC and not flags & _KEYED_BIT

    def origin_at(self, clock: int) -> Tuple[bool, Optional[ID]]:
        """Whether an item starts at ``clock``, and its origin."""
        clocks = self.origin_clocks
        i = bisect_left(clocks, clock)
        if i == len(clocks) or clocks[i] != clock:
            return False, None
        client = self.origins[2 * i]
        return True, (None if client < 0 else (client, self.origins[2 * i + 1]))

    def set_origin(self, clock: int, origin: Optional[ID]) -> None:
        client, target = (-1, 0) if origin is None else origin
        clocks = self.origin_clocks
        i = bisect_left(clocks, clock)
        if i < len(clocks) and clocks[i] == clock:
            self.origins[2 * i : 2 * i + 2] = array("q", (client, target))
        else:
            clocks.insert(i, clock)
            self.origins[2 * i : 2 * i] = array("q", (client, target))
