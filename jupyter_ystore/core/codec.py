"""lib0 variable-length unsigned integers and length-prefixed byte strings.

The same framing is used by the FileYStore log format, the benchmark update stream and the
y-websocket protocol, so it lives in one place.
"""

from __future__ import annotations

from typing import Iterator


class TruncatedError(ValueError):
    """The buffer ends in the middle of a varuint or a length-prefixed field."""


def write_var_uint(num: int) -> bytes:
    """Encode ``num`` as an unsigned LEB128 varint (7 bits a byte, high bit = more)."""
    if num < 0:
        raise ValueError(f"varuint cannot encode a negative number: {num}")
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


def read_var_uint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a varuint at ``pos``; return ``(value, position after it)``."""
    value = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise TruncatedError("buffer ends inside a varuint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varuint longer than 64 bits")


def write_var_bytes(data: bytes) -> bytes:
    """A length-prefixed byte string."""
    return write_var_uint(len(data)) + data


def read_var_bytes(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[bytes, int]:
    """Decode a length-prefixed byte string at ``pos``; return ``(bytes, next position)``."""
    length, pos = read_var_uint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise TruncatedError("buffer ends inside a length-prefixed field")
    return bytes(buf[pos:end]), end


def write_var_string(text: str) -> bytes:
    """A length-prefixed UTF-8 string (lib0 ``writeVarString``)."""
    return write_var_bytes(text.encode("utf-8"))


def read_var_string(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[str, int]:
    """Decode a length-prefixed UTF-8 string at ``pos``."""
    data, pos = read_var_bytes(buf, pos)
    return data.decode("utf-8"), pos


def iter_var_bytes(buf: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Every length-prefixed byte string of ``buf`` in order (e.g. the benchmark stream)."""
    pos = 0
    end = len(buf)
    while pos < end:
        data, pos = read_var_bytes(buf, pos)
        yield data
