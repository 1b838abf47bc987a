"""`jupyter ystore migrate --to CLASS`: copy every document to another backend.

The source is the configured store (``--ystore-class``, ``c.YStoreExtension.ystore_class``),
the target ``--to``; both take their settings from the same config (e.g.
``--FileYStore.root_dir=… --to SQLiteYStore --SQLiteYStore.db_path=…``). When the project's
``jupyter_ystore.migrate.copy_documents`` exists it does the copying; otherwise each update is
written to the target in order with its metadata (the target stamps them with the time of
the copy). Either way every copied document is read back and compared with the source:
the command fails unless the contents are equal.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import anyio
from traitlets import Bool, Unicode

from . import cli_content
from .cli_base import CliError, StoreCommand, aliases, flags, resolve_store_class, usage_error
from .errors import YDocNotFound
from .history import read_history
from .stores.base import BaseYStore, DocumentInfo


class MigrateApp(StoreCommand):
    description = "Copy every document to another store class (--to), checked content-equal."
    aliases = {**aliases, "to": "MigrateApp.to"}
    flags = {
        **flags,
        "skip-existing": (
            {"MigrateApp": {"skip_existing": True}},
            "Leave documents the target already has (default: refuse to start).",
        ),
    }
    to = Unicode("", config=True, help="The target store class (name or dotted path).")
    skip_existing = Bool(False, config=True, help="Skip documents the target already holds.")

    async def run(self) -> int:
        if self.extra_args:
            raise usage_error("migrate takes no document: it copies them all")
        if not self.to:
            raise usage_error("--to CLASS is required (e.g. --to SQLiteYStore)")
        source_cls = self.store_class
        target_cls = resolve_store_class(self.to)
        if target_cls is source_cls:
            raise usage_error(f"source and target are both {source_cls.__name__}")
        infos = await self.list_documents(source_cls)
        existing = await self._existing(target_cls, [info.path for info in infos])
        if existing and not self.skip_existing:
            names = ", ".join(sorted(existing)[:5])
            raise CliError(
                f"the target {target_cls.__name__} already holds {len(existing)} of these "
                f"documents ({names}); nothing copied (use --skip-existing to leave them)"
            )
        todo = [info for info in infos if info.path not in existing]
        copier = _project_copier()
        copied = []
        for info in self.progress_bar(todo, unit="doc", desc="migrating"):
            if copier is not None:
                await self._copy_with(copier, info, source_cls, target_cls)
            else:
                await self._copy(info, source_cls, target_cls)
            await self._check_equal(info, source_cls, target_cls)
            copied.append(info.path)
        result = {
            "from": source_cls.__name__,
            "to": target_cls.__name__,
            "copied": copied,
            "skipped": sorted(existing),
        }
        if self.json:
            self.emit_json(result)
        else:
            print(
                f"copied {len(copied)} documents from {source_cls.__name__} to "
                f"{target_cls.__name__} (contents checked equal)"
                + (f"; skipped {len(existing)} the target already had" if existing else "")
            )
        return 0

    async def _existing(self, target_cls: type[BaseYStore], keys: list[str]) -> set[str]:
        try:
            return {info.path for info in await self.list_documents(target_cls)} & set(keys)
        except CliError:  # the target cannot list: ask document by document
            found = set()
            for key in keys:
                async with self.open_store(key, target_cls) as store:
                    try:
                        async for _row in store.read():
                            found.add(key)
                            break
                    except YDocNotFound:
                        pass
            return found

    async def _copy(self, info: DocumentInfo, source_cls: type, target_cls: type) -> None:
        async with self.open_store(info.path, source_cls) as source:
            rows = [row async for row in source.read()]
        current = {"metadata": b""}
        async with self.open_store(
            info.path, target_cls, metadata_callback=lambda: current["metadata"]
        ) as target:
            for update, metadata, _timestamp in rows:
                current["metadata"] = metadata
                await target.write(update)

    async def _copy_with(self, copier: Any, info: DocumentInfo, source_cls: type, target_cls: type) -> None:
        async with self.open_store(info.path, source_cls) as source, self.open_store(
            info.path, target_cls
        ) as target:
            result = copier(source, target)
            if inspect.isawaitable(result):
                await result

    async def _check_equal(self, info: DocumentInfo, source_cls: type, target_cls: type) -> None:
        async with self.open_store(info.path, source_cls) as source:
            before = (await read_history(source)).state_at(None)
        async with self.open_store(info.path, target_cls) as target:
            after = (await read_history(target)).state_at(None)
        same = await anyio.to_thread.run_sync(
            lambda: cli_content.to_py(before) == cli_content.to_py(after)
        )
        if not same:
            raise CliError(
                f"{info.path}: the copy in {target_cls.__name__} differs from the source; "
                "the source is unchanged"
            )


def _project_copier() -> Any:
    """``copy_documents(source, target)`` from ``jupyter_ystore.migrate`` when it is there
    and takes two stores; None otherwise."""
    try:
        module = importlib.import_module("jupyter_ystore.migrate")
    except ImportError:
        return None
    copier = getattr(module, "copy_documents", None)
    if copier is None:
        return None
    try:
        params = [
            p for p in inspect.signature(copier).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return None
    return copier if len(params) == 2 else None
