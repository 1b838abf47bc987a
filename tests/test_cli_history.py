"""`jupyter ystore history|info|export|restore|version|blame` on a history that outlived
compaction: three days of a notebook typed by two people (written with a store clock, so
the days pass at once), on SQLite, FileYStore and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from jupyter_ydoc import YNotebook

from postgres_helpers import pg_config  # noqa: F401  (fixture)
from test_cli import (  # noqa: F401  (env, pg: fixtures, by name)
    NB_KEY,
    cli,
    env,
    make_store,
    one_line_error,
    pg,
    read_notebook,
    store_args,
)

DAY, HOUR = 86400.0, 3600.0


@pytest.fixture(params=["sqlite", "file", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg")
    return request.param


def cell(source: str, cell_id: str) -> dict:
    return {
        "cell_type": "code",
        "source": source,
        "metadata": {},
        "outputs": [],
        "execution_count": None,
        "id": cell_id,
    }


def three_days(kind: str, where: Path) -> dict[str, Any]:
    """ann writes a notebook on day one, bob adds to it on day two, ann fixes a line on day
    three; every write an update of its own, compacted as it goes. Returns times and
    contents."""
    start = time.time() - 4 * DAY
    clock = {"t": start}
    seen: dict[str, Any] = {}

    async def go() -> None:
        nb = YNotebook()
        store = make_store(kind, NB_KEY, where, clock=lambda: clock["t"], compact_after_updates=10)
        async with store:

            async def edit(change: Any, who: str) -> None:
                before = nb.ydoc.get_state()
                change()
                meta = json.dumps({"origin": "client", "user": who}).encode()
                await store.write(nb.ydoc.get_update(before), metadata=meta)
                clock["t"] += 60

            content = {"cells": [cell("import math\n", "c1")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
            await edit(lambda: nb.set(content), "ann")
            src = lambda: nb.ycells[0]["source"]  # noqa: E731
            for ch in "x = math.pi":
                await edit(lambda ch=ch: src().insert(len(str(src())), ch), "ann")
            seen["day1"] = (clock["t"], nb.get())
            clock["t"] = start + DAY
            for ch in "\ny = x * 2":
                await edit(lambda ch=ch: src().insert(len(str(src())), ch), "bob")
            seen["day2"] = (clock["t"], nb.get())
            clock["t"] = start + 2 * DAY
            where_pi = str(src()).index("pi")
            await edit(lambda: src().insert(where_pi + 2, " / 2"), "ann")  # x = math.pi / 2
            seen["day3"] = (clock["t"], nb.get())
            for _ in range(30):
                await anyio.sleep(0.02)  # an automatic compaction in flight
            await store.compact()

    anyio.run(go)
    seen["start"] = start
    return seen


def comparable(content: dict) -> dict:
    return {"cells": content["cells"], "metadata": content["metadata"]}


def test_history_versions_and_blame_from_the_command_line(
    tmp_path: Path, env: Any, capsys: Any, kind: str
) -> None:
    seen = three_days(kind, tmp_path)
    args = store_args(kind, tmp_path)

    code, out, err = cli(capsys, "info", NB_KEY, "--json", *args)
    assert code == 0, err
    info = json.loads(out)
    assert info["updates"] == 1  # loading reads one snapshot
    hist = info["history"]
    assert hist["reaches_back_to"] <= seen["start"] + HOUR
    assert hist["retained_points"] >= 3 and hist["retained_bytes"] > 0
    assert hist["retention"] == "10m:every,1h:1m,7d:1h,90d:1d"
    code, out, err = cli(capsys, "info", NB_KEY, *args)
    assert "history:    reaches back to" in out and "retained points" in out

    code, out, err = cli(capsys, "history", NB_KEY, "--all", "--json", *args)
    points = json.loads(out)["points"]
    assert all(p["retained"] for p in points) and sum(p["updates"] for p in points) == 23
    authors = {a for p in points for a in p["authors"]}
    assert authors == {"ann (client)", "bob (client)"}

    # export --at: the nearest retained point at or before, and which one
    out_file = tmp_path / "day1.ipynb"
    for day in ("day1", "day2"):
        at, content = seen[day]
        code, _, err = cli(capsys, "export", NB_KEY, "--at", repr(at), "-o", str(out_file), "--force", *args)
        assert code == 0, err
        # (the retained point of its hour, or one update alone in its hour)
        assert "the nearest at or before" in err and ("retained point" in err or "the update of" in err)
        assert read_notebook(out_file.read_bytes()) == comparable(content)

    # a named version, then more edits, then back to the version (one new update), and undo
    code, out, err = cli(capsys, "version", "save", NB_KEY, "reviewed", *args)
    assert code == 0 and "saved" in out, err
    code, out, err = cli(capsys, "version", "save", NB_KEY, "reviewed", *args)
    assert code == 1 and "already" in one_line_error(err)
    code, out, err = cli(capsys, "restore", NB_KEY, "--at", repr(seen["day1"][0]), *args)
    assert code == 0 and "the nearest at or before" in out, err
    code, out, err = cli(capsys, "version", "list", NB_KEY, "--json", *args)
    assert [v["name"] for v in json.loads(out)["versions"]] == ["reviewed"]
    code, out, err = cli(capsys, "version", "restore", NB_KEY, "reviewed", *args)
    assert code == 0 and "restored" in out, err
    code, _, err = cli(capsys, "export", NB_KEY, "-o", str(out_file), "--force", *args)
    assert read_notebook(out_file.read_bytes()) == comparable(seen["day3"][1])
    code, out, err = cli(capsys, "version", "restore", NB_KEY, "nope", *args)
    assert code == 1 and "no version named 'nope'" in one_line_error(err)

    # blame: who last changed each line, from the retained points
    code, out, err = cli(capsys, "blame", NB_KEY, "--json", *args)
    assert code == 0, err
    blamed = json.loads(out)
    lines = blamed["cells"][0]["lines"]
    assert [line["text"] for line in lines] == ["import math", "x = math.pi / 2", "y = x * 2"]
    # the restores rewrote lines: their authors are who restored (this user, via the CLI)
    code, out, err = cli(capsys, "blame", NB_KEY, *args)
    assert code == 0 and "x = math.pi / 2" in out and "last changed" in out

    code, out, err = cli(capsys, "version", "delete", NB_KEY, "reviewed", *args)
    assert code == 0, err
    code, out, err = cli(capsys, "version", "list", NB_KEY, "--json", *args)
    assert json.loads(out)["versions"] == []
    code, out, err = cli(capsys, "version", "frobnicate", NB_KEY, *args)
    assert code == 2


def test_blame_attributes_lines_to_their_authors(tmp_path: Path, env: Any, capsys: Any) -> None:
    seen = three_days("sqlite", tmp_path)
    args = store_args("sqlite", tmp_path)
    code, out, err = cli(capsys, "blame", NB_KEY, "--json", *args)
    assert code == 0, err
    lines = json.loads(out)["cells"][0]["lines"]
    assert [(line["text"], line["authors"]) for line in lines] == [
        ("import math", ["ann (client)"]),
        ("x = math.pi / 2", ["ann (client)"]),
        ("y = x * 2", ["bob (client)"]),
    ]
    assert lines[1]["time"] == pytest.approx(seen["day3"][0] - 60, abs=1)  # the fix, day 3
