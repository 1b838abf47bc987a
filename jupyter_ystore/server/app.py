"""YStoreExtension: the Jupyter Server extension, every setting of it in one place.

It serves the two endpoints the official JupyterLab collaboration front end calls
(``jupyter-docprovider``), keeps one room per open document and persists every change in a
store (``ystore_class``). Configure it in ``jupyter_server_config.py``::

    c.YStoreExtension.document_save_delay = 1.0
    c.SQLiteYStore.db_path = "/var/lib/jupyter/ystore.db"
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
from typing import Any

import anyio
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, TraitError, Type, Unicode, default, validate

from jupyter_ystore.core.keys import store_key
from jupyter_ystore.server import gc_pauses, loop_lag, metrics
from jupyter_ystore.server.full_collections import FullCollections
from jupyter_ystore.server.fileids import choose_file_id_manager
from jupyter_ystore.server.handlers import RoomHandler, SessionHandler
from jupyter_ystore.server.offloop_contents import choose_contents_manager, network_contents_hint
from jupyter_ystore.server.rooms import RoomManager, RoomSettings
from jupyter_ystore.server.rooms.files import DocumentFile
from jupyter_ystore.server.rooms.spill import Spill
from jupyter_ystore.server.timeline import timeline_handlers
from jupyter_ystore.stores import squash_helper
from jupyter_ystore.stores.base import BaseYStore
from jupyter_ystore.stores.filesystems import network_warning

DEFAULT_YSTORE_CLASS = "jupyter_ystore.stores.sqlite.SQLiteYStore"


class YStoreExtension(ExtensionApp):
    """Real-time collaboration for JupyterLab that keeps every edit in a durable store."""

    name = "jupyter_ystore"
    app_name = "jupyter_ystore"
    description = "Persistent real-time collaboration: Yjs update stores for Jupyter Server"
    load_other_extensions = True

    ystore_class = Type(
        default_value=DEFAULT_YSTORE_CLASS,
        klass=BaseYStore,
        config=True,
        help="""The store class that keeps each document's history of updates: any subclass of
        jupyter_ystore.BaseYStore, by class or dotted name (e.g.
        'jupyter_ystore.stores.sqlite.SQLiteYStore', 'jupyter_ystore.FileYStore',
        'jupyter_ystore.PostgresYStore', 'jupyter_ystore.MemoryYStore' to keep nothing).
        Its own settings go on the class, e.g. c.SQLiteYStore.db_path (default
        '<server root>/.jupyter_ystore.db', the file jupyter-collaboration uses) and
        c.SQLiteYStore.document_ttl.""",
    )
    document_save_delay = Float(
        1.0,
        allow_none=True,
        config=True,
        help="""Seconds without a change before a document is saved to its file (debounce).
        None saves only when a client asks (Ctrl+S) and when the room closes. Every change is in
        the store immediately either way.""",
    )
    document_cleanup_delay = Float(
        60.0,
        allow_none=True,
        config=True,
        help="""Seconds a document stays open after its last client left, so that a reconnect
        is instant. Then it is saved, its store flushed and stopped. None keeps it open until
        the server stops.""",
    )
    file_poll_interval = Float(
        1.0,
        config=True,
        help="""Seconds between checks of an open document's file for changes made on disk by
        other programs (and renames). Such a change enters the shared document as a normal
        update. 0 checks only when saving.""",
    )
    disable_rtc = Bool(
        False,
        config=True,
        help="""Tell the JupyterLab front end not to use real-time collaboration (documents
        open without a shared model; nothing is stored).""",
    )
    max_message_size = Int(
        64 * 1024 * 1024,
        config=True,
        help="""Largest websocket message accepted from a client, in bytes (default 64 MiB).
        The biggest message a client sends is its whole document when it first syncs (or
        reconnects with offline edits): a notebook with large outputs (images, tables) fits
        in 64 MiB, and GitHub refuses files over 100 MB. A larger message closes that
        client's connection (code 1009); the room and the other clients go on. Raise it for
        notebooks bigger than this.""",
    )
    max_unsent_size = Int(
        128 * 1024 * 1024,
        config=True,
        help="""Bytes that may wait unsent for one client (a client that stopped reading, a
        stalled network) before it is disconnected; it reconnects and syncs afresh. One
        message of any size (a whole document to a joining client) is always sent; the
        bound applies to the backlog already waiting when the next one comes.""",
    )
    freeze_startup_objects = Bool(
        True,
        config=True,
        help="""Once the server has started, leave the objects it made so far (about 200,000:
        modules, configuration) out of Python's full garbage collections (gc.freeze). A full
        collection walking them all stalled the event loop 50-120 ms every few seconds
        under load, for every client; with them frozen it takes under 10 ms. Turn it off if
        something else in the process manages the garbage collector.""",
    )
    schedule_full_collections = Bool(
        True,
        config=True,
        help="""Run Python's full garbage collections when rooms close (the last one, or
        every 16) or the long-lived objects grow by half, instead of when the collector's
        counters say. Under steady typing those counters start one about every minute at 480
        clients: a 10-30 ms walk of every connection's objects, every client waiting, that
        frees nothing; the garbage it finds is closed rooms'. Young collections are not
        changed. Turn it off if something else in the process manages the garbage
        collector.""",
    )
    spill_dir = Unicode(
        config=True,
        help="""Local folder where a room keeps (fsynced) the changes its store could not
        take during an outage (database down, disk full, SQLite locked), until the store
        takes them again. Default: <jupyter data dir>/jupyter_ystore/spill. Empty string:
        no spill files (changes then wait in memory during an outage).""",
    )

    @default("spill_dir")
    def _default_spill_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "jupyter_ystore", "spill")

    @validate("document_save_delay", "document_cleanup_delay")
    def _non_negative_or_none(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and value < 0:
            raise TraitError(
                f"{type(self).__name__}.{proposal['trait'].name} must be >= 0 or None, got {value}"
            )
        return value

    @validate("file_poll_interval")
    def _non_negative(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is None or value < 0:
            raise TraitError(f"{type(self).__name__}.file_poll_interval must be >= 0, got {value}")
        return value

    @validate("max_message_size", "max_unsent_size")
    def _positive(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value <= 0:
            raise TraitError(
                f"{type(self).__name__}.{proposal['trait'].name} must be > 0, got {value}"
            )
        return value

    # ------------------------------------------------------------------ start-up

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        """A wrong setting stops the server here, with the trait named (jupyter_server would
        otherwise log a warning and run without collaboration)."""
        try:
            super()._link_jupyter_server_extension(serverapp)
            cls = self.ystore_class  # imports a dotted name now, not on first use
        except TraitError as exc:
            message = f"jupyter_ystore: invalid configuration: {exc}"
            serverapp.log.critical(message)
            raise SystemExit(message) from None
        try:
            # The store's own settings (c.SQLiteYStore.db_path, document_ttl...) are checked
            # now too, by creating one store (creating opens nothing).
            self._store_for_key(None)
        except (TraitError, ValueError, TypeError) as exc:
            message = f"jupyter_ystore: invalid configuration of {cls.__name__}: {exc}"
            serverapp.log.critical(message)
            raise SystemExit(message) from None
        if not self._server_ydoc_enabled():
            self._probe_store(serverapp)
            choose_file_id_manager(serverapp, cls)
            choose_contents_manager(serverapp)

    def _probe_store(self, serverapp: Any) -> None:
        """Open and close one store (a key no file id can take) before the server starts, so
        that an unreachable database, an unknown layout version or an unwritable SQLite
        folder stops start-up with one line naming the setting, instead of failing every
        room later with a traceback each. Cheap: a connection, or a file opened."""
        store = self._store_for_key(None)

        async def probe() -> None:
            async with store:
                pass

        # Linking is synchronous and may run inside a running event loop (tests): the
        # probe gets a loop of its own in a worker thread.
        with concurrent.futures.ThreadPoolExecutor(1, "jupyter_ystore-probe") as pool:
            try:
                pool.submit(anyio.run, probe).result()
            except Exception as exc:
                message = (
                    f"jupyter_ystore: cannot open the store {type(store).__name__} "
                    f"({store.location()}): {exc}"
                )
                serverapp.log.critical(message)
                raise SystemExit(1) from None  # logged once: no second copy on stderr
            # A store on NFS, SMB or FUSE: one line saying what that means and what to do.
            warning = pool.submit(network_warning, store).result()
        if warning:
            serverapp.log.warning(warning)
        # The one line a user looks for: where their collaborative edits go.
        serverapp.log.info(
            "jupyter_ystore: real-time collaboration on; every edit is stored by %s (%s)",
            type(store).__name__,
            store.location(),
        )

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """The room manager starts with the server (not at the first request): changes
        spilled during a store outage before a restart go back into the store at once."""
        if not self.yielded_to_server_ydoc:
            await self.rooms()
            # Notebooks on NFS saved by jupyter_server's own manager: one line on what to do.
            hint = await anyio.to_thread.run_sync(network_contents_hint, self.serverapp.contents_manager)
            if hint:
                self.serverapp.log.warning(hint)
        if self.freeze_startup_objects:
            gc_pauses.freeze_startup_objects(self.serverapp.log)
        gc_pauses.time_full_collections()
        # Compactions squash and plan in the helper process: in a worker thread they would
        # keep the GIL from the event loop after each of its system calls.
        squash_helper.offload_compactions(True)
        squash_helper.warm_up()  # (rooms reading their files use it only when it is up)

    def initialize_settings(self) -> None:
        # Our modules' own loggers (e.g. jupyter_ystore.sqlite, from database threads) write
        # through the server's log, with its format, unless the user configured logging.
        package_log = logging.getLogger("jupyter_ystore")
        if not package_log.handlers and self.serverapp.log.handlers:
            package_log.handlers = list(self.serverapp.log.handlers)
            package_log.setLevel(self.serverapp.log.level)
            package_log.propagate = False
        # session ids told to reload (insertion-ordered, the oldest forgotten past 10,000)
        self.refused_sessions: dict[str, None] = {}
        self.connections: set[Any] = set()
        self.yielded_to_server_ydoc = self._server_ydoc_enabled()
        spill = None
        if self.spill_dir:
            spill = Spill(self.spill_dir, self._store_for_key(None), self.log)
        self.manager = RoomManager(
            make_store=self.create_store,
            make_file=self._make_file,
            settings=RoomSettings(
                save_delay=self.document_save_delay,
                cleanup_delay=self.document_cleanup_delay,
                poll_interval=self.file_poll_interval,
            ),
            log=self.log,
            spill=spill,
        )
        self.full_collections: FullCollections | None = None
        if self.schedule_full_collections:
            self.full_collections = FullCollections(self.serverapp.log)
            self.manager.on_room_closed = self.full_collections.room_closed
        self.manager.make_store_for_key = self._store_for_key  # type: ignore[method-assign]
        self._manager_task: asyncio.Task[None] | None = None
        self._manager_started: asyncio.Event | None = None
        self._stopping = False

    def initialize_handlers(self) -> None:
        if self.yielded_to_server_ydoc:
            self.serverapp.log.warning(
                "jupyter_ystore: jupyter_server_ydoc (jupyter-collaboration) is enabled and serves "
                "/api/collaboration; jupyter_ystore registers no endpoint (its stores can be that "
                "extension's YDocExtension.ystore_class)"
            )
            return
        page_config = self.serverapp.web_app.settings.setdefault("page_config_data", {})
        page_config.setdefault("disableRTC", self.disable_rtc)
        self.handlers.extend(
            [
                (r"/api/collaboration/session/(.*)", SessionHandler, {"extension": self}),
                (r"/api/collaboration/room/(.*)", RoomHandler, {"extension": self}),
                *timeline_handlers(self),
            ]
        )

    def _server_ydoc_enabled(self) -> bool:
        manager = getattr(self.serverapp, "extension_manager", None)
        extension = manager.extensions.get("jupyter_server_ydoc") if manager else None
        return bool(extension is not None and extension.enabled)

    # ------------------------------------------------------------------ stores and files

    def create_store(self, file_type: str, file_id: str) -> BaseYStore:
        """A store for one document; configuration reaches it through ``parent=self``."""
        return self._store_for_key(store_key(file_type, file_id))

    def _store_for_key(self, key: str | None) -> BaseYStore:
        """A store for document ``key`` (None: the whole store, see ``BaseYStore.backend``),
        in the store's default place under the server root unless configured."""
        cls = self.ystore_class
        root = os.path.abspath(os.path.expanduser(self.serverapp.root_dir))
        defaults = {
            name: value
            for name, value in cls.default_settings(root).items()
            if not self._configured(cls, name)
        }
        return cls(key, log=self.log, parent=self, **defaults)

    def _configured(self, cls: type, trait: str) -> bool:
        config = self.config
        return any(
            klass.__name__ in config and trait in config[klass.__name__] for klass in cls.mro()
        )

    def _make_file(self, file_format: str, file_type: str, file_id: str) -> DocumentFile:
        return DocumentFile(
            file_id,
            file_format,
            file_type,
            file_id_manager=self.file_id_manager,
            contents_manager=self.serverapp.contents_manager,
        )

    @property
    def file_id_manager(self) -> Any:
        manager = self.serverapp.web_app.settings.get("file_id_manager")
        if manager is None:
            raise RuntimeError(
                "jupyter_server_fileid is not enabled; enable it with "
                "`jupyter server extension enable jupyter_server_fileid`"
            )
        return manager

    # ------------------------------------------------------------------ the room manager

    async def rooms(self) -> RoomManager:
        """The running room manager (started with the server, in its event loop)."""
        if self._manager_task is None:
            self._manager_started = asyncio.Event()
            # In an empty context, not the first request's: a task copies the context it
            # starts from, and a request's holds jupyter_server's call context with its
            # handler, which the manager, its metrics and loop tasks would keep for good.
            self._manager_task = contextvars.Context().run(asyncio.ensure_future, self._run_manager())
        assert self._manager_started is not None
        await self._manager_started.wait()
        with anyio.move_on_after(10):  # a manager that died is being started again
            while not self.manager.running and not self._stopping:
                await anyio.sleep(0.02)
        if not self.manager.running:
            raise RuntimeError("the room manager is not running (the server is stopping)")
        return self.manager

    async def _run_manager(self) -> None:
        """Run the room manager for as long as the server runs; one that ends or fails
        before the server stops (a bug) is started again, with an error in the log."""
        started = self._manager_started
        assert started is not None

        class Notify:
            def started(self, value: Any = None) -> None:
                started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                metrics.refresh_bytes_stored,
                lambda: self._store_for_key(None),
                self.log,
            )
            tg.start_soon(loop_lag.watch_loop, self.log)
            if self.full_collections is not None:
                tg.start_soon(self.full_collections.run)
            while not self._stopping:
                try:
                    await self.manager.run(task_status=Notify())
                except Exception as exc:
                    self.log.error("jupyter_ystore: the room manager failed: %s", exc, exc_info=exc)
                if self._stopping:
                    break
                self.log.error("jupyter_ystore: the room manager stopped unexpectedly; starting it again")
                await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    async def stop_extension(self) -> None:
        """Server shutdown: close every socket, save and flush every room, stop every store."""
        self._stopping = True
        squash_helper.offload_compactions(False)  # (in process again: an embedding app's own)
        for connection in list(getattr(self, "connections", ())):
            connection.close(1001, "server shutting down")
        if getattr(self, "_manager_task", None) is None:
            return
        await self.manager.close_all(timeout=10)
        task = self._manager_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._manager_task = None
        self._manager_started = None
