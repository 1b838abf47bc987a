"""The two updates a typing client sends nearly every time, read in one regular expression.

``yupdate.read_update`` reads any update strictly, a lib0 number at a time: about 16 µs of
the event loop for a keystroke on a slow 2-core VM, a sixth of what checking and applying it
costs. Nearly every update of a typing client is one of two shapes:

- a typed string: one client, one struct, a string item placed after and/or before existing
  items (info ``0x84``, ``0x44`` or ``0xc4``), no deletions;
- a backspace: no structs, one client's one deleted range.

``read_keystroke`` matches those shapes whole and builds the same ``UpdateSummary`` that
``read_update`` would. It never refuses: anything else, or anything ``read_update`` would
refuse (a client id past 2**53, an item pointing at itself or at its own future, invalid
UTF-8, a length of 0), returns None, and the caller reads the update the strict way, which
says what is wrong.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

from jupyter_ystore.core.codec import read_var_uint
from jupyter_ystore.core.yupdate import (
    ID,
    MAX_CLOCK,
    MAX_SAFE_INTEGER,
    ItemInfo,
    UpdateSummary,
)

#: One lib0 unsigned number of at most 8 bytes (56 bits; longer ones go the strict way).
_NUMBER = rb"([\x80-\xff]{0,7}[\x00-\x7f])"

#: One client, one struct: a string with one neighbour (origin or right origin); the
#: string's length follows, then its bytes and an empty delete set.
_TYPED_ONE_SIDE = re.compile(rb"\x01\x01" + _NUMBER * 2 + rb"([\x84\x44])" + _NUMBER * 3, re.DOTALL)
#: The same with both neighbours.
_TYPED_BETWEEN = re.compile(rb"\x01\x01" + _NUMBER * 2 + rb"\xc4" + _NUMBER * 5, re.DOTALL)
#: No structs; one client's one deleted range.
_BACKSPACE = re.compile(rb"\x00\x01" + _NUMBER + rb"\x01" + _NUMBER * 2 + rb"\Z", re.DOTALL)

_STRING = 4  # the content ref of a string item


#: Numbers already decoded, by their encoding: a typing client repeats its client id and
#: nearby clocks, and a dictionary lookup costs a fraction of decoding (bounded: cleared
#: when full, so a client sending ever new numbers costs only the decoding).
_DECODED: Dict[bytes, int] = {}
_DECODED_MAX = 16384


def _number(encoded: bytes) -> int:
    """A lib0 unsigned number (the regular expression has checked its form)."""
    value = _DECODED.get(encoded)
    if value is None:
        value, _ = read_var_uint(encoded)
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[encoded] = value
    return value


def read_keystroke(update: bytes) -> Optional[UpdateSummary]:
    """``read_update(update)`` for a typed string or a backspace; None for anything else
    (which the strict reader then reads or refuses)."""
    head = update[:2]
    if head == b"\x01\x01":
        return _typed(update)
    if head == b"\x00\x01":
        return _backspace(update)
    return None


def _typed(update: bytes) -> Optional[UpdateSummary]:
    match = _TYPED_BETWEEN.match(update)
    if match is not None:
        client, clock, *ids, size = map(_number, match.groups())
        origin: Optional[ID] = (ids[0], ids[1])
        right: Optional[ID] = (ids[2], ids[3])
        if origin == right:
            return None  # between itself and itself: the strict reader says so
        neighbours = [origin, right]
    else:
        match = _TYPED_ONE_SIDE.match(update)
        if match is None:
            return None
        encoded = match.groups()
        client, clock, *ids, size = map(_number, encoded[:2] + encoded[3:])
        if encoded[2] == b"\x84":
            origin, right = (ids[0], ids[1]), None
            neighbours = [origin]
        else:
            origin, right = None, (ids[0], ids[1])
            neighbours = [right]
    text = update[match.end() : -1]
    if size == 0 or len(text) != size or update[-1] != 0:
        return None
    if client > MAX_SAFE_INTEGER or clock > MAX_SAFE_INTEGER or max(ids) > MAX_SAFE_INTEGER:
        return None
    for target in neighbours:
        if target[0] == client and target[1] >= clock:
            return None  # its own future: the strict reader says so
    if text.isascii():
        length = size
    else:
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
        length = len(decoded.encode("utf-16-le", "surrogatepass")) // 2
    if clock + length > MAX_CLOCK:
        return None
    return UpdateSummary(
        structs={client: [(clock, length, False)]},
        references=neighbours,
        deletions={},
        items=[ItemInfo(client, clock, length, _STRING, origin, right, None, None, False, None)],
    )


def _backspace(update: bytes) -> Optional[UpdateSummary]:
    match = _BACKSPACE.match(update)
    if match is None:
        return None
    client, clock, length = (_number(group) for group in match.groups())
    if client > MAX_SAFE_INTEGER or length == 0 or clock + length > MAX_CLOCK:
        return None
    return UpdateSummary(deletions={client: [(clock, length)]})
