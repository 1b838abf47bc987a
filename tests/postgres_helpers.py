"""Fixtures for tests that need a real PostgreSQL server.

The server is named by ``JUPYTER_YSTORE_TEST_DSN`` (default: the CI service,
postgresql://postgres@127.0.0.1:5432/test). Without a reachable server the tests skip and
say how to point them at one, except under ``CI=true``, where a missing server is a failure:
CI must never pass by skipping them. Every test gets a schema of its own, dropped afterwards,
so tests never see each other's rows and leave nothing behind.

Import the fixtures into a test module (``from postgres_helpers import pg_config``), or
call ``fresh_config(request)`` from a fixture or factory of another module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from typing import Any

import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DSN = os.environ.get("JUPYTER_YSTORE_TEST_DSN") or DEFAULT_DSN
IN_CI = os.environ.get("CI", "").lower() == "true"

STATEMENT_TIMEOUT = 60.0
_reachable: str | None | bool = False  # False: not probed yet; None: reachable; str: why not


def _unavailable(reason: str) -> None:
    message = (
        f"PostgreSQL tests need a server: {reason}. Point them at one with "
        f"JUPYTER_YSTORE_TEST_DSN=postgresql://user@host:port/database "
        f"(tried {DSN}; trust or password in the DSN, the user may create schemas)"
    )
    if IN_CI:
        pytest.fail(message + " [CI=true: not skipping]", pytrace=False)
    pytest.skip(message)


def _probe() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "the asyncpg driver is not installed (pip install 'jupyter_ystore[postgres]')"

    async def connect() -> None:
        conn = await asyncpg.connect(DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(connect())
    except Exception as exc:
        return f"cannot connect ({type(exc).__name__}: {exc})"
    return None


def require_server() -> None:
    """Skip (or fail under CI) when the test server is not reachable; probed once."""
    global _reachable
    if _reachable is False:
        _reachable = _probe()
    if _reachable is not None:
        _unavailable(str(_reachable))


def run_sql(*statements: str) -> Any:
    """Run statements on a short-lived connection of its own (setup and teardown).

    Runs in a thread with its own event loop, so it works from sync and async tests alike.
    """
    import asyncpg

    async def go() -> Any:
        conn = await asyncpg.connect(DSN, timeout=10)
        try:
            result = None
            for statement in statements:
                # bounded: a teardown that waits on a lock forever would hang the whole run
                result = await conn.fetch(statement, timeout=STATEMENT_TIMEOUT)
            return result
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, go()).result()


def fresh_config(request: Any) -> dict[str, Any]:
    """PostgresYStore keyword arguments on a schema of this test's own, dropped when the
    test ends (``request`` is the test's; usable from any fixture or backend factory)."""
    require_server()
    name = "ystore_test_" + uuid.uuid4().hex[:12]
    request.addfinalizer(lambda: drop_schema(name))
    return {"dsn": DSN, "schema": name}


_left_for_the_end: list[str] = []


def drop_schema(name: str) -> None:
    """Drop a test's schema, or leave it for the end of the session when it is still locked.

    pytest-jupyter tears its in-process server down after every fixture of the test, this one
    included, and between tests that server's event loop does not run. A transaction the
    server had in flight when the test ended (an autosave writing attributes) then holds its
    locks until the server's cleanup lets it finish, so a drop here would wait for ever.
    """
    import asyncpg

    try:
        run_sql("SET lock_timeout = '3s'", f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except asyncpg.exceptions.LockNotAvailableError:
        _left_for_the_end.append(name)


def drop_schemas_left_for_the_end() -> list[str]:
    """Drop what ``drop_schema`` could not (every server of the session has been cleaned up
    by now); return the names still there."""
    left = []
    for name in _left_for_the_end:
        try:
            run_sql("SET lock_timeout = '30s'", f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        except Exception:
            left.append(name)
    _left_for_the_end.clear()
    return left


@pytest.fixture
def pg_dsn() -> str:
    """The DSN of a reachable test server."""
    require_server()
    return DSN


@pytest.fixture
def pg_config(request: Any) -> dict[str, Any]:
    """Keyword arguments for a PostgresYStore on this test's own schema."""
    return fresh_config(request)


@pytest.fixture
def pg_schema(pg_config: dict[str, Any]) -> str:
    """The name of this test's schema (dropped afterwards)."""
    return pg_config["schema"]
