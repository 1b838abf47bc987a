"""Full garbage collections at chosen moments (jupyter_ystore.server.full_collections)."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from jupyter_ystore.server.full_collections import NEVER, FullCollections

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_full_collections")


class Node:
    """A weakly referable object that can sit in a reference cycle."""

    other: Any = None


def cyclic_garbage_in_the_oldest_generation() -> weakref.ref[Node]:
    """A two-object cycle that only a full collection frees: moved to the oldest generation
    while still referenced (a young collection promotes what it does not free), then
    dropped."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)
    assert gc.is_tracked(a)
    ref = weakref.ref(a)
    del a, b
    return ref


def full_collections_seen() -> tuple[list[int], Callable[[str, dict[str, Any]], None]]:
    seen = [0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen[0] += 1

    return seen, callback


def promote_many(count: int) -> list[list[int]]:
    """``count`` new long-lived containers, pushed through the young generations as a server
    under load pushes its short-lived ones: what sets off the collector's own full
    collections."""
    kept = [[i] for i in range(count)]
    for _ in range(20):
        _ = [[j] for j in range(10_000)]
    return kept


@asynccontextmanager
async def running(schedule: FullCollections) -> AsyncIterator[FullCollections]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(schedule.run)
        await wait_for(lambda: gc.get_threshold()[2] == NEVER)
        yield schedule
        tg.cancel_scope.cancel()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def test_while_it_runs_the_collectors_counters_start_no_full_collection() -> None:
    """The same promotions start a full collection with the thresholds it found (checked
    first, so the test can fail) and none while it runs; its thresholds come back after."""
    before = gc.get_threshold()
    seen, callback = full_collections_seen()
    gc.callbacks.append(callback)
    try:
        gc.collect()
        kept = promote_many(400_000)
        assert seen[0] >= 1, "the collector's own rule should have started a full collection"
        del kept
        gc.collect()
        async with running(FullCollections(LOG, check_every=60)):
            seen[0] = 0
            garbage = cyclic_garbage_in_the_oldest_generation()
            kept = promote_many(400_000)
            await anyio.sleep(0.05)
            assert seen[0] == 0
            assert garbage() is not None
            del kept
        assert gc.get_threshold() == before
    finally:
        gc.callbacks.remove(callback)
        gc.collect()


async def test_the_last_room_closing_collects_at_once() -> None:
    async with running(FullCollections(LOG, after_closed_rooms=3, check_every=60)) as schedule:
        garbage = cyclic_garbage_in_the_oldest_generation()
        schedule.room_closed(2)
        await anyio.sleep(0.1)
        assert garbage() is not None and schedule.runs == 0
        schedule.room_closed(0)
        await wait_for(lambda: schedule.runs == 1)
        assert garbage() is None


async def test_every_nth_closed_room_collects_while_others_stay_open() -> None:
    async with running(FullCollections(LOG, after_closed_rooms=2, check_every=60)) as schedule:
        for round in range(2):
            garbage = cyclic_garbage_in_the_oldest_generation()
            schedule.room_closed(40)
            await anyio.sleep(0.1)
            assert garbage() is not None and schedule.runs == round
            schedule.room_closed(39)
            await wait_for(lambda: schedule.runs == round + 1)
            assert garbage() is None


async def test_a_grown_oldest_generation_is_collected() -> None:
    schedule = FullCollections(LOG, growth=0.5, slack=1_000, check_every=0.05)
    async with running(schedule):
        await anyio.sleep(0.2)  # the first check counts the oldest generation
        assert schedule.runs == 0
        garbage = cyclic_garbage_in_the_oldest_generation()
        kept = [[i] for i in range(len(gc.get_objects(2)))]
        gc.collect(1)
        await wait_for(lambda: schedule.runs == 1)
        assert garbage() is None
        await anyio.sleep(0.2)
        assert schedule.runs == 1  # counted afresh after the collection
        del kept


async def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    async with running(FullCollections(LOG, after_closed_rooms=1, check_every=60)) as schedule:
        gc.disable()
        try:
            garbage = cyclic_garbage_in_the_oldest_generation()
            schedule.room_closed(0)
            await anyio.sleep(0.1)
            assert garbage() is not None and schedule.runs == 0
        finally:
            gc.enable()
        schedule.room_closed(0)
        await wait_for(lambda: schedule.runs == 1)
        assert garbage() is None


def test_at_least_one_closed_room() -> None:
    with pytest.raises(ValueError, match="after_closed_rooms"):
        FullCollections(LOG, after_closed_rooms=0)
