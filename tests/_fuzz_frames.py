"""Hostile y-websocket frames for the room fuzz test (``tests/test_fuzz_rooms.py``).

Everything comes from one seeded ``random.Random``, so a seed names a sequence of choices
(the frames themselves also depend on what the live document held when they were made:
they point at its items).

Why a Yjs encoder of our own: pycrdt only writes valid updates, and the interesting hostile
updates are the ones that decode but mean nothing (an origin that does not exist, a parent
that is a string, a map key next to an origin, a delete range past every clock, a length of
2**53). ``Item``/``GC``/``Skip`` and the ``Content`` classes write exactly the fields they are
given, so a test can build canonical updates and non-canonical ones alike; ``decode_update``
reads the same format back (to find the ids of the live document's items and to tell which
client ids a frame would delete).

Format facts (Yjs update v1 over lib0, from the Yjs/lib0 format descriptions):

    update      = varuint numClients, per client: varuint numStructs, varuint client,
                  varuint clock (of the first struct), structs; then the delete set
    struct      = info byte: content ref (low 5 bits) | 0x80 origin | 0x40 rightOrigin
                  | 0x20 parentSub; [origin id] [rightOrigin id]; without either origin:
                  parent info (varuint 1 + root name | varuint 0 + parent id) and, if the
                  0x20 bit is set, the parentSub string; then the content.
                  ref 0 = GC(varuint len), ref 10 = Skip(varuint len)
    contents    = 1 Deleted(len) 2 JSON(count, strings) 3 Binary(varbytes) 4 String(string)
                  5 Embed(JSON string) 6 Format(key, JSON string) 7 Type(typeRef[, name])
                  8 Any(count, anys) 9 Doc(guid string, any opts)
    delete set  = varuint numClients, per client: client, numRanges, (clock, len)*
    id          = varuint client, varuint clock
    string      = varuint UTF-8 byte length, bytes
    any         = tag 127 undefined, 126 null, 125 varint, 124 float32, 123 float64,
                  122 bigint64, 121 false, 120 true, 119 string, 118 object, 117 array,
                  116 bytes

Run ``python tests/_fuzz_frames.py search-panics`` to repeat the offline search that found
the ``PANIC_UPDATES`` below.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

# ---------------------------------------------------------------------------- lib0


class _Undefined:
    """lib0's ``undefined`` (tag 127), distinct from ``None`` (null, tag 126)."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


@dataclass(frozen=True)
class RawAny:
    """An ``any`` value written as ``tag`` + ``payload`` verbatim (unknown tags, lies)."""

    tag: int
    payload: bytes = b""


class Lib0Writer:
    """A lib0 encoder that writes whatever it is given: varuints of any size (lib0 stops at
    53 bits, yrs at 64: bigger ones are hostile on purpose), strings as raw bytes."""

    def __init__(self) -> None:
        self.out = bytearray()

    def to_bytes(self) -> bytes:
        return bytes(self.out)

    def u8(self, value: int) -> None:
        self.out.append(value & 0xFF)

    def raw(self, data: bytes) -> None:
        self.out += data

    def uint(self, num: int) -> None:
        if num < 0:
            raise ValueError("varuint of a negative number")
        while num > 0x7F:
            self.out.append(0x80 | (num & 0x7F))
            num >>= 7
        self.out.append(num)

    def sint(self, num: int) -> None:
        """lib0 ``writeVarInt``: 6 bits + sign bit in the first byte, then 7 bits a byte."""
        negative = num < 0
        num = -num if negative else num
        self.out.append((0x80 if num > 0x3F else 0) | (0x40 if negative else 0) | (num & 0x3F))
        num >>= 6
        while num > 0:
            self.out.append((0x80 if num > 0x7F else 0) | (num & 0x7F))
            num >>= 7

    def var_bytes(self, data: bytes) -> None:
        self.uint(len(data))
        self.out += data

    def string(self, text: str | bytes) -> None:
        """A lib0 string; ``bytes`` go out as they are (invalid UTF-8 on purpose), ``str``
        through ``surrogatepass`` (a lone surrogate becomes its 3-byte CESU form)."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        self.var_bytes(data)

    def any(self, value: Any) -> None:
        """lib0 ``writeAny``, iteratively (hostile values nest 100,000 deep)."""
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, _Emit):
                self.raw(item.data)
            elif isinstance(item, RawAny):
                self.u8(item.tag)
                self.raw(item.payload)
            elif item is UNDEFINED:
                self.u8(127)
            elif item is None:
                self.u8(126)
            elif item is True:
                self.u8(120)
            elif item is False:
                self.u8(121)
            elif isinstance(item, int):
                if -(2**63) <= item < 2**63 and abs(item) > 2**53:
                    self.u8(122)
                    self.raw(struct.pack(">q", item))
                else:
                    self.u8(125)
                    self.sint(item)
            elif isinstance(item, float):
                self.u8(123)
                self.raw(struct.pack(">d", item))
            elif isinstance(item, (str, _Utf8)):
                self.u8(119)
                self.string(item.data if isinstance(item, _Utf8) else item)
            elif isinstance(item, (bytes, bytearray)):
                self.u8(116)
                self.var_bytes(bytes(item))
            elif isinstance(item, (list, tuple)):
                self.u8(117)
                self.uint(len(item))
                stack.extend(reversed(item))
            elif isinstance(item, dict):
                self.u8(118)
                self.uint(len(item))
                for key, val in reversed(list(item.items())):
                    stack.append(val)
                    sub = Lib0Writer()
                    sub.string(key.data if isinstance(key, _Utf8) else key)
                    stack.append(_Emit(sub.to_bytes()))
            else:
                raise TypeError(f"no lib0 any for {type(item).__name__}")


@dataclass(frozen=True)
class _Emit:
    data: bytes


@dataclass(frozen=True)
class _Utf8:
    """A string given as raw bytes (invalid UTF-8) where a ``str`` is expected."""

    data: bytes


def var_uint(num: int) -> bytes:
    writer = Lib0Writer()
    writer.uint(num)
    return writer.to_bytes()


def var_string(text: str | bytes) -> bytes:
    writer = Lib0Writer()
    writer.string(text)
    return writer.to_bytes()


class DecodeError(ValueError):
    """The bytes are not a Yjs v1 update by our reading."""


class Lib0Reader:
    """Strict lib0 decoding (our own reading; used on the live document and on frames)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise DecodeError("end of buffer")
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 70:
                raise DecodeError("varuint too long")

    def take(self, length: int) -> bytes:
        if length > len(self.data) - self.pos:
            raise DecodeError("length past the end")
        self.pos += length
        return self.data[self.pos - length : self.pos]

    def var_bytes(self) -> bytes:
        return self.take(self.uint())

    def string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string is not UTF-8: {exc}") from None

    def skip_any(self) -> None:
        """Read past one ``any`` (iteratively: values may nest 100,000 deep)."""
        stack = [[1, False]]  # [values left, keyed (object entries)]
        while stack:
            top = stack[-1]
            if top[0] == 0:
                stack.pop()
                continue
            top[0] -= 1
            if top[1]:
                self.var_bytes()  # the key
            tag = self.u8()
            if tag in (127, 126, 121, 120):
                continue
            if tag == 125:
                while self.u8() & 0x80:
                    pass
            elif tag == 124:
                self.take(4)
            elif tag in (123, 122):
                self.take(8)
            elif tag in (119, 116):
                self.var_bytes()
            elif tag in (118, 117):
                count = self.uint()
                if count > len(self.data):
                    raise DecodeError("container larger than the buffer")
                stack.append([count, tag == 118])
            else:
                raise DecodeError(f"unknown any tag {tag}")


# ---------------------------------------------------------------------------- Yjs update v1


@dataclass(frozen=True)
class ID:
    client: int
    clock: int


class Content:
    """An item's content: its ref (low 5 bits of the info byte) and its length in clocks."""

    ref = -1

    @property
    def length(self) -> int:
        return 1

    def write(self, out: Lib0Writer) -> None:
        raise NotImplementedError


@dataclass
class Deleted(Content):
    count: int
    ref = 1

    @property
    def length(self) -> int:
        return self.count

    def write(self, out: Lib0Writer) -> None:
        out.uint(self.count)


@dataclass
class JSONContent(Content):
    """Each entry is written as given: JSON text, ``"undefined"``, or anything else."""

    entries: list[str | bytes]
    declared: int | None = None  # a count that lies
    ref = 2

    @property
    def length(self) -> int:
        return len(self.entries)

    def write(self, out: Lib0Writer) -> None:
        out.uint(len(self.entries) if self.declared is None else self.declared)
        for entry in self.entries:
            out.string(entry)


@dataclass
class Binary(Content):
    data: bytes
    ref = 3

    def write(self, out: Lib0Writer) -> None:
        out.var_bytes(self.data)


@dataclass
class String(Content):
    text: str | bytes
    ref = 4

    @property
    def length(self) -> int:
        if isinstance(self.text, bytes):
            return max(1, len(self.text.decode("utf-8", "replace").encode("utf-16-le")) // 2)
        return max(1, len(self.text.encode("utf-16-le", "surrogatepass")) // 2)

    def write(self, out: Lib0Writer) -> None:
        out.string(self.text)


@dataclass
class Embed(Content):
    json_text: str | bytes
    ref = 5

    def write(self, out: Lib0Writer) -> None:
        out.string(self.json_text)


@dataclass
class Format(Content):
    key: str | bytes
    json_text: str | bytes
    ref = 6

    def write(self, out: Lib0Writer) -> None:
        out.string(self.key)
        out.string(self.json_text)


#: Yjs type refs: Array, Map, Text, XmlElement (+ name), XmlFragment, XmlHook (+ name), XmlText
TYPE_ARRAY, TYPE_MAP, TYPE_TEXT, TYPE_XML_ELEMENT, TYPE_XML_FRAGMENT, TYPE_XML_HOOK, TYPE_XML_TEXT = range(7)


@dataclass
class TypeContent(Content):
    type_ref: int
    name: str | bytes | None = None  # written when given (XmlElement and XmlHook need it)
    ref = 7

    def write(self, out: Lib0Writer) -> None:
        out.uint(self.type_ref)
        if self.name is not None:
            out.string(self.name)


@dataclass
class AnyContent(Content):
    values: list[Any]
    declared: int | None = None
    ref = 8

    @property
    def length(self) -> int:
        return max(1, len(self.values))

    def write(self, out: Lib0Writer) -> None:
        out.uint(len(self.values) if self.declared is None else self.declared)
        for value in self.values:
            out.any(value)


@dataclass
class DocContent(Content):
    guid: str | bytes
    options: Any = field(default_factory=dict)
    ref = 9

    def write(self, out: Lib0Writer) -> None:
        out.string(self.guid)
        out.any(self.options)


@dataclass
class RawContent(Content):
    """Any ref with any payload (unknown refs 11..31, payloads that lie)."""

    ref_value: int
    payload: bytes
    clock_length: int = 1

    @property
    def ref(self) -> int:  # type: ignore[override]
        return self.ref_value

    @property
    def length(self) -> int:
        return self.clock_length

    def write(self, out: Lib0Writer) -> None:
        out.raw(self.payload)


@dataclass
class Item:
    """A struct with content. Every field given is written, in the format's order; the info
    byte is derived from what is given unless ``info`` overrides it. A canonical item has
    either an origin/rightOrigin or a parent (+ parentSub), never both."""

    content: Content
    origin: ID | None = None
    right_origin: ID | None = None
    parent: str | bytes | ID | None = None
    parent_sub: str | bytes | None = None
    info: int | None = None

    @property
    def length(self) -> int:
        return self.content.length

    def write(self, out: Lib0Writer) -> None:
        info = self.info
        if info is None:
            info = (
                (self.content.ref & 0x1F)
                | (0x80 if self.origin is not None else 0)
                | (0x40 if self.right_origin is not None else 0)
                | (0x20 if self.parent_sub is not None else 0)
            )
        out.u8(info)
        for ref in (self.origin, self.right_origin):
            if ref is not None:
                out.uint(ref.client)
                out.uint(ref.clock)
        if isinstance(self.parent, ID):
            out.uint(0)
            out.uint(self.parent.client)
            out.uint(self.parent.clock)
        elif self.parent is not None:
            out.uint(1)
            out.string(self.parent)
        if self.parent_sub is not None:
            out.string(self.parent_sub)
        self.content.write(out)


@dataclass
class GC:
    count: int

    @property
    def length(self) -> int:
        return self.count

    def write(self, out: Lib0Writer) -> None:
        out.u8(0)
        out.uint(self.count)


@dataclass
class Skip:
    count: int

    @property
    def length(self) -> int:
        return self.count

    def write(self, out: Lib0Writer) -> None:
        out.u8(10)
        out.uint(self.count)


Struct = Union[Item, GC, Skip]


@dataclass
class ClientStructs:
    client: int
    clock: int
    structs: list[Struct]
    declared: int | None = None  # a struct count that lies


def encode_update(
    clients: Sequence[ClientStructs],
    deletes: Sequence[tuple[int, Sequence[tuple[int, int]]]] = (),
    *,
    declared_clients: int | None = None,
    declared_delete_clients: int | None = None,
) -> bytes:
    """A Yjs v1 update, written in the order given (Yjs sorts clients descending; we
    don't have to)."""
    out = Lib0Writer()
    out.uint(len(clients) if declared_clients is None else declared_clients)
    for entry in clients:
        out.uint(len(entry.structs) if entry.declared is None else entry.declared)
        out.uint(entry.client)
        out.uint(entry.clock)
        for item in entry.structs:
            item.write(out)
    out.uint(len(deletes) if declared_delete_clients is None else declared_delete_clients)
    for client, ranges in deletes:
        out.uint(client)
        out.uint(len(ranges))
        for clock, length in ranges:
            out.uint(clock)
            out.uint(length)
    return out.to_bytes()


EMPTY_UPDATE = b"\x00\x00"


# ---------------------------------------------------------------------------- decoding


@dataclass
class DecodedStruct:
    """One struct as read: ``kind`` is "item", "gc" or "skip"."""

    id: ID
    length: int
    kind: str
    ref: int = 0
    origin: ID | None = None
    right_origin: ID | None = None
    parent: str | ID | None = None
    parent_sub: str | None = None
    type_ref: int | None = None
    text: str | None = None


@dataclass
class DecodedUpdate:
    structs: list[DecodedStruct]
    deletes: dict[int, list[tuple[int, int]]]


def _read_content(reader: Lib0Reader, ref: int, struct_: DecodedStruct, yrs: bool) -> int:
    """Read one content; return its length in clocks."""
    if ref == 1:
        return reader.uint()
    if ref == 2:
        count = reader.uint()
        # yrs (pycrdt 0.14) reads one JSON string more than the count it writes, so a JSON
        # item it accepted is written back in a form it cannot read again.
        for _ in range(count + 1 if yrs else count):
            reader.var_bytes()
        return count + 1 if yrs else count
    if ref == 3:
        reader.var_bytes()
        return 1
    if ref == 4:
        text = reader.string()
        struct_.text = text
        return max(1, len(text.encode("utf-16-le", "surrogatepass")) // 2)
    if ref == 5:
        reader.var_bytes()
        return 1
    if ref == 6:
        reader.var_bytes()
        reader.var_bytes()
        return 1
    if ref == 7:
        type_ref = reader.uint()
        struct_.type_ref = type_ref
        if type_ref in (TYPE_XML_ELEMENT, TYPE_XML_HOOK):
            reader.var_bytes()
        return 1
    if ref == 8:
        count = reader.uint()
        for _ in range(count):
            reader.skip_any()
        return count
    if ref == 9:
        reader.var_bytes()
        reader.skip_any()
        return 1
    raise DecodeError(f"unknown content ref {ref}")


#: yrs keeps client ids in 64 bits and clocks in 32, wrapping (client 2**64 is client 0).
_CLIENT_MASK = 2**64 - 1
_CLOCK_MASK = 2**32 - 1


def decode_update(update: bytes, *, yrs: bool = False, max_structs: int = 1_000_000) -> DecodedUpdate:
    """Read a v1 update (raises ``DecodeError`` on anything we cannot read).

    ``yrs=True`` reads the way pycrdt's yrs does, quirks included (ids wrap, one extra JSON
    string, bytes after the delete set ignored): what a frame would do to the server.
    Without it, the format as written (pycrdt's own ``get_update`` output)."""
    reader = Lib0Reader(update)
    structs: list[DecodedStruct] = []
    client_mask = _CLIENT_MASK if yrs else -1
    clock_mask = _CLOCK_MASK if yrs else -1
    for _ in range(reader.uint()):
        count = reader.uint()
        client = reader.uint() & client_mask
        clock = reader.uint() & clock_mask
        if count > max_structs:
            raise DecodeError("too many structs")
        for _ in range(count):
            info = reader.u8()
            ref = info & 0x1F
            if ref in (0, 10):
                length = reader.uint()
                structs.append(DecodedStruct(ID(client, clock), length, "gc" if ref == 0 else "skip"))
                clock = (clock + length) & clock_mask
                continue
            item = DecodedStruct(ID(client, clock), 0, "item", ref=ref)
            if info & 0x80:
                item.origin = ID(reader.uint() & client_mask, reader.uint() & clock_mask)
            if info & 0x40:
                item.right_origin = ID(reader.uint() & client_mask, reader.uint() & clock_mask)
            if not info & 0xC0:
                if reader.uint() == 1:
                    item.parent = reader.string()
                else:
                    item.parent = ID(reader.uint() & client_mask, reader.uint() & clock_mask)
                if info & 0x20:
                    item.parent_sub = reader.string()
            item.length = _read_content(reader, ref, item, yrs)
            structs.append(item)
            clock = (clock + item.length) & clock_mask
    deletes: dict[int, list[tuple[int, int]]] = {}
    for _ in range(reader.uint()):
        client = reader.uint() & client_mask
        ranges = deletes.setdefault(client, [])
        for _ in range(reader.uint()):
            ranges.append((reader.uint() & clock_mask, reader.uint() & clock_mask))
            if len(ranges) > max_structs:
                raise DecodeError("too many delete ranges")
    if not yrs and not reader.done():
        raise DecodeError(f"{len(update) - reader.pos} bytes after the delete set")
    return DecodedUpdate(structs, deletes)


class DocView:
    """What the hostile client knows of the live document, read from its full update: the
    ids of its items by kind, so that frames can point at real ones of the wrong kind."""

    def __init__(self, full_update: bytes) -> None:
        decoded = decode_update(full_update)
        self.structs = decoded.structs
        self.state: dict[int, int] = {}
        self._by_client: dict[int, list[DecodedStruct]] = {}
        for item in self.structs:
            self._by_client.setdefault(item.id.client, []).append(item)
            end = item.id.clock + item.length
            if end > self.state.get(item.id.client, 0):
                self.state[item.id.client] = end
        self._clocks = {c: [s.id.clock for s in items] for c, items in self._by_client.items()}
        self.deleted: list[ID] = [
            ID(client, clock + offset)
            for client, ranges in decoded.deletes.items()
            for clock, length in ranges
            for offset in (0, max(0, length - 1))
        ]
        items = [s for s in self.structs if s.kind == "item"]
        for item in items:
            self._resolve(item)
        self.types = [s for s in items if s.ref == 7]
        self.map_types = [s for s in self.types if s.type_ref == TYPE_MAP]
        self.text_types = [s for s in self.types if s.type_ref == TYPE_TEXT]
        self.map_entries = [s for s in items if s.parent_sub is not None]
        self.strings = [s for s in items if s.ref == 4]
        self.long_strings = [s for s in self.strings if s.length > 2]
        self.non_types = [s for s in items if s.ref != 7]
        self.gcs = [s for s in self.structs if s.kind == "gc"]
        self.roots = sorted({s.parent for s in items if isinstance(s.parent, str)})
        self.root_keys: dict[str, set[str]] = {}
        for entry in self.map_entries:
            if isinstance(entry.parent, str):
                self.root_keys.setdefault(entry.parent, set()).add(entry.parent_sub or "")

    def find(self, target: ID) -> DecodedStruct | None:
        clocks = self._clocks.get(target.client)
        if not clocks:
            return None
        index = bisect_right(clocks, target.clock) - 1
        if index < 0:
            return None
        found = self._by_client[target.client][index]
        return found if target.clock < found.id.clock + found.length else None

    def _resolve(self, item: DecodedStruct) -> None:
        """An item with an origin has its origin's parent and key (iteratively)."""
        chain: list[DecodedStruct] = []
        seen: set[int] = set()
        current: DecodedStruct | None = item
        while current is not None and current.parent is None and id(current) not in seen:
            chain.append(current)
            seen.add(id(current))
            ref = current.origin or current.right_origin
            current = self.find(ref) if ref is not None else None
        if current is not None and current.parent is not None:
            for link in chain:
                link.parent, link.parent_sub = current.parent, current.parent_sub


# ---------------------------------------------------------------------------- frames

#: What the honest clients of the fuzz test type (markers like ``<a17>``). Hostile strings
#: never use these characters, so a hostile insertion inside an honest marker can be told
#: apart from a lost edit (the test keeps only these characters of a cell's source).
HONEST_CHARS = frozenset("<>ab0123456789")
_HOSTILE_TEXT = "xyzXYZ!?#%&*+-=~ ¤üß€😀\t\n\x00\u200b"

#: From the issue: sync/update frames that broke rooms (the first one sent twice in a row, or
#: alone). Sent verbatim. Their update holds one JSON item (info 0xa2: origin + a parentSub
#: bit yrs ignores) after the id (0, 34); yrs reads one JSON string more than the count, so
#: the item it accepts is written back in a form no one can read again.
ISSUE_FRAMES = (
    "0002130101eba28b9de48ba40100a2002200025a4800",
    "0002130101eba28b9de48ba40200a2002200025a4800",
)

#: Updates that make pycrdt 0.14.13 panic (``pyo3_runtime.PanicException``, a BaseException
#: that ``except Exception`` does not catch). Found by ``search_panics`` below (run
#: ``python tests/_fuzz_frames.py search-panics``): seeds 0-2 of this module's structured,
#: mutated and random updates, applied in child processes to a Doc holding a small notebook
#: loaded the way rooms load files (client id 0) plus a few edits; then shrunk by hand with
#: the encoder above. Sent wrapped in sync update frames.
PANIC_UPDATES: tuple[tuple[str, str], ...] = (
    # client 5 written twice, both at clock 0, with structs of different lengths
    ("0201050004010466757a7a016101050004010466757a7a0364757000", "attempt to divide by zero"),
    # client 5 at clock 2**32-1 with a 2-unit string (the clock wraps), deleting 5:0
    ("010105ffffffff0f04010466757a7a0278780105010001", "attempt to divide by zero"),
    # the same with an 8-unit string
    ("010105ffffffff0f04010466757a7a0878787878787878780105010001",
     "index out of bounds: the len is 1 but the index is 9223372036854775807"),
    # client 2**53 at clock 2**32-1, "ü" in root "fuzz" (panics only in a non-empty document)
    ("01018080808080808010ffffffff0f04010466757a7a02c3bc00", "called `Option::unwrap()` on a `None` value"),
)

#: Keys of the notebook's own maps: hostile map entries use other keys (overwriting one is
#: an edit a writer may make, out of the test's scope; see ``FrameGenerator.holds_back``).
NOTEBOOK_KEYS = frozenset({
    "source", "id", "cell_type", "metadata", "outputs", "execution_count", "execution_state",
    "attachments", "nbformat", "nbformat_minor", "language_info", "kernelspec",
    "hash", "path", "dirty", "document_id", "file_import",
})


def sync_frame(update: bytes, sync_type: int = 2) -> bytes:
    """``[0][sync_type][varBytes update]``."""
    return bytes([0]) + var_uint(sync_type) + var_uint(len(update)) + update


def awareness_frame(payload: bytes) -> bytes:
    return bytes([1]) + var_uint(len(payload)) + payload


def awareness_payload(entries: Iterable[tuple[int, int, str | bytes]], declared: int | None = None) -> bytes:
    entries = list(entries)
    out = Lib0Writer()
    out.uint(len(entries) if declared is None else declared)
    for client, clock, state in entries:
        out.uint(client)
        out.uint(clock)
        out.string(state)
    return out.to_bytes()


@dataclass
class Frame:
    """One frame to send: ``data`` is bytes (binary frame) or str (a text frame).
    ``kind`` names the generator's case (``family/case``), ``detail`` the variant."""

    family: str
    case: str
    data: bytes | str
    detail: str = ""

    @property
    def kind(self) -> str:
        return f"{self.family}/{self.case}"

    def hex(self) -> str:
        if isinstance(self.data, str):
            return "text:" + repr(self.data[:200])
        return self.data.hex()

    def short(self, limit: int = 200) -> str:
        text = self.hex()
        return text if len(text) <= limit else f"{text[:limit]}... ({len(self.data)} bytes)"

    @property
    def update(self) -> bytes | None:
        """The update a sync step 2 / update frame carries (None for other frames)."""
        if not isinstance(self.data, bytes) or len(self.data) < 3 or self.data[0] != 0:
            return None
        if self.data[1] not in (1, 2):
            return None
        try:
            return Lib0Reader(self.data[2:]).var_bytes()
        except DecodeError:
            return None


_BIG_CLIENTS = (2**53 - 1, 2**53, 2**53 + 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, 2**64 + 5, 2**70)
_HUGE = (2**31 - 1, 2**32, 2**32 + 1, 2**53 - 1, 2**53, 2**63, 2**64 - 1)
_DEEP = (64, 1_000, 10_000, 50_000, 100_000)  # pycrdt's decoder overflows the stack past ~30,000


class FrameGenerator:
    """Seeded hostile frames against one live document.

    ``capture`` feeds it valid updates seen on the wire (material for mutations);
    ``set_view`` the hostile client's current full document (ids to point at).
    ``holds_back`` says which frames a writer's test must not send (see there).
    ``read_only=True`` adds valid destructive updates (a read-only peer must be refused).
    ``typists``: clients that only ever type text; ids past their clock are pointed at
    (they become real later). Past another client's clock an item would wait for whatever
    that client writes next, e.g. the server's next value of ``state["hash"]``, and then
    overwrite it: an edit out of scope that no static check can see coming.
    """

    def __init__(
        self,
        seed: int,
        *,
        protected: Iterable[int] = (),
        typists: Iterable[int] = (),
        awareness_ids: Iterable[int] = (),
        read_only: bool = False,
        kinds: Sequence[str] = (),
    ) -> None:
        self.rng = random.Random(seed)
        self.protected = set(protected)
        self.typists = sorted(set(typists))
        self.awareness_ids = list(awareness_ids)
        self.kinds = tuple(kinds)
        rng = self.rng
        # Our own client ids (contiguous clocks; we may delete their items) and ids whose
        # clocks start far ahead (pending forever: nothing of ours ever fills the gap).
        self.own_clients = [rng.randrange(2**20, 2**32) for _ in range(4)]
        self.gap_clients = [rng.randrange(2**20, 2**32) for _ in range(3)]
        self.corpus: deque[bytes] = deque(maxlen=256)
        self.view: DocView | None = None
        self.counts: dict[str, int] = {}
        self._deep: dict[tuple[int, bool], bytes] = {}
        self._known = self._known_frames()
        families: list[tuple[float, Callable[[], Frame]]] = [
            (38, self._structured),
            (22, self._mutated),
            (12, self._protocol),
            (13, self._awareness),
            (8, self._random),
            (7, self._known_frame),
        ]
        if read_only:
            families.append((20, self._destructive))
        self._families = [f for _, f in families]
        self._weights = [w for w, _ in families]

    # ------------------------------------------------------------------ inputs

    def capture(self, update: bytes) -> None:
        if update and update != EMPTY_UPDATE and len(update) < 64 * 1024:
            self.corpus.append(bytes(update))

    def set_view(self, full_update: bytes) -> None:
        try:
            self.view = DocView(full_update)
        except DecodeError:
            pass  # keep the previous view

    # ------------------------------------------------------------------ output

    def wanted(self, kind: str) -> bool:
        """``kinds``: prefixes of the kinds to send; a leading ``-`` excludes instead."""
        include = tuple(k for k in self.kinds if not k.startswith("-"))
        exclude = tuple(k[1:] for k in self.kinds if k.startswith("-"))
        return (not include or kind.startswith(include)) and not (exclude and kind.startswith(exclude))

    def next_frame(self) -> Frame:
        for _ in range(100_000):
            frame = self.rng.choices(self._families, self._weights)[0]()
            if self.wanted(frame.kind):
                break
        self.counts[frame.kind] = self.counts.get(frame.kind, 0) + 1
        return frame

    def protected_clients(self) -> set[int]:
        """Clients whose items a writer's frames must leave alone: everyone in the document
        (honest peers, the server's load and state edits, ids of earlier frames) but ours."""
        known = set(self.view.state) if self.view is not None else set()
        return (known | self.protected) - set(self.own_clients) - set(self.gap_clients)

    def holds_back(self, frame: Frame) -> str | None:
        """Why a writer's test must not send ``frame`` (None: send it).

        A writer may delete and overwrite anything; the test checks that *garbage* cannot
        lose an edit or break the room, so frames that yrs would read as a legitimate edit
        of the notebook's own content are held back: deletions of others' items,
        overwrites of keys in the notebook's maps, insertions into the cells array or an
        output list, honest characters typed into a cell. Read the way yrs reads (quirks
        included), statically: applying a hostile update in the test process could crash it.
        Frames yrs cannot read at all are always sent.
        """
        update = frame.update
        if update is None or self.view is None:
            return None
        try:
            decoded = decode_update(update, yrs=True)
        except DecodeError:
            return None
        protected = self.protected_clients()
        for client in decoded.deletes:
            if client in protected:
                return f"deletes items of client {client}"
        local: dict[int, list[DecodedStruct]] = {}
        for item in decoded.structs:
            local.setdefault(item.id.client, []).append(item)
            if item.kind == "item":
                reason = self._touches(item, local, protected)
                if reason:
                    return reason
        return None

    def _lookup(self, target: ID, local: dict[int, list[DecodedStruct]]) -> DecodedStruct | None:
        for item in local.get(target.client, ()):
            if item.id.clock <= target.clock < item.id.clock + item.length:
                return item
        return self.view.find(target) if self.view is not None else None

    def _touches(self, item: DecodedStruct, local: dict[int, list[DecodedStruct]], protected: set[int]) -> str | None:
        """Whether ``item`` would edit the notebook's own structure (see ``holds_back``)."""
        assert self.view is not None
        placements: list[tuple[str | ID | None, str | None]] = []
        if item.origin is None and item.right_origin is None:
            placements.append((item.parent, item.parent_sub))
        for ref in (item.origin, item.right_origin):
            if ref is not None:
                target = self._lookup(ref, local)
                if target is not None:
                    placements.append((target.parent, target.parent_sub))
                elif ref.client in protected and ref.client not in self.typists:
                    # it would wait for that client's next item (the server's next state
                    # value, say) and then overwrite it
                    return f"waits for a future item of client {ref.client}"
        if placements and item.parent is None:
            item.parent, item.parent_sub = placements[0]  # later items of this update chain on it
        for parent, sub in placements:
            if isinstance(parent, str):
                if parent == "cells" and sub is None:
                    return "inserts into the cells array"
                if sub is not None and sub in self.view.root_keys.get(parent, ()):
                    return f"overwrites {parent}[{sub!r}]"
                continue
            if parent is None:
                continue  # unknown: pending
            owner = self._lookup(parent, local)
            if owner is None and parent.client in protected and parent.client not in self.typists:
                return f"waits for a future item of client {parent.client}"
            if owner is None or owner.ref != 7 or owner.id.client not in protected:
                continue  # unknown, not a type (wrong kind), or ours
            if owner.type_ref == TYPE_TEXT and sub is None:
                if item.text is not None and HONEST_CHARS.intersection(item.text):
                    return "types honest characters into a cell"
                continue
            return "edits a map or list of the notebook" if sub is None else f"overwrites key {sub!r} of the notebook"
        return None

    # ------------------------------------------------------------------ helpers

    def _pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def hostile_text(self, length: int | None = None) -> str:
        length = self.rng.randint(1, 12) if length is None else length
        return "".join(self._pick(_HOSTILE_TEXT) for _ in range(length))

    def hostile_key(self) -> str:
        return "fuzz-" + self.hostile_text(3)

    def unknown_client(self) -> int:
        taken = self.protected | set(self.own_clients) | set(self.gap_clients)
        if self.view is not None:
            taken |= set(self.view.state)
        while True:
            client = self.rng.choice((self.rng.randrange(1, 2**32), self.rng.randrange(2**32, 2**53)))
            if client not in taken:
                return client

    def own_client(self) -> tuple[int, int]:
        """One of our ids and its next clock as the server echoed it back."""
        client = self._pick(self.own_clients)
        clock = self.view.state.get(client, 0) if self.view else 0
        return client, clock

    def view_id(self, kind: str) -> ID | None:
        """A real id of the document: of a type, map, text, map entry, string, the middle of
        a string, any non-type item, a deleted item or a GC'd range."""
        view = self.view
        if view is None:
            return None
        if kind == "deleted":
            return self._pick(view.deleted) if view.deleted else None
        choices: Sequence[DecodedStruct] = {
            "type": view.types,
            "map": view.map_types,
            "text": view.text_types,
            "entry": view.map_entries,
            "string": view.strings,
            "middle": view.long_strings,
            "non_type": view.non_types,
            "gc": view.gcs,
        }.get(kind, ())
        if not choices:
            return None
        item = self._pick(choices)
        if kind == "middle":
            offset = self.rng.randrange(1, item.length - 1)
        else:
            offset = self.rng.randrange(max(1, min(item.length, 2**20)))
        return ID(item.id.client, item.id.clock + offset)

    def any_id(self) -> ID:
        """An id of any kind: real (of some kind), past a real client's clock, or unknown."""
        roll = self.rng.random()
        if roll < 0.55 and self.view is not None:
            kind = self._pick(("type", "map", "text", "entry", "string", "middle", "non_type", "deleted", "gc"))
            found = self.view_id(kind)
            if found is not None:
                return found
        future = self.typists + self.own_clients
        if roll < 0.8 and self.view is not None:
            client = self._pick(future)
            return ID(client, self.view.state.get(client, 0) + self.rng.choice((0, 1, 7, 10_000, 2**53)))
        return ID(self.unknown_client(), self.rng.choice((0, 1, 5, 2**32, 2**53 - 1)))

    def any_content(self) -> Content:
        rng = self.rng
        kind = rng.randrange(10)
        if kind == 0:
            return String(self.hostile_text())
        if kind == 1:
            return Deleted(rng.choice((1, 2, 10)))
        if kind == 2:
            return JSONContent([json.dumps(self.hostile_text())])
        if kind == 3:
            return Binary(bytes(rng.randrange(256) for _ in range(rng.randrange(8))))
        if kind == 4:
            return Embed(json.dumps({"x": self.hostile_text()}))
        if kind == 5:
            return Format(self.hostile_text(), rng.choice(("true", "null", '{"z":1}')))
        if kind == 6:
            return TypeContent(rng.choice((TYPE_ARRAY, TYPE_MAP, TYPE_TEXT, TYPE_XML_FRAGMENT, TYPE_XML_TEXT)))
        if kind == 7:
            return AnyContent([rng.choice((None, True, 1.5, -3, self.hostile_text(), [1, {"k": "v"}]))])
        if kind == 8:
            return JSONContent([json.dumps(self.hostile_text()), "1"], declared=1)  # as yrs reads it
        return DocContent("fuzz-" + self.hostile_text(4), {"gc": rng.random() < 0.5})

    def _update_frame(self, family: str, case: str, update: bytes, detail: str = "") -> Frame:
        sync_type = 1 if self.rng.random() < 0.15 else 2  # a step 2 carries an update too
        return Frame(family, case, sync_frame(update, sync_type), detail)

    def _single(
        self,
        item: Struct,
        *,
        client: int | None = None,
        clock: int | None = None,
        deletes: Sequence[tuple[int, Sequence[tuple[int, int]]]] = (),
    ) -> bytes:
        if client is None:
            client, own_clock = self.own_client()
            clock = own_clock if clock is None else clock
        return encode_update([ClientStructs(client, clock or 0, [item])], deletes)

    def _deep_value(self, depth: int, use_map: bool) -> Any:
        """A lib0 ``any`` nested ``depth`` deep, encoded once (it is big)."""
        key = (depth, use_map)
        if key not in self._deep:
            out = Lib0Writer()
            for _ in range(depth):
                if use_map:
                    out.raw(b"\x76\x01\x01k")  # object, 1 entry, key "k"
                else:
                    out.raw(b"\x75\x01")  # array, 1 value
            out.any("x")
            self._deep[key] = out.to_bytes()
        return _Emit(self._deep[key])

    # ------------------------------------------------------------------ structured updates

    def _structured(self) -> Frame:
        cases = [
            self._s_unknown_refs,
            self._s_wrong_kind_parent,
            self._s_inconsistent_origins,
            self._s_clock_gap,
            self._s_big_clients,
            self._s_non_canonical,
            self._s_delete_set,
            self._s_huge_lengths,
            self._s_bad_strings,
            self._s_deep_any,
            self._s_bad_json,
            self._s_json_item,
            self._s_bad_types,
            self._s_valid_own,
            self._s_multi_client,
            self._s_gc_skip,
        ]
        case, update, detail = self._pick(cases)()
        return self._update_frame("structured", case, update, detail)

    def _s_unknown_refs(self) -> tuple[str, bytes, str]:
        """origin, rightOrigin or parent that exists nowhere (or past a real clock)."""
        target = self.any_id()
        which = self.rng.randrange(3)
        if which == 0:
            item = Item(self.any_content(), origin=target)
        elif which == 1:
            item = Item(self.any_content(), right_origin=target)
        else:
            item = Item(self.any_content(), parent=target, parent_sub=self.rng.choice((None, self.hostile_key())))
        return "unknown-ref", self._single(item), ("origin", "right", "parent")[which]

    def _s_wrong_kind_parent(self) -> tuple[str, bytes, str]:
        """parent = a string, the middle of a string, a map entry's value, a deleted item."""
        kind = self._pick(("string", "middle", "entry", "non_type", "deleted", "gc"))
        target = self.view_id(kind) or self.any_id()
        sub = self.rng.choice((None, None, "source", "cell_type", self.hostile_key()))
        return "wrong-parent", self._single(Item(self.any_content(), parent=target, parent_sub=sub)), kind

    def _s_inconsistent_origins(self) -> tuple[str, bytes, str]:
        """origin and rightOrigin in different parents, in a map entry, a deleted item, a GC."""
        kinds = ("entry", "middle", "string", "deleted", "type", "gc", "text")
        left_kind, right_kind = self._pick(kinds), self._pick(kinds)
        left = self.view_id(left_kind) or self.any_id()
        right = self.view_id(right_kind) or self.any_id()
        if self.rng.random() < 0.2:
            right, right_kind = left, "same"
        item = Item(String(self.hostile_text()), origin=left, right_origin=right)
        return "inconsistent-origins", self._single(item), f"{left_kind}+{right_kind}"

    def _s_clock_gap(self) -> tuple[str, bytes, str]:
        """Structs whose first clock leaves a gap: the update stays pending (forever)."""
        client = self._pick(self.gap_clients)
        clock = self.rng.choice((5, 1000, 2**31, 2**32 - 3))
        if self.rng.random() < 0.5:
            item = Item(String(self.hostile_text()), origin=ID(client, clock - 1))
        else:
            item = Item(String(self.hostile_text()), parent=self._pick(("fuzz", "cells", "state")),
                        parent_sub=self.rng.choice((None, self.hostile_key())))
        return "clock-gap", self._single(item, client=client, clock=clock), str(clock)

    def _s_big_clients(self) -> tuple[str, bytes, str]:
        """Client ids around 2**53 (JavaScript's limit) and past 2**64 (yrs wraps them)."""
        client = self._pick(_BIG_CLIENTS)
        clock = self.rng.choice((0, 0, 1, 2**32 - 1, 2**53 - 1, 2**64 - 1))
        item = Item(String(self.hostile_text()), parent="fuzz")
        if self.rng.random() < 0.3:
            item = Item(String(self.hostile_text()), origin=ID(client, clock + 1))
        deletes = [(client, [(0, 1)])] if self.rng.random() < 0.3 else []
        return "big-client", self._single(item, client=client, clock=clock, deletes=deletes), f"{client}@{clock}"

    def _s_non_canonical(self) -> tuple[str, bytes, str]:
        """The parentSub bit (and string) next to an origin; parent info next to origins."""
        origin = self.any_id()
        content = self.any_content()
        variant = self.rng.randrange(4)
        if variant == 0:  # bit set, no string (Yjs and yrs skip the string after an origin)
            item = Item(content, origin=origin, info=content.ref | 0x80 | 0x20)
        elif variant == 1:  # bit set and the string written anyway: the reader desyncs
            item = Item(content, origin=origin, parent_sub=self.hostile_key())
        elif variant == 2:  # parent info written after an origin
            item = Item(content, origin=origin, parent=self.rng.choice(("cells", "fuzz")), info=content.ref | 0x80)
        else:  # rightOrigin, and a parent + parentSub after it
            item = Item(content, right_origin=origin, parent="state", parent_sub=self.hostile_key())
        return "non-canonical", self._single(item), str(variant)

    def _s_delete_set(self) -> tuple[str, bytes, str]:
        """Delete ranges of unknown clients, past known clocks, huge, empty, repeated."""
        rng = self.rng
        deletes: list[tuple[int, list[tuple[int, int]]]] = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                client, base = self.unknown_client(), 0
            else:
                client, base = self.own_client()
            ranges = []
            for _ in range(rng.randint(1, 4)):
                clock = rng.choice((0, base, base + 1, base + 100, 2**31, 2**32 - 1, 2**53 - 1))
                length = rng.choice((0, 1, 3, 2**31, 2**32 - 1, 2**53))
                ranges.append((clock, length))
            deletes.append((client, ranges))
        if rng.random() < 0.3:
            deletes.append(deletes[0])  # the same client twice
        return "delete-set", encode_update([], deletes), str(len(deletes))

    def _s_huge_lengths(self) -> tuple[str, bytes, str]:
        """Lengths and counts of 2**31..2**64 with nothing behind them."""
        rng = self.rng
        huge = self._pick(_HUGE)
        client, clock = self.own_client()
        variant = rng.randrange(9)
        if variant == 0:
            update = encode_update([], declared_clients=huge)
        elif variant == 1:
            update = encode_update([ClientStructs(client, clock, [Item(String("x"), parent="fuzz")], declared=huge)])
        elif variant == 2:  # a string's byte length that lies
            update = self._single(Item(RawContent(4, var_uint(huge) + b"xyz"), parent="fuzz"))
        elif variant == 3:
            update = self._single(Item(Deleted(huge), parent="fuzz"))
        elif variant == 4:
            update = self._single(Item(JSONContent(['"x"'], declared=huge), parent="fuzz"))
        elif variant == 5:
            update = self._single(Item(AnyContent([1], declared=huge), parent="fuzz"))
        elif variant == 6:
            update = self._single(rng.choice((GC(huge), Skip(huge))))
        elif variant == 7:
            update = encode_update([], [(client, [(0, 1)])], declared_delete_clients=huge)
        else:
            update = self._single(Item(RawContent(3, var_uint(huge) + b"\x00"), parent="fuzz"))
        names = ("clients", "structs", "string", "deleted", "json", "any", "gc-skip", "delete-clients", "binary")
        return "huge-length", update, f"{names[variant]}={huge}"

    def _s_bad_strings(self) -> tuple[str, bytes, str]:
        """Invalid UTF-8 and lone surrogates in content, root names, keys, JSON."""
        bad = self._pick((
            b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"a\x80b", b"\xf4\x90\x80\x80",
            b"\xc0\xaf", b"\xe2\x82",
        ))
        where = self.rng.randrange(5)
        if where == 0:
            item = Item(String(bad), parent="fuzz")
        elif where == 1:
            item = Item(String(self.hostile_text()), parent=bad)
        elif where == 2:
            item = Item(String(self.hostile_text()), parent="state", parent_sub=bad)
        elif where == 3:
            item = Item(JSONContent([bad], declared=0), parent="fuzz")
        else:
            item = Item(Format(bad, b'"' + bad + b'"'), origin=self.any_id())
        names = ("string", "root-name", "key", "json", "format")
        return "bad-utf8", self._single(item), names[where]

    def _s_deep_any(self) -> tuple[str, bytes, str]:
        """``any`` values nested deep (arrays or maps), as content or subdocument options."""
        depth = self._pick(_DEEP)
        use_map = self.rng.random() < 0.5
        value = self._deep_value(depth, use_map)
        if self.rng.random() < 0.2:
            item = Item(DocContent("fuzz-deep", value), parent="fuzz")
        else:
            item = Item(AnyContent([value]), parent=self._pick(("fuzz", "fuzz_array")))
        return "deep-any", self._single(item), f"{depth} {'maps' if use_map else 'arrays'}"

    def _s_bad_json(self) -> tuple[str, bytes, str]:
        """JSON, Embed and Format contents that are not JSON."""
        text = self._pick(("{", "undefined", "NaN", "[1,", "'x'", "", "\x00", "[" * 5000, '{"a":' * 3000, "1e999"))
        which = self.rng.randrange(3)
        if which == 0:
            content: Content = JSONContent([text], declared=self.rng.choice((0, 1)))
        elif which == 1:
            content = Embed(text)
        else:
            content = Format(self.hostile_key(), text)
        origin = self.view_id("middle") if self.rng.random() < 0.3 else None
        item = Item(content, origin=origin) if origin else Item(content, parent="fuzz")
        return "bad-json", self._single(item), f"{('json', 'embed', 'format')[which]} {text[:12]!r}"

    def _s_json_item(self) -> tuple[str, bytes, str]:
        """A well-formed JSON item, counted the way yrs reads it: yrs accepts it and then
        writes it back in a form it cannot read (the issue's frames are of this kind)."""
        content = JSONContent([json.dumps(self.hostile_text()), "1"], declared=1)
        where = self.rng.randrange(3)
        if where == 0:
            item = Item(content, parent="fuzz_array")
        elif where == 1:
            item = Item(content, origin=self.view_id("middle") or self.any_id())
        else:
            item = Item(content, origin=self.view_id("string") or self.any_id(), info=content.ref | 0x80 | 0x20)
        return "json-item", self._single(item), ("own-array", "in-text", "issue-shaped")[where]

    def _s_bad_types(self) -> tuple[str, bytes, str]:
        """Unknown type refs, type refs without their name, unknown content refs."""
        rng = self.rng
        variant = rng.randrange(4)
        if variant == 0:
            content: Content = TypeContent(rng.choice((7, 8, 15, 16, 99, 2**32)))
        elif variant == 1:
            content = TypeContent(rng.choice((TYPE_XML_ELEMENT, TYPE_XML_HOOK)))  # name missing
        elif variant == 2:
            content = RawContent(rng.randrange(11, 32), bytes(rng.randrange(256) for _ in range(rng.randrange(6))))
        else:
            content = TypeContent(TYPE_XML_ELEMENT, name=self.hostile_text())
        parent = rng.choice(("fuzz", "fuzz_map", self.any_id()))
        sub = self.hostile_key() if parent == "fuzz_map" else None
        return "bad-type", self._single(Item(content, parent=parent, parent_sub=sub)), str(variant)

    def _s_valid_own(self) -> tuple[str, bytes, str]:
        """Valid items in our own roots, and valid deletions of our own items: the server
        must accept these (and the rest of the fuzz gets our items to point at)."""
        client, clock = self.own_client()
        rng = self.rng
        own = [s for s in self.view.structs if s.id.client == client and s.kind == "item"] if self.view else []
        if own and rng.random() < 0.5:
            item = Item(String(self.hostile_text()), origin=ID(client, clock - 1))
        else:
            root = rng.choice(("fuzz", "fuzz_map", "fuzz_array"))
            if root == "fuzz":
                item = Item(String(self.hostile_text()), parent=root)
            elif root == "fuzz_map":
                item = Item(self.any_content(), parent=root, parent_sub=self.hostile_key())
            else:
                item = Item(AnyContent([self.hostile_text(), rng.randrange(100)]), parent=root)
        deletes = []
        if own and rng.random() < 0.3:
            target = self._pick(own)
            deletes.append((client, [(target.id.clock, 1)]))
        return "valid-own", encode_update([ClientStructs(client, clock, [item])], deletes), "+delete" if deletes else ""

    def _s_multi_client(self) -> tuple[str, bytes, str]:
        """Several clients in one update, one client twice, clients in odd orders."""
        rng = self.rng
        entries = []
        for _ in range(rng.randint(2, 4)):
            client, clock = self.own_client() if rng.random() < 0.6 else (self.unknown_client(), 0)
            entries.append(ClientStructs(client, clock, [Item(self.any_content(), parent="fuzz")]))
        if rng.random() < 0.5:
            first = entries[0]
            entries.append(ClientStructs(first.client, first.clock, [Item(String("dup"), parent="fuzz")]))
        rng.shuffle(entries)
        return "multi-client", encode_update(entries), str(len(entries))

    def _s_gc_skip(self) -> tuple[str, bytes, str]:
        """GC and Skip structs, and items after them that point into them."""
        client, clock = self.own_client()
        length = self.rng.choice((1, 3, 100, 2**32 - 2))
        first: Struct = self._pick((GC(length), Skip(length)))
        after = Item(String(self.hostile_text()), origin=ID(client, clock + self.rng.randrange(min(length, 100))))
        structs = [first, after] if self.rng.random() < 0.7 else [after, first]
        return "gc-skip", encode_update([ClientStructs(client, clock, structs)]), f"{type(first).__name__}({length})"

    # ------------------------------------------------------------------ other families

    def _mutated(self) -> Frame:
        """A captured valid update (or one of ours) with byte-level damage."""
        rng = self.rng
        if self.corpus and rng.random() < 0.8:
            data = bytearray(self._pick(self.corpus))
        else:
            data = bytearray(self._s_valid_own()[1])
        names = []
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            op = rng.randrange(7)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
                names.append("flip")
            elif op == 1 and data:
                data[min(pos, len(data) - 1)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
                names.append("set")
            elif op == 2:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
                names.append("insert")
            elif op == 3 and data:
                del data[pos : pos + rng.randint(1, 4)]
                names.append("delete")
            elif op == 4 and data:
                del data[rng.randrange(len(data)) :]
                names.append("truncate")
            elif op == 5 and self.corpus:
                other = self._pick(self.corpus)
                data = data[:pos] + bytearray(other[rng.randrange(len(other) + 1) :])
                names.append("splice")
            else:
                data[pos:pos] = var_uint(self._pick(_HUGE))
                names.append("huge-varuint")
        return self._update_frame("mutated", f"{len(names)}-ops", bytes(data), "+".join(names))

    def _protocol(self) -> Frame:
        """Every message type with wrong sub-types, truncations, trailing bytes; RAW save
        requests with bogus ids; text frames."""
        rng = self.rng
        variant = rng.randrange(14)
        if variant == 0:
            sub = rng.choice((3, 4, 127, 128, 2**32, 2**64))
            return Frame("protocol", "sync-subtype", b"\x00" + var_uint(sub) + b"\x02\x00\x00", str(sub))
        if variant == 1:
            return Frame("protocol", "truncated", rng.choice((
                b"\x00", b"\x00\x02", b"\x00\x02\x80", b"\x80", b"\x00\x00\x05\x01",
                b"\x01", b"\x01\x85", b"\x02", b"\x02\x04sav", b"\x02\x04save", b"\x02\x04save\x80",
            )))
        if variant == 2:  # a varuint longer than 64 bits
            return Frame("protocol", "long-varuint", rng.choice((b"\xff" * 12 + b"\x01", b"\x00" + b"\xff" * 11 + b"\x01")))
        if variant == 3:
            return Frame("protocol", "unknown-type", var_uint(rng.choice((4, 5, 100, 2**32, 2**63))) + b"\x00")
        if variant == 4:  # step 1 with a state vector that is not one
            sv = Lib0Writer()
            sv.uint(rng.choice((1, 2, 2**32)))
            sv.uint(rng.choice((0, 2**53, 2**64 - 1, 2**64)))
            sv.uint(rng.choice((0, 2**32 - 1, 2**64 - 1)))
            body = rng.choice((sv.to_bytes(), b"\xff\xff", b"\x05\x01", b""))
            return Frame("protocol", "bad-state-vector", sync_frame(body, 0))
        if variant == 5:
            request_id = rng.choice((0, 2**32, 2**53, 2**64 - 1, 2**64, 2**70))
            return Frame("protocol", "save-bogus-id", b"\x02" + var_string("save") + var_uint(request_id), str(request_id))
        if variant == 6:
            text = rng.choice((b"", b"\xff\xfe", b'{"type":"save","responseTo":1}', b"Save", b"save\x00"))
            return Frame("protocol", "raw-text", b"\x02" + var_string(text) + var_uint(1))
        if variant == 7:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
            return Frame("protocol", "query-awareness-trailing", b"\x03" + junk)
        if variant == 8:
            return Frame("protocol", "text-frame", rng.choice(("hello", "\x00\x02\x00", "{}", self.hostile_text())))
        if variant == 9:
            return Frame("protocol", "empty", b"")
        if variant == 10:  # bytes after the payload, or a length past the frame's end
            update = self._pick(self.corpus) if self.corpus else EMPTY_UPDATE
            if rng.random() < 0.5:
                return Frame("protocol", "trailing", sync_frame(update) + b"\x00\x01")
            return Frame("protocol", "length-past-end", b"\x00\x02" + var_uint(len(update) + rng.randint(1, 2**20)) + update)
        if variant == 11:
            body = rng.choice((sync_frame(b""), sync_frame(b"\x00"), sync_frame(b"\x00\x00\x00"), sync_frame(EMPTY_UPDATE, 1)))
            return Frame("protocol", "empty-update", body)
        if variant == 12:
            return Frame("protocol", "save-then-junk", b"\x02" + var_string("save") + var_uint(rng.randrange(1000)) + b"\x02\x04save\x01")
        return Frame("protocol", "query-awareness", b"\x03")

    def _awareness(self) -> Frame:
        """Awareness updates with bad JSON, huge clocks, other clients' ids, removals of
        other clients' states, counts and lengths that lie."""
        rng = self.rng
        others = self.awareness_ids or [self.unknown_client()]
        variant = rng.randrange(10)
        client = self._pick(others) if rng.random() < 0.6 else self.unknown_client()
        if variant == 0:
            state: str | bytes = self._pick(("{", "[1,", "nul", "{'a':1}", "\x00", "undefined", "NaN"))
            return Frame("awareness", "bad-json", awareness_frame(awareness_payload([(client, 1, state)])), repr(state))
        if variant == 1:
            clock = self._pick((2**53, 2**64 - 1, 2**64, 2**70))
            payload = awareness_payload([(client, clock, '{"user":{"name":"mallory"}}')])
            return Frame("awareness", "huge-clock", awareness_frame(payload), str(clock))
        if variant == 2:  # another client's state removed ("null") or replaced
            state = rng.choice(("null", '{"user":{"name":"not you"}}'))
            payload = awareness_payload([(self._pick(others), rng.choice((1, 99, 2**32)), state)])
            return Frame("awareness", "others-state", awareness_frame(payload), state)
        if variant == 3:
            declared = rng.choice((0, 2, 5, 2**32, 2**64 - 1))
            payload = awareness_payload([(client, 1, "{}")], declared=declared)
            return Frame("awareness", "count-lies", awareness_frame(payload), str(declared))
        if variant == 4:  # the varbytes length of the whole payload lies
            payload = awareness_payload([(client, 1, '{"a":1}')])
            length = max(0, len(payload) + rng.choice((-3, -1, 1, 50)))
            return Frame("awareness", "length-lies", b"\x01" + var_uint(length) + payload)
        if variant == 5:
            depth = self._pick((100, 1_000, 5_000, 50_000))
            payload = awareness_payload([(client, 1, "[" * depth + "]" * depth)])
            return Frame("awareness", "deep-json", awareness_frame(payload), str(depth))
        if variant == 6:
            state = rng.choice(("1", '"x"', "[1,2]", "true", "1e999", "-0"))
            return Frame("awareness", "not-an-object", awareness_frame(awareness_payload([(client, 2, state)])), state)
        if variant == 7:
            return Frame("awareness", "bad-utf8", awareness_frame(awareness_payload([(client, 1, b'{"a":"\xff\xfe"}')])))
        if variant == 8:
            entries = [(self._pick(others), 2**32 + i, "null") for i in range(rng.randint(1, 5))]
            return Frame("awareness", "mass-removal", awareness_frame(awareness_payload(entries)))
        payload = awareness_payload([(client, rng.randint(1, 9), "")])
        return Frame("awareness", "empty-state", awareness_frame(payload))

    def _random(self) -> Frame:
        rng = self.rng
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 96)))
        if rng.random() < 0.5:
            return Frame("random", "update", sync_frame(body))
        return Frame("random", "bytes", body)

    def _known_frames(self) -> list[Frame]:
        frames = [Frame("known", f"issue-{i}", bytes.fromhex(h)) for i, h in enumerate(ISSUE_FRAMES)]
        frames += [Frame("known", f"panic-{i}", sync_frame(bytes.fromhex(h)), why) for i, (h, why) in enumerate(PANIC_UPDATES)]
        return frames

    def _known_frame(self) -> Frame:
        return self._pick(self._known)

    def _destructive(self) -> Frame:
        """Valid updates that delete or overwrite the notebook's content (read-only peers:
        every one must be refused)."""
        view = self.view
        client, clock = self.own_client()
        rng = self.rng
        variant = rng.randrange(3)
        if variant == 0 and view is not None and view.state:
            victim = self._pick(sorted(view.state))
            update = encode_update([], [(victim, [(0, view.state[victim])])])
        elif variant == 1 and view is not None and view.map_types:
            cell = self._pick(view.map_types)
            update = self._single(Item(String(self.hostile_text()), parent=cell.id, parent_sub="source"))
        else:
            origin = self.view_id("middle") or self.view_id("string") or ID(0, 0)
            update = self._single(Item(String("<b0>" + self.hostile_text()), origin=origin))
        return self._update_frame("destructive", ("delete-all", "overwrite-source", "type-into-cell")[variant], update)


# ---------------------------------------------------------------------------- panic search


def _panic_probe_document() -> tuple[bytes, Any]:
    """A small notebook loaded like a room loads a file (client id 0), with a few edits."""
    import nbformat
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("# title"),
                nbformat.v4.new_code_cell("print('hello')")]
    loaded = YNotebook(Doc(client_id=0))
    loaded.set(nb)
    doc = Doc(client_id=7)
    doc.apply_update(loaded.ydoc.get_update())
    editor = YNotebook(doc)
    editor.ycells[0]["source"].insert(2, "<a1>")
    editor.ycells[2]["source"].insert(0, "<b1>")
    del editor.ycells[1]["source"][0:2]
    editor.ystate["dirty"] = True
    editor.ystate["dirty"] = False
    return doc.get_update(), editor


def _panic_child(base: bytes, updates: list[bytes], progress: Any, results: Any) -> None:
    from pycrdt import Doc

    for index, update in enumerate(updates):
        progress.value = index
        doc = Doc()
        doc.apply_update(base)
        try:
            doc.apply_update(update)
            doc.get_update()
        except Exception:
            continue
        except BaseException as exc:  # pyo3_runtime.PanicException
            results.put((index, f"{type(exc).__name__}: {exc}"))
    progress.value = len(updates)


def search_panics(seeds: Iterable[int] = range(40), per_seed: int = 500, limit: int = 8) -> list[tuple[str, str]]:
    """Apply generated updates to the probe document in child processes (a panic can leave
    pycrdt unusable, a stack overflow kills the process); print and return
    ``(update hex, what happened)`` for each new kind of panic or crash."""
    import multiprocessing

    base, _ = _panic_probe_document()
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def report(update: bytes, message: str) -> None:
        key = message.splitlines()[0][:90] if message else "?"
        if key not in seen:
            seen.add(key)
            found.append((update.hex(), message))
            print(f"{message[:300]}\n  {update.hex()[:400]}", flush=True)

    for seed in seeds:
        gen = FrameGenerator(seed, kinds=("structured", "mutated", "random"))
        gen.set_view(base)
        gen.capture(base)
        updates = []
        while len(updates) < per_seed:
            update = gen.next_frame().update
            if update is not None and len(update) < 4096:  # deep values crash: known
                updates.append(update)
        start = 0
        while start < len(updates):
            results: Any = multiprocessing.Queue()
            progress: Any = multiprocessing.Value("i", start)
            child = multiprocessing.Process(target=_panic_child, args=(base, updates[start:], progress, results))
            child.start()
            child.join(120)
            while not results.empty():
                index, message = results.get()
                report(updates[start + index], f"seed {seed}: {message}")
            done = start + progress.value
            if child.exitcode == 0 or done >= len(updates):
                break
            report(updates[done], f"seed {seed}: the process died with exit code {child.exitcode}")
            start = done + 1
        if len(found) >= limit:
            break
    return found


if __name__ == "__main__":
    if sys.argv[1:2] == ["search-panics"]:
        search_panics()
    else:
        print(__doc__)
