"""BaseYStore: the lifecycle and document helpers every backend shares.

A store holds the durable log of one document's Yjs updates. Backends implement four
coroutines (``_open``, ``_close``, ``write``, ``read``) and may override ``_load`` to read a
snapshot plus the updates after it instead of the whole history; ``_read_attributes`` and
``_write_attributes`` keep a document's attributes (``get_attributes``/``set_attributes``:
named bytes beside the history, validated here once). Everything else (the
``async with`` / ``start`` / ``stop`` lifecycle of ypy-websocket's API, metadata, applying to
a ``pycrdt.Doc`` or a ``y_py.YDoc``) lives here once.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
    Union,
)

import anyio
import pycrdt
from anyio.abc import TaskGroup, TaskStatus
from traitlets.config import LoggingConfigurable

from jupyter_ystore.core import threads
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.errors import YDocNotFound, YStoreCorruptError, YStoreInvalidUpdate
from jupyter_ystore.stores.compaction import turn as compaction_turn
from jupyter_ystore.stores.compaction import undecodable
from jupyter_ystore.stores.retention import (
    DEFAULT_RETENTION,
    Point,
    RetentionTrait,
    StoredHistory,
)

MetadataCallback = Callable[[], Union[Awaitable[bytes], bytes]]

#: A document attribute's name: a short ASCII identifier, so that every backend can keep it
#: verbatim (a column value, a record of a sidecar file) and it never needs escaping.
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_attributes(values: Mapping[str, Any]) -> dict[str, bytes | None]:
    """``values`` checked and copied for ``set_attributes``: names must match
    ``ATTRIBUTE_NAME`` (ValueError), values be bytes or None (TypeError). Checked before any
    backend is touched, so a bad call changes nothing."""
    if not isinstance(values, Mapping):
        raise TypeError(f"attributes are a mapping of name to bytes, got {type(values).__name__}")
    checked: dict[str, bytes | None] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"an attribute name is a str, got {type(name).__name__}")
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise ValueError(
                f"invalid attribute name {name!r}: letters, digits and underscores, not "
                "starting with a digit, at most 64 characters"
            )
        if value is None:
            checked[name] = None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            checked[name] = bytes(value)
        else:
            raise TypeError(
                f"attribute {name!r}: a value is bytes (or None to delete), "
                f"got {type(value).__name__}"
            )
    return checked


@dataclass(frozen=True)
class DocumentInfo:
    """A summary of one stored document, for listings and the `jupyter ystore` command."""

    path: str
    updates: int  # stored records (a snapshot counts as one)
    bytes: int  # update bytes stored (metadata excluded)
    first_timestamp: float | None
    last_timestamp: float | None
    snapshots: int = 0


class _Stopping:
    """What ``stop()`` returns: stopping has begun; awaiting it waits until the store is closed.

    ypy-websocket's ``stop()`` is synchronous and pycrdt-store's is a coroutine; this object
    serves both (calling without awaiting still stops the store, with no warning).
    """

    def __init__(self, store: BaseYStore):
        self._store = store

    def __await__(self) -> Generator[Any, None, None]:
        return self._store._wait_closed().__await__()


class BaseYStore(LoggingConfigurable):
    """The durable log of one document's updates.

    ``path`` names the document inside the store (a file name for file stores, a key for
    database stores). ``metadata_callback`` returns bytes (or an awaitable of bytes) stored
    with every update. Configuration comes from traitlets: pass ``parent=`` or ``config=``.
    """

    version = 2

    history_retention = RetentionTrait(
        DEFAULT_RETENTION,
        config=True,
        help="""Which history compaction keeps beside the snapshot, outside the load path:
        tiers 'AGE:INTERVAL,...' ('10m:every,1h:1m,7d:1h,90d:1d': every update for 10
        minutes, then one point a minute for an hour, one an hour for 7 days, one a day for
        90 days). None: every update, forever. 0: none (only named versions). Named versions
        are never dropped. See 'jupyter ystore info' for what it costs.""",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        write = cls.__dict__.get("write")
        if write is not None and "metadata" not in inspect.signature(write).parameters:
            cls.write = _with_metadata(write)  # type: ignore[method-assign]

    def __init__(
        self,
        path: str | None,
        metadata_callback: MetadataCallback | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        **kwargs: Any,
    ) -> None:
        if log is not None:
            kwargs["log"] = log
        clock = kwargs.pop("clock", None)
        super().__init__(**kwargs)
        #: Seconds since the epoch, now: the time written with each update and the "now"
        #: retention ages history points by. Tests pass ``clock=`` to live through days
        #: without sleeping.
        self.clock: Callable[[], float] = clock or _system_time
        if path is not None and (not isinstance(path, str) or not path):
            raise ValueError(f"a store path must be a non-empty string, got {path!r}")
        self.path = path  # type: ignore[assignment]  (None: a backend handle, see backend())
        self.metadata_callback = metadata_callback
        self._started: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._compaction_wanted: anyio.Event | None = None  # see _run
        self._starting = False
        self._running = False
        self._cancel_scope: anyio.CancelScope | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        #: After ``apply_updates`` into a pycrdt document: why the history it applied is
        #: incomplete (updates waiting for ones that are not stored), or None.
        self.load_problem: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def start_lock(self) -> anyio.Lock:
        """A lock callers hold while checking ``started`` and starting the store (pycrdt-store's
        API, used by jupyter-collaboration's rooms)."""
        lock = self.__dict__.get("_start_lock_")
        if lock is None:
            lock = self.__dict__["_start_lock_"] = anyio.Lock()
        return lock

    @property
    def started(self) -> anyio.Event:
        """Set once the store is open and running."""
        if self._started is None:
            self._started = anyio.Event()
        return self._started

    async def __aenter__(self) -> BaseYStore:
        if self._starting or self._task_group is not None:
            raise RuntimeError("YStore already running")
        exit_stack = AsyncExitStack()
        tg = anyio.create_task_group()
        self._task_group = await exit_stack.enter_async_context(tg)
        try:
            await tg.start(self.start)
        except BaseException:
            # ``_open`` failed (or we were cancelled): the start task has already ended, so
            # leave the task group cleanly and raise the store's own error, not an
            # ExceptionGroup, leaving the store startable again.
            self._task_group = None
            await exit_stack.__aexit__(None, None, None)
            raise
        self._exit_stack = exit_stack
        return self

    async def __aexit__(self, exc_type, exc_value, exc_tb) -> bool | None:
        if self._task_group is None or self._exit_stack is None:
            raise RuntimeError("YStore not running")
        await self.stop()
        exit_stack, self._exit_stack, self._task_group = self._exit_stack, None, None
        # The start task has ended; leave the task group cleanly so that an exception of the
        # ``async with`` body propagates as itself, not wrapped in an ExceptionGroup.
        await exit_stack.__aexit__(None, None, None)
        return None

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store and run its background work until ``stop()``.

        Use ``await task_group.start(store.start)``; a second call while running is a no-op.
        """
        if self._starting:
            task_status.started()
            return
        self._starting = True
        self._closed = anyio.Event()
        self._compaction_wanted = anyio.Event()
        opened = False
        try:
            with anyio.CancelScope() as scope:
                self._cancel_scope = scope
                await self._open()
                opened = True
                self._running = True
                self.started.set()
                task_status.started()
                await self._run()
        finally:
            try:
                with anyio.CancelScope(shield=True) as closing:
                    closing.deadline = anyio.current_time() + _CLOSING_COMPACTION_LIMIT
                    if opened:
                        await self._compact_if_due()
            finally:
                self._running = False
            try:
                with anyio.CancelScope(shield=True):
                    await self._close()
            finally:
                self._starting = False
                self._cancel_scope = None
                self._started = None
                self._closed.set()

    def stop(self) -> _Stopping:
        """Stop the store: pending writes are flushed, connections and files closed.

        Awaiting the result waits until that is done; calling it bare also works.
        """
        if not self._starting and self._task_group is None:
            raise RuntimeError("YStore not running")
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        return _Stopping(self)

    async def _wait_closed(self) -> None:
        if self._closed is not None:
            await self._closed.wait()

    async def _ensure_running(self) -> None:
        """Wait for a start in progress; refuse use of a store nobody started."""
        if self._running:
            return
        if self._starting:
            await self.started.wait()
            if self._running:
                return
        raise RuntimeError(
            f"YStore not running: use `async with store:` or `await task_group.start(store.start)` "
            f"before reading or writing ({type(self).__name__} {self.path!r})"
        )

    # ------------------------------------------------------------------ backend hooks

    async def _open(self) -> None:
        """Open files or connections. Raise a ``YStoreError`` if the store is unusable."""

    async def _run(self) -> None:
        """Background work while running, cancelled by stop(): automatic compaction, off the
        write path (a write never waits for it), each time ``_want_compaction`` was called,
        one store of the event loop at a time (``compaction.turn``)."""
        while True:
            wanted = self._compaction_wanted
            assert wanted is not None
            await wanted.wait()
            async with compaction_turn():  # (stopped while waiting: still wanted, see below)
                self._compaction_wanted = anyio.Event()
                try:
                    await self._compact_once()
                except anyio.get_cancelled_exc_class():
                    self._want_compaction()  # stopped midway: _compact_if_due does it before closing
                    raise

    def _want_compaction(self) -> None:
        """A write or load passed a compaction threshold: compact soon, in ``_run``."""
        if self._compaction_wanted is not None:
            self._compaction_wanted.set()

    async def _compact_if_due(self) -> None:
        """At stop, the automatic compaction a write or load asked for and ``_run`` did not
        get to (a store closed right after its history passed a threshold): the next open
        reads a snapshot, not the whole tail. Runs shielded, within a time limit."""
        wanted = self._compaction_wanted
        if wanted is not None and wanted.is_set():
            self._compaction_wanted = anyio.Event()
            await self._compact_once()

    async def _compact_once(self) -> None:
        """One automatic compaction. Backends log a failure and leave the history as it is
        (the next threshold retries); nothing to do for a store that does not compact."""

    async def _close(self) -> None:
        """Flush what is pending and release files or connections. Runs shielded."""

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        """Append one update with ``metadata`` (None: what ``metadata_callback`` returns, or
        nothing); returns once it is durable."""
        raise NotImplementedError

    async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:
        """Every stored ``(update, metadata, timestamp)``, oldest first.

        Raises ``YDocNotFound`` when nothing is stored for the document.
        """
        raise NotImplementedError
        yield  # pragma: no cover  (makes this an async generator)

    async def _load(self) -> list[bytes]:
        """The updates that restore the document, oldest first (a snapshot and its tail).

        The default reads the whole history; backends with snapshots override it.
        """
        return [update async for update, _metadata, _timestamp in self.read()]

    def _prepare_load(self, updates: list[bytes]) -> list[bytes]:
        """In a worker thread: what to apply, in order: the oldest update (a snapshot, where
        the store keeps them) as it is, then the updates after it merged in groups
        (``merged_groups``: one merge of them all would be slow to apply). Merging them INTO
        the snapshot would decode and re-encode the whole document."""
        head, tail = updates[0], updates[1:]
        if not tail:
            return [head]
        if len(tail) == 1 and not _ydoc.is_valid_update(tail[0]):
            raise ValueError("a stored update does not decode")  # merging one checks nothing
        return [head, *_ydoc.merged_groups(tail)]

    # ------------------------------------------------------------------ optional backend API
    # Administration (the `jupyter ystore` command) and multi-server rooms. A backend that
    # cannot do one of these keeps the NotImplementedError, which callers report as such.

    #: Set by a backend's ``_load``: the first update is a snapshot its own compaction wrote
    #: (a load checks only its structs), and one recorded as clean (a load checks nothing of
    #: it: ``ydoc.squash_clean``).
    _head_is_snapshot: bool = False
    _head_is_clean: bool = False

    #: True when ``watch()`` yields updates written by other processes (e.g. PostgreSQL).
    supports_live_updates: bool = False

    # ------------------------------------------------------------------ the whole store

    @classmethod
    def backend(cls, **kwargs: Any) -> BaseYStore:
        """A store of this class that names no document: for work on the whole store
        (``list_documents``, opening it to check it works, the bytes it holds). Reading or
        writing a document through it is refused."""
        return cls(None, **kwargs)

    @classmethod
    def default_settings(cls, server_root: str) -> dict[str, Any]:
        """Where this store keeps a server's documents when nothing is configured (the
        server and ``jupyter ystore`` both ask here)."""
        return {}

    def location(self) -> str:
        """The setting that says where this store keeps its data, for messages."""
        return f"c.YStoreExtension.ystore_class = {type(self).__module__}.{type(self).__name__}"

    def missing_location(self) -> str | None:
        """The configured place, when it does not exist yet (nothing was ever stored there)."""
        return None

    async def list_documents(self) -> list[DocumentInfo]:
        """Every document stored beside this one (same folder or database); ``self.path`` is
        irrelevant. Works on a started store."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its documents")

    async def info(self) -> DocumentInfo:
        """This document's summary (records, bytes, first and last time), read without side
        effects: ``watch()`` goes on from where it was. ``YDocNotFound`` when nothing is
        stored."""
        if self.supports_live_updates:  # reading would move watch(): ask the listing
            path = self._document()
            for info in await self.list_documents():
                if info.path == path:
                    return info
            raise YDocNotFound(path)
        count = size = 0
        first = last = None
        async for update, _metadata, timestamp in self.read():
            count += 1
            size += len(update)
            first = timestamp if first is None else min(first, timestamp)
            last = timestamp if last is None else max(last, timestamp)
        return DocumentInfo(self._document(), count, size, first, last)

    async def import_records(self, records: Sequence[tuple[bytes, bytes, float]]) -> None:
        """Append records copied from another store (update, metadata, timestamp), in order;
        each keeps its metadata (its timestamp where the backend can keep it)."""
        for update, metadata, _timestamp in records:
            await self.write(update, metadata=metadata)

    def _document(self) -> str:
        """This store's document key; a backend handle has none."""
        if self.path is None:
            raise RuntimeError(f"this {type(self).__name__} is a backend handle: it names no document")
        return self.path

    async def compact(self) -> None:
        """Replace this document's history by one snapshot, atomically (content unchanged);
        the updates it replaces become history points as ``history_retention`` says."""
        raise NotImplementedError(f"{type(self).__name__} cannot compact")

    async def read_history(self) -> StoredHistory:
        """Everything stored about this document's past in one consistent view: the
        retained points (with deltas) and the log records after them. Without side effects
        (``watch()`` goes on from where it was). ``YDocNotFound`` when nothing is stored.
        The default has no points: the log is the history."""
        records = [record async for record in self.read()]
        return StoredHistory([], records, 0)

    async def save_version(self, name: str, saved_by: str | None = None) -> Point:
        """Name the document's current state ``name`` (``VersionExists`` if taken): a
        compaction that ends the history with a point of that name, which retention never
        drops. Returns the point (without its delta)."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep named versions")

    async def delete_version(self, name: str) -> None:
        """Remove the name ``name`` (``VersionNotFound`` if none); its point becomes an
        ordinary one, thinned by retention like the others."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep named versions")

    async def delete(self) -> None:
        """Forget everything stored for this document."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete documents")

    async def watch(self) -> AsyncIterator[bytes]:
        """Updates to this document committed by OTHER writers (other processes or stores),
        as they arrive, for as long as the store runs. Only where ``supports_live_updates``."""
        raise NotImplementedError(f"{type(self).__name__} has no live updates")
        yield  # pragma: no cover

    async def _read_attributes(self) -> dict[str, bytes]:
        """This document's attributes as stored now (no cache: other processes may set
        them). Called on a running store."""
        raise NotImplementedError(f"{type(self).__name__} cannot store document attributes")

    async def _write_attributes(self, values: dict[str, bytes | None]) -> None:
        """Set (bytes) or remove (None) the names of checked ``values`` in ONE atomic,
        durable change. Called on a running store with a non-empty dict."""
        raise NotImplementedError(f"{type(self).__name__} cannot store document attributes")

    # ------------------------------------------------------------------ shared API

    async def _metadata_for(self, metadata: bytes | None) -> bytes:
        """The metadata one write stores: the caller's, else the callback's."""
        if metadata is None:
            return b"" if self.metadata_callback is None else await self.get_metadata()
        if not isinstance(metadata, (bytes, bytearray, memoryview)):
            raise TypeError(f"metadata must be bytes, got {type(metadata).__name__}")
        return bytes(metadata)

    async def get_metadata(self) -> bytes:
        """The metadata to store with the next update (``b""`` without a callback)."""
        if self.metadata_callback is None:
            return b""
        metadata = self.metadata_callback()
        if inspect.isawaitable(metadata):
            metadata = await metadata
        if isinstance(metadata, str):
            metadata = metadata.encode("utf-8")
        if not isinstance(metadata, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"metadata_callback must return bytes, got {type(metadata).__name__}"
            )
        return bytes(metadata)

    async def get_attributes(self) -> dict[str, bytes]:
        """The document's attributes: small named values kept beside its history, not in
        it (e.g. an id of the history, the content last saved to the file). ``{}`` when it
        has none. Reading has no side effect (``watch()`` is not moved, nothing is folded
        or compacted); every call reads what is stored now, so other processes' and other
        servers' changes are seen at once."""
        await self._ensure_running()
        return await self._read_attributes()

    async def set_attributes(self, values: Mapping[str, bytes | None]) -> None:
        """Set each name of ``values`` to its bytes, or remove it for ``None``; other names
        are kept. One atomic change, durable when this returns (as a ``write`` is): after a
        crash every name has its old or its new value. Allowed before the first update;
        ``delete()`` removes them, compaction keeps them."""
        await self._ensure_running()
        checked = check_attributes(values)
        if checked:
            await self._write_attributes(checked)

    def _checked_update(self, data: Any) -> bytes:
        """The per-write check every backend runs first: bytes, and a Yjs v1 update (decoded
        natively, about a microsecond for a keystroke). Garbage never reaches the log, where
        it would make the document impossible to load."""
        self._document()
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"an update is bytes, got {type(data).__name__}")
            data = bytes(data)
        if not _ydoc.is_valid_update(data):
            raise YStoreInvalidUpdate(
                f"refusing to store {len(data)} bytes that are not a Yjs v1 update",
                path=self.path,
                hint="nothing was stored; the caller should drop this update",
            )
        return data

    async def encode_state_as_update(self, ydoc: Any) -> None:
        """Store the whole state of ``ydoc`` (a ``pycrdt.Doc`` or ``y_py.YDoc``) as one update."""
        await self.write(_ydoc.encode_state_as_update(ydoc))

    async def apply_updates(self, ydoc: Any) -> None:
        """Apply everything stored to ``ydoc`` (a ``pycrdt.Doc`` or ``y_py.YDoc``): the
        oldest update (a snapshot) as it is, then the others merged in groups (see
        ``_prepare_load``). Raises ``YDocNotFound`` when nothing is stored, and
        ``YStoreCorruptError`` with ``ydoc`` untouched when a stored update is not Yjs.
        """
        self._head_is_snapshot = self._head_is_clean = False
        updates = await self._load()
        if not updates:
            raise YDocNotFound(self.path)
        _ydoc.encode_state_vector(ydoc)  # TypeError for anything but a document, up front
        try:
            if len(updates) <= _INLINE_LOAD_UPDATES and _tail_bytes(updates) <= _INLINE_LOAD_WORK:
                applied = self._prepare_load(updates)  # under a millisecond or two
            else:
                applied = await threads.run_sync(self._prepare_load, updates)
        except Exception as exc:
            raise self._undecodable(exc) from exc
        # One transaction for them all (pycrdt): each commit tidies the whole document.
        with _ydoc.one_transaction(ydoc):
            for update in applied:
                try:
                    _ydoc.apply_update(ydoc, update)
                except TypeError:
                    raise
                except Exception as exc:
                    if _ydoc.is_valid_update(update):
                        raise  # the document refused it, not a fault of the stored bytes
                    raise self._undecodable(exc) from exc
        # A snapshot our compaction wrote was encoded from a document: only structs squash
        # kept because they wait for missing updates can be missing there (``snapshot_waits``),
        # and a clean one holds none.
        if self._head_is_clean:
            await self._check_loaded(ydoc, applied[1:])
        elif self._head_is_snapshot:
            await self._check_loaded(ydoc, applied[1:], snapshot=applied[0])
        else:
            await self._check_loaded(ydoc, applied)

    async def _check_loaded(
        self, ydoc: Any, applied: list[bytes], *, snapshot: bytes | None = None
    ) -> None:
        """Set ``load_problem`` for what ``apply_updates`` just applied (pycrdt only; the
        reading happens in a worker thread, on bytes: the document stays on this one).
        ``snapshot``: a first update our compaction wrote, checked for its structs only."""
        self.load_problem = None
        if isinstance(ydoc, pycrdt.Doc) and (applied or snapshot is not None):
            state = _ydoc.get_state(ydoc)

            def check() -> str | None:
                if snapshot is not None:
                    problem = _ydoc.snapshot_waits(state, snapshot)
                    if problem:
                        return problem
                return _ydoc.missing_dependencies(state, applied)

            if snapshot is None and _tail_bytes([b"", *applied]) <= _INLINE_LOAD_WORK:
                self.load_problem = check()  # a fraction of a millisecond
            else:
                self.load_problem = await threads.run_sync(check)

    def with_path(self, path: str) -> BaseYStore:
        """A store of the same class and settings for another document (not started)."""
        settings = {name: getattr(self, name) for name in self.traits(config=True)}
        return type(self)(  # type: ignore[call-arg]
            path, log=self.log, parent=self.parent, clock=self.clock, **settings
        )

    def _undecodable(self, exc: Exception) -> YStoreCorruptError:
        """The error for a stored update that is not Yjs (see ``compaction.undecodable``)."""
        return undecodable(self.path, exc)


#: Bytes of updates after the first below which a load merges and checks them on the event
#: loop: a thousand keystrokes (~40 KB) take 1-2 ms there, less than two hops to a worker
#: thread on a busy host. Bigger tails (and snapshot checks) go to a worker thread.
_INLINE_LOAD_WORK = 64 * 1024
#: ... and at most this many updates (a store may squash a longer history to load it).
_INLINE_LOAD_UPDATES = 1025


def _tail_bytes(updates: list[bytes]) -> int:
    """Bytes of every update but the first (a snapshot, where there is one)."""
    return sum(len(update) for update in updates) - len(updates[0])


#: Seconds a stopping store may spend on a compaction that was due (then it closes without).
_CLOSING_COMPACTION_LIMIT = 30.0


def _system_time() -> float:
    """``time.time()``, looked up at each call (so that tests patching ``time.time``, as
    ypy-websocket's and pycrdt-store's do, reach every store)."""
    return time.time()


def _with_metadata(write: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A subclass's ``write(self, data)`` written before ``metadata=`` existed keeps working:
    the metadata of one call reaches it through ``metadata_callback``."""

    async def adapted(self: BaseYStore, data: bytes, *, metadata: bytes | None = None) -> None:
        if metadata is None:
            return await write(self, data)
        saved = self.metadata_callback
        self.metadata_callback = lambda: metadata
        try:
            return await write(self, data)
        finally:
            self.metadata_callback = saved

    adapted.__doc__ = write.__doc__
    return adapted


def _register_with_pycrdt_store() -> None:
    """Make our stores pass as pycrdt-store's (``issubclass``), so that jupyter-collaboration
    accepts them as ``YDocExtension.ystore_class``; only where pycrdt-store is installed."""
    import importlib.util

    try:
        if importlib.util.find_spec("pycrdt.store") is None:
            return
        from pycrdt.store import BaseYStore as PycrdtBaseYStore
    except ImportError:
        return
    PycrdtBaseYStore.register(BaseYStore)


_register_with_pycrdt_store()
