"""The store's figures on the server's own Prometheus ``/metrics`` endpoint.

A pytest-jupyter server with a SQLite store that compacts every few updates: a client edits,
leaves (the room closes), comes back (the room loads from the store); ``/metrics`` shows the
updates written, their write latency, the load, the compactions, the bytes stored (equal to
what the store lists) and the open rooms. The registry is the process's, shared by every
test: figures are compared before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from traitlets.config import Config

from _server_helpers import append, write_notebook, yclient
from jupyter_ystore.stores.sqlite.store import SQLiteYStore
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)
from test_timeline import Api

pytestmark = pytest.mark.timeout(120)

STORE = "SQLiteYStore"


@pytest.fixture
def jp_server_config(tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True}
            },
            "YStoreExtension": {
                "ystore_class": "jupyter_ystore.stores.sqlite.SQLiteYStore",
                "document_save_delay": None,
                "document_cleanup_delay": 0.1,
                "file_poll_interval": 0,
            },
            "SQLiteYStore": {"db_path": str(tmp_path / "store.db"), "compact_after_updates": 4},
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


async def scrape(jp_fetch: Any) -> dict[tuple[str, tuple], float]:
    response = await jp_fetch("metrics", method="GET")
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint(jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url, tmp_path) -> None:
    write_notebook(jp_root_dir / "m.ipynb", ["x = 0"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        before = await scrape(jp_fetch)
        session = await api.session("m.ipynb")
        url = api.url(f"json:notebook:{session['fileId']}", session["sessionId"])
        async with yclient(url) as client:
            await client.synced.wait()
            for i in range(6):
                append(client.document.ycells[0]["source"], f"\ny = {i}")
                await client.acknowledged()
            during = await scrape(jp_fetch)
            assert value(during, "jupyter_ystore_open_rooms", kind="document") == value(
                before, "jupyter_ystore_open_rooms", kind="document"
            ) + 1
        # the room closes (cleanup delay): the bytes stored are read again
        baseline = value(before, "jupyter_ystore_open_rooms", kind="document")
        await poll(jp_fetch, lambda m: value(m, "jupyter_ystore_open_rooms", kind="document") == baseline)
        async with SQLiteYStore(path="probe", db_path=str(tmp_path / "store.db")) as store:
            listed = sum(info.bytes for info in await store.list_documents())
        assert listed > 0
        await poll(jp_fetch, lambda m: value(m, "jupyter_ystore_bytes_stored", store=STORE) == listed)
        # it opens again, from the store
        async with yclient(url) as client:
            await client.synced.wait()
            assert client.sources() == ["x = 0" + "".join(f"\ny = {i}" for i in range(6))]
        after = await scrape(jp_fetch)

        written = value(after, "jupyter_ystore_updates_written_total", store=STORE) - value(
            before, "jupyter_ystore_updates_written_total", store=STORE
        )
        assert written >= 7  # the load and six edits, at least (saves write the state map too)
        latencies = value(after, "jupyter_ystore_write_seconds_count", store=STORE) - value(
            before, "jupyter_ystore_write_seconds_count", store=STORE
        )
        assert latencies == written
        assert value(after, "jupyter_ystore_write_seconds_sum", store=STORE) > value(
            before, "jupyter_ystore_write_seconds_sum", store=STORE
        )
        assert value(after, "jupyter_ystore_load_seconds_count", store=STORE) >= value(
            before, "jupyter_ystore_load_seconds_count", store=STORE
        ) + 1
        # compact_after_updates=4: the background compaction ran at least once
        compactions = value(before, "jupyter_ystore_compactions_total", store=STORE)
        await poll(jp_fetch, lambda m: value(m, "jupyter_ystore_compactions_total", store=STORE) > compactions)

    jp_asyncio_loop.run_until_complete(scenario())


async def poll(jp_fetch: Any, predicate: Any) -> dict:
    """Scrape until ``predicate`` holds (bounded: a hang fails, no timing is asserted)."""
    with anyio.fail_after(20):
        while True:
            samples = await scrape(jp_fetch)
            if predicate(samples):
                return samples
            await anyio.sleep(0.05)
