"""A store the server cannot open stops `jupyter server` at start-up: exit code 1 and ONE log
line naming the setting and the reason, no traceback (real subprocesses, as a user runs it).

The extension opens and closes one store (a reserved key) while it is linked, before the
server listens; see ``YStoreExtension._probe_store``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _server_helpers import JupyterServerProcess, free_port, write_notebook
from postgres_helpers import fresh_config, run_sql

PG = "jupyter_ystore.stores.postgres.PostgresYStore"
SQLITE = "jupyter_ystore.stores.sqlite.SQLiteYStore"


def start_failure(tmp_path: Path, config: dict[str, Any], *, probe: bool = True) -> str:
    """Start a server that must refuse to start; return its one critical log line.

    ``probe``: refused by opening the store (logged once); otherwise by the configuration
    check, whose message also ends the process as its exit message (a second, bare copy)."""
    root = tmp_path / "root"
    write_notebook(root / "a.ipynb", ["x = 1"])
    server = JupyterServerProcess(root, tmp_path / "home", config=config)
    try:
        with pytest.raises(RuntimeError, match="exited with"):
            server.start(timeout=60)
    finally:
        server.kill()
    assert server.proc is not None and server.proc.returncode == 1, server.log()
    output = server.log()
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("[C ")]
    assert len(lines) == 1 and "jupyter_ystore:" in lines[0], output
    if probe:
        assert output.count("jupyter_ystore:") == 1, output
        assert "cannot open the store" in lines[0], output
    return lines[0]


def test_postgres_server_not_listening(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    line = start_failure(
        tmp_path,
        {
            "YStoreExtension": {"ystore_class": PG},
            "PostgresYStore": {"dsn": f"postgresql://postgres@127.0.0.1:{port}/somedb"},
        },
    )
    assert "c.PostgresYStore.dsn" in line
    assert f"127.0.0.1:{port}" in line and "somedb" in line  # where
    assert "refused" in line.lower()  # the driver's reason


def test_postgres_dsn_that_does_not_parse(tmp_path: Path) -> None:
    line = start_failure(
        tmp_path,
        {
            "YStoreExtension": {"ystore_class": PG},
            "PostgresYStore": {"dsn": "postgresql://postgres@127.0.0.1:notaport/test"},
        },
    )
    assert "c.PostgresYStore.dsn" in line and "invalid PostgreSQL DSN" in line


def test_postgres_without_a_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTER_YSTORE_DSN", raising=False)
    line = start_failure(tmp_path, {"YStoreExtension": {"ystore_class": PG}})
    assert "no PostgreSQL database configured" in line and "c.PostgresYStore.dsn" in line


def test_postgres_dsn_from_the_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_YSTORE_DSN", f"postgresql://postgres@127.0.0.1:{free_port()}/envdb")
    line = start_failure(tmp_path, {"YStoreExtension": {"ystore_class": PG}})
    assert "JUPYTER_YSTORE_DSN" in line and "envdb" in line


def test_postgres_table_of_an_unknown_layout_version(tmp_path: Path, request: Any) -> None:
    pg = fresh_config(request)
    schema = pg["schema"]
    run_sql(
        f'CREATE SCHEMA "{schema}"',
        f'CREATE TABLE "{schema}".yupdates (id bigint)',
        f'CREATE TABLE "{schema}".yupdates_version (version integer NOT NULL)',
        f'INSERT INTO "{schema}".yupdates_version VALUES (99)',
    )
    line = start_failure(
        tmp_path,
        {"YStoreExtension": {"ystore_class": PG}, "PostgresYStore": pg},
    )
    assert "version 99" in line and schema in line
    # nothing was changed
    assert run_sql(f'SELECT version FROM "{schema}".yupdates_version')[0]["version"] == 99


def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    # /proc refuses new folders even to root, for whom every permission check passes: only
    # opening the database finds out. (Not root: the configuration check already refuses.)
    line = start_failure(
        tmp_path,
        {
            "YStoreExtension": {"ystore_class": SQLITE},
            "SQLiteYStore": {"db_path": "/proc/jupyter-ystore-test/y.db"},
        },
    )
    assert "db_path" in line and "/proc/jupyter-ystore-test" in line


def test_sqlite_folder_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "FILE").write_text("a file")
    line = start_failure(
        tmp_path,
        {"SQLiteYStore": {"db_path": str(tmp_path / "FILE" / "sub" / "y.db")}},
        probe=False,
    )
    assert "db_path" in line and "is a file" in line


def test_sqlite_database_of_an_unknown_version(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE yupdates (path TEXT, yupdate BLOB, metadata BLOB, timestamp REAL)")
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    line = start_failure(tmp_path, {"SQLiteYStore": {"db_path": str(db)}})
    assert "c.SQLiteYStore.db_path" in line and "99" in line, line
    assert db.read_bytes() == before  # refused, not migrated or moved aside


def test_a_good_sqlite_store_starts_and_is_checked_at_start(tmp_path: Path) -> None:
    """The probe opens the configured database before the server listens (so a new one is
    created then), and leaves no document behind."""
    root = tmp_path / "root"
    write_notebook(root / "a.ipynb", ["x = 1"])
    db = tmp_path / "db" / "y.db"
    server = JupyterServerProcess(root, tmp_path / "home", config={"SQLiteYStore": {"db_path": str(db)}})
    server.start()
    try:
        assert db.exists(), server.log()
        # The user is told where their edits go, once.
        announced = [line for line in server.log().splitlines() if "every edit is stored by" in line]
        assert len(announced) == 1 and f"SQLiteYStore (c.SQLiteYStore.db_path = '{db}')" in announced[0]
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM yupdates").fetchone()[0] == 0
        conn.close()
    finally:
        server.terminate()
    assert server.proc is not None and server.proc.returncode == 0, server.log()
