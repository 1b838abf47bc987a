"""A stored document's content: what its roots are, how to export it, how to set it back.

A Yjs update does not say which type a root is (Text, Array or Map): a reader declares it.
Jupyter documents have known roots (jupyter-ydoc: ``cells``/``meta`` for notebooks, ``source``
for text files, ``state`` for both); anything else is found by looking at which view of the
root holds the content. Restoring builds the update that turns the current content into an
older one inside one transaction, so it goes on top of the history like any edit.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Union

import pycrdt
from pycrdt import Array, Doc, Map, Text

from jupyter_ystore.core.keys import key_document_type
from jupyter_ystore.core.ydoc import crdt_errors

SharedType = Union[Text, Array, Map]

#: Roots whose type jupyter-ydoc fixes (YBlob's ``source`` is a Map; found by probing).
KNOWN_ROOTS: dict[str, type] = {"cells": Array, "meta": Map, "state": Map}

#: Export kinds: what ``export`` writes and the file extension it suggests.
KINDS = ("notebook", "text", "blob", "json")


class ContentError(ValueError):
    """The document's content cannot be exported or restored as asked."""


def file_document(file_type: str, content: Any) -> Any:
    """A file's ``content`` as a jupyter_ydoc document of ``file_type`` in a fresh pycrdt
    document with client id 0: the same content always gives the same history, so servers
    loading one file at once write identical updates."""
    from jupyter_ydoc import ydocs

    doc = ydocs.get(file_type, ydocs["file"])(Doc(client_id=0))
    doc.set(content)
    return doc


def shared_document(file_type: str, ydoc: Doc) -> Any:
    """The jupyter_ydoc document of ``file_type`` over ``ydoc`` for a server's room: without
    the undo history jupyter_ydoc keeps.

    jupyter_ydoc gives each document an ``UndoManager`` that records every change made without
    a transaction origin. In a room that is every user's every keystroke, one stack item each,
    kept until the room closes: about 440 bytes a keystroke (200,000 remote updates grew the
    process by 95 MiB, by 8 without it, measured), and an undo on the server would revert
    other people's typing. The room's document gets a manager that tracks nothing, so the
    recording one is dropped (with its observer of the document)."""
    from jupyter_ydoc import ydocs

    document = ydocs.get(file_type, ydocs["file"])(ydoc)
    if hasattr(document, "_undo_manager"):
        document._undo_manager = pycrdt.UndoManager(capture_timeout_millis=0)
    return document


def doc_from_update(update: bytes) -> Doc:
    doc = Doc()
    if update:
        with crdt_errors():  # a panic of yrs on stored bytes is an error, not an exit
            doc.apply_update(update)
    return doc


def root_types(update: bytes) -> dict[str, type]:
    """Each root of the document in ``update`` and its type (Text, Array or Map).

    Probing: a root's keyed entries show only through a Map view, its characters through a
    Text view, other sequence items through an Array view. Each view is taken on a fresh
    document, because declaring a root's type is not undone. Empty roots are left out.
    """
    names = list(doc_from_update(update).keys())
    types: dict[str, type] = {}
    for name in names:
        if name in KNOWN_ROOTS:
            types[name] = KNOWN_ROOTS[name]
            continue
        if len(doc_from_update(update).get(name, type=Map)) > 0:
            types[name] = Map
        elif str(doc_from_update(update).get(name, type=Text)):
            types[name] = Text
        elif len(doc_from_update(update).get(name, type=Array)) > 0:
            types[name] = Array
    return types


def typed_roots(doc: Doc, types: dict[str, type]) -> dict[str, SharedType]:
    return {name: doc.get(name, type=kind) for name, kind in types.items()}


def to_py(update: bytes) -> dict[str, Any]:
    """Every non-empty root as plain Python (the form compared by tests and ``--format json``).

    An empty root and a missing one are the same content (Yjs roots exist once named), so
    empty roots are left out.
    """
    doc = doc_from_update(update)
    roots = typed_roots(doc, root_types(update))
    return {name: value for name, root in roots.items() if (value := root.to_py()) not in ("", [], {}, None)}


# ---------------------------------------------------------------------------- export


def _looks_like_notebook(doc: Doc, types: dict[str, type]) -> bool:
    if types.get("cells") is not Array:
        return False
    cells = doc.get("cells", type=Array)
    if not all(isinstance(cell, Map) for cell in cells):
        return False
    # An empty cell list is a notebook only when the notebook metadata says so.
    return len(cells) > 0 or (types.get("meta") is Map and "nbformat" in doc.get("meta", type=Map))


def detect_kind(key: str, update: bytes) -> str:
    """What to export: the key's type when the content fits it, else what the content is.

    ``notebook`` needs a ``cells`` Array of Maps, ``text`` a ``source`` Text, ``blob`` a
    ``source`` Map; anything else (e.g. documents of other tools) is exported as JSON of
    all its roots, which loses nothing.
    """
    types = root_types(update)
    doc = doc_from_update(update)
    fits = {
        "notebook": _looks_like_notebook(doc, types),
        "text": types.get("source") is Text and "cells" not in types,
        "blob": types.get("source") is Map and "cells" not in types,
    }
    declared = key_document_type(key)
    aliases = {"file": "text", "unicode": "text", "notebook": "notebook", "blob": "blob"}
    wanted = aliases.get(declared or "")
    if wanted and fits[wanted]:
        return wanted
    for kind in ("notebook", "text", "blob"):
        if fits[kind]:
            return kind
    return "json"


def export(update: bytes, kind: str) -> bytes:
    """The document in ``update`` as file bytes of ``kind`` (see ``KINDS``)."""
    if kind not in KINDS:
        raise ContentError(f"unknown export format {kind!r} (choose from {', '.join(KINDS)})")
    doc = doc_from_update(update)
    if kind == "json":
        return (json.dumps(to_py(update), indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()
    from jupyter_ydoc import YBlob, YNotebook, YUnicode

    if kind == "notebook":
        if not _looks_like_notebook(doc, root_types(update)):
            raise ContentError("the document is not a notebook (no 'cells' array of cell maps)")
        ynotebook = YNotebook(doc)
        try:
            # deduplicate=False: reading must not write new cell ids into the document.
            notebook = ynotebook.get(deduplicate=False)
        except TypeError:  # jupyter-ydoc before 4.x has no such option (and does not write)
            notebook = ynotebook.get()
        return (json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()
    if kind == "text":
        return YUnicode(doc).get().encode("utf-8")
    value = YBlob(doc).get()
    return bytes(value)


# ---------------------------------------------------------------------------- restore


def reset_update(current: bytes, target: bytes, skip: Collection[str] = ()) -> bytes | None:
    """The update that turns the document ``current`` into the content of ``target``.

    Both are whole-document updates. The returned update is a normal edit on top of
    ``current`` (made in one transaction, as small as a common prefix/suffix diff makes it),
    so clients that hold ``current`` merge it like any other change and history is kept.
    Roots named in ``skip`` keep their current content (the timeline leaves the ``state``
    map, which holds the file's hash, as it is). Returns None when the content is already
    equal.
    """
    doc = doc_from_update(current)
    before = doc.get_state()
    current_types = {k: v for k, v in root_types(current).items() if k not in skip}
    target_types = {k: v for k, v in root_types(target).items() if k not in skip}
    target_doc = doc_from_update(target)
    with doc.transaction(origin="jupyter-ystore restore"):
        for name in sorted(set(current_types) | set(target_types)):
            kind = target_types.get(name) or current_types[name]
            if name in current_types and current_types[name] is not kind:
                raise ContentError(
                    f"root {name!r} changed type ({current_types[name].__name__} → "
                    f"{kind.__name__}); it cannot be restored in place"
                )
            root = doc.get(name, type=kind)
            if name in target_types:
                _sync(root, target_doc.get(name, type=kind))
            else:
                _clear(root)
    update = doc.get_update(before)
    if to_py(doc.get_update()) == to_py(current):
        return None
    return update


def _clear(root: SharedType) -> None:
    if isinstance(root, Map):
        for key in list(root.keys()):
            del root[key]
    elif len(root):
        del root[0 : len(root)]


def _same(a: Any, b: Any) -> bool:
    """Same kind (same shared type, or both plain values) and same content."""
    shared = (Text, Array, Map)
    a_kind = type(a) if isinstance(a, shared) else None
    b_kind = type(b) if isinstance(b, shared) else None
    if a_kind is not b_kind:
        return False
    if a_kind is None:
        return a == b and type(a) is type(b)
    return a.to_py() == b.to_py()


def _prelim(value: Any) -> Any:
    """A copy of ``value`` that can be inserted into another document."""
    if isinstance(value, Text):
        return Text(str(value))
    if isinstance(value, Map):
        return Map({key: _prelim(item) for key, item in value.items()})
    if isinstance(value, Array):
        return Array([_prelim(item) for item in value])
    if isinstance(value, (pycrdt.XmlFragment, pycrdt.XmlElement, pycrdt.XmlText)):
        raise ContentError("XML content cannot be restored by this tool")
    return value


def _sync(current: Any, target: Any) -> None:
    if isinstance(current, Text):
        _sync_text(current, str(target))
    elif isinstance(current, Map):
        _sync_map(current, target)
    elif isinstance(current, Array):
        _sync_array(current, target)


def _sync_text(text: Text, target: str) -> None:
    source = str(text)
    if source == target:
        return
    prefix = 0
    limit = min(len(source), len(target))
    while prefix < limit and source[prefix] == target[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < limit - prefix
        and source[len(source) - 1 - suffix] == target[len(target) - 1 - suffix]
    ):
        suffix += 1
    # pycrdt counts Text positions in UTF-8 bytes.
    start = len(source[:prefix].encode("utf-8"))
    end = len(source[: len(source) - suffix].encode("utf-8"))
    if end > start:
        del text[start:end]
    insert = target[prefix : len(target) - suffix]
    if insert:
        text.insert(start, insert)


def _sync_map(current: Map, target: Map) -> None:
    target_keys = set(target.keys())
    for key in list(current.keys()):
        if key not in target_keys:
            del current[key]
    for key in sorted(target_keys):
        wanted = target[key]
        have = current.get(key) if key in current else _MISSING
        if have is _MISSING:
            current[key] = _prelim(wanted)
        elif _same(have, wanted):
            continue
        elif type(have) is type(wanted) and isinstance(have, (Text, Map, Array)):
            _sync(have, wanted)
        else:
            current[key] = _prelim(wanted)


_MISSING = object()


def _sync_array(current: Array, target: Array) -> None:
    have = list(current)
    want = list(target)
    prefix = 0
    limit = min(len(have), len(want))
    while prefix < limit and _same(have[prefix], want[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(have[len(have) - 1 - suffix], want[len(want) - 1 - suffix]):
        suffix += 1
    old_middle = have[prefix : len(have) - suffix]
    new_middle = want[prefix : len(want) - suffix]
    if len(old_middle) == len(new_middle) and all(
        type(a) is type(b) and isinstance(a, (Text, Map, Array)) for a, b in zip(old_middle, new_middle)
    ):
        # Same shape (e.g. one cell edited): edit each element in place, keeping its identity.
        for a, b in zip(old_middle, new_middle):
            _sync(a, b)
        return
    if old_middle:
        del current[prefix : prefix + len(old_middle)]
    for offset, item in enumerate(new_middle):
        current.insert(prefix + offset, _prelim(item))
