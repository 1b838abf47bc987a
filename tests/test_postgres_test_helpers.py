"""The PostgreSQL test helpers never hang a test run on a schema someone still has locked.

A CI run once hung for its whole budget: pytest-jupyter cleans its in-process server up after
the test's own fixtures, so a schema drop waited for ever on the lock of a transaction that
server had in flight (its event loop no longer running to finish it).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import postgres_helpers
from postgres_helpers import DSN, require_server, run_sql


def test_a_locked_schema_is_left_for_the_end_and_then_dropped() -> None:
    require_server()
    import asyncpg

    name = "ystore_test_" + uuid.uuid4().hex[:12]
    run_sql(f'CREATE SCHEMA "{name}"', f'CREATE TABLE "{name}".t (x int)')

    async def scenario() -> None:
        holder = await asyncpg.connect(DSN, timeout=10)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(f'INSERT INTO "{name}".t VALUES (1)')  # a lock held, not released
            # the drop runs on its own thread and loop, like a fixture's teardown
            await asyncio.wait_for(asyncio.to_thread(postgres_helpers.drop_schema, name), 30)
            assert name in postgres_helpers._left_for_the_end
            await transaction.commit()
        finally:
            await holder.close()

    try:
        asyncio.run(scenario())
        assert postgres_helpers.drop_schemas_left_for_the_end() == []
        assert run_sql(f"SELECT 1 FROM pg_namespace WHERE nspname = '{name}'") == []
    finally:
        run_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_an_unlocked_schema_is_dropped_at_once(request: pytest.FixtureRequest) -> None:
    config = postgres_helpers.fresh_config(request)
    run_sql(f'CREATE SCHEMA "{config["schema"]}"')
    postgres_helpers.drop_schema(config["schema"])
    assert config["schema"] not in postgres_helpers._left_for_the_end
    assert run_sql(f"SELECT 1 FROM pg_namespace WHERE nspname = '{config['schema']}'") == []
