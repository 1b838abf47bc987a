"""Keep asyncpg's leftover of a cancelled connect out of the server's log.

asyncpg (0.32 still) first asks the server whether it speaks SSL, through a small protocol
object that holds a future for the answer. When the connect is cancelled after the socket
opened and before the answer came (a server shutting down while a pool grows or a LISTEN
connection reconnects), asyncio closes the socket and asyncpg sets that future's exception,
``ConnectionError('unexpected connection_lost() call')``, that nobody awaits any more: at
garbage collection asyncio prints "Future exception was never retrieved" and a traceback.
The caller has had its ``CancelledError`` already; nothing was lost, yet an operator reading
the log sees a traceback at every such shutdown. (The same leftover is behind
MagicStack/asyncpg#1211.)

``quiet_cancelled_connects(loop)`` puts a filter in front of the loop's exception handler
that drops exactly that report (logged at debug level) and hands every other one on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, Optional

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.AbstractEventLoop, Dict[str, Any]], object]

_UNRETRIEVED = "Future exception was never retrieved"
_CONNECT_LOST = "unexpected connection_lost() call"


def is_cancelled_connect_leftover(context: dict[str, Any]) -> bool:
    """Whether ``context`` reports the future asyncpg leaves behind a cancelled connect."""
    exc = context.get("exception")
    return (
        context.get("message") == _UNRETRIEVED
        and isinstance(exc, ConnectionError)
        and str(exc) == _CONNECT_LOST
    )


class _Filter:
    """The loop's exception handler: drops the leftover, passes the rest to ``previous``."""

    def __init__(self, previous: Optional[Handler]) -> None:
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_cancelled_connect_leftover(context):
            log.debug("a PostgreSQL connect cancelled during its SSL request: %s", context)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def quiet_cancelled_connects(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Install the filter on ``loop`` (the running loop by default), once."""
    if loop is None:
        loop = asyncio.get_running_loop()
    current = loop.get_exception_handler()
    if isinstance(current, _Filter):
        return
    loop.set_exception_handler(_Filter(current))
