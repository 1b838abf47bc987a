"""One resource per key for the whole process, shared by the stores that use it.

Every document of a server opens its own store, but some things must exist once: a log
file's append descriptor and group commit (``FileYStore``), a SQLite connection and its
thread (``SQLiteYStore``), an asyncpg pool (``PostgresYStore``). Each is kept in a
``SharedMap``: the first ``acquire`` of a key makes it, later ones share it, and the release
of its last user says so, for the caller to close it (outside the map's lock: closing may
wait). Thread-safe, and never held across an ``await``.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedMap(Generic[K, V]):
    """A refcounted, thread-safe map of key -> shared resource."""

    def __init__(self, *, forget_after_fork: bool = False) -> None:
        self._lock = threading.Lock()
        self._current: dict[K, V] = {}
        self._users: dict[int, int] = {}  # id(resource) -> users, replaced ones included
        if forget_after_fork and hasattr(os, "register_at_fork"):
            # A forked child has none of the parent's threads: it makes its own resources.
            os.register_at_fork(after_in_child=self._forget)

    def acquire(
        self, key: K, make: Callable[[], V], usable: Callable[[V], bool] | None = None
    ) -> V:
        """The resource of ``key``, made by ``make()`` on first use or when the current one
        is not ``usable`` any more (its users keep it until they release it). Pair with
        ``release``. ``make`` runs under the lock: it must not block."""
        with self._lock:
            value = self._current.get(key)
            if value is None or (usable is not None and not usable(value)):
                value = self._current[key] = make()
            self._users[id(value)] = self._users.get(id(value), 0) + 1
            return value

    def release(self, key: K, value: V) -> bool:
        """Drop one user of ``value``; True when it was the last, and the caller closes it
        (no later ``acquire`` returns it). False for a resource this map does not count (one
        a forked child inherited)."""
        with self._lock:
            users = self._users.get(id(value))
            if users is None:
                return False
            if users > 1:
                self._users[id(value)] = users - 1
                return False
            del self._users[id(value)]
            if self._current.get(key) is value:
                del self._current[key]
            return True

    def users(self, value: V) -> int:
        """How many users ``value`` has now (0: not counted here)."""
        with self._lock:
            return self._users.get(id(value), 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._current)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._current = {}
        self._users = {}
