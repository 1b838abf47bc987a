"""Fixtures shared by every test module.

Legacy stores (written by ypy-websocket and pycrdt-store) live in ``tests/data/legacy``; a test
gets a private copy so that nothing it does can change the originals.
"""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Callable

import pytest

import hang_watchdog

from jupyter_ystore.stores import squash_helper

#: A last bound on hangs, setup and teardown included (see hang_watchdog).
pytest_runtest_protocol = hang_watchdog.pytest_runtest_protocol

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy"
BENCH_STREAM = Path(__file__).parents[1] / "benchmarks" / "data" / "updates-50000.bin"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _collect_y_py_docs_on_the_main_thread():
    """y_py documents may only be freed on the thread that made them. One left in a reference
    cycle would otherwise be freed by whichever thread the garbage collector next runs in (a
    worker thread of a later test), which y_py reports as an error."""
    yield
    if "y_py" in sys.modules:
        gc.collect()


@pytest.fixture(autouse=True)
def _compactions_in_process_after_each_test():
    """A server extension started in this process sends compactions to the helper process
    (``squash_helper.offload_compactions``) until it stops; a test that left one running must
    not change where a later store test's compactions run (their monkeypatches are here)."""
    yield
    squash_helper.offload_compactions(False)


@pytest.fixture
def legacy_copy(tmp_path: Path) -> Callable[[str], Path]:
    """Copy one legacy fixture into the test's own folder and return the copy's path."""

    def copy(name: str) -> Path:
        target = tmp_path / "legacy" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LEGACY / name, target)
        target.chmod(0o644)
        return target

    return copy


@pytest.fixture(scope="session")
def legacy_expected() -> dict:
    """What each legacy fixture holds, keyed by file name."""
    expected: dict = {}
    for name in ("expected-ypy.json", "expected-pycrdt.json"):
        expected.update(json.loads((LEGACY / name).read_text(encoding="utf-8")))
    return expected


@pytest.fixture(scope="session")
def bench_updates() -> list[bytes]:
    """The first 5,000 updates of the realistic benchmark stream (a notebook being typed)."""
    from jupyter_ystore.core.codec import iter_var_bytes

    updates = []
    for update in iter_var_bytes(BENCH_STREAM.read_bytes()):
        updates.append(update)
        if len(updates) == 5000:
            break
    return updates


@pytest.fixture
def sqlite_read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Call it with a database file: the file leaves WAL mode (a read-only WAL database needs
    a writable ``-shm``) and every later ``sqlite3.connect`` opens files read-only
    (``mode=ro``, as a file without write permission would be, even for root) until
    ``monkeypatch.undo()`` or the end of the test."""

    def make_read_only(db: Path) -> None:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.close()
        real_connect = sqlite3.connect

        def read_only(path: str, **kwargs: object) -> sqlite3.Connection:
            return real_connect(f"file:{path}?mode=ro", uri=True, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite3, "connect", read_only)

    return make_read_only


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the PostgreSQL schemas a test's teardown found still locked (see
    ``postgres_helpers.drop_schema``)."""
    helpers = sys.modules.get("postgres_helpers")
    if helpers is None:
        return
    left = helpers.drop_schemas_left_for_the_end()
    if left:
        print(f"\nPostgreSQL schemas still locked, not dropped: {', '.join(left)}", file=sys.stderr)
