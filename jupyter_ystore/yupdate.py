"""Reading a Yjs v1 update strictly, and checking it against the document it is meant for.

pycrdt (yrs) accepts far more than it can handle: an update that decodes on its own can still,
once applied to a real document, leave that document unable to encode itself (integrated
items whose clocks leave gaps, parent info bits that Yjs and yrs read differently, origins
that do not exist yet, delete ranges past what is known). Updates come from browsers, so a
room reads each one here first, in the exact Yjs v1 layout, and refuses:

- anything that is not canonical Yjs: trailing bytes, unknown content or type refs, flag
  bits Yjs never writes (on GC and Skip structs), empty items, invalid UTF-8, JSON that is
  not JSON, absurd lengths, nesting beyond ``MAX_DEPTH``, subdocuments;
- anything that does not fit the document's state vector: a client's structs starting after
  what the document has (a gap: it would be kept pending), an origin, right origin or parent
  that is neither in the document nor in the update, delete ranges past known clocks.

Layout (lib0 encoding), for reference::

    update      = structs deleteSet
    structs     = varUint(#clients) { varUint(#structs) varUint(client) varUint(clock) struct* }
    struct      = info:uint8 ...   (info & 0x1f: 0 GC, 10 Skip, else an item's content ref)
    item        = [origin ID if 0x80] [right origin ID if 0x40]
                  [if neither: varUint(1) varString(root) | varUint(0) ID ; varString if 0x20]
                  content
    deleteSet   = varUint(#clients) { varUint(client) varUint(#ranges) {varUint clock, len}* }

Pure Python, and cheap for what clients send while typing (one struct, a few bytes): about
10 µs an update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from .codec import TruncatedError

#: Yjs numbers are doubles: clocks and client ids above this cannot round-trip to the browser.
MAX_SAFE_INTEGER = 2**53 - 1
#: How deeply `any` values (objects in arrays in objects...) may nest.
MAX_DEPTH = 64

ID = Tuple[int, int]  # (client, clock)

_CONTENT_GC = 0
_CONTENT_DELETED = 1
_CONTENT_JSON = 2
_CONTENT_BINARY = 3
_CONTENT_STRING = 4
_CONTENT_EMBED = 5
_CONTENT_FORMAT = 6
_CONTENT_TYPE = 7
_CONTENT_ANY = 8
_CONTENT_DOC = 9
_CONTENT_SKIP = 10

_TYPE_REFS_WITH_NAME = {3, 5}  # XmlElement (node name), XmlHook (hook name)
_TYPE_REF_MAX = 6


class InvalidUpdate(ValueError):
    """An update that is not a well-formed Yjs v1 update, or does not fit the document."""


class MissingDependencies(InvalidUpdate):
    """A well-formed update that builds on changes the document does not have (a peer that
    knew a history this document no longer holds)."""


@dataclass
class UpdateSummary:
    """What an update adds, depends on and deletes; enough to check it against a document."""

    #: client -> [(clock, length, is_skip)] in the order the update lists them
    structs: Dict[int, List[Tuple[int, int, bool]]] = field(default_factory=dict)
    #: ids the update's items point to (origins, right origins, parent items)
    references: List[ID] = field(default_factory=list)
    #: client -> [(clock, length)]
    deletions: Dict[int, List[Tuple[int, int]]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.structs and not self.deletions

    def check_against(self, state: Dict[int, int]) -> Dict[int, int]:
        """Raise ``InvalidUpdate`` unless every part of the update integrates into a document
        whose state vector is ``state`` (client -> next clock). Returns the state vector the
        document must have after applying it."""
        known = dict(state)
        for client, structs in self.structs.items():
            have = known.get(client, 0)
            for clock, length, is_skip in structs:
                if clock > have:
                    raise MissingDependencies(
                        f"client {client} starts at clock {clock} but the document has only "
                        f"{have}: it depends on updates this document never received"
                    )
                if is_skip:
                    if clock + length > have:
                        raise MissingDependencies(
                            f"client {client} skips clocks {clock}..{clock + length} the "
                            "document does not have"
                        )
                    continue
                have = max(have, clock + length)
            known[client] = have
        for client, clock in self.references:
            if clock >= known.get(client, 0):
                raise MissingDependencies(
                    f"an item refers to client {client} clock {clock}, which neither the "
                    "document nor the update holds"
                )
        for client, ranges in self.deletions.items():
            have = known.get(client, 0)
            for clock, length in ranges:
                if clock + length > have:
                    raise MissingDependencies(
                        f"deletes client {client} clocks {clock}..{clock + length} beyond "
                        f"the {have} the document knows"
                    )
        return known


def parse_state_vector(data: bytes) -> Dict[int, int]:
    """A Yjs v1 state vector as ``{client: next clock}``."""
    reader = _Reader(data)
    count = reader.count()
    state: Dict[int, int] = {}
    for _ in range(count):
        client = reader.uint()
        state[client] = reader.uint()
    if not reader.at_end():
        raise InvalidUpdate("trailing bytes after the state vector")
    return state


def read_update(update: bytes) -> UpdateSummary:
    """Decode ``update`` strictly (Yjs v1); raise ``InvalidUpdate`` saying what is wrong."""
    reader = _Reader(update)
    summary = UpdateSummary()
    try:
        for _ in range(reader.count()):
            count = reader.count()
            client = reader.client()
            clock = reader.clock()
            if client in summary.structs:
                raise InvalidUpdate(f"client {client} is listed twice")
            structs: List[Tuple[int, int, bool]] = []
            for _ in range(count):
                length, is_skip = _read_struct(reader, summary.references)
                if clock + length > MAX_SAFE_INTEGER:
                    raise InvalidUpdate(f"client {client}'s clocks pass 2**53")
                structs.append((clock, length, is_skip))
                clock += length
            if structs:
                summary.structs[client] = structs
        for _ in range(reader.count()):
            client = reader.client()
            ranges = []
            for _ in range(reader.count()):
                clock = reader.clock()
                length = reader.uint()
                if length == 0 or clock + length > MAX_SAFE_INTEGER:
                    raise InvalidUpdate(f"a delete range of client {client} has length {length}")
                ranges.append((clock, length))
            if ranges:
                summary.deletions.setdefault(client, []).extend(ranges)
        if not reader.at_end():
            raise InvalidUpdate(f"{len(update) - reader.pos} trailing bytes after the delete set")
    except TruncatedError as exc:
        raise InvalidUpdate(f"truncated: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidUpdate("a string is not valid UTF-8") from None
    except RecursionError:
        raise InvalidUpdate("values nested too deeply") from None
    return summary


def _read_struct(reader: _Reader, references: List[ID]) -> Tuple[int, bool]:
    """One struct; returns its length in clock units and whether it is a Skip."""
    info = reader.byte()
    ref = info & 0x1F
    if ref in (_CONTENT_GC, _CONTENT_SKIP):
        if info != ref:
            raise InvalidUpdate(f"flag bits {info:#04x} on a {'GC' if ref == 0 else 'Skip'} struct")
        return _positive(reader.uint(), "GC/Skip length"), ref == _CONTENT_SKIP
    has_origin = bool(info & 0x80)
    has_right = bool(info & 0x40)
    if has_origin:
        references.append((reader.client(), reader.clock()))
    if has_right:
        references.append((reader.client(), reader.clock()))
    if not has_origin and not has_right:
        if reader.uint() == 1:
            reader.string()  # a root type's name
        else:
            references.append((reader.client(), reader.clock()))
        if info & 0x20:
            reader.string()  # the key in the parent map
    # With an origin, the parent and its key come from the origin item: a 0x20 bit is then
    # written (by Yjs and yrs alike) but no key follows.
    return _read_content(reader, ref), False


def _read_content(reader: _Reader, ref: int) -> int:
    """One item's content; returns its length in clock units."""
    if ref == _CONTENT_DELETED:
        return _positive(reader.uint(), "deleted length")
    if ref == _CONTENT_JSON:
        count = _positive(reader.count(), "JSON count")
        for _ in range(count):
            text = reader.string()
            if text != "undefined":
                try:
                    json.loads(text)
                except ValueError:
                    raise InvalidUpdate("JSON content that is not JSON") from None
        return count
    if ref == _CONTENT_BINARY:
        reader.bytes()
        return 1
    if ref == _CONTENT_STRING:
        text = reader.string()
        length = len(text.encode("utf-16-le")) // 2  # Yjs counts UTF-16 code units
        return _positive(length, "string length")
    if ref == _CONTENT_EMBED:
        _json(reader.string())
        return 1
    if ref == _CONTENT_FORMAT:
        reader.string()
        _json(reader.string())
        return 1
    if ref == _CONTENT_TYPE:
        type_ref = reader.uint()
        if type_ref > _TYPE_REF_MAX:
            raise InvalidUpdate(f"unknown shared type {type_ref}")
        if type_ref in _TYPE_REFS_WITH_NAME:
            reader.string()
        return 1
    if ref == _CONTENT_ANY:
        count = _positive(reader.count(), "value count")
        for _ in range(count):
            reader.any(0)
        return count
    if ref == _CONTENT_DOC:
        raise InvalidUpdate("subdocuments are not part of Jupyter documents")
    raise InvalidUpdate(f"unknown content type {ref}")


def _positive(value: int, what: str) -> int:
    if value <= 0:
        raise InvalidUpdate(f"{what} is {value}")
    return value


def _json(text: str) -> None:
    try:
        json.loads(text)
    except ValueError:
        raise InvalidUpdate("embedded JSON that is not JSON") from None


class _Reader:
    """A cursor over lib0-encoded bytes whose every length is checked against what is left."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def at_end(self) -> bool:
        return self.pos == self.end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise TruncatedError("ends before a struct's info byte")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        value = shift = 0
        while True:
            if pos >= end:
                raise TruncatedError("ends inside a number")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7
            if shift > 63:
                raise InvalidUpdate("a number longer than 64 bits")

    def count(self) -> int:
        """A count of things that follow: each takes at least one byte."""
        value = self.uint()
        if value > self.end - self.pos:
            raise InvalidUpdate(f"announces {value} entries in {self.end - self.pos} bytes")
        return value

    def client(self) -> int:
        value = self.uint()
        if value > MAX_SAFE_INTEGER:
            raise InvalidUpdate(f"client id {value} is past 2**53")
        return value

    def clock(self) -> int:
        value = self.uint()
        if value > MAX_SAFE_INTEGER:
            raise InvalidUpdate(f"clock {value} is past 2**53")
        return value

    def bytes(self) -> bytes:
        length = self.uint()
        end = self.pos + length
        if end > self.end:
            raise TruncatedError(f"announces {length} bytes, {self.end - self.pos} left")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def string(self) -> str:
        return self.bytes().decode("utf-8")

    def any(self, depth: int) -> None:
        """Skip one lib0 ``any`` value (checking it)."""
        if depth > MAX_DEPTH:
            raise InvalidUpdate(f"values nested deeper than {MAX_DEPTH}")
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # varInt: sign in the first byte
            self.uint()
            return
        if tag == 124:
            self._fixed(4)
            return
        if tag == 123:
            self._fixed(8)
            return
        if tag == 122:
            self._fixed(8)
            return
        if tag == 119:
            self.string()
            return
        if tag == 118:
            for _ in range(self.count()):
                self.string()
                self.any(depth + 1)
            return
        if tag == 117:
            for _ in range(self.count()):
                self.any(depth + 1)
            return
        if tag == 116:
            self.bytes()
            return
        raise InvalidUpdate(f"unknown value type {tag}")

    def _fixed(self, size: int) -> None:
        end = self.pos + size
        if end > self.end:
            raise TruncatedError("ends inside a number")
        self.pos = end
