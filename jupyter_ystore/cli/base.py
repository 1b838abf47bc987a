"""What every `jupyter ystore` subcommand shares: configuration, the store, errors, output.

Configuration is the server's: the same config files (``jupyter_server_config.*`` and its
``.d`` folders) and the same trait names, so ``c.YStoreExtension.ystore_class`` and
``c.SQLiteYStore.db_path`` in ``jupyter_server_config.py`` point the command at the store the
server uses, and ``--ystore-class=…`` / ``--SQLiteYStore.db_path=…`` override them.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.paths import jupyter_data_dir
from traitlets import Any as AnyTrait
from traitlets import Bool, List, TraitError, Unicode, default
from traitlets.config import Configurable
from traitlets.config.loader import ArgumentError, KVArgParseConfigLoader, _KVArgParser
from traitlets.utils.importstring import import_item

from jupyter_ystore.core.keys import key_file_id
from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo

#: The store class when neither the config nor the command line names one (the server's).
FALLBACK_STORE_CLASS = "jupyter_ystore.stores.sqlite.SQLiteYStore"
#: Store locations relative to the server root when unconfigured (as in ``app.py``).

#: A document key used only to open a store for listing (never read or written).


class CliError(Exception):
    """A one-line error for the operator; ``code`` becomes the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CliError:
    return CliError(message, code=2)


aliases: dict[Any, Any] = {
    **base_aliases,
    "ystore-class": "YStoreExtension.ystore_class",
    "root-dir": "StoreCommand.root_dir",
}
flags: dict[Any, Any] = {
    # Not --generate-config / --show-config: they would write or show the SERVER's config.
    **{name: base_flags[name] for name in ("debug", "y")},
    "json": ({"StoreCommand": {"json": True}}, "Print machine-readable JSON."),
    "no-progress": (
        {"StoreCommand": {"progress": False}},
        "Never show a progress bar (it is shown only on a terminal anyway).",
    ),
}


def resolve_store_class(value: Any) -> type[BaseYStore]:
    """A store class from a class, a dotted import path or a public name (``SQLiteYStore``)."""
    if isinstance(value, type):
        cls = value
    else:
        name = str(value).strip()
        try:
            if "." in name:
                cls = import_item(name)
            else:
                import jupyter_ystore

                cls = getattr(jupyter_ystore, name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise usage_error(f"unknown store class {name!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseYStore)):
        raise usage_error(f"{value!r} is not a store class (a BaseYStore subclass)")
    return cls


class _OneLineParser(_KVArgParser):
    """argparse prints usage and exits; an operator gets one line and exit status 2."""

    def error(self, message: str) -> Any:
        raise usage_error(f"{message} (see --help)")


class _Loader(KVArgParseConfigLoader):
    parser_class = _OneLineParser

    def _handle_unrecognized_alias(self, arg: str) -> None:
        # traitlets only warns; an operator's mistyped option must not be silently ignored.
        raise usage_error(f"unrecognized option --{arg} (see --help)")


class YStoreExtension(Configurable):
    """The server extension's settings that this command reads (``c.YStoreExtension.*``).

    A stand-in for ``jupyter_ystore.server.app.YStoreExtension`` under the same config section name,
    so that the command does not import the whole server to read one setting (a test keeps
    the default equal to the server's).
    """

    ystore_class = AnyTrait(
        FALLBACK_STORE_CLASS,
        config=True,
        help="""The store class the server uses: a class, a dotted name
        ('jupyter_ystore.stores.sqlite.SQLiteYStore') or, here only, a public name of
        jupyter_ystore ('SQLiteYStore', 'FileYStore', 'PostgresYStore').""",
    )


def _store_classes() -> list[type]:
    """Backends whose settings are listed by --help-all (those that import)."""
    classes: list[type] = []
    for module, name in (
        ("jupyter_ystore.stores.sqlite", "SQLiteYStore"),
        ("jupyter_ystore.stores.file", "FileYStore"),
        ("jupyter_ystore.stores.postgres", "PostgresYStore"),
    ):
        try:
            classes.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:  # an optional driver is missing
            continue
    return classes


def _join_dashed_values(argv: list[str], aliases: dict[Any, Any]) -> list[str]:
    """``--at -10m`` → ``--at=-10m``: argparse takes a value starting with a dash (a relative
    time) for an option of its own."""
    takes_value = {
        ("-" if len(name) == 1 else "--") + name
        for key in aliases
        for name in (key if isinstance(key, tuple) else (key,))
    }
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in takes_value and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class StoreCommand(JupyterApp):
    """Base of every subcommand: loads the server's config and opens its store."""

    name = "jupyter-ystore"
    aliases = aliases
    flags = flags

    root_dir = Unicode(
        "",
        config=True,
        help="""The server's root folder, where unconfigured stores live (default:
        c.ServerApp.root_dir, else the current folder).""",
    )
    classes = List()

    @default("classes")
    def _classes_default(self) -> list[type]:
        return [type(self), YStoreExtension, *_store_classes()]

    json = Bool(False, config=True, help="Print machine-readable JSON instead of text.")
    progress = Bool(True, config=True, help="Show progress bars on a terminal.")

    def initialize(self, argv: Any = None) -> None:
        # JupyterApp's initialize logs bad config as CRITICAL and exits 1; say it in one line.
        try:
            JupyterApp.initialize.__wrapped__(self, argv)  # type: ignore[attr-defined]
        except (TraitError, ArgumentError) as exc:
            raise usage_error(str(exc)) from None

    def parse_command_line(self, argv: Any = None) -> None:
        argv = _join_dashed_values(list(sys.argv[1:] if argv is None else argv), self.aliases)
        try:
            JupyterApp.parse_command_line.__wrapped__(self, argv)  # type: ignore[attr-defined]
        except (TraitError, ArgumentError) as exc:
            raise usage_error(str(exc)) from None

    def _create_loader(self, argv: Any, aliases: Any, flags: Any, classes: Any) -> _Loader:
        return _Loader(
            argv, aliases, flags, classes=classes, log=self.log, subcommands=self.subcommands
        )

    def _config_file_name_default(self) -> str:
        # The server's config files, so the command sees the store the server uses.
        return "jupyter_server_config"

    # ------------------------------------------------------------------ the store

    @property
    def store_class(self) -> type[BaseYStore]:
        return resolve_store_class(YStoreExtension(config=self.config).ystore_class)

    def make_store(self, key: str | None, cls: type[BaseYStore] | None = None, **kwargs: Any) -> BaseYStore:
        """A store of the configured class for document ``key`` (None: the whole store),
        not started; unconfigured locations default as in the server (the store class's
        ``default_settings``: ``<server root>/.jupyter_ystore.db`` for SQLite...)."""
        cls = cls or self.store_class
        for name, value in cls.default_settings(self.server_root).items():
            if not self._configured(cls, name):
                kwargs.setdefault(name, value)
        try:
            return cls(key, config=self.config, log=self.log, **kwargs)
        except (YStoreError, ValueError, TraitError) as exc:
            raise CliError(f"cannot open {cls.__name__} for {key!r}: {exc}") from None

    @property
    def server_root(self) -> str:
        """The server's root folder (``ServerApp.root_dir``, default the current folder)."""
        root = self.root_dir or self.config.get("ServerApp", {}).get("root_dir") or os.getcwd()
        return os.path.abspath(os.path.expanduser(str(root)))

    def _configured(self, cls: type, trait: str) -> bool:
        return any(
            klass.__name__ in self.config and trait in self.config[klass.__name__]
            for klass in cls.mro()
        )

    @asynccontextmanager
    async def open_store(
        self, key: str | None, cls: type[BaseYStore] | None = None, **kwargs: Any
    ) -> AsyncIterator[BaseYStore]:
        """A started store. Its database or folder must exist: looking at a mistyped path
        must not create an empty store there (only the migrate target is created)."""
        store = self.make_store(key, cls, **kwargs)
        missing = store.missing_location()
        if missing is not None:
            raise CliError(
                f"no {type(store).__name__} at {missing} (check the store settings: "
                f"{store.location()})"
            )
        async with store:
            yield store

    async def list_documents(self, cls: type[BaseYStore] | None = None) -> list[DocumentInfo]:
        async with self.open_store(None, cls) as store:
            try:
                infos = await store.list_documents()
            except NotImplementedError as exc:
                raise CliError(str(exc)) from None
        return sorted(infos, key=lambda info: info.path)

    async def find_document(self, doc: str, *, partial: bool = True) -> DocumentInfo:
        """The stored document named ``doc``: its key, or the file path its id maps to, or
        (``partial``) a unique part of its key such as a file id. One-line error when none or
        several match. Commands that destroy history take only full keys and paths."""
        infos = await self.list_documents()
        for info in infos:
            if info.path == doc:
                return info
        mapper = self.file_ids()
        wanted = {doc, mapper._relative(os.path.abspath(doc))}
        by_path = [info for info in infos if mapper.path_of(info.path) in wanted]
        candidates = by_path or [info for info in infos if partial and doc and doc in info.path]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            near = [info.path for info in infos if not partial and doc and doc in info.path]
            if near:  # a destructive command: a part of a key is not enough
                raise CliError(
                    f"{doc!r} is only part of a key ({', '.join(near[:3])}); this command "
                    "takes the full key or the file's path"
                )
            raise CliError(f"unknown document {doc!r}: not in the store (see `jupyter ystore list`)")
        names = ", ".join(info.path for info in candidates[:5])
        raise CliError(f"{doc!r} matches {len(candidates)} documents ({names}…): give the full key")

    def file_ids(self) -> FileIdMapper:
        from jupyter_ystore.cli.fileids import PostgresFileIdMapper, uses_postgres_file_ids

        if uses_postgres_file_ids(self.config, self.store_class):
            return PostgresFileIdMapper(self.config, self.server_root)
        return FileIdMapper(self.config, self.server_root)

    def one_doc(self) -> str:
        """The single DOC argument of a subcommand."""
        if len(self.extra_args) != 1:
            raise usage_error(
                f"{self.name.split('-')[-1]} takes exactly one document (got {len(self.extra_args)})"
            )
        return self.extra_args[0]

    # ------------------------------------------------------------------ output

    def progress_bar(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """A tqdm bar on stderr when it is a terminal, else a silent pass-through."""
        from tqdm import tqdm

        enabled = self.progress and sys.stderr.isatty() and not self.json
        if enabled and _terminal_width() <= 0:
            # A terminal that reports no size (some containers, ptys): tqdm would draw nothing.
            kwargs.setdefault("ncols", 80)
            kwargs.setdefault("nrows", 24)
        return tqdm(iterable, disable=not enabled, file=sys.stderr, leave=False, **kwargs)

    def emit_json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, ensure_ascii=False))

    def note(self, message: str) -> None:
        """A human message on stderr (keeps stdout clean for data)."""
        print(message, file=sys.stderr)

    def confirm(self, question: str) -> bool:
        if self.answer_yes:
            return True
        print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not answer:
            print(file=sys.stderr)
            raise CliError("no answer on standard input: nothing done (use --yes to skip asking)")
        return answer.strip().lower() in ("y", "yes")

    def start(self) -> None:
        import anyio

        code = anyio.run(self.run)
        if code:
            raise SystemExit(code)

    async def run(self) -> int:
        """The subcommand's work; returns the exit status."""
        raise NotImplementedError


# ---------------------------------------------------------------------- file ids


class FileIdMapper:
    """Document key → file path, read from jupyter-server-fileid's database.

    The database is opened read-only (the command must not create or index it); ``None``
    when there is no database, no table, or no row.
    """

    def __init__(self, config: Any, root: str | None = None):
        self.root = root
        self.db_path = self._db_path(config)
        self._con: sqlite3.Connection | None = None
        self._opened = False
        self._cache: dict[str, str | None] = {}

    @staticmethod
    def _db_path(config: Any) -> str:
        for section in ("LocalFileIdManager", "ArbitraryFileIdManager", "BaseFileIdManager"):
            value = config.get(section, {}).get("db_path")
            if value:
                return str(value)
        return os.path.join(jupyter_data_dir(), "file_id_manager.db")

    def _connect(self) -> sqlite3.Connection | None:
        if not self._opened:
            self._opened = True
            if self.db_path != ":memory:" and os.path.exists(self.db_path):
                try:
                    self._con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
                except sqlite3.Error:
                    self._con = None
        return self._con

    def _relative(self, path: str) -> str:
        """File-id managers store absolute paths; show them relative to the server root."""
        if self.root and os.path.isabs(path):
            try:
                if os.path.commonpath([self.root, path]) == self.root:
                    return os.path.relpath(path, self.root).replace(os.sep, "/")
            except ValueError:  # different drives
                pass
        return path

    def path_of(self, key: str) -> str | None:

        if key in self._cache:
            return self._cache[key]
        ident = key_file_id(key)
        path = None
        con = self._connect() if ident else None
        if con is not None:
            try:
                row = con.execute("SELECT path FROM Files WHERE id = ?", (ident,)).fetchone()
            except sqlite3.Error:
                row = None
            if row:
                path = self._relative(str(row[0]))
        self._cache[key] = path
        return path


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return ""


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> Iterator[str]:
    """Rows as aligned text columns (``right``: indexes of right-aligned columns)."""
    if not rows:
        return iter(())
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    return (line(row) for row in rows)


__all__ = ["CliError", "FileIdMapper", "StoreCommand", "resolve_store_class"]
