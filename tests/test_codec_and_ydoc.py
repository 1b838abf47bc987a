"""The varuint framing and the pycrdt / y_py bridge."""

from __future__ import annotations

import pycrdt
import pytest

from jupyter_ystore.core import ydoc
from jupyter_ystore.core.codec import (
    TruncatedError,
    iter_var_bytes,
    read_var_bytes,
    read_var_uint,
    write_var_bytes,
    write_var_uint,
)


@pytest.mark.parametrize("num", [0, 1, 127, 128, 300, 2**21, 2**35 + 7])
def test_var_uint_round_trip(num: int) -> None:
    encoded = write_var_uint(num)
    assert read_var_uint(encoded) == (num, len(encoded))
    assert encoded == pycrdt.write_var_uint(num)


def test_truncated_fields_are_detected() -> None:
    data = write_var_bytes(b"hello")
    with pytest.raises(TruncatedError):
        read_var_bytes(data[:-1])
    with pytest.raises(TruncatedError):
        read_var_uint(bytes([0x80]))
    assert list(iter_var_bytes(data + write_var_bytes(b""))) == [b"hello", b""]


def test_pycrdt_to_ypy_and_back() -> None:
    import y_py  # the test extra installs it: both stacks are always tested
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    text += "x = 1"
    other = y_py.YDoc()
    ydoc.apply_update(other, ydoc.encode_state_as_update(doc))
    assert str(other.get_text("source")) == "x = 1"
    with other.begin_transaction() as txn:
        other.get_text("source").extend(txn, "!")
    back = pycrdt.Doc()
    ydoc.apply_update(back, ydoc.encode_state_as_update(other))
    assert str(back.get("source", type=pycrdt.Text)) == "x = 1!"


def test_squash_garbage_collects_and_restores(bench_updates: list[bytes]) -> None:
    squashed = ydoc.squash(bench_updates)
    assert len(squashed) < sum(map(len, bench_updates))
    a, b = pycrdt.Doc(), pycrdt.Doc()
    for update in bench_updates:
        a.apply_update(update)
    b.apply_update(squashed)
    assert a.get_state() == b.get_state()
    assert not ydoc.is_valid_update(b"\x01\x02garbage")
    with pytest.raises(TypeError):
        ydoc.apply_update(object(), squashed)


def test_squash_keeps_an_update_whose_predecessor_is_missing() -> None:
    """A log with a gap (a cancelled write) must not lose the update after the gap."""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for char in "abc":
        text += char
    first, _missing, last = updates
    squashed = ydoc.squash([first, last])
    # Give the document the missing update: the squashed one must then complete it.
    restored = pycrdt.Doc()
    restored.apply_update(squashed)
    restored.apply_update(_missing)
    assert str(restored.get("source", type=pycrdt.Text)) == "abc"
