"""A room's base (the content it last saved or loaded) is kept as nested tuples: the same
content matches whatever the key order, any change does not, the content comes back equal,
and after a few collections the garbage collector has nothing of it to walk."""

from __future__ import annotations

import gc

import pytest

from jupyter_ystore.core.content import file_document
from jupyter_ystore.server.rooms.filesync import decode_base, encode_base
from jupyter_ystore.server.rooms.frozen_content import FrozenContent


def notebook(cells: int = 40) -> dict:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [],
    }
    for i in range(cells):
        outputs = [
            {"output_type": "stream", "name": "stdout", "text": f"line {i}\n"},
            {"output_type": "execute_result", "execution_count": i, "metadata": {}, "data": {"text/plain": "ü €"}},
        ]
        nb["cells"].append(
            {"cell_type": "code", "id": f"c{i}", "metadata": {"tags": ["a"]}, "execution_count": i, "source": f"x = {i}", "outputs": outputs}
        )
    return file_document("notebook", nb).get()


def reordered(value):
    """The same content with every dict's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def tracked_in(value) -> int:
    """Containers in ``value`` that the garbage collector still tracks."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            count += gc.is_tracked(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return count


def test_a_notebook_is_kept_as_nothing_the_collector_walks():
    content = notebook()
    frozen = FrozenContent(content)
    for _ in range(8):  # each full collection untracks one more level of tuples
        gc.collect()
    assert tracked_in(frozen._tree) == 0
    assert tracked_in(content) > 80  # the same content as dicts and lists: its lists stay
    again = frozen.content()
    assert again == content and again is not content
    assert frozen.matches(content)
    assert frozen.matches(reordered(content))
    assert frozen == FrozenContent(reordered(content))


@pytest.mark.parametrize(
    "change",
    [
        lambda nb: nb["cells"][3].__setitem__("source", "x = 3 "),
        lambda nb: nb["cells"][5]["outputs"].pop(),
        lambda nb: nb["cells"].pop(),
        lambda nb: nb["metadata"].__setitem__("new", 1),
        lambda nb: nb["cells"][0]["metadata"]["tags"].append("b"),
        lambda nb: nb["cells"][1].__setitem__("execution_count", None),
        lambda nb: nb["cells"].insert(0, nb["cells"].pop(2)),  # cells in another order
        lambda nb: nb["cells"][2]["outputs"][0].__setitem__("text", ["line 2\n"]),
    ],
)
def test_any_change_does_not_match(change):
    content = notebook()
    frozen = FrozenContent(content)
    changed = frozen.content()
    change(changed)
    assert not frozen.matches(changed)
    assert frozen != FrozenContent(changed)


@pytest.mark.parametrize("content", ["print('hi')\n", "", b"\x00\x01binary", None])
def test_text_and_bytes_are_kept_as_they_are(content):
    frozen = FrozenContent(content)
    assert frozen.content() is content
    assert frozen.matches(content)
    assert not frozen.matches({"cells": []})
    assert FrozenContent({"a": 1}).matches(content) is False


@pytest.mark.parametrize("content", [notebook(5), "text\n", b"\xffbytes"])
def test_the_stored_base_decodes_to_the_same_content(content):
    frozen = FrozenContent(content)
    assert decode_base(encode_base(frozen)) == content
    assert decode_base(encode_base(frozen)) == decode_base(encode_base(content))
