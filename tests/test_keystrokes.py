"""The keystroke shortcut reads exactly what the strict reader reads, and never more."""

from __future__ import annotations

import random
import re

import pytest
from pycrdt import Doc, Text

from jupyter_ystore.core.keystrokes import read_keystroke
from jupyter_ystore.core.update_guard import BadUpdate, DocumentGuard
from jupyter_ystore.core.yupdate import InvalidUpdate, read_update


def typing_updates(seed: int, count: int = 1500) -> list[bytes]:
    """What a client sends typing and deleting in a text: after, before and between
    existing characters; then accents, CJK and astral emoji (two UTF-16 units) at either
    end (an index inside a character means something else to pycrdt than to a browser)."""
    doc = Doc(client_id=(1 << 40) + seed)
    text = doc.get("source", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    rng = random.Random(seed)
    for _ in range(count):
        where = rng.choice([0, len(text), rng.randint(0, len(text))])
        text.insert(where, rng.choice(["a", "xy", "\n"]))
        if rng.random() < 0.3:
            del text[where : where + 1]  # a backspace
    for _ in range(count // 4):
        text.insert(rng.choice([0, len(text)]), rng.choice(["é", "中文", "😀", "ok"]))
    return updates


def strict_read(update: bytes) -> object:
    try:
        return read_update(update)
    except InvalidUpdate as exc:
        return type(exc)


def typed_before_everything() -> list[bytes]:
    """Characters typed at the start of a text no one deleted from: only a right origin."""
    doc = Doc(client_id=7)
    text = doc.get("source", type=Text)
    text.insert(0, "abc")
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for typed in ("x", "é", "😀"):
        text.insert(0, typed)
    return updates


def test_typing_takes_the_shortcut_and_reads_the_same() -> None:
    updates = typing_updates(1) + typed_before_everything()
    shapes = {"after": 0, "before": 0, "between": 0, "backspace": 0}
    for update in updates:
        strict = read_update(update)
        fast = read_keystroke(update)
        if any(item.root is not None for item in strict.items):
            assert fast is None  # the text's first item names its parent: not a keystroke's shape
            continue
        assert fast is not None, update.hex()
        assert fast == strict
        if fast.deletions:
            shapes["backspace"] += 1
        else:
            (item,) = fast.items
            kind = {(True, False): "after", (False, True): "before", (True, True): "between"}
            shapes[kind[(item.origin is not None, item.right is not None)]] += 1
    assert all(shapes.values()), shapes


def test_every_mangled_keystroke_reads_as_strictly_as_before() -> None:
    """Flipped, cut and inserted bytes: the shortcut's answer, when it gives one, is the
    strict reader's; whatever the strict reader refuses, the shortcut leaves to it."""
    updates = typing_updates(2, 300)
    rng = random.Random(3)
    taken = 0
    for _ in range(30_000):
        mangled = bytearray(rng.choice(updates))
        action = rng.random()
        if action < 0.4:
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        elif action < 0.6:
            del mangled[rng.randrange(len(mangled)) :]
        elif action < 0.8:
            mangled.insert(rng.randrange(len(mangled) + 1), rng.randrange(256))
        else:  # bytes that matter to the shapes: flags, number ends, counts
            mangled[rng.randrange(len(mangled))] = rng.choice([0x00, 0x01, 0x44, 0x7F, 0x80, 0x84, 0xC4, 0xFF])
        update = bytes(mangled)
        fast = read_keystroke(update)
        if fast is not None:
            taken += 1
            assert fast == strict_read(update), update.hex()
    assert taken > 1000  # the mangled ones that are still keystrokes went the short way


@pytest.mark.parametrize(
    "update, why",
    [
        # client id past 2**53 (8-byte numbers are read by the shortcut's pattern)
        (b"\x01\x01\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x84\x01\x00\x01a\x00", "past 2**53"),
        (b"\x01\x01\x05\x03\x84\x05\x03\x01a\x00", "own future"),  # origin at its own clock
        (b"\x01\x01\x05\x03\xc4\x07\x01\x07\x01\x01a\x00", "both its left and its right"),
        (b"\x01\x01\x05\x03\x84\x07\x01\x01\xff\x00", "UTF-8"),
        (b"\x01\x01\x05\x03\x84\x07\x01\x00\x00", "string length"),  # an empty string
        (b"\x00\x01\x05\x01\x03\x00", "length 0"),  # a deleted range of nothing
        (b"\x01\x01\x05\xff\xff\xff\xff\x0f\x84\x07\x01\x01a\x00", "2**32"),  # clock past yrs's
    ],
)
def test_what_the_strict_reader_refuses_the_shortcut_leaves_to_it(update: bytes, why: str) -> None:
    assert read_keystroke(update) is None
    with pytest.raises(InvalidUpdate, match=re.escape(why)):
        read_update(update)


@pytest.mark.anyio
async def test_the_guard_still_refuses_a_keystroke_from_its_own_future() -> None:
    doc = Doc()
    doc.get("source", type=Text).insert(0, "ab")
    guard = DocumentGuard(doc, {"source": "text"})
    await guard.prepare()
    client = doc.client_id
    own_future = bytes([1, 1]) + _number(client) + b"\x02\x84" + _number(client) + b"\x05\x01c\x00"
    with pytest.raises(BadUpdate, match="own future"):
        await guard.apply(own_future)
    assert str(doc.get("source", type=Text)) == "ab"


def _number(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
