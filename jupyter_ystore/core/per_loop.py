"""One value per asyncio event loop, looked up on hot paths.

Several parts of the server batch work per event loop (a commit pacer, the sockets to
flush at the end of a turn, file stats for a worker thread); a process has one loop, but
each anyio test runs its own, so the values are keyed by loop and die with it. A
``WeakKeyDictionary`` lookup makes a weak reference each time (a few microseconds, and it
was done for every keystroke twice); ``PerLoop`` remembers the last loop it answered for.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``make(loop)`` once per event loop; ``get`` returns that loop's value."""

    __slots__ = ("_make", "_values", "_last_loop", "_last_value")

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._make = make
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._last_loop: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None
        self._last_value: T | None = None

    def get(self, loop: asyncio.AbstractEventLoop) -> T:
        """``loop``'s value, made now if it has none."""
        if self._last_loop() is loop:
            return self._last_value  # type: ignore[return-value]
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._make(loop)
        self._last_loop, self._last_value = weakref.ref(loop), value
        return value

    def peek(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """``loop``'s value if it has one (none is made)."""
        if self._last_loop() is loop:
            return self._last_value
        return self._values.get(loop)

    def __bool__(self) -> bool:
        return bool(self._values)
