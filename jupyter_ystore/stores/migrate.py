"""Copy every document from one store to another (SQLite <-> PostgreSQL, files...).

``copy_documents(source, target)`` takes two *store factories* (``path -> store``), lists
the source's documents, copies each one's stored records in order and checks that the
target restores the same content. It refuses to touch a document the target already holds
unless ``overwrite=True``, and checks that before copying anything. Meant to back a
``jupyter ystore migrate`` command; meanwhile::

    python -m jupyter_ystore.stores.migrate --from sqlite:.jupyter_ystore.db \\
        --to postgres:postgresql://user@host/db

Records keep their metadata; their timestamps too when the target can import records as
they are (PostgresYStore), otherwise they get the time of the copy. A document's attributes
(``get_attributes``) are copied after its records and checked equal. "Content-equal" is
checked as: same state vector and same delete set (every Yjs operation is identified by
(client, clock), so these two determine the document), not byte equality of encodings,
which differs between equal documents built in different orders.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import anyio
import pycrdt

from jupyter_ystore.core import threads
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.ydoc import crdt_errors
from jupyter_ystore.errors import YDocNotFound, YStoreError
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo

StoreFactory = Callable[[str], BaseYStore]

#: The path of the store opened only to list a store's documents (never written).
LISTING_PATH = ".ystore-migrate-listing"


@dataclass
class CopyReport:
    """What ``copy_documents`` did."""

    documents: list[str] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    empty: list[str] = field(default_factory=list)  # listed, but nothing stored when copied
    attributes: int = 0  # attribute values copied (all documents)


class ContentMismatch(YStoreError):
    """The copy does not restore the same document as the original."""


def content_signature(updates: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(state vector, delete set) of the document the updates restore."""
    doc = pycrdt.Doc()
    if updates:
        with crdt_errors():
            for group in _ydoc.merged_groups(list(updates)):
                doc.apply_update(group)
    state = doc.get_state()
    return state, doc.get_update(state)  # nothing missing from itself: only the delete set


async def list_documents(factory: StoreFactory) -> list[DocumentInfo]:
    async with factory(LISTING_PATH) as store:
        return [info for info in await store.list_documents() if info.path != LISTING_PATH]


class _Progress:
    """A tqdm bar on a terminal, silence elsewhere (logs, CI, pipes)."""

    def __init__(self, total: int, enabled: bool | None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # optional: copying works without a bar
                return
            self._bar = tqdm(total=total, unit="update", desc="copying", file=sys.stderr)

    def document(self, path: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(path[-40:], refresh=False)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def _read_records(store: BaseYStore) -> list[tuple[bytes, bytes, float]]:
    try:
        return [record async for record in store.read()]
    except YDocNotFound:
        return []


async def _read_attributes(store: BaseYStore) -> dict[str, bytes]:
    try:
        return await store.get_attributes()
    except NotImplementedError:  # a store class of someone else's, without attributes
        return {}


async def _write_attributes(store: BaseYStore, attributes: dict[str, bytes]) -> None:
    if not attributes:
        return
    try:
        await store.set_attributes(attributes)
    except NotImplementedError:
        raise YStoreError(
            f"{type(store).__name__} cannot store document attributes "
            f"({', '.join(sorted(attributes))})",
            path=store.path,
            hint="the document's updates were copied, its attributes not; migrate to one "
            "of jupyter_ystore's stores",
        ) from None


async def copy_documents(
    source: StoreFactory,
    target: StoreFactory,
    *,
    paths: Iterable[str] | None = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool | None = None,
) -> CopyReport:
    """Copy every document of ``source`` (or only ``paths``) into ``target``.

    ``source`` and ``target`` make a store for a document path, e.g.
    ``lambda path: SQLiteYStore(path, db_path="y.db")``. Raises ``YStoreError`` (nothing
    copied) when the target already holds one of the documents and ``overwrite`` is false,
    and ``ContentMismatch`` when a copy does not restore the original's content.
    ``progress``: a bar on stderr; None shows it only on a terminal.
    """
    infos = await list_documents(source)
    if paths is not None:
        wanted = set(paths)
        infos = [info for info in infos if info.path in wanted]
        missing = wanted - {info.path for info in infos}
        if missing:
            raise YStoreError(f"not in the source store: {', '.join(sorted(missing))}")
    existing = {info.path for info in await list_documents(target)}
    clashes = sorted(existing & {info.path for info in infos})
    if clashes and not overwrite:
        shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise YStoreError(
            f"the target already holds {len(clashes)} of these documents ({shown})",
            hint="nothing was copied; pass overwrite=True (--overwrite) to replace them",
        )
    report = CopyReport()
    bar = _Progress(sum(info.updates for info in infos), progress)
    try:
        for info in infos:
            bar.document(info.path)
            async with source(info.path) as src:
                records = await _read_records(src)
                attributes = await _read_attributes(src)
            if not records:
                report.empty.append(info.path)
                bar.advance(info.updates)
                continue
            async with target(info.path) as dst:
                if info.path in existing:
                    await dst.delete()
                await dst.import_records(records)
                await _write_attributes(dst, attributes)
                if verify:
                    copied = await _read_records(dst)
                    await _check_equal(info.path, records, copied)
                    if await _read_attributes(dst) != attributes:
                        raise ContentMismatch(
                            "the copy does not hold the same attributes",
                            path=info.path,
                            hint="the target keeps what was written; compare and delete it "
                            "before retrying",
                        )
            report.documents.append(info.path)
            report.records += len(records)
            report.bytes += sum(len(record[0]) for record in records)
            report.attributes += len(attributes)
            bar.advance(info.updates)
    finally:
        bar.close()
    return report


async def _check_equal(path: str, original: list[Any], copied: list[Any]) -> None:
    want = await threads.run_sync(content_signature, [r[0] for r in original])
    got = await threads.run_sync(content_signature, [r[0] for r in copied])
    if want != got:
        raise ContentMismatch(
            "the copy does not restore the same document",
            path=path,
            hint="the target keeps what was written; compare and delete it before retrying",
        )


# ---------------------------------------------------------------------- command line


def store_factory(spec: str, *, schema: str | None = None, table: str | None = None) -> StoreFactory:
    """``sqlite:PATH``, ``file:FOLDER``, ``postgres:DSN`` (or a bare postgresql:// DSN)."""
    kind, sep, where = spec.partition(":")
    if spec.startswith(("postgresql://", "postgres://")):
        kind, where = "postgres", spec
    elif not sep or not where:
        raise ValueError(f"a store is KIND:WHERE (sqlite:PATH, file:FOLDER, postgres:DSN), got {spec!r}")
    if kind == "sqlite":
        from jupyter_ystore.stores.sqlite.store import SQLiteYStore

        return lambda path: SQLiteYStore(path, db_path=where)
    if kind == "file":
        from jupyter_ystore.stores.file.store import FileYStore

        return lambda path: FileYStore(path, root_dir=where)
    if kind in ("postgres", "postgresql"):
        from jupyter_ystore.stores.postgres.store import PostgresYStore

        options: dict[str, Any] = {"dsn": where}
        if schema:
            options["schema"] = schema
        if table:
            options["table_name"] = table
        return lambda path: PostgresYStore(path, **options)
    raise ValueError(f"unknown store kind {kind!r}: use sqlite, file or postgres")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_ystore.stores.migrate",
        description="Copy every document from one store to another, content-equal.",
    )
    parser.add_argument("--from", dest="source", required=True, help="sqlite:PATH, file:FOLDER or postgres:DSN")
    parser.add_argument("--to", dest="target", required=True, help="sqlite:PATH, file:FOLDER or postgres:DSN")
    parser.add_argument("--schema", help="PostgreSQL schema (default: PostgresYStore's)")
    parser.add_argument("--table", help="PostgreSQL table (default: PostgresYStore's)")
    parser.add_argument("--overwrite", action="store_true", help="replace documents the target already holds")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the content check")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("paths", nargs="*", help="only these documents (default: all)")
    args = parser.parse_args(argv)
    try:
        source = store_factory(args.source, schema=args.schema, table=args.table)
        target = store_factory(args.target, schema=args.schema, table=args.table)
        report = anyio.run(
            lambda: copy_documents(
                source,
                target,
                paths=args.paths or None,
                overwrite=args.overwrite,
                verify=args.verify,
                progress=False if args.quiet else None,
            )
        )
    except (YStoreError, ValueError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print(
        f"copied {len(report.documents)} documents ({report.records} updates, {report.bytes} bytes)"
        + (f"; {len(report.empty)} listed but empty" if report.empty else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
