"""Reading a Yjs v1 update strictly, and checking it against the document it is meant for.

pycrdt (yrs) accepts far more than it can handle: an update that decodes on its own can still,
once applied to a real document, leave that document unable to encode itself (integrated
items whose clocks leave gaps, parent info bits that Yjs and yrs read differently, origins
that do not exist yet, delete ranges past what is known). Updates come from browsers, so a
room reads each one here first, in the exact Yjs v1 layout, and refuses:

- anything that is not canonical Yjs: trailing bytes, unknown content or type refs, flag
  bits Yjs never writes (on GC and Skip structs), empty items, invalid UTF-8, JSON that is
  not JSON, absurd lengths, nesting beyond ``MAX_DEPTH``, subdocuments, deprecated JSON
  content, an item between itself and itself or pointing at its own client's future;
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
from typing import Dict, List, NamedTuple, Optional, Tuple

from jupyter_ystore.core.codec import TruncatedError

#: Yjs numbers are doubles: client ids above this cannot round-trip to the browser.
MAX_SAFE_INTEGER = 2**53 - 1
#: yrs keeps clocks in 32 bits: beyond, the server would count what the browsers do not.
MAX_CLOCK = 2**32 - 1
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


class ItemInfo(NamedTuple):
    """One struct of an update, as far as placing it in a document goes."""

    client: int
    clock: int
    length: int
    ref: int  # content ref (0 GC)
    origin: Optional[ID]
    right: Optional[ID]
    root: Optional[str]  # explicit parent: a root type's name...
    parent: Optional[ID]  # ...or the item that is the parent type
    keyed: bool  # an entry of a map (explicit key, or inherited from its neighbour)
    type_ref: Optional[int]  # for type content: 0 array, 1 map, 2 text, 3-6 XML


@dataclass
class UpdateSummary:
    """What an update adds, depends on and deletes; enough to check it against a document."""

    #: client -> [(clock, length, is_skip)] in the order the update lists them
    structs: Dict[int, List[Tuple[int, int, bool]]] = field(default_factory=dict)
    #: ids the update's items point to (origins, right origins, parent items)
    references: List[ID] = field(default_factory=list)
    #: client -> [(clock, length)]
    deletions: Dict[int, List[Tuple[int, int]]] = field(default_factory=dict)
    #: every item and GC struct, in the order the update lists them
    items: List[ItemInfo] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.structs and not self.deletions

    def check_against(self, state: Dict[int, int]) -> Dict[int, int]:
        """Raise ``InvalidUpdate`` unless every part of the update integrates into a document
        whose state vector is ``state`` (client -> next clock). Returns the state vector the
        document must have after applying it. (Where each item goes is ``item_index``'s.)"""
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


def read_update(update: bytes, *, strict: bool = True) -> UpdateSummary:
    """Decode ``update`` strictly (Yjs v1); raise ``InvalidUpdate`` saying what is wrong.

    ``strict=False`` reads what our own documents encode (pycrdt's output, already
    integrated): content a client may not send (JSON, XML types) is read, not refused.
    """
    reader = _Reader(update, strict)
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
                length, is_skip = _read_struct(reader, summary, client, clock)
                if clock + length > MAX_CLOCK:
                    raise InvalidUpdate(f"client {client}'s clocks pass 2**32")
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
                if length == 0 or clock + length > MAX_CLOCK:
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


def _read_struct(reader: _Reader, summary: UpdateSummary, client: int, clock: int) -> Tuple[int, bool]:
    """One struct; returns its length in clock units and whether it is a Skip."""
    info = reader.byte()
    ref = info & 0x1F
    if ref in (_CONTENT_GC, _CONTENT_SKIP):
        if info != ref:
            raise InvalidUpdate(f"flag bits {info:#04x} on a {'GC' if ref == 0 else 'Skip'} struct")
        length = _positive(reader.uint(), "GC/Skip length")
        if ref == _CONTENT_GC:
            summary.items.append(ItemInfo(client, clock, length, ref, None, None, None, None, False, None))
        return length, ref == _CONTENT_SKIP
    references = summary.references
    origin = right = parent = None
    root: Optional[str] = None
    keyed = False
    if info & 0x80:
        origin = (reader.client(), reader.clock())
        references.append(origin)
    if info & 0x40:
        right = (reader.client(), reader.clock())
        references.append(right)
        if right == origin and reader.strict:
            raise InvalidUpdate(f"an item has {right} as both its left and its right neighbour")
    if origin is None and right is None:
        if reader.uint() == 1:
            root = reader.string()
        else:
            parent = (reader.client(), reader.clock())
            references.append(parent)
        if info & 0x20:
            keyed = True
            reader.string()  # the key in the parent map
    # With an origin, the parent and its key come from the origin item: a 0x20 bit is then
    # written (by Yjs and yrs alike) but no key follows.
    if reader.strict:
        for target in (origin, right, parent):
            if target is not None:
                _not_ahead(target, client, clock)
    length, type_ref = _read_content(reader, ref)
    summary.items.append(ItemInfo(client, clock, length, ref, origin, right, root, parent, keyed, type_ref))
    return length, False


def _not_ahead(target: ID, client: int, clock: int) -> None:
    """An item can only point at its own client's items made before it."""
    if target[0] == client and target[1] >= clock:
        raise InvalidUpdate(f"the item at clock {clock} of client {client} points at its own future {target}")


def _read_content(reader: _Reader, ref: int) -> Tuple[int, Optional[int]]:
    """One item's content; returns its length in clock units (and a type's ref)."""
    if ref == _CONTENT_DELETED:
        return _positive(reader.uint(), "deleted length"), None
    if ref == _CONTENT_JSON:
        if reader.strict:
            # Deprecated (Yjs writes Any since v13), and yrs reads one entry more than it
            # writes: the server and the browsers would not even agree on its length.
            raise InvalidUpdate("JSON content (deprecated since Yjs 13) is not accepted")
        count = reader.count()
        for _ in range(count):
            reader.string()
        return count, None
    if ref == _CONTENT_BINARY:
        reader.bytes()
        return 1, None
    if ref == _CONTENT_STRING:
        text = reader.string()
        length = len(text.encode("utf-16-le", "surrogatepass")) // 2  # Yjs counts UTF-16 units
        return _positive(length, "string length"), None
    if ref == _CONTENT_EMBED:
        reader.json()
        return 1, None
    if ref == _CONTENT_FORMAT:
        reader.string()
        reader.json()
        return 1, None
    if ref == _CONTENT_TYPE:
        type_ref = reader.uint()
        if type_ref > _TYPE_REF_MAX:
            raise InvalidUpdate(f"unknown shared type {type_ref}")
        if type_ref in _TYPE_REFS_WITH_NAME:
            reader.string()
        if type_ref > 2 and reader.strict:
            raise InvalidUpdate("XML types are not part of Jupyter documents")
        return 1, type_ref
    if ref == _CONTENT_ANY:
        count = _positive(reader.count(), "value count")
        for _ in range(count):
            reader.any(0)
        return count, None
    if ref == _CONTENT_DOC and reader.strict:
        raise InvalidUpdate("subdocuments are not part of Jupyter documents")
    if ref == _CONTENT_DOC:
        reader.string()
        reader.any(0)
        return 1, None
    raise InvalidUpdate(f"unknown content type {ref}")


def _positive(value: int, what: str) -> int:
    if value <= 0:
        raise InvalidUpdate(f"{what} is {value}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Reader:
    """A cursor over lib0-encoded bytes whose every length is checked against what is left."""

    __slots__ = ("data", "pos", "end", "strict")

    def __init__(self, data: bytes, strict: bool = True) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.strict = strict

    def json(self) -> None:
        """A string holding JSON as yrs parses it (no NaN, no Infinity, finite numbers)."""
        text = self.string()
        if not self.strict:
            return
        try:
            json.loads(text, parse_constant=_no_constant, parse_float=_finite)
        except (ValueError, RecursionError):
            raise InvalidUpdate("embedded JSON that is not JSON") from None

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
