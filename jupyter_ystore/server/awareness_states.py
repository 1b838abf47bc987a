"""The awareness states of one room, kept by y-protocols' rules without a document.

The relay decodes (and checks) every awareness frame already; handing the same bytes to
pycrdt's ``Awareness`` decoded them a second time, JSON included, and kept a ``Doc`` per room
for nothing (the server is no awareness peer: it has no local state). This table applies the
entries the relay decoded, by the rule every y-protocols peer uses:

- an entry is applied when its clock is newer than the one held for its id (an unknown id
  counts as clock 0, so a first state at clock 0 is ignored, as the front end ignores it);
- a removal (state ``None``) at the clock held also applies, when a state is held: that is
  how a peer removes another's state (``remove_awareness_states`` keeps the clock);
- a removed id keeps its clock, so an older state arriving late stays ignored.

A state is kept as the JSON text it came in (checked already): the relay never looks inside
a state, a late joiner gets the text as it was sent, and a string is not an object the
garbage collector walks (a parsed cursor state was five, renewed with every cursor move).
"""

from __future__ import annotations

from typing import Iterable, Optional

from jupyter_ystore.server import protocol

#: ``(client_id, clock, state_json)``, as ``protocol.read_awareness_entries`` decodes an
#: entry (``None``: a removal).
Entry = tuple[int, int, Optional[str]]


class AwarenessStates:
    """Each awareness id's state as JSON text (``states``, present ones only) and clock
    (``clocks``)."""

    __slots__ = ("states", "clocks")

    def __init__(self) -> None:
        self.states: dict[int, str] = {}
        self.clocks: dict[int, int] = {}

    def apply(self, entries: Iterable[Entry]) -> None:
        """Apply decoded entries; those that are not newer change nothing."""
        states, clocks = self.states, self.clocks
        for client_id, clock, state in entries:
            held = clocks.get(client_id, 0)
            if held < clock or (held == clock and state is None and client_id in states):
                if state is None:
                    states.pop(client_id, None)
                else:
                    states[client_id] = state
                clocks[client_id] = clock

    def remove(self, client_ids: Iterable[int]) -> None:
        """Forget these ids' states (their clocks stay: a removal is sent at that clock)."""
        for client_id in client_ids:
            self.states.pop(client_id, None)

    def message(self, client_ids: Iterable[int]) -> bytes:
        """An awareness frame telling these ids' states (``None``: removed) at their clocks."""
        return protocol.awareness_text_frame(
            [(cid, self.clocks.get(cid, 0), self.states.get(cid)) for cid in client_ids]
        )
