"""The relay's awareness table keeps states by the rules y-protocols peers use.

It replaced pycrdt's ``Awareness`` in the relay (which decoded every frame a second time), so
besides the rules one by one, random streams of entries are applied to both and must leave
the same states and clocks.
"""

from __future__ import annotations

import gc
import json
import random
from typing import Any

import pycrdt

from jupyter_ystore.server import protocol
from jupyter_ystore.server.awareness_states import AwarenessStates


def text(state: Any) -> str:
    """A state as a front end sends it: JSON text."""
    return json.dumps(state, separators=(",", ":"))


def parsed(table: AwarenessStates) -> dict[int, Any]:
    return {cid: json.loads(state) for cid, state in table.states.items()}


def test_a_newer_clock_applies_and_an_older_or_equal_one_does_not() -> None:
    table = AwarenessStates()
    table.apply([(5, 2, text({"cursor": 1}))])
    table.apply([(5, 1, text({"cursor": 0})), (5, 2, text({"cursor": 9}))])
    assert parsed(table) == {5: {"cursor": 1}} and table.clocks == {5: 2}
    table.apply([(5, 3, text({"cursor": 2}))])
    assert parsed(table) == {5: {"cursor": 2}} and table.clocks == {5: 3}


def test_a_first_state_at_clock_zero_is_ignored_as_the_front_end_ignores_it() -> None:
    table = AwarenessStates()
    table.apply([(5, 0, text({"user": "a"}))])
    assert table.states == {} and table.clocks == {}


def test_a_removal_at_the_held_clock_applies_and_the_clock_stays() -> None:
    table = AwarenessStates()
    table.apply([(5, 4, text({"user": "a"}))])
    table.apply([(5, 4, None)])
    assert table.states == {} and table.clocks == {5: 4}
    table.apply([(5, 4, text({"user": "late"}))])  # not newer than the removal
    assert table.states == {}
    table.apply([(5, 5, text({"user": "back"}))])
    assert parsed(table) == {5: {"user": "back"}}


def test_remove_keeps_the_clock_and_its_message_removes_at_that_clock() -> None:
    table = AwarenessStates()
    table.apply([(5, 4, text({"user": "a"})), (6, 1, text({"user": "b"}))])
    table.remove([5])
    assert parsed(table) == {6: {"user": "b"}} and table.clocks[5] == 4
    message = protocol.parse_message(table.message([5, 6]))
    assert isinstance(message, protocol.AwarenessMessage)
    assert protocol.read_awareness_entries(message.update) == [(5, 4, None), (6, 1, text({"user": "b"}))]
    # a peer holding 5's state removes it on this message, as y-protocols does
    peer = pycrdt.Awareness(pycrdt.Doc())
    peer.apply_awareness_update(protocol.encode_awareness_update([(5, 4, text({"user": "a"}))]), "x")
    peer.apply_awareness_update(message.update, "x")
    assert 5 not in peer.states and peer.states[6] == {"user": "b"}


def test_random_streams_leave_the_same_states_and_clocks_as_pycrdts_awareness() -> None:
    rng = random.Random(13)
    for _stream in range(200):
        table = AwarenessStates()
        theirs = pycrdt.Awareness(pycrdt.Doc(client_id=1))
        theirs.set_local_state(None)  # a relay, no state of its own (as the server was)
        for _frame in range(rng.randint(1, 30)):
            entries = [
                (
                    rng.choice([5, 6, 7]),
                    rng.randint(0, 6),
                    None if rng.random() < 0.3 else {"cursor": rng.randint(0, 3)},
                )
                for _ in range(rng.randint(1, 3))
            ]
            as_text = [(cid, clock, None if state is None else text(state)) for cid, clock, state in entries]
            table.apply(as_text)
            theirs.apply_awareness_update(protocol.encode_awareness_update(as_text), "x")
            if rng.random() < 0.1:
                gone = [rng.choice([5, 6, 7])]
                table.remove(gone)
                theirs.remove_awareness_states(gone, "x")
            held = {cid: state for cid, state in theirs.states.items() if cid != 1}
            assert parsed(table) == held
            for cid in table.states:
                assert table.clocks[cid] == theirs.meta[cid]["clock"]
            for cid, meta in theirs.meta.items():
                if cid != 1:
                    assert table.clocks[cid] == meta["clock"]


def test_a_state_is_kept_and_relayed_as_the_text_it_came_in() -> None:
    """Kept as text, a state is one object the collector does not track (parsed, a cursor
    state was five it walked), and a late joiner gets exactly what was sent."""
    sent = '{ "user" : {"name": "é"}, "cursors": [{"anchor": {"item": {"client": 5, "clock": 3}}}] }'
    frame = protocol.awareness_text_frame([(5, 1, sent)])
    message = protocol.parse_message(frame)
    assert isinstance(message, protocol.AwarenessMessage)
    entries = protocol.read_awareness_entries(message.update)
    assert entries == [(5, 1, sent)]
    table = AwarenessStates()
    table.apply(entries)
    assert table.states[5] == sent and not gc.is_tracked(table.states[5])
    again = protocol.parse_message(table.message([5]))
    assert isinstance(again, protocol.AwarenessMessage)
    assert again.update == message.update  # byte for byte
    peer = pycrdt.Awareness(pycrdt.Doc())
    peer.apply_awareness_update(again.update, "x")
    assert peer.states[5] == json.loads(sent)
