"""Three-way merge of a file changed on disk into the live shared document.

When a file changes behind the room's back (``git pull``, an editor, a script) while people
edit it, replacing the shared document with the file would drop what they typed since the
last save, move their cursors and reset undo. Instead the change from BASE (the content last
saved to or loaded from the file) to FILE is merged into LIVE (the shared document) as minimal
edits, in one transaction, so clients receive one small update:

- text (a whole text file, or one cell's source) is merged diff3-style: edits on both sides
  that do not touch survive; where they touch, the file's text wins and a ``Conflict`` says
  what was overwritten;
- notebook cells are matched by id (by position and content for files without usable ids);
  cells added, removed and moved in the file are added, removed and moved live, other fields
  are replaced only when the file changed them, and cells collaborators added stay;
- without a BASE, LIVE is made equal to FILE, still by minimal edits.

Everything here is pure computation on the documents: no I/O, no event loop.

Y.Text offsets in pycrdt are UTF-8 byte offsets for inserts and deletes (while slicing reads by
code points), so text edits are computed on Python strings and converted to bytes at the end.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from itertools import accumulate
from typing import Any, TypeVar

from jupyter_ydoc import YBlob, YNotebook, YUnicode
from jupyter_ydoc.ybasedoc import YBaseDoc
from pycrdt import Array, Map, Text

__all__ = ["Conflict", "MergeResult", "apply_text", "merge_into", "merge_text"]

T = TypeVar("T")


@dataclass(frozen=True)
class Conflict:
    """Both the file and a collaborator changed the same thing; the file's version was kept."""

    cell_id: str | None  # None for a text file or the notebook's own metadata
    description: str  # short, for the room's log and the document history
    overwritten: str = ""  # the live content that the file's version replaced


@dataclass(frozen=True)
class MergeResult:
    """What a merge did: whether the live document changed, and the conflicts it settled."""

    changed: bool
    conflicts: list[Conflict] = field(default_factory=list)


def merge_into(document: YBaseDoc, base: Any | None, file_content: Any) -> MergeResult:
    """Merge the change from ``base`` to ``file_content`` into the live ``document``.

    ``base`` and ``file_content`` are what ``document.get()`` returns for this kind of document
    (an nbformat-like dict for a notebook, a str for a text file); a notebook's sources may
    also be lists of lines, as in the JSON file. ``base=None`` (no base known) makes the
    document equal to the file, still by minimal edits. All edits happen in one transaction
    (one update); a file equal to the base touches nothing at all.
    """
    if isinstance(document, YNotebook):
        return _merge_notebook(document, base, file_content)
    if isinstance(document, YUnicode):
        return _merge_text_document(document, base, file_content)
    if isinstance(document, YBlob):
        return _merge_blob(document, base, file_content)
    raise TypeError(f"cannot merge into a {type(document).__name__}")


# ---------------------------------------------------------------------------- text

_LINES = re.compile(r"[^\n]*\n|[^\n]+")
_TOKENS = re.compile(r"\w+|[^\S\n]+|\n|[^\w\s]")
_MAX_TOKENS = 20_000  # above this, a clash inside lines is not refined (the diff gets slow)


def merge_text(base: str, live: str, file: str) -> tuple[str, list[Conflict]]:
    """diff3 of ``base``→``live`` and ``base``→``file``: the merged text and its conflicts.

    Merged by lines; lines changed on both sides are merged again by words, which succeeds
    when the two edits do not touch (one person edits the start of a line, the other its
    end). Otherwise the file's lines win and a conflict (cell id None) records the live lines.
    """
    if live in (base, file):
        return file, []
    if file == base:
        return live, []
    conflicts: list[Conflict] = []

    def settle(in_base: list[str], in_live: list[str], in_file: list[str], line: int) -> list[str]:
        words = _merge_words("".join(in_base), "".join(in_live), "".join(in_file))
        if words is not None:
            return [words]
        conflicts.append(_text_conflict(line, in_live))
        return in_file

    lines = [_LINES.findall(text) for text in (base, live, file)]
    merged = _diff3(*lines, settle)
    return "".join(merged), conflicts


def apply_text(ytext: Text, new: str) -> bool:
    """Turn ``ytext`` into ``new`` by small inserts and deletes; whether anything changed.

    Untouched text keeps its identity, so collaborators' cursors and concurrent edits stay
    where they were. Offsets are converted to the UTF-8 byte offsets pycrdt expects.
    """
    old = str(ytext)
    if old == new:
        return False
    edits = _byte_edits(old, _text_edits(old, new))
    with ytext.doc.transaction():
        for start, end, insert in reversed(edits):  # from the end: earlier offsets stay valid
            if end > start:
                del ytext[start:end]
            if insert:
                ytext.insert(start, insert)
    return True


class _Touching(Exception):
    """Two edits touch even word by word."""


def _refuse(*region: Any) -> list[str]:
    raise _Touching


def _merge_words(base: str, live: str, file: str) -> str | None:
    """The word-level merge of lines both sides changed, or None if the edits still touch."""
    tokens = [_TOKENS.findall(text) for text in (base, live, file)]
    if sum(map(len, tokens)) > _MAX_TOKENS:
        return None
    try:
        return "".join(_diff3(*tokens, _refuse))
    except _Touching:
        return None


def _text_conflict(line: int, live_part: list[str]) -> Conflict:
    """Describe a clash at (0-based) live line ``line`` covering ``live_part``."""
    if not live_part:
        where = f"at line {line + 1}"
    elif len(live_part) == 1:
        where = f"line {line + 1}"
    else:
        where = f"lines {line + 1}-{line + len(live_part)}"
    description = f"{where} changed live and in the file: the file's version kept"
    return Conflict(None, description, "".join(live_part))


Hunk = tuple[int, int, int, int]  # a[a1:a2] became b[b1:b2]
Settle = Callable[[list[T], list[T], list[T], int], list[T]]


def _changes(a: Sequence[T], b: Sequence[T]) -> list[Hunk]:
    """The non-equal blocks turning ``a`` into ``b``; common ends are skipped before diffing."""
    n = min(len(a), len(b))
    lo = 0
    while lo < n and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < n - lo and a[len(a) - 1 - hi] == b[len(b) - 1 - hi]:
        hi += 1
    matcher = SequenceMatcher(None, a[lo : len(a) - hi], b[lo : len(b) - hi], autojunk=False)
    return [
        (i1 + lo, i2 + lo, j1 + lo, j2 + lo)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def _diff3(base: Sequence[T], live: Sequence[T], file: Sequence[T], settle: Settle[T]) -> list[T]:
    """Merge two edits of ``base``; ``settle`` decides regions both sides changed differently.

    Changes that overlap or touch (adjacent, or inserted at the same place) form one region,
    as in diff3 and git: a person rarely means two edits that close to be independent.
    ``settle`` gets the region's base, live and file parts and its start in ``live``.
    """
    ours, theirs = _changes(base, live), _changes(base, file)
    out: list[T] = []
    pos = i = j = 0
    shift = 0  # live index minus base index, before the current region
    while i < len(ours) or j < len(theirs):
        start = min(h[0] for h in (ours[i : i + 1] + theirs[j : j + 1]))
        end, i2, j2 = start, i, j
        while True:
            if i2 < len(ours) and ours[i2][0] <= end:
                end, i2 = max(end, ours[i2][1]), i2 + 1
            elif j2 < len(theirs) and theirs[j2][0] <= end:
                end, j2 = max(end, theirs[j2][1]), j2 + 1
            else:
                break
        out.extend(base[pos:start])
        live_part = _patched(base, live, start, end, ours[i:i2])
        file_part = _patched(base, file, start, end, theirs[j:j2])
        if i == i2 or live_part == file_part:
            out.extend(file_part)
        elif j == j2:
            out.extend(live_part)
        else:
            out.extend(settle(list(base[start:end]), live_part, file_part, start + shift))
        shift += len(live_part) - (end - start)
        pos, i, j = end, i2, j2
    out.extend(base[pos:])
    return out


def _patched(
    base: Sequence[T], other: Sequence[T], start: int, end: int, hunks: list[Hunk]
) -> list[T]:
    """``base[start:end]`` with ``hunks`` (taken from ``other``) applied."""
    out: list[T] = []
    pos = start
    for a1, a2, b1, b2 in hunks:
        out.extend(base[pos:a1])
        out.extend(other[b1:b2])
        pos = a2
    out.extend(base[pos:end])
    return out


def _text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits (start, end, insert) in code points of ``old``, ascending, turning it into ``new``.

    Lines first (cheap on long texts), then words inside changed lines, then the common
    characters of each changed word are kept, so ``1`` → ``10`` inserts one ``0``.
    """
    a, b = _LINES.findall(old), _LINES.findall(new)
    a_at, b_at = _offsets(a), _offsets(b)
    edits: list[tuple[int, int, str]] = []
    for a1, a2, b1, b2 in _changes(a, b):
        edits += _word_edits(old[a_at[a1] : a_at[a2]], new[b_at[b1] : b_at[b2]], a_at[a1])
    return edits


def _word_edits(old: str, new: str, offset: int) -> list[tuple[int, int, str]]:
    ta, tb = _TOKENS.findall(old), _TOKENS.findall(new)
    if len(ta) + len(tb) > _MAX_TOKENS:
        return [_trimmed(old, new, offset)]
    a_at, b_at = _offsets(ta), _offsets(tb)
    return [
        _trimmed(old[a_at[i1] : a_at[i2]], new[b_at[j1] : b_at[j2]], offset + a_at[i1])
        for i1, i2, j1, j2 in _changes(ta, tb)
    ]


def _trimmed(old: str, new: str, offset: int) -> tuple[int, int, str]:
    """One edit replacing ``old`` (at ``offset``) by ``new``, without their common ends."""
    n = min(len(old), len(new))
    lo = 0
    while lo < n and old[lo] == new[lo]:
        lo += 1
    hi = 0
    while hi < n - lo and old[len(old) - 1 - hi] == new[len(new) - 1 - hi]:
        hi += 1
    return offset + lo, offset + len(old) - hi, new[lo : len(new) - hi]


def _offsets(parts: list[str]) -> list[int]:
    return list(accumulate(map(len, parts), initial=0))


def _byte_edits(old: str, edits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The same edits with UTF-8 byte offsets (what pycrdt's Text takes), in one pass."""
    if old.isascii():
        return edits
    out = []
    char = byte = 0
    for start, end, insert in edits:
        byte += len(old[char:start].encode())
        begin = byte
        byte += len(old[start:end].encode())
        char = end
        out.append((begin, byte, insert))
    return out


def _merge_text_document(document: YUnicode, base: str | None, file: str) -> MergeResult:
    if not isinstance(file, str) or not isinstance(base, (str, type(None))):
        raise TypeError("a text document merges str contents")
    if file == base:
        return MergeResult(False)
    ytext = document.ydoc.get("source", type=Text)
    with document.ydoc.transaction():
        live = str(ytext)
        merged, conflicts = merge_text(live if base is None else base, live, file)
        changed = apply_text(ytext, merged)
    return MergeResult(changed, conflicts)


def _merge_blob(document: YBlob, base: bytes | None, file: bytes) -> MergeResult:
    """Bytes cannot be merged: the file wins when it changed."""
    if file == base or file == document.get():
        return MergeResult(False)
    with document.ydoc.transaction():
        document.set(file)
    return MergeResult(True)


# ---------------------------------------------------------------------------- notebooks

_MISSING: Any = object()
CellKey = tuple[Any, str]  # (cell_type, source): what matching by content compares
_DEFAULT_METADATA = {"language_info": {"name": ""}, "kernelspec": {"name": "", "display_name": ""}}
# What jupyter-ydoc puts in a notebook without cells (its id is made when the cell is created).
_EMPTY_NOTEBOOK_CELL = {
    "cell_type": "code",
    "execution_count": None,
    "metadata": {"trusted": True},
    "outputs": [],
    "source": "",
}
_SIMILAR = 0.5  # difflib ratio above which two sources are taken for versions of one cell
_MAX_PAIRINGS = 2_500  # similarity tests per unmatched block, beyond that: by position


@dataclass
class _Keep:
    """Keep live cell ``live`` where it is; three-way merge it when ``file`` is given."""

    live: int
    base: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


@dataclass
class _Insert:
    """Insert a new Y cell made from ``cell`` (a new cell, or a moved or retyped one)."""

    cell: dict[str, Any]


def _merge_notebook(
    document: YNotebook, base: Mapping[str, Any] | None, file: Mapping[str, Any]
) -> MergeResult:
    if not isinstance(file, Mapping) or not isinstance(base, (Mapping, type(None))):
        raise TypeError("a notebook merges nbformat-like dict contents")
    file_nb = _normalize_notebook(file, loaded=True)
    base_nb = None if base is None else _normalize_notebook(base, loaded=True)
    if file_nb == base_nb:
        return MergeResult(False)
    with document.ydoc.transaction():
        merge = _NotebookMerge(document)
        merge.run(merge.live_notebook() if base_nb is None else base_nb, file_nb)
    return MergeResult(merge.changed, merge.conflicts)


def _normalize_notebook(nb: Mapping[str, Any], *, loaded: bool) -> dict[str, Any]:
    """The notebook as jupyter-ydoc round-trips it (joined sources, default metadata).

    ``loaded``: content given to ``YNotebook.set`` (a file or a base), which gives a
    notebook without cells one empty cell; not LIVE's own content.
    """
    metadata = dict(nb.get("metadata") or {})
    for key, value in _DEFAULT_METADATA.items():
        metadata.setdefault(key, value)
    cells = nb.get("cells") or ([_EMPTY_NOTEBOOK_CELL] if loaded else [])
    return {
        "cells": [_normalize_cell(cell) for cell in cells],
        "metadata": metadata,
        "nbformat": nb.get("nbformat", 4),
        "nbformat_minor": nb.get("nbformat_minor", 5),
    }


def _normalize_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A cell as ``YNotebook.get()`` returns it, so that equal cells compare equal (shallow)."""
    out = dict(cell)
    out.pop("execution_state", None)
    out["source"] = _joined(out.get("source", ""))
    out.setdefault("metadata", {})
    kind = out.get("cell_type")
    if kind == "code":
        outputs = out.setdefault("outputs", [])
        if any(_is_split_stream(output) for output in outputs):
            out["outputs"] = [
                {**output, "text": _joined(output["text"])} if _is_split_stream(output) else output
                for output in outputs
            ]
    elif kind in ("raw", "markdown") and "attachments" in out and not out["attachments"]:
        del out["attachments"]
    return out


def _is_split_stream(output: Mapping[str, Any]) -> bool:
    return output.get("output_type") == "stream" and isinstance(output.get("text"), list)


def _joined(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else text


def _same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal apart from the id (cells matched by content may carry different ids)."""
    return {k: v for k, v in a.items() if k != "id"} == {k: v for k, v in b.items() if k != "id"}


def _cell_key(cell: Mapping[str, Any]) -> CellKey:
    return cell.get("cell_type"), cell["source"]


class _NotebookMerge:
    """One merge of a notebook: reads LIVE once, plans the cell list, then edits it.

    Must run inside a transaction of the document (reads share it, edits become one update).
    """

    def __init__(self, document: YNotebook):
        self.document = document
        self.ycells: list[Map] = list(document.ycells)
        self.live_ids: list[Any] = [ycell.get("id") for ycell in self.ycells]
        self._live_cells: dict[int, dict[str, Any]] = {}
        self.conflicts: list[Conflict] = []
        self.changed = False

    # -- reading LIVE (only what is needed: a cell is converted when the merge touches it)

    def live_cell(self, index: int) -> dict[str, Any]:
        if index not in self._live_cells:
            self._live_cells[index] = _normalize_cell(self.ycells[index].to_py() or {})
        return self._live_cells[index]

    def live_keys(self) -> list[CellKey]:
        return [(ycell.get("cell_type"), str(ycell.get("source", ""))) for ycell in self.ycells]

    def live_notebook(self) -> dict[str, Any]:
        """LIVE as a base, for a merge without one: the merge then yields FILE exactly."""
        meta = self.document.ydoc.get("meta", type=Map).to_py() or {}
        cells = [self.live_cell(i) for i in range(len(self.ycells))]
        return _normalize_notebook({**meta, "cells": cells}, loaded=False)

    # -- the merge

    def run(self, base: dict[str, Any], file: dict[str, Any]) -> None:
        self._merge_meta(base, file)
        base_cells, file_cells = base["cells"], file["cells"]
        base_ids = [cell.get("id") for cell in base_cells]
        base_keys = [_cell_key(cell) for cell in base_cells]
        file_ids = [cell.get("id") for cell in file_cells]
        to_file = _match(base_ids, base_keys, file_ids, lambda: [_cell_key(c) for c in file_cells])
        # LIVE's ids are BASE's (same document): no shared id means the cells were replaced
        to_live = _match(base_ids, base_keys, self.live_ids, self.live_keys, regenerated=False)
        plan = _Planner(self, base_cells, file_cells, to_file, to_live).plan()
        self._apply(plan)

    def _apply(self, plan: list[_Keep | _Insert]) -> None:
        """Edit the Y cell list into ``plan``: kept cells are in live order, so one pass."""
        ycells = self.document.ycells
        pos = consumed = 0
        for entry in plan:
            if isinstance(entry, _Insert):
                ycells.insert(pos, self.document.create_ycell(entry.cell))
                self.changed = True
            else:
                if entry.live > consumed:
                    del ycells[pos : pos + entry.live - consumed]
                    self.changed = True
                consumed = entry.live + 1
                if entry.base is not None and entry.file is not None:
                    self._merge_cell_in_place(entry.live, entry.base, entry.file)
            pos += 1
        if consumed < len(self.ycells):
            del ycells[pos : pos + len(self.ycells) - consumed]
            self.changed = True

    def _merge_cell_in_place(self, index: int, base: dict[str, Any], file: dict[str, Any]) -> None:
        live = self.live_cell(index)
        merged, conflicts = _merge_cell(base, live, file)
        self.conflicts += conflicts
        self.changed |= _sync_ycell(self.ycells[index], live, merged)

    def _merge_meta(self, base: dict[str, Any], file: dict[str, Any]) -> None:
        """Notebook-level metadata key by key, nbformat and nbformat_minor as values.

        What LIVE lacks altogether (a document never loaded) is taken from the file.
        """
        ymeta = self.document.ydoc.get("meta", type=Map)
        live = ymeta.to_py() or {}
        for key in ("nbformat", "nbformat_minor"):
            if key not in live or (base[key] != file[key] and live[key] != file[key]):
                ymeta[key] = file[key]
                self.changed = True
        ymap = ymeta.get("metadata")
        if not isinstance(ymap, Map):
            ymeta["metadata"] = Map(dict(file["metadata"]))
            self.changed = True
        elif base["metadata"] != file["metadata"]:
            live_metadata = live["metadata"]
            merged, clashes = _merge_keys(base["metadata"], live_metadata, file["metadata"])
            self.conflicts += [
                Conflict(None, f"notebook metadata {key!r} changed live and in the file: "
                         "the file's kept", _show(live_metadata.get(key, _MISSING)))
                for key in clashes
            ]
            self.changed |= _sync_map(ymap, live_metadata, merged)


class _Planner:
    """Decides the merged cell list: LIVE's cells in LIVE's order, with FILE's structural
    changes (insertions, removals, moves) applied relative to the cells around them.

    Indices: ``i`` in BASE, ``j`` in FILE, ``at`` in LIVE.
    """

    def __init__(
        self,
        merge: _NotebookMerge,
        base: list[dict[str, Any]],
        file: list[dict[str, Any]],
        to_file: dict[int, int],
        to_live: dict[int, int],
    ):
        self.merge, self.base, self.file = merge, base, file
        self.to_file, self.to_live = to_file, to_live
        self.from_file = {j: i for i, j in to_file.items()}
        self.from_live = {at: i for i, at in to_live.items()}
        self.unmoved = _longest_increasing([self.from_file[j] for j in sorted(self.from_file)])
        self.file_to_new_live = self._new_on_both_sides()
        self.new_live_to_file = {at: j for j, at in self.file_to_new_live.items()}

    def _new_on_both_sides(self) -> dict[int, int]:
        """Cells absent from BASE that FILE and LIVE both have (same id): one cell, not two.

        That happens when the file was written from this document by someone else (another
        server) after our base was taken.
        """
        live_new = {}
        for at, cell_id in enumerate(self.merge.live_ids):
            if at not in self.from_live and isinstance(cell_id, str):
                live_new.setdefault(cell_id, at)
        return {
            j: live_new[cell["id"]]
            for j, cell in enumerate(self.file)
            if j not in self.from_file and cell.get("id") in live_new
        }

    def plan(self) -> list[_Keep | _Insert]:
        placed = self._placed_file_cells()
        plan: list[_Keep | _Insert] = list(placed.get(None, []))
        for at in range(len(self.merge.ycells)):
            plan += self._live_entry(at)
            plan += placed.get(at, [])
        return plan

    def _placed_file_cells(self) -> dict[int | None, list[_Keep | _Insert]]:
        """FILE cells that are not already in place live, by the live cell they follow."""
        placed: dict[int | None, list[_Keep | _Insert]] = {}
        anchor: int | None = None  # the live cell after which the next one goes (None: first)
        for j, cell in enumerate(self.file):
            i = self.from_file.get(j)
            live = self.to_live.get(i) if i is not None else self.file_to_new_live.get(j)
            if live is not None and (i is None or i in self.unmoved):
                anchor = live
                continue
            entry = self._file_entry(i, cell, live)
            if entry is not None:
                placed.setdefault(anchor, []).append(entry)
        return placed

    def _file_entry(self, i: int | None, cell: dict[str, Any], live: int | None) -> _Insert | None:
        if i is None:  # added in the file
            return _Insert(cell)
        cell_id = cell.get("id")
        if live is None:  # deleted live
            if _same_content(self.base[i], cell):
                return None  # the file did not touch it: the deletion stands
            self.merge.conflicts.append(
                Conflict(cell_id, "deleted live but changed in the file: restored from the file")
            )
            return _Insert(cell)
        return _Insert(self._merged(i, cell, live))  # moved in the file

    def _live_entry(self, at: int) -> list[_Keep | _Insert]:
        i = self.from_live.get(at)
        if i is None:
            j = self.new_live_to_file.get(at)
            if j is None:
                return [_Keep(at)]  # added by a collaborator
            live = self.merge.live_cell(at)
            if not _same_content(live, self.file[j]):
                self.merge.conflicts.append(Conflict(
                    live.get("id"), "added live and in the file, differently: the file's kept",
                    live["source"]))
            return [_Keep(at, live, self.file[j])]
        j = self.to_file.get(i)
        if j is None:  # removed in the file
            live = self.merge.live_cell(at)
            if not _same_content(live, self.base[i]):
                self.merge.conflicts.append(Conflict(
                    live.get("id"), "removed in the file but edited live: removed", live["source"]))
            return []
        if i not in self.unmoved:
            return []  # moved: inserted at its new place
        base, file = self.base[i], self.file[j]
        if base == file:
            return [_Keep(at)]
        retyped = base.get("cell_type") != file.get("cell_type")
        if retyped and self.merge.ycells[at].get("cell_type") != file.get("cell_type"):
            return [_Insert(self._merged(i, file, at))]  # front ends build a cell by its type
        return [_Keep(at, base, file)]

    def _merged(self, i: int, file: dict[str, Any], live: int) -> dict[str, Any]:
        """The three-way merged content of a cell that is recreated, with its id."""
        merged, conflicts = _merge_cell(self.base[i], self.merge.live_cell(live), file)
        self.merge.conflicts += conflicts
        return merged


_CODE_ONLY = ("outputs", "execution_count")


def _merge_cell(
    base: dict[str, Any], live: dict[str, Any], file: dict[str, Any]
) -> tuple[dict[str, Any], list[Conflict]]:
    """Three-way merge of one cell: source by text, metadata by key, other fields as values.

    A field the file did not change keeps its live value (a collaborator's run of the cell
    keeps its outputs); a field both changed differently takes the file's and is reported.
    """
    cell_id = file.get("id") or live.get("id")
    merged, clashes = _merge_keys(_plain_fields(base), _plain_fields(live), _plain_fields(file))
    conflicts = [
        Conflict(cell_id, f"{key} changed live and in the file: the file's kept",
                 _show(live.get(key, _MISSING)))
        for key in clashes
    ]
    merged["source"] = live.get("source", "")
    if base["source"] != file["source"]:
        merged["source"], clashed = merge_text(base["source"], merged["source"], file["source"])
        conflicts += [replace(c, cell_id=cell_id) for c in clashed]
    live_metadata = live.get("metadata")
    merged["metadata"] = live_metadata = live_metadata if isinstance(live_metadata, dict) else {}
    if base["metadata"] != file["metadata"]:
        merged["metadata"], keys = _merge_keys(base["metadata"], live_metadata, file["metadata"])
        conflicts += [
            Conflict(cell_id, f"metadata {key!r} changed live and in the file: the file's kept",
                     _show(live_metadata.get(key, _MISSING)))
            for key in keys
        ]
    if "id" not in merged and live.get("id"):
        merged["id"] = live["id"]  # a file without ids (nbformat < 4.5): a cell keeps its own
    if merged.get("cell_type") != "code":
        for key in _CODE_ONLY:  # e.g. retyped live while the file changed its outputs
            merged.pop(key, None)
    return merged, conflicts


def _plain_fields(cell: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cell.items() if k not in ("source", "metadata")}


def _merge_keys(
    base: Mapping[str, Any], live: Mapping[str, Any], file: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Key-wise three-way merge of dicts: the file's changed keys win; the keys both changed."""
    merged = dict(live)
    clashes = []
    for key in sorted(base.keys() | file.keys(), key=str):
        before, after = base.get(key, _MISSING), file.get(key, _MISSING)
        if before == after:
            continue
        now = live.get(key, _MISSING)
        if now == after:
            continue
        if now != before:
            clashes.append(key)
        if after is _MISSING:
            del merged[key]
        else:
            merged[key] = after
    return merged, clashes


def _show(value: Any) -> str:
    """A live value for a conflict's ``overwritten``."""
    if value is _MISSING or value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


# -- matching cells


def _match(
    a_ids: list[Any],
    a_keys: list[CellKey],
    b_ids: list[Any],
    b_keys: Callable[[], list[CellKey]],
    *,
    regenerated: bool = True,
) -> dict[int, int]:
    """Pairs (index in a → index in b) of the same cell in two versions of a notebook.

    By id when both sides have unique ids, otherwise (nbformat < 4.5) by position and
    content. ``regenerated``: sides that share no id at all had their ids rewritten (by
    a tool), so match them by content too.
    """
    if _ids_usable(a_ids) and _ids_usable(b_ids):
        where = {cell_id: j for j, cell_id in enumerate(b_ids)}
        pairs = {i: where[cell_id] for i, cell_id in enumerate(a_ids) if cell_id in where}
        if pairs or not regenerated:
            return pairs
    return _match_by_content(a_keys, b_keys())


def _ids_usable(ids: list[Any]) -> bool:
    return len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids)


def _match_by_content(a: list[CellKey], b: list[CellKey]) -> dict[int, int]:
    """Identical runs of cells pair up; in between, cells of one type with similar sources."""
    pairs: dict[int, int] = {}
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            pairs.update(zip(range(i1, i2), range(j1, j2)))
        elif tag == "replace":
            pairs.update(_pair_similar(a, i1, i2, b, j1, j2))
    return pairs


def _pair_similar(
    a: list[CellKey], i1: int, i2: int, b: list[CellKey], j1: int, j2: int
) -> dict[int, int]:
    """In order, each cell of a[i1:i2] with the next similar one of b[j1:j2] (a one-for-one
    swap of cells of the same type pairs whatever the sources: an edit, not a delete+add)."""
    if i2 - i1 == 1 and j2 - j1 == 1:
        return {i1: j1} if a[i1][0] == b[j1][0] else {}
    budget = _MAX_PAIRINGS
    pairs: dict[int, int] = {}
    start = j1
    for i in range(i1, i2):
        for j in range(start, j2):
            budget -= 1
            if a[i][0] == b[j][0] and _similar(a[i][1], b[j][1]):
                pairs[i], start = j, j + 1
                break
        if budget <= 0:
            break
    return pairs


def _similar(x: str, y: str) -> bool:
    matcher = SequenceMatcher(None, x, y, autojunk=False)
    return (  # the cheap upper bounds first
        matcher.real_quick_ratio() >= _SIMILAR
        and matcher.quick_ratio() >= _SIMILAR
        and matcher.ratio() >= _SIMILAR
    )


def _longest_increasing(seq: list[int]) -> set[int]:
    """The values of one longest increasing subsequence: the cells the file did not move
    (the fewest cells are then taken for moved)."""
    tails: list[int] = []  # smallest last value of an increasing run of each length
    ends: list[int] = []  # its position in seq
    before = [-1] * len(seq)
    for k, value in enumerate(seq):
        p = bisect_left(tails, value)
        if p == len(tails):
            tails.append(value)
            ends.append(k)
        else:
            tails[p], ends[p] = value, k
        before[k] = ends[p - 1] if p else -1
    out = set()
    k = ends[-1] if ends else -1
    while k != -1:
        out.add(seq[k])
        k = before[k]
    return out


# -- writing LIVE


def _sync_ycell(ycell: Map, live: dict[str, Any], target: dict[str, Any]) -> bool:
    """Edit a Y cell from ``live`` to ``target``, touching only the fields that differ."""
    changed = False
    for key in sorted(live.keys() | target.keys()):
        old, new = live.get(key, _MISSING), target.get(key, _MISSING)
        if old == new:
            continue
        changed = True
        current = ycell.get(key)
        if new is _MISSING:
            del ycell[key]
        elif key == "source" and isinstance(current, Text):
            apply_text(current, new)
        elif key == "metadata" and isinstance(current, Map):
            _sync_map(current, old if isinstance(old, dict) else current.to_py() or {}, new)
        elif key == "outputs" and isinstance(current, Array):
            current.clear()
            current.extend(_youtputs(new))
        else:
            ycell[key] = _shared_value(key, new)
    return changed


def _sync_map(ymap: Map, live: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    changed = False
    for key in live.keys() - target.keys():
        del ymap[key]
        changed = True
    for key, value in target.items():
        if live.get(key, _MISSING) != value:
            ymap[key] = value
            changed = True
    return changed


def _shared_value(key: str, value: Any) -> Any:
    """A cell field as jupyter-ydoc stores it (source a Text, metadata a Map, outputs an Array)."""
    if key == "source":
        return Text(value)
    if key == "metadata" and isinstance(value, dict):
        return Map(value)
    if key == "outputs" and isinstance(value, list):
        return Array(_youtputs(value))
    return value


def _youtputs(outputs: list[dict[str, Any]]) -> list[Map]:
    """Outputs as jupyter-ydoc stores them: a Map each, a stream's text a Text."""
    youtputs = []
    for output in outputs:
        output = dict(output)
        if output.get("output_type") == "stream":
            output["text"] = Text(_joined(output.get("text", "")))
        youtputs.append(Map(output))
    return youtputs
