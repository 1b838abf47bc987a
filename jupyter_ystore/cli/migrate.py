"""`jupyter ystore migrate --to CLASS`: copy every document to another backend.

The source is the configured store (``--ystore-class``, ``c.YStoreExtension.ystore_class``),
the target ``--to``; both take their settings from the same config (e.g.
``--FileYStore.root_dir=… --to SQLiteYStore --SQLiteYStore.db_path=…``). The copying, the
refusal to touch documents the target already has, and the content-equality check are
``jupyter_ystore.stores.migrate.copy_documents``; this adds the command line around it.
"""

from __future__ import annotations

from traitlets import Bool, Unicode

from jupyter_ystore.cli.base import (
    CliError,
    StoreCommand,
    aliases,
    flags,
    resolve_store_class,
    usage_error,
)
from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.base import BaseYStore
from jupyter_ystore.stores.migrate import copy_documents


class MigrateApp(StoreCommand):
    description = "Copy every document to another store class (--to), checked content-equal."
    aliases = {**aliases, "to": "MigrateApp.to"}
    flags = {
        **flags,
        "skip-existing": (
            {"MigrateApp": {"skip_existing": True}},
            "Leave documents the target already has (default: refuse to start).",
        ),
        "overwrite": (
            {"MigrateApp": {"overwrite": True}},
            "Replace documents the target already has (default: refuse to start).",
        ),
    }
    to = Unicode("", config=True, help="The target store class (name or dotted path).")
    skip_existing = Bool(False, config=True, help="Skip documents the target already holds.")
    overwrite = Bool(False, config=True, help="Replace documents the target already holds.")

    async def run(self) -> int:
        if self.extra_args:
            raise usage_error("migrate takes no document: it copies them all")
        if not self.to:
            raise usage_error("--to CLASS is required (e.g. --to SQLiteYStore)")
        source_cls = self.store_class
        target_cls = resolve_store_class(self.to)
        if target_cls is source_cls:
            raise usage_error(f"source and target are both {source_cls.__name__}")
        if self.skip_existing and self.overwrite:
            raise usage_error("--skip-existing and --overwrite exclude each other")
        keys = [info.path for info in await self.list_documents(source_cls)]
        existing: set[str] = set()
        target_missing = self.make_store(None, target_cls).missing_location() is not None
        if self.skip_existing and not target_missing:
            existing = {info.path for info in await self.list_documents(target_cls)} & set(keys)

        def source(path: str) -> BaseYStore:
            return self.make_store(path, source_cls)

        def target(path: str) -> BaseYStore:
            return self.make_store(path, target_cls)

        try:
            report = await copy_documents(
                source,
                target,
                paths=[key for key in keys if key not in existing],
                overwrite=self.overwrite,
                progress=None if self.progress and not self.json else False,  # None: on a TTY only
            )
        except YStoreError as exc:
            raise CliError(str(exc)) from None
        result = {
            "from": source_cls.__name__,
            "to": target_cls.__name__,
            "copied": report.documents,
            "records": report.records,
            "bytes": report.bytes,
            "skipped": sorted(existing),
            "empty": report.empty,
        }
        if self.json:
            self.emit_json(result)
        else:
            print(
                f"copied {len(report.documents)} documents ({report.records} updates) from "
                f"{source_cls.__name__} to {target_cls.__name__}, contents checked equal"
                + (f"; skipped {len(existing)} the target already had" if existing else "")
            )
        return 0
