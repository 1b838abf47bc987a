"""A file contents manager whose saves do all their file work in a worker thread.

jupyter_server's asynchronous file contents manager writes the new content in a worker
thread, but does the rest of an atomic save on the event loop: the backup copy of the old
file before (``copy2_safe``, about ten system calls) and the flush, ``fsync`` and removal of
the backup after. On a network home directory each of those can take from milliseconds to
seconds, every collaborator of every room waiting. On a local disk the cost is the GIL: each
system call gives it away, and while another save's ``nbformat.write`` (validation, JSON with
``indent``, pure Python) runs in its thread, the loop waits up to a switch interval (5 ms) to
get it back after each one (the turns over 20 ms left at 32x10 on one VM, benchmarks/README.md).

This manager runs a save's whole atomic write (backup, write, fsync, restore on failure) in
one worker thread call, and the notebook signing and trust checks in a thread of their own
(``signature_thread``); everything else (hooks, checkpoints, events) is jupyter_server's own.
With an ``fsync`` of 0.4 s the loop's longest pause during a save went from 404-406 ms to
19-31 ms; with one of 20 ms, a save's from 84-88 ms to 4 ms and an open's from 85 ms to 1-3 ms
(the signatures). On a local disk it makes no measurable difference.

The extension makes it the server's contents manager when none is configured
(``choose_contents_manager``); a configured one is kept, and ``network_contents_hint`` says at
start when that one works on the event loop with files on a network file system.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from anyio import to_thread
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.services.contents.fileio import FileManagerMixin
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

from jupyter_ystore.server.signature_thread import SignaturesOffLoop
from jupyter_ystore.stores.filesystems import Mount, network_mount, read_mounts


class OffLoopFileContentsManager(SignaturesOffLoop, AsyncLargeFileManager):
    """``AsyncLargeFileManager`` whose notebook and file writes leave the event loop whole.

    The thread call is not cancelled with its caller: a write once begun is finished (or
    rolled back by ``atomic_writing``), never left half done by a closing room."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log.info("Contents: saves do their file writes off the event loop (%s)", type(self).__name__)

    async def _save_notebook(self, os_path: str, nb: Any, capture_validation_error: dict | None = None) -> None:
        await self._sign_before_write(nb)
        write = partial(FileManagerMixin._save_notebook, self, os_path, nb, capture_validation_error=capture_validation_error)
        await to_thread.run_sync(write)

    async def _save_file(self, os_path: str, content: str, format: str | None) -> None:
        await to_thread.run_sync(FileManagerMixin._save_file, self, os_path, content, format)


def network_contents_hint(contents_manager: object, mounts: list[Mount] | None = None) -> str | None:
    """One line for the server's log when the notebooks, or the notary's signature database,
    are on a network or FUSE file system and the file manager works with them on the event
    loop (jupyter_server's own); None otherwise. Touches the file system: not on the event
    loop."""
    if not isinstance(contents_manager, FileManagerMixin) or isinstance(contents_manager, OffLoopFileContentsManager):
        return None
    found = []
    mounts = read_mounts() if mounts is None else mounts  # (read once for both paths)
    root_dir = getattr(contents_manager, "root_dir", None)
    mount = network_mount(root_dir, mounts) if isinstance(root_dir, str) and root_dir else None
    if mount is not None:
        found.append(
            f"the notebooks ({root_dir}) are on a network file system, {mount}, "
            f"and {type(contents_manager).__name__} makes each save's backup copy and fsync on "
            "the event loop"
        )
    db_file = signature_db_file(contents_manager)
    mount = network_mount(db_file, mounts) if db_file else None
    if mount is not None:
        found.append(
            f"the notebook signatures ({db_file}) are on a network file system, {mount}, "
            "and each save and each open of a notebook commits there (SQLite, a few fsyncs "
            "each) on the event loop"
        )
    if not found:
        return None
    return (
        "jupyter_ystore: " + "; ".join(found) + ", where every room waits for the file server. "
        'c.ServerApp.contents_manager_class = "jupyter_ystore.OffLoopFileContentsManager" '
        "does that work in threads of its own"
    )


def signature_db_file(contents_manager: Any) -> str | None:
    """Where the contents manager's notary keeps its signatures (None: in memory), read from
    the notary if it exists, else from the configuration: never made here (its store would
    open its database in this thread, and SQLite connections belong to theirs)."""
    try:
        if contents_manager.trait_has_value("notary"):
            db_file = contents_manager.notary.db_file
        else:
            config = contents_manager.config.get("NotebookNotary") or {}
            db_file = config.get("db_file") or os.path.join(config.get("data_dir") or jupyter_data_dir(), "nbsignatures.db")
    except Exception:  # an unusual notary or config: nothing to say
        return None
    return db_file if isinstance(db_file, str) and db_file and db_file != ":memory:" else None


def choose_contents_manager(serverapp: Any) -> bool:
    """With no ``c.ServerApp.contents_manager_class`` configured (jupyter_server's
    ``AsyncLargeFileManager``), the server's contents manager is ``OffLoopFileContentsManager``:
    the same manager, its saves' file work and notebook signatures off the event loop (on a
    home directory on NFS each save and open otherwise holds every room for the file server's
    fsyncs). Called while extensions are linked, before the server makes its contents manager.
    Whether it was chosen."""
    if "contents_manager_class" in serverapp.config.get("ServerApp", {}):
        return False
    if serverapp.contents_manager_class is not AsyncLargeFileManager or serverapp.trait_has_value("contents_manager"):
        return False
    serverapp.contents_manager_class = OffLoopFileContentsManager
    serverapp.log.info(
        "jupyter_ystore: notebooks are saved, signed and opened with their file work off the "
        "event loop (OffLoopFileContentsManager; set c.ServerApp.contents_manager_class to "
        "choose another)"
    )
    return True
