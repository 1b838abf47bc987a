"""`jupyter ystore …` through its real entry points, on stores written here and legacy stores.

Stores are written with updates in timed phases; after each phase the test records the time
and the content, and `export --at` / `restore --at` must give back exactly that content.
One test runs every subcommand as a subprocess (`python -m jupyter ystore …`, the way
`jupyter ystore` dispatches); the others call the same entry point in-process, which is
faster.
"""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from jupyter_ydoc import YNotebook, YUnicode
from pycrdt import Doc, Text
from traitlets.config import Config

from jupyter_ystore import FileYStore, SQLiteYStore
from jupyter_ystore.cli import main
from jupyter_ystore.core.content import to_py
from jupyter_ystore.core.codec import read_var_bytes
from postgres_helpers import pg_config  # noqa: F401  (fixture)

NB_KEY = "json:notebook:0aaa-nb"
TEXT_KEY = "text:file:0bbb-txt"


# ---------------------------------------------------------------------------- environment


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private Jupyter config and data folders (no user config leaks into a test)."""
    variables = {
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_PATH": "",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "config").mkdir()
    environ = dict(os.environ)
    environ.update(variables)
    environ.pop("COLUMNS", None)
    return environ


def run(env: dict[str, str], *args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`jupyter ystore ARGS` in a subprocess, through jupyter_core's command dispatch."""
    bindir = os.path.dirname(sys.executable)
    environ = dict(env, PATH=bindir + os.pathsep + env.get("PATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "ystore", *args],
        env=environ,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The console entry point in-process: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("jupyter ystore: error:")
    return lines[0]


# ---------------------------------------------------------------------------- writing stores


def nb_content(cells: list[str]) -> dict:
    return {
        "cells": [
            {
                "cell_type": "code",
                "source": source,
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "id": f"cell-{i}",
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


#: PostgresYStore settings of the running test (its own schema), set by the pg fixture.
PG: dict[str, Any] = {}


def make_store(kind: str, key: str, where: Path, **kwargs: Any):
    config = Config()
    if kind == "postgres":
        config.PostgresYStore.dsn = PG["dsn"]
        config.PostgresYStore.schema = PG["schema"]
        from jupyter_ystore import PostgresYStore

        return PostgresYStore(key, config=config, **kwargs)
    if kind == "sqlite":
        config.SQLiteYStore.db_path = str(where / "ystore.db")
        return SQLiteYStore(key, config=config, **kwargs)
    config.FileYStore.root_dir = str(where / "files")
    return FileYStore(key, config=config, **kwargs)


def store_args(kind: str, where: Path) -> list[str]:
    if kind == "postgres":
        return [
            "--ystore-class=PostgresYStore",
            f"--PostgresYStore.dsn={PG['dsn']}",
            f"--PostgresYStore.schema={PG['schema']}",
        ]
    if kind == "sqlite":
        return ["--ystore-class=SQLiteYStore", f"--SQLiteYStore.db_path={where / 'ystore.db'}"]
    return ["--ystore-class=FileYStore", f"--FileYStore.root_dir={where / 'files'}"]


def checkpoint(recorded: list[tuple[float, Any]], content: Any) -> None:
    """Record (time, content) strictly between the updates before and after it."""
    time.sleep(0.02)
    recorded.append((time.time(), content))
    time.sleep(0.02)


def write_phases(kind: str, where: Path) -> dict[str, list[tuple[float, Any]]]:
    """A notebook and a text file typed in three phases; the recorded times and contents."""
    recorded: dict[str, list[tuple[float, Any]]] = {NB_KEY: [], TEXT_KEY: []}

    async def go() -> None:
        nb = YNotebook()
        text = YUnicode()
        async with make_store(kind, NB_KEY, where, metadata_callback=lambda: b'{"username": "ann", "origin": "client"}') as nb_store, make_store(
            kind, TEXT_KEY, where
        ) as text_store:

            async def edit(store: Any, ydoc: Doc, change: Any) -> None:
                before = ydoc.get_state()
                change()
                await store.write(ydoc.get_update(before))

            await edit(nb_store, nb.ydoc, lambda: nb.set(nb_content(["a = 1", "print(a)"])))
            for piece in ["line one\n", "line two ✓\n"]:
                await edit(text_store, text.ydoc, lambda piece=piece: text._ysource.__iadd__(piece))
            checkpoint(recorded[NB_KEY], nb.get())
            checkpoint(recorded[TEXT_KEY], text.get())

            for ch in "234":  # typing in a cell, one update a key
                await edit(nb_store, nb.ydoc, lambda ch=ch: nb.ycells[0]["source"].insert(5, ch))
            await edit(text_store, text.ydoc, lambda: text._ysource.insert(0, "# ünïcødé\n"))
            checkpoint(recorded[NB_KEY], nb.get())
            checkpoint(recorded[TEXT_KEY], text.get())

            await edit(nb_store, nb.ydoc, lambda: nb.ycells.__delitem__(1))
            await edit(
                nb_store,
                nb.ydoc,
                lambda: nb.ycells.append(
                    nb.create_ycell({"cell_type": "markdown", "source": "# done", "metadata": {}, "id": "md"})
                ),
            )
            await edit(text_store, text.ydoc, lambda: text._ysource.__delitem__(slice(0, len("# ünïcødé\n".encode()))))
            checkpoint(recorded[NB_KEY], nb.get())
            checkpoint(recorded[TEXT_KEY], text.get())

    anyio.run(go)
    return recorded


def export_to(capsys: Any, args: list[str], key: str, out: Path, *extra: str) -> bytes:
    code, _out, err = cli(capsys, "export", key, "-o", str(out), "--force", *extra, *args)
    assert code == 0, err
    return out.read_bytes()


def read_notebook(data: bytes) -> dict:
    nb = json.loads(data)
    return {"cells": nb["cells"], "metadata": nb["metadata"]}


def comparable(content: dict) -> dict:
    return {"cells": content["cells"], "metadata": content["metadata"]}


# ---------------------------------------------------------------------------- every subcommand, as subprocesses


def test_every_subcommand_as_a_subprocess(tmp_path: Path, env: dict[str, str]) -> None:
    recorded = write_phases("sqlite", tmp_path)
    # The server's config file names the store: no store options on the command line.
    (tmp_path / "config" / "jupyter_server_config.py").write_text(
        "c.YStoreExtension.ystore_class = 'jupyter_ystore.SQLiteYStore'\n"
        f"c.SQLiteYStore.db_path = {str(tmp_path / 'ystore.db')!r}\n"
    )

    listed = run(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    docs = {d["key"]: d for d in json.loads(listed.stdout)}
    assert set(docs) == {NB_KEY, TEXT_KEY}
    assert docs[NB_KEY]["updates"] == 6 and docs[TEXT_KEY]["updates"] == 4
    assert docs[NB_KEY]["first_timestamp"] < recorded[NB_KEY][0][0] < docs[NB_KEY]["last_timestamp"]

    info = run(env, "info", NB_KEY, "--json", "--last=2")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["updates"] == 6 and summary["kind"] == "notebook"
    assert [r["index"] for r in summary["recent"]] == [4, 5]
    assert summary["recent"][0]["author"] == "ann (client)"

    history = run(env, "history", NB_KEY, "--json")
    assert history.returncode == 0, history.stderr
    points = json.loads(history.stdout)["points"]
    assert sum(p["updates"] for p in points) == 6

    t1, content1 = recorded[NB_KEY][0]
    out = tmp_path / "at-t1.ipynb"
    exported = run(env, "export", NB_KEY, "--at", repr(t1), "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert read_notebook(out.read_bytes()) == comparable(content1)

    restored = run(env, "restore", "0aaa-nb", "--at", repr(t1))  # a unique part of the key
    assert restored.returncode == 0, restored.stderr
    now = run(env, "export", NB_KEY)
    assert read_notebook(now.stdout.encode()) == comparable(content1)

    compacted = run(env, "compact", "--all", "--json")
    assert compacted.returncode == 0, compacted.stderr
    assert {r["key"]: r["updates_after"] for r in json.loads(compacted.stdout)} == {NB_KEY: 1, TEXT_KEY: 1}
    assert read_notebook(run(env, "export", NB_KEY).stdout.encode()) == comparable(content1)

    verified = run(env, "verify", "--all")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 damaged" in verified.stderr

    target = tmp_path / "migrated"
    migrated = run(env, "migrate", "--to", "FileYStore", f"--FileYStore.root_dir={target}")
    assert migrated.returncode == 0, migrated.stderr
    from_files = run(env, "export", TEXT_KEY, "--ystore-class=FileYStore", f"--FileYStore.root_dir={target}")
    assert from_files.stdout == recorded[TEXT_KEY][-1][1]

    refused = run(env, "delete", TEXT_KEY, input="n\n")
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    deleted = run(env, "delete", TEXT_KEY, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert [d["key"] for d in json.loads(run(env, "list", "--json").stdout)] == [NB_KEY]

    gone = run(env, "info", TEXT_KEY)
    assert gone.returncode == 1
    assert "unknown document" in one_line_error(gone.stderr)


# ---------------------------------------------------------------------------- time travel on our stores


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_export_and_restore_at_recorded_times(tmp_path: Path, env: Any, capsys: Any, kind: str) -> None:
    recorded = write_phases(kind, tmp_path)
    args = store_args(kind, tmp_path)
    out = tmp_path / "out"
    for at, content in recorded[NB_KEY]:
        assert read_notebook(export_to(capsys, args, NB_KEY, out, "--at", repr(at))) == comparable(content)
    for at, content in recorded[TEXT_KEY]:
        assert export_to(capsys, args, TEXT_KEY, out, "--at", repr(at)).decode() == content
        # Printed times (ISO, rounded up to the millisecond) name the same state.
        from jupyter_ystore.core.history import format_time

        assert export_to(capsys, args, TEXT_KEY, out, "--at", format_time(at)).decode() == content

    (t1, nb1), (t2, nb2), (t3, nb3) = recorded[NB_KEY]
    # A relative time ("-0s": now) after --at, without '=' (a value that starts with a dash).
    assert read_notebook(export_to(capsys, args, NB_KEY, out, "--at", "-0s")) == comparable(nb3)
    code, before, err = cli(capsys, "list", "--json", *args)
    count = {d["key"]: d["updates"] for d in json.loads(before)}[NB_KEY]

    code, out_text, err = cli(capsys, "restore", NB_KEY, "--at", repr(t1), "--json", *args)
    assert code == 0, err
    assert json.loads(out_text)["written"] is True
    # SQLite has live updates (watch()): a server with the room open applies the restore;
    # a file store has none, and the note says to close the document there first.
    live = kind == "sqlite"
    assert json.loads(out_text)["live"] is live and ("close it there first" in err) is not live
    assert read_notebook(export_to(capsys, args, NB_KEY, out)) == comparable(nb1)
    # History is kept: one more record, and the states before the restore are still there.
    code, after, err = cli(capsys, "list", "--json", *args)
    assert {d["key"]: d["updates"] for d in json.loads(after)}[NB_KEY] == count + 1
    assert read_notebook(export_to(capsys, args, NB_KEY, out, "--at", repr(t2))) == comparable(nb2)
    assert read_notebook(export_to(capsys, args, NB_KEY, out, "--at", repr(t3))) == comparable(nb3)

    code, out_text, err = cli(capsys, "restore", NB_KEY, "--at", repr(t1), "--json", *args)
    assert json.loads(out_text)["written"] is False  # already as it was then

    code, _, err = cli(capsys, "restore", NB_KEY, "--at", repr(t2), *args)
    assert code == 0, err
    assert read_notebook(export_to(capsys, args, NB_KEY, out)) == comparable(nb2)

    (tt1, text1), _, _ = recorded[TEXT_KEY]
    code, _, err = cli(capsys, "restore", TEXT_KEY, "--at", repr(tt1), *args)
    assert code == 0, err
    assert export_to(capsys, args, TEXT_KEY, out).decode() == text1

    # The restore updates are stored with who made them.
    code, out_text, err = cli(capsys, "info", NB_KEY, "--json", "--last=1", *args)
    assert "jupyter ystore restore" in json.loads(out_text)["recent"][0]["author"]


def test_history_text_and_compaction(tmp_path: Path, env: Any, capsys: Any) -> None:
    recorded = write_phases("sqlite", tmp_path)
    args = store_args("sqlite", tmp_path)
    code, out, err = cli(capsys, "history", TEXT_KEY, *args)
    assert code == 0, err
    assert "4 stored updates in 4 points" in out
    code, out, err = cli(capsys, "history", NB_KEY, "--resolution=3600", "--json", *args)
    points = json.loads(out)["points"]
    assert len(points) in (1, 2)  # one hour bucket (two if the test crossed an hour)
    assert sum(p["updates"] for p in points) == 6

    code, out, err = cli(capsys, "compact", NB_KEY, *args)
    assert code == 0, err
    assert "6 updates" in out and "→ 1 updates" in out
    # The compacted updates are retained points (all within 10 minutes: every one of them):
    # older states are still there, and export says which point it used.
    t1, content1 = recorded[NB_KEY][0]
    exported = export_to(capsys, args, NB_KEY, tmp_path / "t1.ipynb", "--at", repr(t1))
    assert read_notebook(exported) == comparable(content1)
    code, out, err = cli(capsys, "export", NB_KEY, "--at", repr(t1), "-o", "-", *args)
    assert code == 0 and "the nearest at or before" in err and "by ann (client)" in err
    code, out, err = cli(capsys, "info", NB_KEY, "--json", *args)
    info = json.loads(out)
    assert info["updates"] == 1  # the load path: one snapshot
    assert info["history"]["retained_points"] == 6 and info["history"]["retained_bytes"] > 0
    assert info["history"]["reaches_back_to"] <= t1

    # With retention off, compaction forgets: older states are a clear error, not an empty
    # document.
    code, out, err = cli(capsys, "compact", TEXT_KEY, "--SQLiteYStore.history_retention=0", *args)
    assert code == 0, err
    tt1 = recorded[TEXT_KEY][0][0]
    code, out, err = cli(capsys, "export", TEXT_KEY, "--at", repr(tt1), *args)
    assert code == 1
    assert "older history was compacted" in one_line_error(err)


# ---------------------------------------------------------------------------- legacy stores


def legacy_sqlite_rows(db: Path, key: str) -> list[tuple[bytes, float]]:
    con = sqlite3.connect(db)
    try:
        return [
            (bytes(u), t)
            for u, t in con.execute(
                "SELECT yupdate, timestamp FROM yupdates WHERE path = ? ORDER BY rowid", (key,)
            )
        ]
    finally:
        con.close()


def legacy_file_rows(path: Path) -> list[tuple[bytes, float]]:
    buf = path.read_bytes()
    assert buf.startswith(b"VERSION:2\n")
    pos, rows = len(b"VERSION:2\n"), []
    while pos < len(buf):
        update, pos = read_var_bytes(buf, pos)
        _metadata, pos = read_var_bytes(buf, pos)
        stamp, pos = read_var_bytes(buf, pos)
        rows.append((update, struct.unpack("<d", stamp)[0]))
    return rows


def content_of(updates: list[bytes]) -> dict:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return to_py(doc.get_update())


LEGACY_SQLITE = ["ypy_sqlite_v2.db", "pycrdt_sqlite_checkpoints.db"]
LEGACY_FILES = ["ypy_file_v2.y", "pycrdt_file_v2.y"]


@pytest.mark.parametrize("name", LEGACY_SQLITE + LEGACY_FILES)
def test_legacy_stores(name: str, legacy_copy: Any, legacy_expected: dict, env: Any, capsys: Any, tmp_path: Path) -> None:
    copy = legacy_copy(name)
    expected = legacy_expected[name]
    if name.endswith(".db"):
        args = [f"--SQLiteYStore.db_path={copy}"]
        docs = expected["docs"]
        raw = {key: legacy_sqlite_rows(copy, key) for key in docs}
    else:
        args = ["--ystore-class=jupyter_ystore.FileYStore", f"--FileYStore.root_dir={copy.parent}"]
        docs = {name: expected}
        raw = {name: legacy_file_rows(copy)}

    code, out, err = cli(capsys, "list", "--json", *args)
    assert code == 0, err
    listed = {d["key"]: d for d in json.loads(out)}
    assert set(listed) == set(docs)
    for key, doc in docs.items():
        # A pycrdt-store checkpoint is listed as one more record, a snapshot.
        assert listed[key]["updates"] == doc["updates"] + listed[key]["snapshots"]

    out_file = tmp_path / "export.json"
    for key, doc in docs.items():
        assert json.loads(export_to(capsys, args, key, out_file)) == doc["content"]
        assert len(raw[key]) == doc["updates"]
        # The state at the time of a middle record, computed here from the raw records.
        middle = len(raw[key]) // 2
        at = raw[key][middle][1]
        then = content_of([u for u, t in raw[key] if t <= at])
        assert then != doc["content"]
        assert json.loads(export_to(capsys, args, key, out_file, "--at", repr(at))) == then

        code, out, err = cli(capsys, "history", key, "--json", *args)
        assert code == 0, err
        points = json.loads(out)["points"]
        assert sum(p["updates"] for p in points) == listed[key]["updates"]

        code, out, err = cli(capsys, "restore", key, "--at", repr(at), *args)
        assert code == 0, err
        assert json.loads(export_to(capsys, args, key, out_file)) == then

    code, out, err = cli(capsys, "verify", "--all", "--json", *args)
    assert code == 0, out + err
    assert all(r["ok"] and r["usable"] == r["records"] for r in json.loads(out))

    code, out, err = cli(capsys, "compact", "--all", *args)
    assert code == 0, err
    for key, doc in docs.items():
        middle_at = raw[key][len(raw[key]) // 2][1]
        then = content_of([u for u, t in raw[key] if t <= middle_at])
        assert json.loads(export_to(capsys, args, key, out_file)) == then


def test_legacy_checkpoint_shows_as_a_snapshot(legacy_copy: Any, env: Any, capsys: Any) -> None:
    copy = legacy_copy("pycrdt_sqlite_checkpoints.db")
    args = [f"--SQLiteYStore.db_path={copy}"]
    code, out, err = cli(capsys, "info", "11111111", "--json", *args)
    assert code == 0, err
    info = json.loads(out)
    assert info["snapshots"] == 1 and len(info["snapshot_records"]) == 1
    code, out, err = cli(capsys, "history", "11111111", "--all", "--json", *args)
    points = json.loads(out)["points"]
    assert [p["snapshot"] for p in points].count(True) == 1
    assert len(points) == info["updates"]


def test_migrate_legacy_sqlite_to_files(legacy_copy: Any, legacy_expected: dict, env: Any, capsys: Any, tmp_path: Path) -> None:
    copy = legacy_copy("ypy_sqlite_v2.db")
    target = tmp_path / "files"
    target_args = ["--ystore-class=FileYStore", f"--FileYStore.root_dir={target}"]
    code, out, err = cli(capsys, "migrate", f"--SQLiteYStore.db_path={copy}", "--to", "FileYStore", f"--FileYStore.root_dir={target}")
    assert code == 0, err
    for key, doc in legacy_expected["ypy_sqlite_v2.db"]["docs"].items():
        assert json.loads(export_to(capsys, target_args, key, tmp_path / "x.json")) == doc["content"]
    code, out, err = cli(
        capsys, "migrate", f"--SQLiteYStore.db_path={copy}", "--to", "FileYStore",
        f"--FileYStore.root_dir={tmp_path / 'fresh'}", "--skip-existing", "--json",
    )
    assert code == 0, err
    assert len(json.loads(out)["copied"]) == 2 and json.loads(out)["skipped"] == []
    # A second run refuses rather than doubling every document.
    code, out, err = cli(capsys, "migrate", f"--SQLiteYStore.db_path={copy}", "--to", "FileYStore", f"--FileYStore.root_dir={target}")
    assert code == 1 and "already holds 2" in one_line_error(err)
    code, out, err = cli(
        capsys, "migrate", f"--SQLiteYStore.db_path={copy}", "--to", "FileYStore",
        f"--FileYStore.root_dir={target}", "--skip-existing", "--json",
    )
    assert code == 0, err
    assert json.loads(out)["copied"] == [] and len(json.loads(out)["skipped"]) == 2


# ---------------------------------------------------------------------------- verify finds damage


def test_verify_reports_damaged_file_logs_without_touching_them(tmp_path: Path, env: Any, capsys: Any) -> None:
    write_phases("file", tmp_path)
    args = store_args("file", tmp_path)
    files = tmp_path / "files"
    good = (files / TEXT_KEY).read_bytes()
    # A torn last record (crash mid-write) and damage in the middle of another copy.
    (files / "torn").write_bytes(good + b"\x09abc")
    middle = bytearray(good)
    first_record_end = len(b"VERSION:2\n") + 1 + middle[len(b"VERSION:2\n")]
    middle[first_record_end] = 0xFF  # the metadata length of record #0 becomes nonsense
    middle[first_record_end + 1] = 0xFF
    (files / "middle").write_bytes(bytes(middle))
    before = {p.name: p.read_bytes() for p in files.iterdir()}

    code, out, err = cli(capsys, "verify", "--all", "--json", *args)
    assert code == 1
    reports = {r["key"]: r for r in json.loads(out)}
    assert reports[NB_KEY]["ok"] and reports[TEXT_KEY]["ok"]
    assert not reports["torn"]["ok"] and reports["torn"]["usable"] == 4
    assert "crash" in reports["torn"]["problems"][0]
    assert not reports["middle"]["ok"]
    assert reports["middle"]["usable"] == 3  # the records after the damage are found again
    assert any("depend on updates" in p for p in reports["middle"]["problems"])
    assert {p.name: p.read_bytes() for p in files.iterdir()} == before  # nothing changed

    code, out, err = cli(capsys, "verify", "torn", *args)
    assert code == 1
    assert "DAMAGED" in out and "recoverable: 4 of 4" in out


def test_verify_reports_a_bad_row_in_sqlite(tmp_path: Path, env: Any, capsys: Any) -> None:
    recorded = write_phases("sqlite", tmp_path)
    args = store_args("sqlite", tmp_path)
    con = sqlite3.connect(tmp_path / "ystore.db")
    with con:
        con.execute(
            "INSERT INTO yupdates (path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?)",
            (TEXT_KEY, b"\xff\xfe not yjs", b"", time.time()),
        )
    con.close()
    code, out, err = cli(capsys, "verify", TEXT_KEY, "--json", *args)
    assert code == 1
    (report,) = json.loads(out)
    assert [r["index"] for r in report["corrupt_records"]] == [4]
    assert report["usable"] == 4 and report["records"] == 5
    code, out, err = cli(capsys, "verify", NB_KEY, *args)
    assert code == 0, out + err
    # The damaged document cannot be exported as it is now, but as it was before the bad row.
    code, out, err = cli(capsys, "export", TEXT_KEY, *args)
    assert code == 1 and "record #4 does not decode" in one_line_error(err)
    code, out, err = cli(capsys, "export", TEXT_KEY, "--at", repr(recorded[TEXT_KEY][-1][0]), *args)
    assert code == 0 and out == recorded[TEXT_KEY][-1][1]


# ---------------------------------------------------------------------------- errors


def test_bad_arguments_give_one_line_and_non_zero_status(tmp_path: Path, env: Any, capsys: Any) -> None:
    write_phases("sqlite", tmp_path)
    args = store_args("sqlite", tmp_path)
    existing = tmp_path / "exists.txt"
    existing.write_text("keep me")
    cases = [
        (["info", "no-such-doc"], 1, "unknown document"),
        (["export", NB_KEY, "--at", "yesterday"], 2, "cannot read the time"),
        (["export", NB_KEY, "--at", "1000"], 1, "before the oldest stored record"),
        (["export", NB_KEY, "--at", "-1w"], 1, "before the oldest stored record"),
        (["export", NB_KEY, "--format", "pdf"], 2, "--format"),
        (["export", TEXT_KEY, "-o", str(existing)], 1, "exists"),
        (["restore", NB_KEY], 2, "--at"),
        (["compact"], 2, "--all"),
        (["verify", NB_KEY, "--all"], 2, "--all"),
        (["info"], 2, "exactly one document"),
        (["list", "--bogus"], 2, "bogus"),
        (["list", "--ystore-class=NoSuchStore"], 2, "unknown store class"),
        (["list", "--ystore-class=traitlets.HasTraits"], 2, "not a store class"),
        (["list", "--log-level=LOUD"], 2, "log_level"),
        (["migrate"], 2, "--to"),
        (["list", f"--SQLiteYStore.db_path={tmp_path / 'typo.db'}"], 1, "no SQLiteYStore at"),
        (["list", "--ystore-class=FileYStore", f"--FileYStore.root_dir={tmp_path / 'nope'}"], 1, "no FileYStore at"),
        (["frobnicate"], 2, "unknown subcommand"),
        ([], 2, "subcommand"),
    ]
    for argv, status, words in cases:
        own_store = any("ystore-class" in arg or "YStore." in arg for arg in argv)
        full = [*argv, *args] if argv and argv[0] != "frobnicate" and not own_store else argv
        code, out, err = cli(capsys, *full)
        assert code == status, (argv, err)
        assert words in one_line_error(err), (argv, err)
    assert existing.read_text() == "keep me"
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "nope").exists()  # not created
    code, out, err = cli(capsys, "list", "--json", "--ystore-class=FileYStore", *args)
    assert code == 2 and "one value" in one_line_error(err)  # given twice
    code, out, err = cli(capsys, "--help")
    assert code == 0 and "restore" in out and "--ystore-class" in out
    code, out, err = cli(capsys, "export", "--help-all")
    assert code == 0 and "--SQLiteYStore.db_path" in out and "--at" in out

    # The same through the real command: no traceback either.
    result = run(env, "export", "no-such-doc", *args)
    assert result.returncode == 1
    assert "unknown document" in one_line_error(result.stderr)
    result = run(env, "history", NB_KEY, "--at=x", "--resolution=abc", *args)
    assert result.returncode == 2
    one_line_error(result.stderr)


def test_delete_asks_first(tmp_path: Path, env: Any, capsys: Any, monkeypatch: Any) -> None:
    write_phases("sqlite", tmp_path)
    args = store_args("sqlite", tmp_path)
    import io

    # Destroying history needs the full key: a part of it that happens to be unique is refused.
    code, out, err = cli(capsys, "delete", "0aaa", "--yes", *args)
    assert code == 1 and "only part of a key" in one_line_error(err) and "full key" in err
    code, out, err = cli(capsys, "compact", "0aaa", *args)
    assert code == 1 and "only part of a key" in one_line_error(err)
    code, out, err = cli(capsys, "delete", "zzzz-none", "--yes", *args)
    assert code == 1 and "unknown document" in one_line_error(err)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nobody to answer
    code, out, err = cli(capsys, "delete", NB_KEY, *args)
    assert code == 1 and "--yes" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = cli(capsys, "delete", NB_KEY, *args)
    assert code == 0, err
    code, out, err = cli(capsys, "list", "--json", *args)
    assert [d["key"] for d in json.loads(out)] == [TEXT_KEY]


# ---------------------------------------------------------------------------- config, paths, progress


def test_server_defaults_and_options_before_the_subcommand(tmp_path: Path, env: Any, capsys: Any, monkeypatch: Any) -> None:
    from jupyter_ystore.server import app
    from jupyter_ystore.cli import base as cli_base

    # The command finds the store where the server puts it by default (one source: the
    # store class's default_settings, asked by both).
    assert cli_base.FALLBACK_STORE_CLASS == app.DEFAULT_YSTORE_CLASS

    async def write() -> None:
        config = Config()
        config.SQLiteYStore.db_path = str(tmp_path / "root" / ".jupyter_ystore.db")
        (tmp_path / "root").mkdir()
        async with SQLiteYStore(".notebook:abc.y", config=config) as store:
            doc = Doc()
            doc.get("source", type=Text).insert(0, "hi")
            await store.write(doc.get_update())

    anyio.run(write)
    monkeypatch.chdir(tmp_path / "root")
    code, out, err = cli(capsys, "list", "--json")
    assert code == 0, err
    assert [d["key"] for d in json.loads(out)] == [".notebook:abc.y"]
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "list")
    assert code == 1 and "no SQLiteYStore at" in one_line_error(err)
    code, out, err = cli(capsys, "--root-dir", str(tmp_path / "root"), "--json", "list")
    assert code == 0, err
    assert [d["key"] for d in json.loads(out)] == [".notebook:abc.y"]
    # The server's root folder from its config file.
    (tmp_path / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"root_dir": str(tmp_path / "root")}})
    )
    code, out, err = cli(capsys, "list", "--json")
    assert code == 0, err
    assert [d["key"] for d in json.loads(out)] == [".notebook:abc.y"]


def test_file_ids_map_keys_to_paths(tmp_path: Path, env: Any, capsys: Any) -> None:
    from jupyter_server_fileid.manager import ArbitraryFileIdManager

    root = tmp_path / "root"
    root.mkdir()
    manager = ArbitraryFileIdManager(db_path=str(tmp_path / "fileid.db"), root_dir=str(root))
    file_id = manager.index("work/analysis.ipynb")
    manager.con.close()

    async def write() -> None:
        config = Config()
        config.SQLiteYStore.db_path = str(tmp_path / "ystore.db")
        async with SQLiteYStore(f".notebook:{file_id}.y", config=config) as store:
            nb = YNotebook()
            nb.set(nb_content(["x = 1"]))
            await store.write(nb.ydoc.get_update())

    anyio.run(write)
    args = [
        f"--SQLiteYStore.db_path={tmp_path / 'ystore.db'}",
        f"--BaseFileIdManager.db_path={tmp_path / 'fileid.db'}",
        f"--root-dir={root}",
    ]
    code, out, err = cli(capsys, "list", "--json", *args)
    assert code == 0, err
    assert json.loads(out)[0]["path"] == "work/analysis.ipynb"
    code, out, err = cli(capsys, "info", "work/analysis.ipynb", "--json", *args)  # by its path
    assert code == 0, err
    assert json.loads(out)["key"] == f".notebook:{file_id}.y"


def test_progress_bar_on_a_terminal_only(tmp_path: Path, env: dict[str, str]) -> None:
    write_phases("file", tmp_path)
    args = store_args("file", tmp_path)
    piped = run(env, "verify", "--all", *args)
    assert piped.returncode == 0
    assert "verifying" not in piped.stderr and "\r" not in piped.stderr

    # stderr on a pseudo-terminal: the bar is drawn there.
    leader, follower = pty.openpty()
    bindir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "ystore", "verify", "--all", *args],
        env=dict(env, PATH=bindir + os.pathsep + env.get("PATH", "")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower side closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0
    assert "verifying" in terminal


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg(pg_config: dict[str, Any]):
    PG.clear()
    PG.update(pg_config)
    yield pg_config
    PG.clear()


def test_postgres_store_and_migration_keeping_times(tmp_path: Path, env: Any, capsys: Any, pg: Any) -> None:
    recorded = write_phases("sqlite", tmp_path)
    sqlite_args = store_args("sqlite", tmp_path)
    pg_args = store_args("postgres", tmp_path)
    code, out, err = cli(
        capsys, "migrate", *sqlite_args, "--to", "PostgresYStore",
        f"--PostgresYStore.dsn={pg['dsn']}", f"--PostgresYStore.schema={pg['schema']}", "--json",
    )
    assert code == 0, err
    assert sorted(json.loads(out)["copied"]) == sorted([NB_KEY, TEXT_KEY])
    code, out, err = cli(capsys, "list", "--json", *pg_args)
    assert {d["key"]: d["updates"] for d in json.loads(out)} == {NB_KEY: 6, TEXT_KEY: 4}
    # PostgreSQL imports records with their times: the history survives the migration.
    for at, content in recorded[TEXT_KEY]:
        code, out, err = cli(capsys, "export", TEXT_KEY, "--at", repr(at), *pg_args)
        assert code == 0, err
        assert out == content
    t1, nb1 = recorded[NB_KEY][0]
    code, out, err = cli(capsys, "restore", NB_KEY, "--at", repr(t1), "--json", *pg_args)
    assert code == 0, err
    assert json.loads(out)["live"] is True  # open rooms receive it through watch()
    assert "close it there first" not in err
    out_file = tmp_path / "pg.ipynb"
    assert read_notebook(export_to(capsys, pg_args, NB_KEY, out_file)) == comparable(nb1)
    code, out, err = cli(capsys, "compact", "--all", *pg_args)
    assert code == 0, err
    code, out, err = cli(capsys, "info", NB_KEY, "--json", *pg_args)
    assert json.loads(out)["snapshots"] == 1
    assert read_notebook(export_to(capsys, pg_args, NB_KEY, out_file)) == comparable(nb1)
    code, out, err = cli(capsys, "verify", "--all", *pg_args)
    assert code == 0, out + err
    code, out, err = cli(capsys, "delete", TEXT_KEY, "--yes", *pg_args)
    assert code == 0, err
    code, out, err = cli(capsys, "list", "--json", *pg_args)
    assert [d["key"] for d in json.loads(out)] == [NB_KEY]
