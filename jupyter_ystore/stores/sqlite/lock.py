"""``<db>.lock``: which process may move a damaged database file aside.

Every SQLite store of ours holds a shared ``flock`` on the sidecar file ``<db>.lock`` for as
long as its connection is open; moving a damaged file aside takes it exclusively. Hence:

* of several processes that find the same damaged file at once, one moves it aside and
  salvages it; the others wait, see that the path now names another file, and open that;
* a file another process still has open (a second server, ``jupyter ystore`` while the
  server runs) is never moved from under it: its later writes would land in the copy and
  be missing from the fresh file.

The sidecar, not the database: SQLite locks the database with POSIX locks, which a process
drops when it closes ANY descriptor of that file, so this process never opens the database
itself. The sidecar is created on open and removed by the last user to close (who can take
it exclusively without waiting); a lock taken on a sidecar removed meanwhile is dropped and
taken again on the current one. Without ``fcntl`` (Windows) there is no lock and no sidecar.
"""

from __future__ import annotations

import enum
import os
import random
import time
import weakref

from jupyter_ystore.errors import YStoreLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

Identity = tuple[int, int]

#: Seconds to wait for another process salvaging the file before giving up.
SALVAGE_WAIT = 600.0


class Outcome(enum.Enum):
    EXCLUSIVE = "exclusive"  # ours alone: move it aside
    REPLACED = "replaced"  # another process already did: open the new file
    IN_USE = "in use"  # other processes keep it open: leave it where it is


def identity(path: str) -> Identity | None:
    """(device, inode) of the file at ``path`` now; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_guards: weakref.WeakSet[Guard] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """A forked child closes its copies (the parent's locks stay held by the parent)."""
    for guard in list(_guards):
        if guard.fd is not None:
            try:
                os.close(guard.fd)
            except OSError:
                pass
            guard.fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class Guard:
    """This process's hold on ``<db>.lock`` (shared while the connection is open)."""

    def __init__(self, db_path: str):
        self.path = db_path + ".lock"
        self.fd: int | None = None
        _guards.add(self)

    @classmethod
    def shared(cls, db_path: str, timeout: float) -> Guard | None:
        """Hold ``<db>.lock`` shared (waiting up to ``timeout`` for a salvage by another
        process); None when no lock can be had (no ``fcntl``, a read-only folder)."""
        if fcntl is None:
            return None
        guard = cls(db_path)
        try:
            guard.lock_shared(timeout)
        except OSError:
            guard.release()
            return None
        except BaseException:
            guard.release()
            raise
        return guard

    # -- taking the lock

    def _open(self) -> int:
        if self.fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                self.fd = os.open(self.path, flags, 0o644)
            except PermissionError:  # a read-only sidecar someone left: reading will do
                self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self.fd

    def _try(self, how: int) -> bool:
        """Take the lock ``how`` without waiting, on the sidecar the path names now."""
        fd = self._open()
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if identity(self.path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            return True
        self._close()  # removed by its last user meanwhile: take the new one
        return self._try(how)

    def lock_shared(self, timeout: float) -> None:
        """Shared (from nothing, or down from exclusive); waits only while another
        process holds it exclusively, i.e. moves the file aside."""
        deadline = time.monotonic() + timeout
        while not self._try(fcntl.LOCK_SH):
            if time.monotonic() > deadline:
                raise YStoreLockedError(
                    f"another process has been setting the damaged database aside for over "
                    f"{timeout:g} s (it holds {self.path})",
                    path=self.path[: -len(".lock")],
                    hint="wait for it to finish, or find it with `fuser` / `lsof`",
                )
            time.sleep(random.uniform(0.005, 0.03))

    def exclusive(self, db_path: str, seen: Identity, users_wait: float) -> Outcome:
        """Hold it exclusively to move ``db_path`` (still the file ``seen``) aside.

        Our shared hold is dropped first (two processes upgrading at once would otherwise
        wait for each other). Gives up with ``IN_USE`` once other processes have held it
        shared, without moving the file, for ``users_wait`` seconds.
        """
        assert fcntl is not None
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        users_since: float | None = None
        deadline = time.monotonic() + SALVAGE_WAIT
        while True:
            if identity(db_path) != seen:
                return Outcome.REPLACED
            if self._try(fcntl.LOCK_EX):
                return Outcome.REPLACED if identity(db_path) != seen else Outcome.EXCLUSIVE
            now = time.monotonic()
            if self._try(fcntl.LOCK_SH):  # nobody is moving it: others have it open
                assert self.fd is not None
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                users_since = now if users_since is None else users_since
                if now - users_since >= users_wait:
                    return Outcome.IN_USE
            else:  # another process is moving it aside
                users_since = None
                if now > deadline:
                    raise YStoreLockedError(
                        f"another process has been setting the damaged database aside for "
                        f"over {SALVAGE_WAIT:g} s",
                        path=db_path,
                        hint="wait for it to finish, or find it with `fuser` / `lsof`",
                    )
            time.sleep(random.uniform(0.005, 0.03))

    # -- letting go

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def release(self) -> None:
        """Let go; the last user removes the sidecar (without waiting for anyone)."""
        if self.fd is None:
            return
        try:
            if fcntl is not None and self._try(fcntl.LOCK_EX):
                os.unlink(self.path)
        except OSError:  # e.g. a read-only folder: the sidecar stays, harmless
            pass
        finally:
            self._close()
