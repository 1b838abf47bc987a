"""The three-way merge of a file changed on disk into the live document (jupyter_ystore.merge)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from jupyter_ydoc import YFile, YNotebook, YUnicode
from pycrdt import Doc, Map, Text

from jupyter_ystore.core.merge import Conflict, apply_text, merge_into, merge_text


# ---------------------------------------------------------------------------- helpers


def cell(
    cell_id: str | None, source: str | list[str], cell_type: str = "code", **fields: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"cell_type": cell_type, "source": source, "metadata": {}}
    if cell_id is not None:
        out["id"] = cell_id
    if cell_type == "code":
        out.setdefault("outputs", [])
        out.setdefault("execution_count", None)
    out.update(fields)
    return out


def notebook(
    *cells: dict[str, Any], metadata: dict[str, Any] | None = None, minor: int = 5
) -> dict[str, Any]:
    return {"cells": list(cells), "metadata": metadata or {}, "nbformat": 4,
            "nbformat_minor": minor}


def live_notebook(content: dict[str, Any]) -> YNotebook:
    """A live document loaded from ``content``, the way a room loads a file."""
    document = YNotebook(Doc())
    document.set(copy.deepcopy(content))
    return document


def roundtrip(content: dict[str, Any]) -> dict[str, Any]:
    """``content`` as jupyter-ydoc gives it back (what LIVE must equal after a clean merge)."""
    return live_notebook(content).get()


def same_as_file(live: YNotebook, file: dict[str, Any]) -> bool:
    """LIVE equals FILE as jupyter-ydoc loads it (which gives a notebook without cells one,
    with a random id: that id is not compared)."""
    content, expected = live.get(), roundtrip(file)
    if not file["cells"]:
        for c in content["cells"] + expected["cells"]:
            c.pop("id", None)
    return content == expected


def sources(document: YNotebook) -> list[str]:
    return [c["source"] for c in document.get()["cells"]]


def ids(document: YNotebook) -> list[str]:
    return [c["id"] for c in document.get()["cells"]]


def find(document: YNotebook, cell_id: str) -> dict[str, Any]:
    (found,) = [c for c in document.get()["cells"] if c.get("id") == cell_id]
    return found


def ytext_of(document: YNotebook, cell_id: str) -> Text:
    (ycell,) = [y for y in document.ycells if y.get("id") == cell_id]
    return ycell["source"]


def edit_live(document: YNotebook, cell_id: str, new_source: str) -> None:
    """A collaborator's edit since the last save."""
    apply_text(ytext_of(document, cell_id), new_source)


class Updates:
    """The Yjs updates a document emits (one per committed transaction that changed it)."""

    def __init__(self, ydoc: Doc):
        self.ydoc = ydoc
        self.updates: list[bytes] = []
        self.subscription = ydoc.observe(lambda event: self.updates.append(event.update))

    def __enter__(self) -> list[bytes]:
        return self.updates

    def __exit__(self, *exc: Any) -> None:
        self.ydoc.unobserve(self.subscription)


def text_edits_observed(ytext: Text) -> tuple[list[dict[str, Any]], Any]:
    deltas: list[dict[str, Any]] = []
    subscription = ytext.observe(lambda event: deltas.extend(event.delta))
    return deltas, subscription


BASE = notebook(
    cell("a", "import os\n"),
    cell("b", "x = 1\ny = 2\nprint(x + y)\n"),
    cell("c", "# Title\n", "markdown"),
    cell("d", "z = 3\n"),
)


# ---------------------------------------------------------------------------- text merge


def test_merge_text_keeps_edits_on_both_sides_that_do_not_touch() -> None:
    base = "a = 1\nb = 2\nc = 3\nd = 4\n"
    live = "a = 10\nb = 2\nc = 3\nd = 4\n"
    file = "a = 1\nb = 2\nc = 3\nd = 40\n"
    merged, conflicts = merge_text(base, live, file)
    assert merged == "a = 10\nb = 2\nc = 3\nd = 40\n"
    assert conflicts == []


def test_merge_text_edits_of_one_line_that_do_not_touch_both_survive() -> None:
    merged, conflicts = merge_text("total = a + b\n", "total = a + b + c\n", "sum = a + b\n")
    assert merged == "sum = a + b + c\n"
    assert conflicts == []


def test_merge_text_same_span_file_wins_and_reports_the_live_text() -> None:
    merged, conflicts = merge_text("x = 1\nkeep\n", "x = 2\nkeep\n", "x = 3\nkeep\n")
    assert merged == "x = 3\nkeep\n"
    assert conflicts == [Conflict(None, conflicts[0].description, "x = 2\n")]
    assert "line 1" in conflicts[0].description


def test_merge_text_same_change_on_both_sides_is_no_conflict() -> None:
    assert merge_text("a\nb\n", "a\nB\n", "a\nB\n") == ("a\nB\n", [])


def test_merge_text_conflict_names_live_lines() -> None:
    base = "one\ntwo\nthree\n"
    live = "zero\none\ntwo!\nthree\n"  # a line added above, so the clash is on live line 3
    merged, conflicts = merge_text(base, live, "one\n2\nthree\n")
    assert merged == "zero\none\n2\nthree\n"
    assert [c.overwritten for c in conflicts] == ["two!\n"]
    assert "line 3" in conflicts[0].description


# ---------------------------------------------------------------------------- apply_text


def test_apply_text_uses_minimal_edits_with_non_ascii_and_emoji() -> None:
    doc = Doc()
    ytext = doc.get("source", type=Text)
    ytext += "héllo 😀 wörld\nsecond líne\n"
    deltas, _ = text_edits_observed(ytext)
    assert apply_text(ytext, "héllo 😃 wörld!\nsecond líne\n")
    assert str(ytext) == "héllo 😃 wörld!\nsecond líne\n"
    inserted = "".join(d["insert"] for d in deltas if "insert" in d)
    deleted = sum(d["delete"] for d in deltas if "delete" in d)
    assert inserted == "😃!"  # only what changed: not the line, not the text
    assert deleted == len("😀".encode())  # pycrdt counts UTF-8 bytes
    assert not apply_text(ytext, str(ytext))


@pytest.mark.parametrize(
    "old,new",
    [
        ("", "añadido 🎉"),
        ("🎉🎉🎉", ""),
        ("a😀b😀c", "a😀X😀c"),
        ("👩‍👩‍👧 family\n", "👩‍👩‍👦 family\n"),  # one grapheme, several code points
        ("日本語のテキスト\n二行目\n", "日本語テキスト\n二行目です\n"),
        ("x" * 50 + "é\n" * 30, "é\n" * 30 + "y" * 50),
    ],
)
def test_apply_text_reaches_the_target_string(old: str, new: str) -> None:
    doc = Doc()
    ytext = doc.get("source", type=Text)
    ytext += old
    apply_text(ytext, new)
    assert str(ytext) == new


# ---------------------------------------------------------------------------- notebooks


def test_cells_are_matched_by_id_and_edited_in_place() -> None:
    live = live_notebook(BASE)
    # a collaborator adds a cell at the top: positions shift, ids do not
    live.ycells.insert(0, live.create_ycell(cell("new", "added live\n")))
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 20\nprint(x + y)\n"
    deltas, _ = text_edits_observed(ytext_of(live, "b"))

    result = merge_into(live, BASE, file)

    assert result.changed and result.conflicts == []
    assert ids(live) == ["new", "a", "b", "c", "d"]
    assert find(live, "b")["source"] == "x = 1\ny = 20\nprint(x + y)\n"
    assert "".join(d.get("insert", "") for d in deltas) == "0"  # the same Y.Text, one character


def test_cells_without_ids_are_matched_by_position_and_content() -> None:
    base = notebook(
        cell(None, "import os\n"),
        cell(None, "def f(x):\n    return x * 2\n"),
        cell(None, "f(3)\n"),
        minor=4,
    )
    live = live_notebook(base)
    edit_live(live, live.ycells[0]["id"], "import os\nimport sys\n")  # a collaborator
    live_ids = [y["id"] for y in live.ycells]
    file = copy.deepcopy(base)
    file["cells"][1]["source"] = "def f(x):\n    return x * 3\n"
    file["cells"].insert(1, cell(None, "# helpers\n", "markdown"))
    deltas, _ = text_edits_observed(ytext_of(live, live_ids[1]))

    result = merge_into(live, base, file)

    assert result.conflicts == []
    assert sources(live) == [
        "import os\nimport sys\n", "# helpers\n", "def f(x):\n    return x * 3\n", "f(3)\n"
    ]
    assert [y["id"] for y in live.ycells if y["id"] in live_ids] == live_ids  # kept, not recreated
    assert [d.get("insert") for d in deltas if "insert" in d] == ["3"]
    assert "id" not in live.get()["cells"][0]  # still an nbformat 4.4 notebook


def test_source_edits_on_both_sides_of_one_cell_both_survive() -> None:
    live = live_notebook(BASE)
    edit_live(live, "b", "x = 100\ny = 2\nprint(x + y)\n")
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 2\nprint(x * y)\n"

    result = merge_into(live, BASE, file)

    assert result.conflicts == []
    assert find(live, "b")["source"] == "x = 100\ny = 2\nprint(x * y)\n"


def test_same_span_edited_on_both_sides_file_wins_with_a_conflict() -> None:
    live = live_notebook(BASE)
    edit_live(live, "b", "x = 1\ny = 'live'\nprint(x + y)\n")
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 'file'\nprint(x + y)\n"

    result = merge_into(live, BASE, file)

    assert find(live, "b")["source"] == "x = 1\ny = 'file'\nprint(x + y)\n"
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.cell_id == "b"
    assert conflict.overwritten == "y = 'live'\n"
    assert "line 2" in conflict.description


def test_cell_added_in_the_file_goes_between_its_neighbours() -> None:
    live = live_notebook(BASE)
    live.ycells.append(live.create_ycell(cell("tail", "added live at the end\n")))
    file = copy.deepcopy(BASE)
    file["cells"].insert(2, cell("n1", "new one\n"))
    file["cells"].insert(3, cell("n2", "new two\n", "markdown"))
    file["cells"].insert(0, cell("n0", "new first\n"))

    result = merge_into(live, BASE, file)

    assert result.changed and result.conflicts == []
    assert ids(live) == ["n0", "a", "b", "n1", "n2", "c", "d", "tail"]
    assert find(live, "n2") == roundtrip(notebook(cell("n2", "new two\n", "markdown")))["cells"][0]


def test_cell_removed_in_the_file_is_removed_live() -> None:
    live = live_notebook(BASE)
    file = copy.deepcopy(BASE)
    del file["cells"][2]

    result = merge_into(live, BASE, file)

    assert result.changed and result.conflicts == []
    assert ids(live) == ["a", "b", "d"]


def test_cell_removed_in_the_file_but_edited_live_is_removed_with_a_conflict() -> None:
    live = live_notebook(BASE)
    edit_live(live, "c", "# Title, edited live\n")
    file = copy.deepcopy(BASE)
    del file["cells"][2]

    result = merge_into(live, BASE, file)

    assert ids(live) == ["a", "b", "d"]
    conflicts = [(c.cell_id, c.overwritten) for c in result.conflicts]
    assert conflicts == [("c", "# Title, edited live\n")]
    assert "removed" in result.conflicts[0].description


def test_cell_moved_in_the_file_is_moved_with_its_id_and_live_edits() -> None:
    live = live_notebook(BASE)
    edit_live(live, "d", "z = 3\nz += 1\n")
    file = copy.deepcopy(BASE)
    moved = file["cells"].pop(3)
    moved["source"] = "# first\nz = 3\n"
    file["cells"].insert(0, moved)

    result = merge_into(live, BASE, file)

    assert result.conflicts == []
    assert ids(live) == ["d", "a", "b", "c"]
    assert find(live, "d")["source"] == "# first\nz = 3\nz += 1\n"
    # only the moved cell was recreated: the others keep their Y objects
    assert len(live.ycells) == 4


def test_cell_deleted_live_but_changed_in_the_file_comes_back_with_a_conflict() -> None:
    live = live_notebook(BASE)
    del live.ycells[1]  # a collaborator deletes b
    unchanged_delete = live_notebook(BASE)
    del unchanged_delete.ycells[1]
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 3\nprint(x + y)\n"
    other_change = copy.deepcopy(BASE)
    other_change["cells"][3]["source"] = "z = 4\n"

    result = merge_into(live, BASE, file)
    quiet = merge_into(unchanged_delete, BASE, other_change)

    assert ids(live) == ["a", "b", "c", "d"]
    assert find(live, "b")["source"] == "x = 1\ny = 3\nprint(x + y)\n"
    assert [c.cell_id for c in result.conflicts] == ["b"]
    assert ids(unchanged_delete) == ["a", "c", "d"]  # the file did not touch b: deletion stands
    assert quiet.conflicts == []


def test_cells_added_by_collaborators_survive_in_place() -> None:
    live = live_notebook(BASE)
    live.ycells.insert(2, live.create_ycell(cell("mine", "typed live\n")))
    file = copy.deepcopy(BASE)
    file["cells"][0]["source"] = "import os, sys\n"
    del file["cells"][3]

    merge_into(live, BASE, file)

    assert ids(live) == ["a", "b", "mine", "c"]
    assert find(live, "mine")["source"] == "typed live\n"


OUTPUT_1 = {"output_type": "stream", "name": "stdout", "text": "3\n"}
OUTPUT_2 = {
    "output_type": "execute_result",
    "data": {"text/plain": "42"},
    "metadata": {},
    "execution_count": 7,
}


def test_outputs_replaced_only_when_the_file_changed_them() -> None:
    base = notebook(
        cell("p", "print(3)\n", outputs=[OUTPUT_1], execution_count=1),
        cell("q", "40 + 2\n", outputs=[], execution_count=None),
    )
    live = live_notebook(base)
    # a collaborator runs both cells: new outputs and counts, not saved yet
    for ycell, count in zip(live.ycells, (5, 6)):
        ycell["outputs"].clear()
        ycell["outputs"].append(Map(copy.deepcopy(OUTPUT_2)))
        ycell["execution_count"] = count
    file = copy.deepcopy(base)
    file["cells"][0]["source"] = "print(1 + 2)\n"  # p: source changed, outputs not
    # q: outputs changed (as lines, the way the JSON file stores them)
    file["cells"][1]["outputs"] = [{**OUTPUT_1, "text": ["4", "2\n"]}]
    file["cells"][1]["execution_count"] = 9

    result = merge_into(live, base, file)

    p, q = live.get()["cells"]
    assert p["source"] == "print(1 + 2)\n"
    assert p["outputs"] == [OUTPUT_2] and p["execution_count"] == 5  # live's own run survives
    assert q["outputs"] == [{**OUTPUT_1, "text": "42\n"}] and q["execution_count"] == 9
    assert {c.cell_id for c in result.conflicts} == {"q"}  # live's run of q was overwritten
    assert isinstance(live.ycells[1]["outputs"][0]["text"], Text)  # stored as jupyter-ydoc does


def test_cell_metadata_merged_by_key() -> None:
    base = notebook(cell("m", "x\n", metadata={"tags": ["a"], "collapsed": False}))
    live = live_notebook(base)
    live.ycells[0]["metadata"]["scrolled"] = True  # a collaborator
    file = copy.deepcopy(base)
    file["cells"][0]["metadata"] = {"tags": ["a", "b"]}

    result = merge_into(live, base, file)

    assert live.get()["cells"][0]["metadata"] == {"tags": ["a", "b"], "scrolled": True}
    assert result.conflicts == []


def test_cell_type_changed_in_the_file() -> None:
    live = live_notebook(BASE)
    file = copy.deepcopy(BASE)
    file["cells"][3] = cell("d", "z = 3\n", "markdown")

    merge_into(live, BASE, file)

    assert live.get() == roundtrip(file)
    # rebuilt as jupyter-ydoc builds a markdown cell (front ends pick a cell's model by type)
    assert set(live.ycells[3].keys()) == {"id", "cell_type", "source", "metadata"}


def test_notebook_metadata_changed_keys_applied_others_left() -> None:
    python = {"name": "python3", "display_name": "Python 3"}
    base = notebook(cell("a", "1\n"), metadata={"kernelspec": python, "old": 1})
    live = live_notebook(base)
    live.ydoc.get("meta", type=Map)["metadata"]["collab"] = "mine"
    file = copy.deepcopy(base)
    file["metadata"] = {"kernelspec": {"name": "julia", "display_name": "Julia"}}
    file["nbformat_minor"] = 6

    result = merge_into(live, base, file)

    content = live.get()
    assert content["metadata"]["kernelspec"] == {"name": "julia", "display_name": "Julia"}
    assert content["metadata"]["collab"] == "mine"
    assert "old" not in content["metadata"]
    assert content["nbformat_minor"] == 6
    assert result.conflicts == []


def test_a_file_equal_to_the_base_produces_no_update() -> None:
    live = live_notebook(BASE)
    edit_live(live, "b", "live edit\n")  # not saved: must stay
    as_on_disk = copy.deepcopy(BASE)
    for c in as_on_disk["cells"]:
        c["source"] = c["source"].splitlines(keepends=True)  # nbformat JSON stores lines

    with Updates(live.ydoc) as updates:
        result = merge_into(live, BASE, as_on_disk)

    assert updates == []
    assert result.changed is False and result.conflicts == []
    assert find(live, "b")["source"] == "live edit\n"


def test_a_file_already_in_live_produces_no_update() -> None:
    file = copy.deepcopy(BASE)
    file["cells"][0]["source"] = "import sys\n"
    live = live_notebook(file)

    with Updates(live.ydoc) as updates:
        result = merge_into(live, BASE, file)

    assert updates == [] and not result.changed


def test_without_base_live_becomes_the_file_by_minimal_edits() -> None:
    live = live_notebook(BASE)
    edit_live(live, "a", "import os\nimport re\n")
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 2\nprint(x - y)\n"
    file["cells"].insert(3, cell("e", "new\n"))
    del file["cells"][2]
    file["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    deltas, _ = text_edits_observed(ytext_of(live, "b"))

    with Updates(live.ydoc) as updates:
        result = merge_into(live, None, file)

    assert live.get() == roundtrip(file)
    assert result.changed and result.conflicts == []
    assert len(updates) == 1
    assert [d.get("insert") for d in deltas if "insert" in d] == ["-"]  # edited, not replaced


def test_without_ids_anywhere_and_no_base_live_becomes_the_file() -> None:
    base = notebook(cell(None, "a\n"), cell(None, "b\n"), cell(None, "c\n"), minor=4)
    live = live_notebook(base)
    file = notebook(cell(None, "c\n"), cell(None, "a\n"), cell(None, "b!\n"), minor=4)

    merge_into(live, None, file)

    assert live.get() == roundtrip(file)


def test_merge_is_one_update_that_converges_a_second_client() -> None:
    live = live_notebook(BASE)
    client = Doc()
    client.apply_update(live.ydoc.get_update())  # a client in sync before the merge
    edit_live(live, "b", "x = 10\ny = 2\nprint(x + y)\n")
    client.apply_update(live.ydoc.get_update())
    file = copy.deepcopy(BASE)
    file["cells"][1]["source"] = "x = 1\ny = 2\nprint(x, y)\n"
    file["cells"].insert(1, cell("new", "from the file\n"))
    file["cells"].append(file["cells"].pop(0))
    file["metadata"] = {"note": "x"}

    with Updates(live.ydoc) as updates:
        merge_into(live, BASE, file)

    assert len(updates) == 1
    client.apply_update(updates[0])
    assert YNotebook(client).get() == live.get()
    assert find(live, "b")["source"] == "x = 10\ny = 2\nprint(x, y)\n"
    assert ids(live) == ["new", "b", "c", "d", "a"]


def test_a_clean_merge_makes_live_equal_to_the_file() -> None:
    live = live_notebook(BASE)
    file = copy.deepcopy(BASE)
    file["cells"][0] = cell(
        "a", ["import os\n", "import json\n"], outputs=[OUTPUT_1], execution_count=3
    )
    file["cells"][2]["attachments"] = {}
    file["cells"][2]["metadata"] = {"tags": ["intro"]}
    file["cells"].insert(2, cell("r", "raw text", "raw"))
    file_before, base_before = copy.deepcopy(file), copy.deepcopy(BASE)

    merge_into(live, BASE, file)

    assert live.get() == roundtrip(file)
    assert (file, BASE) == (file_before, base_before)  # the inputs are not modified


# ---------------------------------------------------------------------------- text documents


@pytest.mark.parametrize("kind", [YUnicode, YFile])
def test_text_document_three_way_with_non_ascii_and_emoji(kind: type[YUnicode]) -> None:
    base = "# Résumé 📝\n\nprem ière ligne\nzweite Zeile ✓\nend\n"
    live = kind(Doc())
    live.set(base)
    apply_text(live.ydoc.get("source", type=Text), base.replace("prem ière", "première 🎉"))
    file = base.replace("zweite Zeile ✓", "zweite Zeile ✔✔").replace("end\n", "end\nπ\n")

    with Updates(live.ydoc) as updates:
        result = merge_into(live, base, file)

    assert live.get() == "# Résumé 📝\n\npremière 🎉 ligne\nzweite Zeile ✔✔\nend\nπ\n"
    assert result.changed and result.conflicts == [] and len(updates) == 1


def test_text_document_conflict_file_wins() -> None:
    live = YUnicode(Doc())
    live.set("a\nb 😀\nc\n")
    apply_text(live.ydoc.get("source", type=Text), "a\nb 😎\nc\n")

    result = merge_into(live, "a\nb 😀\nc\n", "a\nb 🙂\nc\n")

    assert live.get() == "a\nb 🙂\nc\n"
    assert [(c.cell_id, c.overwritten) for c in result.conflicts] == [(None, "b 😎\n")]


def test_text_document_touch_and_no_base() -> None:
    live = YUnicode(Doc())
    live.set("héllo\n")
    apply_text(live.ydoc.get("source", type=Text), "héllo wörld\n")

    with Updates(live.ydoc) as updates:
        touched = merge_into(live, "héllo\n", "héllo\n")
    assert updates == [] and not touched.changed and live.get() == "héllo wörld\n"

    no_base = merge_into(live, None, "¡héllo wörld!\n")
    assert no_base.changed and no_base.conflicts == [] and live.get() == "¡héllo wörld!\n"


def test_wrong_content_type_is_refused() -> None:
    with pytest.raises(TypeError):
        merge_into(YUnicode(Doc()), None, {"cells": []})
    with pytest.raises(TypeError):
        merge_into(live_notebook(BASE), None, "text")


# ---------------------------------------------------------------------------- edge cases


def test_regenerated_ids_match_by_content_and_take_the_files_ids() -> None:
    live = live_notebook(BASE)
    edit_live(live, "a", "import os  # live\n")
    file = copy.deepcopy(BASE)
    for number, c in enumerate(file["cells"]):
        c["id"] = f"regenerated-{number}"  # e.g. a tool that rewrites every id
    file["cells"][1]["source"] = "x = 1\ny = 2\nprint(x + y)  # file\n"
    deltas, _ = text_edits_observed(ytext_of(live, "b"))

    result = merge_into(live, BASE, file)

    assert result.conflicts == []
    assert ids(live) == [f"regenerated-{n}" for n in range(4)]
    assert sources(live)[:2] == ["import os  # live\n", "x = 1\ny = 2\nprint(x + y)  # file\n"]
    assert "".join(d.get("insert", "") for d in deltas) == "  # file"  # edited, not replaced


def test_a_file_without_ids_leaves_the_live_cells_their_ids() -> None:
    live = live_notebook(BASE)
    file = copy.deepcopy(BASE)
    file["nbformat_minor"] = 4
    for c in file["cells"]:
        del c["id"]
    file["cells"][0]["source"] = "import os, re\n"

    merge_into(live, BASE, file)

    assert live.get() == roundtrip(file)
    assert [y.get("id") for y in live.ycells] == ["a", "b", "c", "d"]  # front ends need ids


def test_a_file_without_cells_leaves_one_empty_cell_as_jupyter_ydoc_does() -> None:
    live = live_notebook(BASE)
    file = notebook()

    merge_into(live, BASE, file)

    assert same_as_file(live, file)
    assert [c["source"] for c in live.get()["cells"]] == [""]
    assert isinstance(live.ycells[0]["id"], str)


def test_an_empty_document_without_base_becomes_the_file() -> None:
    live = YNotebook(Doc())
    file = notebook(cell("a", "x\n"), metadata={"kernelspec": {"name": "k", "display_name": "K"}})

    result = merge_into(live, None, file)

    assert result.changed and live.get() == roundtrip(file)


def test_inside_an_outer_transaction_the_merge_joins_it() -> None:
    live = live_notebook(BASE)
    file = copy.deepcopy(BASE)
    file["cells"][0]["source"] = "import re\n"
    with Updates(live.ydoc) as updates:
        with live.ydoc.transaction():
            live.ystate["hash"] = "new"
            merge_into(live, BASE, file)
    assert len(updates) == 1 and sources(live)[0] == "import re\n"


# ---------------------------------------------------------------------------- randomized

WORDS = ["x", "y = 2", "print(x)", "é", "😀", "for i in range(3):", "    pass", "# note", ""]


def random_source(rng: random.Random) -> str:
    return "".join(rng.choice(WORDS) + "\n" for _ in range(rng.randint(0, 4)))


def random_cell(rng: random.Random, counter: list[int], with_ids: bool) -> dict[str, Any]:
    counter[0] += 1
    kind = rng.choice(["code", "code", "markdown"])
    return cell(f"r{counter[0]}" if with_ids else None, random_source(rng), kind)


def edit_text(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True)
    at = rng.randint(0, len(lines))
    if lines and rng.random() < 0.5:
        lines[min(at, len(lines) - 1)] = rng.choice(WORDS) + "\n"
    else:
        lines.insert(at, rng.choice(WORDS) + "\n")
    return "".join(lines)


def edit_file(rng: random.Random, nb: dict[str, Any], counter: list[int], with_ids: bool) -> None:
    cells = nb["cells"]
    ops = ["source", "source", "insert", "delete", "move", "outputs", "metadata", "retype"]
    op = rng.choice(ops)
    if op == "insert" or not cells:
        cells.insert(rng.randint(0, len(cells)), random_cell(rng, counter, with_ids))
        return
    target = cells[rng.randrange(len(cells))]
    if op == "source":
        target["source"] = edit_text(rng, target["source"])
    elif op == "delete":
        cells.remove(target)
    elif op == "move":
        cells.remove(target)
        cells.insert(rng.randint(0, len(cells)), target)
    elif op == "outputs" and target["cell_type"] == "code":
        target["outputs"] = [{**OUTPUT_1, "text": rng.choice(WORDS) + "\n"}]
        target["execution_count"] = rng.randint(1, 9)
    elif op == "metadata":
        target["metadata"] = {"tags": [rng.choice(WORDS)]}
    elif op == "retype":
        kind = "markdown" if target["cell_type"] == "code" else "code"
        cells[cells.index(target)] = cell(target.get("id"), target["source"], kind)


def edit_live_randomly(rng: random.Random, live: YNotebook, counter: list[int]) -> set[str]:
    """A collaborator's unsaved edits; returns the ids of the cells they added."""
    added = set()
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["source", "insert", "delete"])
        if op == "insert" or len(live.ycells) == 0:
            new = random_cell(rng, counter, True)
            new["id"] = "live-" + new["id"]
            live.ycells.insert(rng.randint(0, len(live.ycells)), live.create_ycell(new))
            added.add(new["id"])
        elif op == "source":
            ytext = live.ycells[rng.randrange(len(live.ycells))]["source"]
            apply_text(ytext, edit_text(rng, str(ytext)))
        else:
            index = rng.randrange(len(live.ycells))
            added.discard(live.ycells[index]["id"])
            del live.ycells[index]
    return added


@pytest.mark.parametrize("with_ids", [True, False])
def test_randomized_file_changes_without_live_edits_give_the_file(with_ids: bool) -> None:
    rng = random.Random(1234 + with_ids)
    for _ in range(150):
        counter = [0]
        cells = [random_cell(rng, counter, with_ids) for _ in range(rng.randint(0, 6))]
        base = roundtrip(notebook(*cells, minor=5 if with_ids else 4))
        file = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            edit_file(rng, file, counter, with_ids)
        live = live_notebook(base)
        file_changes_something = not same_as_file(live, file)
        client = Doc()
        client.apply_update(live.ydoc.get_update())

        with Updates(live.ydoc) as updates:
            result = merge_into(live, base, file)

        assert same_as_file(live, file), (base, file)
        assert result.conflicts == []
        assert len(updates) == int(file_changes_something) == int(result.changed)
        for update in updates:
            client.apply_update(update)
        assert YNotebook(client).get() == live.get()


def test_randomized_file_and_live_changes_converge_and_keep_live_cells() -> None:
    rng = random.Random(99)
    for _ in range(150):
        counter = [0]
        cells = [random_cell(rng, counter, True) for _ in range(rng.randint(0, 6))]
        base = roundtrip(notebook(*cells))
        file = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            edit_file(rng, file, counter, True)
        live = live_notebook(base)
        added_live = edit_live_randomly(rng, live, counter)
        client = Doc()
        client.apply_update(live.ydoc.get_update())

        with Updates(live.ydoc) as updates:
            merge_into(live, base, file)

        assert len(updates) <= 1
        for update in updates:
            client.apply_update(update)
        content = live.get()
        assert YNotebook(client).get() == content
        assert added_live <= {c["id"] for c in content["cells"]}
        file_only = {c["id"] for c in file["cells"]} - {c["id"] for c in base["cells"]}
        assert file_only <= {c["id"] for c in content["cells"]}
        assert len({c["id"] for c in content["cells"]}) == len(content["cells"])
