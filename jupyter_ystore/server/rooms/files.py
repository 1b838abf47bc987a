"""Reading and writing a room's file through the server's contents manager.

The room never touches the disk itself: going through the contents manager keeps checkpoints,
hooks, permissions and non-filesystem contents managers working. The file is named by its
file id, so a rename while the room is open is followed.

Several servers sharing a store may save one file at once. jupyter_server's "atomic" writing
rewrites the file in place beside a backup of a fixed name (``.~name``), so two concurrent
saves fail ("No such file") or interleave, and a read during a save sees half a file. So on a
file system, reads hold a shared and saves an exclusive ``flock`` on the file.
"""

from __future__ import annotations

import datetime
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import anyio
from jupyter_server.utils import ensure_async
from tornado.web import HTTPError

from jupyter_ystore.core import threads

try:
    import fcntl
except ImportError:  # Windows: no locking between servers
    fcntl = None  # type: ignore[assignment]

_LOCK_TIMEOUT = 30.0  # seconds; a save that long is stuck, not busy

#: Room types the contents manager knows; anything else is read and written as a plain file.
_CONTENTS_TYPES = {"notebook", "file"}


class FileGone(Exception):
    """The room's file no longer exists (deleted, or its id is unknown). ``path``: where it
    was looked for (None when the id names no path), so that the caller can tell whether the
    id names another path since (a rename)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class FileChanged(Exception):
    """The file changed between the look a save was decided on and its write (another
    server's save, ``git pull``): writing would overwrite that change unseen."""


class FileMoved(FileChanged):
    """The file was renamed or deleted while it was saved: the write may have reached it
    before it moved (at its new path it may hold what was saved)."""


@dataclass(frozen=True)
class FileState:
    """What we know of the file on disk at one moment."""

    last_modified: datetime.datetime | None
    hash: str | None
    content: Any = None
    size: int | None = None


def _timestamp(value: Any) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


class DocumentFile:
    """One file of the server, named by file id, read and written with a contents manager."""

    def __init__(
        self,
        file_id: str,
        file_format: str,
        file_type: str,
        *,
        file_id_manager: Any,
        contents_manager: Any,
    ) -> None:
        self.file_id = file_id
        self.file_format = file_format
        self.file_type = file_type
        self._file_id_manager = file_id_manager
        self._contents_manager = contents_manager

    @property
    def contents_type(self) -> str:
        return self.file_type if self.file_type in _CONTENTS_TYPES else "file"

    @property
    def path(self) -> str:
        path = self._file_id_manager.get_path(self.file_id)
        if path is None:
            raise FileGone(f"no file has id {self.file_id}")
        return path

    def os_path(self, path: str) -> str | None:
        """Where ``path`` is on disk; None when the contents manager is not on a file system."""
        get_os_path = getattr(self._contents_manager, "_get_os_path", None)
        if get_os_path is None:  # not a file-system contents manager
            return None
        try:
            return get_os_path(path)
        except Exception:
            return None

    async def load(self) -> FileState:
        """The file's content, modification time and hash."""
        path = self.path
        async with _flocked(self.os_path(path), exclusive=False):
            return await self._load(path)

    async def _load(self, path: str) -> FileState:
        try:
            model = await ensure_async(
                self._contents_manager.get(
                    path,
                    content=True,
                    format=self.file_format,
                    type=self.contents_type,
                    require_hash=True,
                )
            )
        except HTTPError as exc:
            if exc.status_code == 404:
                raise FileGone(f"{path} does not exist", path) from None
            raise
        content = model["content"]
        if self.contents_type == "file" and isinstance(content, str) and "\r\n" in content:
            content = content.replace("\r\n", "\n")
        return FileState(_timestamp(model.get("last_modified")), model.get("hash"), content)

    async def stat(self, *, with_hash: bool = True) -> FileState:
        """Modification time and hash, without the content. ``with_hash=False``: the time
        alone (no read of the file, no lock): what a file poll asks when the watcher finds a change."""
        path = self.path
        if not with_hash:
            return await self._stat(path, with_hash=False)
        async with _flocked(self.os_path(path), exclusive=False):
            return await self._stat(path)

    async def _stat(self, path: str, *, with_hash: bool = True) -> FileState:
        try:
            model = await ensure_async(
                self._contents_manager.get(path, content=False, require_hash=with_hash)
            )
        except HTTPError as exc:
            if exc.status_code == 404:
                raise FileGone(f"{path} does not exist", path) from None
            raise
        return FileState(_timestamp(model.get("last_modified")), model.get("hash"), size=model.get("size"))

    async def save(self, content: Any, *, expected: FileState | None = None) -> FileState:
        """Write ``content``; return the new modification time and hash.

        ``expected``: the file as the caller last looked at it. Raises ``FileChanged``,
        writing nothing, if it is no longer so once the lock is held: between that look and
        the write, another server can save (it waits on our lock, not on our decision), and a
        write over it would drop the edits it saved that we have not received yet. The hash
        is compared too, since two writes in one tick of the file system's clock keep the
        same modification time. A save that fails because the file was renamed or deleted
        meanwhile (no lock keeps a rename out; jupyter_server, having written the file, then
        fails to copy it to its first checkpoint) raises ``FileMoved``: the caller looks
        again, at the file's new path or its absence."""
        path = self.path
        model = {"type": self.contents_type, "format": self.file_format, "content": content}
        async with _flocked(self.os_path(path), exclusive=True):
            if expected is not None:
                now = await self._stat(path, with_hash=expected.hash is not None)
                if now.last_modified != expected.last_modified or now.hash != expected.hash:
                    raise FileChanged(f"{path} changed since it was looked at")
            try:
                saved = await ensure_async(self._contents_manager.save(model, path))
            except Exception:
                if expected is not None and await self._went_away(path):
                    # Renamed or deleted by another server as we saved (jupyter_server's
                    # checkpoint copy then fails as "not writable"): not a failing disk.
                    raise FileMoved(f"{path} went away as it was saved") from None
                raise
            state = await self._stat(path)
        return FileState(_timestamp(saved.get("last_modified")) or state.last_modified, state.hash)

    async def _went_away(self, path: str) -> bool:
        """Whether nothing is at ``path`` any more."""
        try:
            await self._stat(path, with_hash=False)
        except FileGone:
            return True
        except Exception:
            return False
        return False


@asynccontextmanager
async def _flocked(os_path: str | None, *, exclusive: bool) -> AsyncIterator[None]:
    """Hold a shared or exclusive ``flock`` on ``os_path`` (when it is a file we can open;
    otherwise go on unlocked and let the contents manager report what is wrong)."""
    if fcntl is None or os_path is None:
        yield
        return
    # LOCK_EX over NFS (emulated with fcntl locks) needs a descriptor open for writing.
    flags = os.O_RDWR if exclusive else os.O_RDONLY
    try:
        fd = await threads.run_sync(os.open, os_path, flags)
    except OSError:
        yield
        return
    try:
        how = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        with anyio.fail_after(_LOCK_TIMEOUT):
            while not await threads.run_sync(_try_flock, fd, how):
                await anyio.sleep(0.005)
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await threads.run_sync(os.close, fd)  # releases the lock


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        return False
    return True
