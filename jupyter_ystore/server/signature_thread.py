"""Notebook signing and trust checks in one thread of their own, off the event loop.

Every save of a notebook whose outputs are trusted signs it, and every open checks its
signature: jupyter_server does both on the event loop, through nbformat's notary, whose
signature store is an SQLite file in the Jupyter data directory (``nbsignatures.db``, in the
home directory, so on the file server of most JupyterHubs). A save makes three commits there
(two ``UPDATE ... last_seen`` and the signature's), an open one; in its default rollback
journal each is a journal file made, written, synced and removed, plus a sync of the
database. With a file server's ``fsync`` of 20 ms that is over 100 ms of every save on the
event loop, every room of the server waiting.

``SignaturesOffLoop`` (mixed into ``OffLoopFileContentsManager``) uses the signature store
in one dedicated thread only: SQLite connections belong to the thread that opened them
(``check_same_thread``), so the store is made there, and every call to it, from whichever
thread, is run there (``ThreadBoundStore``). A save's signing and an open's check are
awaited there; anything else that asks for them synchronously (the trust endpoint, another
extension calling the notary) waits for that thread, as it waited for the store before.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from functools import partial
from typing import Any, Callable, TypeVar

from anyio import CapacityLimiter, to_thread
from nbformat.sign import NotebookNotary, SignatureStore
from traitlets import HasTraits, default

T = TypeVar("T")

#: Inside a save: the notebooks whose signing waits for their write (signed just before it).
_signing_with_write: ContextVar[list[tuple[Any, str]] | None] = ContextVar("_signing_with_write", default=None)

#: Inside an open: the trust verdicts already reached off the loop, by notebook object id.
_verdicts: ContextVar[dict[int, bool] | None] = ContextVar("_verdicts", default=None)


class ThreadBoundStore(SignatureStore):
    """A signature store whose every call runs in one thread, whoever makes it."""

    def __init__(self, store: SignatureStore, run: Callable[..., Any]) -> None:
        self.store = store
        self._run = run  # runs a call in the store's thread and returns what it returned

    def store_signature(self, digest: Any, algorithm: Any) -> None:
        self._run(self.store.store_signature, digest, algorithm)

    def check_signature(self, digest: Any, algorithm: Any) -> bool:
        return bool(self._run(self.store.check_signature, digest, algorithm))

    def remove_signature(self, digest: Any, algorithm: Any) -> None:
        self._run(self.store.remove_signature, digest, algorithm)

    def close(self) -> None:
        self._run(self.store.close)

    def __getattr__(self, name: str) -> Any:  # its settings (``db_file``, ``cache_size``)
        if name == "store":  # (not set yet)
            raise AttributeError(name)
        return getattr(self.store, name)


class SignaturesOffLoop(HasTraits):
    """Mixin for an async jupyter_server file contents manager: the notary in its own thread.

    Relies on jupyter_server's ``save`` calling ``check_and_sign(nb, path)`` right before
    ``await _save_notebook(os_path, nb, ...)``, and ``_notebook_model`` calling
    ``mark_trusted_cells(nb, path)`` right after ``await _read_notebook(...)``; where that
    changes, the notary is still used in its own thread, only synchronously."""

    log: Any

    def __init__(self, **kwargs: Any) -> None:
        self._signature_thread_id: int | None = None
        self._signature_waiter: CapacityLimiter | None = None  # made on the event loop
        self._signatures = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ystore-signatures", initializer=self._note_signature_thread
        )
        super().__init__(**kwargs)

    def _note_signature_thread(self) -> None:
        self._signature_thread_id = threading.get_ident()

    def _in_signature_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the signature thread; the caller waits (whatever its thread)."""
        if threading.get_ident() == self._signature_thread_id:
            return fn(*args)
        return self._signatures.submit(fn, *args).result()

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the signature thread, awaited. One worker thread at a time waits
        for it (the others wait here, without a thread): a slow store must not take every
        worker thread from the saves' own writes. Once begun, the call is not cancelled with
        its caller: a signature is stored whole or not at all."""
        if self._signature_waiter is None:
            self._signature_waiter = CapacityLimiter(1)
        return await to_thread.run_sync(partial(self._in_signature_thread, fn, *args), limiter=self._signature_waiter)

    @default("notary")
    def _notary_default(self) -> NotebookNotary:
        return self._in_signature_thread(self._make_notary)

    def _make_notary(self) -> NotebookNotary:
        """In the signature thread: the notary's store opens its connection as it is made,
        and so does every store made again (after a failure)."""
        notary = NotebookNotary(parent=self)
        make = notary.store_factory
        run = self._in_signature_thread
        notary.store_factory = lambda: ThreadBoundStore(run(make), run)
        notary.store = ThreadBoundStore(notary.store, run)
        return notary

    # ------------------------------------------------------------------ signing (saves)

    def check_and_sign(self, nb: Any, path: str = "", *, _retrying: bool = False) -> None:
        waiting = _signing_with_write.get()
        if waiting is not None and not _retrying:
            waiting.append((nb, path))  # signed off the loop just before its write
            return
        super().check_and_sign(nb, path, _retrying=_retrying)  # type: ignore[misc]

    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        waiting: list[tuple[Any, str]] = []
        token = _signing_with_write.set(waiting)
        try:
            saved = await super().save(model, path)  # type: ignore[misc]
        finally:
            _signing_with_write.reset(token)
        for nb, nb_path in waiting:  # asked for, but no notebook write followed (none so far)
            await self._sign(nb, nb_path)
        return saved

    async def _sign(self, nb: Any, path: str) -> None:
        await self._off_loop(partial(super().check_and_sign, nb, path))  # type: ignore[misc]

    async def _sign_before_write(self, nb: Any) -> None:
        """Sign ``nb`` now if its save asked for it (the order of jupyter_server's save)."""
        waiting = _signing_with_write.get()
        if not waiting:
            return
        for i, (asked, path) in enumerate(waiting):
            if asked is nb:
                del waiting[i]
                await self._sign(nb, path)
                return

    # ------------------------------------------------------------------ trust (opens)

    async def _notebook_model(self, path: str, content: bool = True, require_hash: bool = False) -> dict[str, Any]:
        token = _verdicts.set({})
        try:
            return await super()._notebook_model(path, content, require_hash)  # type: ignore[misc]
        finally:
            _verdicts.reset(token)

    async def _read_notebook(self, *args: Any, **kwargs: Any) -> Any:
        got = await super()._read_notebook(*args, **kwargs)  # type: ignore[misc]
        verdicts = _verdicts.get()
        if verdicts is not None:
            raw = kwargs["raw"] if "raw" in kwargs else len(args) > 3 and args[3]
            nb = got[0] if raw else got
            verdicts[id(nb)] = await self._off_loop(self._signature_matches, nb)
        return got

    def _signature_matches(self, nb: Any) -> bool:
        return bool(self.notary.check_signature(nb))

    def mark_trusted_cells(self, nb: Any, path: str = "") -> None:
        verdicts = _verdicts.get()
        trusted = verdicts.pop(id(nb), None) if verdicts else None
        if trusted is None:  # not checked ahead: check now (the caller waits)
            super().mark_trusted_cells(nb, path)  # type: ignore[misc]
            return
        if not trusted:
            self.log.warning("Notebook %s is not trusted", path)
        self.notary.mark_cells(nb, trusted)
