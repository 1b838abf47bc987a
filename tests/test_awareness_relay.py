"""The awareness relay's ownership rule with the frames the official front end sends.

y-websocket sends every change of its awareness, the removals it makes of *other* users'
states included (a state not renewed for 30 s, all of them when its socket closed). Seen in a
real browser after a server restart: refusing those frames disconnected the tab at every
reconnection. A removal of another user's state is dropped; setting it is still refused.
"""

from __future__ import annotations

import json

import pycrdt
import pytest

from jupyter_ystore.server import protocol, rooms  # noqa: F401  # rooms first: it imports awareness
from jupyter_ystore.server.awareness import AwarenessRelay


class Peer:
    def __init__(self, username: str) -> None:
        self.username = username
        self.can_write = True
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        pass


def as_text(entries: list[tuple[int, int, object]]) -> list[tuple[int, int, str | None]]:
    return [(cid, clock, None if state is None else json.dumps(state)) for cid, clock, state in entries]


def frame(entries: list[tuple[int, int, object]]) -> protocol.AwarenessMessage:
    message = protocol.parse_message(protocol.awareness_text_frame(as_text(entries)))
    assert isinstance(message, protocol.AwarenessMessage)
    return message


def entries_of(sent: bytes) -> list[tuple[int, int, object]]:
    message = protocol.parse_message(sent)
    assert isinstance(message, protocol.AwarenessMessage)
    return [
        (cid, clock, None if state is None else json.loads(state))
        for cid, clock, state in protocol.read_awareness_entries(message.update)
    ]


def test_a_removal_of_another_users_state_is_dropped_and_the_rest_relayed() -> None:
    relay = AwarenessRelay()
    alice, bob, watcher = Peer("alice"), Peer("bob"), Peer("carol")
    for peer in (alice, bob, watcher):
        relay.add(peer)
    relay.handle(alice, frame([(11, 1, {"user": {"name": "alice"}})]))
    # bob's tab timed alice out (or lost its socket) and says so, with its own cursor
    relay.handle(bob, frame([(22, 1, {"user": {"name": "bob"}}), (11, 1, None)]))
    assert json.loads(relay.awareness.states[11]) == {"user": {"name": "alice"}}  # not removed
    assert json.loads(relay.awareness.states[22]) == {"user": {"name": "bob"}}
    assert entries_of(watcher.sent[-1]) == [(22, 1, {"user": {"name": "bob"}})]
    # a frame of such removals only: nothing to relay
    before = len(watcher.sent)
    relay.handle(bob, frame([(11, 1, None)]))
    assert len(watcher.sent) == before and 11 in relay.awareness.states
    # alice may still remove her own state, which everyone then sees
    relay.handle(alice, frame([(11, 2, None)]))
    assert 11 not in relay.awareness.states
    assert entries_of(watcher.sent[-1]) == [(11, 2, None)]


def test_an_echo_of_another_users_state_is_dropped() -> None:
    """The front end sends back every awareness change it applies, other users' too."""
    relay = AwarenessRelay()
    alice, bob, watcher = Peer("alice"), Peer("bob"), Peer("carol")
    for peer in (alice, bob, watcher):
        relay.add(peer)
    relay.handle(alice, frame([(11, 3, {"user": {"name": "alice"}})]))
    before = len(watcher.sent)
    relay.handle(bob, frame([(11, 3, {"user": {"name": "alice"}}), (22, 1, {"user": {"name": "bob"}})]))
    assert entries_of(watcher.sent[-1]) == [(22, 1, {"user": {"name": "bob"}})]
    assert len(watcher.sent) == before + 1
    relay.handle(bob, frame([(11, 2, {"user": {"name": "older"}})]))  # older still: an echo
    assert json.loads(relay.awareness.states[11]) == {"user": {"name": "alice"}}
    assert len(watcher.sent) == before + 1


def test_setting_another_users_state_is_still_refused() -> None:
    relay = AwarenessRelay()
    alice, mallory = Peer("alice"), Peer("mallory")
    relay.add(alice)
    relay.add(mallory)
    relay.handle(alice, frame([(11, 1, {"user": {"name": "alice"}})]))
    with pytest.raises(protocol.ProtocolError, match="belongs to another user"):
        relay.handle(mallory, frame([(11, 5, {"user": {"name": "not alice"}})]))
    assert json.loads(relay.awareness.states[11]) == {"user": {"name": "alice"}}


def test_a_frame_as_the_front_end_encodes_it_round_trips() -> None:
    """``awareness_text_frame`` writes what pycrdt (and y-protocols) read."""
    theirs = pycrdt.Awareness(pycrdt.Doc(client_id=7))
    theirs.set_local_state({"cursor": [1, 2], "user": {"name": "é"}})
    original = protocol.awareness_message(theirs, [7])
    parsed = entries_of(original)
    again = protocol.awareness_text_frame(as_text(parsed))
    assert entries_of(again) == parsed
    ours = pycrdt.Awareness(pycrdt.Doc())
    message = protocol.parse_message(again)
    assert isinstance(message, protocol.AwarenessMessage)
    ours.apply_awareness_update(message.update, origin="test")
    assert ours.states[7] == {"cursor": [1, 2], "user": {"name": "é"}}


@pytest.mark.parametrize("state", ["NaN", '{"x": Infinity}', '{"cursor": -Infinity}', '{"a": [1, NaN]}'])
def test_a_state_a_browsers_json_parse_rejects_is_refused(state: str) -> None:
    """Python's json reads NaN and Infinity, every peer's JSON.parse throws on them: relayed,
    such a state would break the awareness of every tab in the room."""
    relay = AwarenessRelay()
    mallory, watcher = Peer("mallory"), Peer("carol")
    relay.add(mallory)
    relay.add(watcher)
    entry = bytes([1, 11, 1]) + bytes([len(state)]) + state.encode()
    message = protocol.parse_message(bytes([1, len(entry)]) + entry)
    assert isinstance(message, protocol.AwarenessMessage)
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        relay.handle(mallory, message)
    assert watcher.sent == [] and 11 not in relay.awareness.states
