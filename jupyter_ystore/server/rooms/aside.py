"""Setting a document's stored history aside, instead of trusting it or deleting it.

A history a room cannot trust (updates waiting for ones that are not stored, records that do
not decode, a document that comes out empty while its file is not) must neither overwrite
the file nor be lost. It is copied under a new key, ``<key>.aside-<UTC time>``, in the same
store (where ``jupyter ystore list``, ``info`` and ``export`` reach it), and only then removed
from the document's own key, which then starts afresh from the file.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from jupyter_ystore.errors import YDocNotFound, YStoreInvalidUpdate
from jupyter_ystore.stores.base import BaseYStore

ASIDE_MARK = ".aside-"


@dataclass(frozen=True)
class SetAside:
    """Where a history went and how much of it."""

    key: str
    copied: int
    skipped: int  # records that were not valid updates (kept nowhere: they never loaded)


def aside_key(key: str, now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{key}{ASIDE_MARK}{now:%Y%m%dT%H%M%S%fZ}"


async def set_aside(store: BaseYStore) -> SetAside:
    """Copy ``store``'s document (records with their metadata and timestamps' order, and its
    attributes) under a new key, then delete it from its own key. ``store`` is running.

    Raises when the copy fails; the document is then left where it was.
    """
    target = store.with_path(aside_key(store.path))
    copied = skipped = 0
    async with target:
        try:
            records = [record async for record in store.read()]
        except YDocNotFound:
            records = []
        for update, metadata, _timestamp in records:
            try:
                await target.write(update, metadata=metadata)
            except YStoreInvalidUpdate:
                skipped += 1
                continue
            copied += 1
        try:
            attributes = await store.get_attributes()
        except NotImplementedError:
            attributes = {}
        if attributes:
            await target.set_attributes(attributes)
    await store.delete()
    return SetAside(target.path, copied, skipped)
