"""The strict Yjs update reader and the checks against a document (no server needed)."""

from __future__ import annotations

import random

import nbformat
import pycrdt
import pytest
from jupyter_ydoc import YNotebook

from jupyter_ystore.server import protocol as sync
from jupyter_ystore.core.codec import write_var_bytes, write_var_string, write_var_uint
from jupyter_ystore.core.content import file_document
from jupyter_ystore.core.item_index import DOCUMENT_ROOTS, PARENT, ItemIndex
from jupyter_ystore.core.update_guard import BadUpdate, DocumentDamaged, DocumentGuard, apply_checked, read_checked
from jupyter_ystore.core.ydoc import CRDTError, crdt_errors, missing_dependencies
from jupyter_ystore.core.yupdate import (
    InvalidUpdate,
    MissingDependencies,
    parse_state_vector,
    read_update,
)

pytestmark = pytest.mark.anyio

#: The frames of issue 9: they decode on their own, and broke rooms that applied them.
ISSUE_FRAMES = [
    "0002130101eba28b9de48ba40100a2002200025a4800",
    "0002130101eba28b9de48ba40200a2002200025a4800",
]


def loaded_notebook() -> pycrdt.Doc:
    """A document as a room has it after loading a small notebook from disk."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [  # fixed ids: the same bytes in every run (the mutation test is seeded)
        nbformat.v4.new_code_cell("x = 1\nprint(x)", id="cell-a"),
        nbformat.v4.new_markdown_cell("# hi é😀", id="cell-b"),
    ]
    doc = pycrdt.Doc()
    doc.apply_update(file_document("notebook", nbformat.from_dict(nb)).ydoc.get_update())
    return doc


def typing_updates(doc: pycrdt.Doc, count: int = 30) -> list[bytes]:
    """What a client typing in ``doc``'s cells sends (a copy of it; ``doc`` is untouched)."""
    client = pycrdt.Doc(client_id=4242)  # fixed: the same updates in every run
    client.apply_update(doc.get_update())
    nb = YNotebook(client)
    updates: list[bytes] = []
    client.observe(lambda event: updates.append(event.update))
    for i in range(count):
        source = nb.ycells[i % 2]["source"]
        source.insert(len(source), "aé😀"[i % 3])
        if i % 7 == 3:
            del source[0:1]
        if i % 11 == 5:
            nb.ycells[i % 2]["metadata"] = {"k": i}
    nb.ycells.append(nb.create_ycell({"id": "cell-c", "cell_type": "code", "source": "new", "metadata": {}, "outputs": [], "execution_count": None}))
    return updates


def test_every_update_of_a_real_typing_stream_is_accepted(bench_updates: list[bytes]) -> None:
    doc = pycrdt.Doc()
    for update in bench_updates:
        summary = read_update(update)
        expected = summary.check_against(parse_state_vector(doc.get_state()))
        doc.apply_update(update)
        after = parse_state_vector(doc.get_state())
        assert {c: k for c, k in after.items() if k} == {c: k for c, k in expected.items() if k}


def test_a_whole_document_reads_and_fits_an_empty_one(bench_updates: list[bytes]) -> None:
    doc = pycrdt.Doc()
    for update in bench_updates[:2000]:
        doc.apply_update(update)
    summary = read_update(doc.get_update())
    assert summary.check_against({}) == parse_state_vector(doc.get_state())


@pytest.mark.parametrize("frame", ISSUE_FRAMES)
async def test_the_issue_frames_are_refused_and_change_nothing(frame: str) -> None:
    doc = loaded_notebook()
    before = doc.get_update()
    update = sync.parse_message(bytes.fromhex(frame)).update  # type: ignore[union-attr]
    with pytest.raises(BadUpdate) as err:
        summary = await read_checked(update)
        apply_checked(doc, update, summary)
    assert not isinstance(err.value, DocumentDamaged)
    assert doc.get_update() == before


def _item(client: int, clock: int, info: int, body: bytes) -> bytes:
    """An update of one struct followed by an empty delete set."""
    return b"\x01\x01" + write_var_uint(client) + write_var_uint(clock) + bytes([info]) + body + b"\x00"


def _string_after(origin: tuple[int, int], text: str) -> bytes:
    return write_var_uint(origin[0]) + write_var_uint(origin[1]) + write_var_string(text)


@pytest.mark.parametrize(
    "update, reason",
    [
        (_item(7, 0, 0x84, _string_after((0, 1), "a")) + b"\x00", "trailing"),
        (_item(7, 0, 0x02, b"\x01" + write_var_string("cells") + b"\x00"), "JSON content"),
        (_item(7, 0, 0x04, b"\x01" + write_var_string("cells") + write_var_bytes(b"\xff\xfe")), "UTF-8"),
        (_item(7, 0, 0x0B, b"\x01" + write_var_string("cells")), "unknown content"),
        (_item(7, 0, 0x09, b"\x01" + write_var_string("cells") + write_var_string("guid") + b"\x7f"), "subdocuments"),
        (_item(7, 0, 0x08, b"\x01" + write_var_string("cells") + b"\x01" + b"\x75\x01" * 80 + b"\x7f"), "nested"),
        (_item(7, 0, 0x84, _string_after((0, 1), "a"))[:-3], "truncated"),
        (b"\x01\xff\xff\xff\x0f\x07\x00", "entries"),
        (_item(2**60, 0, 0x84, _string_after((0, 1), "a")), "2\\*\\*53"),
        (_item(7, 0, 0x80, b"\x00\x01"), "GC"),
    ],
)
def test_malformed_updates_say_what_is_wrong(update: bytes, reason: str) -> None:
    with pytest.raises(InvalidUpdate, match=reason) as err:
        read_update(update)
    assert not isinstance(err.value, MissingDependencies)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda sv: _item(7, 3, 0x84, _string_after((0, 1), "a")), "starts at clock 3"),
        (lambda sv: _item(7, 0, 0x84, _string_after((99, 0), "a")), "client 99 clock 0"),
        (lambda sv: _item(7, 0, 0x84, _string_after((0, sv[0] + 5), "a")), "neither the document"),
        (lambda sv: b"\x00\x01\x00\x01" + write_var_uint(sv[0]) + b"\x02", "beyond"),
        (lambda sv: b"\x00\x01\x63\x01\x00\x01", "client 99"),
    ],
)
async def test_updates_that_build_on_unknown_changes_are_stale(make, reason: str) -> None:
    doc = loaded_notebook()
    state = parse_state_vector(doc.get_state())
    update = make(state)
    before = doc.get_update()
    summary = await read_checked(update)
    with pytest.raises(BadUpdate, match=reason) as err:
        apply_checked(doc, update, summary)
    assert err.value.stale
    assert doc.get_update() == before


async def test_an_honest_client_is_accepted_and_duplicates_change_nothing() -> None:
    doc = loaded_notebook()
    updates = typing_updates(doc)
    changes: list[bytes] = []
    doc.observe(lambda event: changes.append(event.update))
    for update in updates:
        apply_checked(doc, update, await read_checked(update))
    assert len(changes) == len(updates)
    content = YNotebook(doc).get()
    for update in updates:  # a reconnecting client sends what the server has already
        apply_checked(doc, update, await read_checked(update))
    assert len(changes) == len(updates)
    assert YNotebook(doc).get() == content


def _decodes(update: bytes) -> bool:
    try:
        with crdt_errors():
            pycrdt.Doc().apply_update(update)
    except CRDTError:
        return False
    return True


async def test_mutated_updates_are_refused_or_leave_a_sound_document() -> None:
    """Byte-level mutations of real updates, applied to a loaded notebook: whatever the guard
    accepts leaves a document that encodes, replays to the same state, and equals what a
    peer gets by applying the update the room would relay."""
    base = loaded_notebook()
    seeds = typing_updates(base) + [base.get_update()]
    prefix = seeds[:12]
    rng = random.Random(20261203)
    accepted = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.65 and data:
                del data[rng.randrange(len(data))]
            elif op < 0.8:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            else:
                data = data[: rng.randrange(len(data) + 1)]
        update = bytes(data)
        doc = pycrdt.Doc()
        doc.apply_update(base.get_update())
        for honest in prefix:
            doc.apply_update(honest)
        peer = pycrdt.Doc()
        peer.apply_update(doc.get_update())
        relayed: list[bytes] = []
        doc.observe(lambda event: relayed.append(event.update))
        guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
        try:
            await guard.apply(update)
        except DocumentDamaged as exc:  # pragma: no cover - would be a finding
            pytest.fail(f"{update.hex()} damaged the document: {exc}")
        except BadUpdate:
            continue
        accepted += 1
        for event_update in relayed:
            assert _decodes(event_update), update.hex()
            peer.apply_update(event_update)
        replay = pycrdt.Doc()
        replay.apply_update(doc.get_update())
        assert parse_state_vector(replay.get_state()) == parse_state_vector(doc.get_state()), update.hex()
        assert parse_state_vector(peer.get_state()) == parse_state_vector(doc.get_state()), update.hex()
        assert peer.get_update() == doc.get_update() or (
            YNotebook(peer).get()["cells"] == YNotebook(doc).get()["cells"]
        ), update.hex()
    assert accepted > 20  # the mutations do produce acceptable updates too


def test_missing_dependencies_names_pending_structs_and_deletions() -> None:
    author = pycrdt.Doc()
    text = author.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    author.observe(lambda event: updates.append(event.update))
    text += "hello"
    text += " world"
    del text[0:2]
    complete = pycrdt.Doc()
    for update in updates:
        complete.apply_update(update)
    assert missing_dependencies(complete.get_state(), updates) is None
    holed = pycrdt.Doc()
    holed.apply_update(updates[1])
    assert "wait for earlier ones" in (missing_dependencies(holed.get_state(), updates[1:2]) or "")
    deletes_only = pycrdt.Doc()
    deletes_only.apply_update(updates[2])
    assert "refer to items that are not stored" in (missing_dependencies(deletes_only.get_state(), updates[2:]) or "")


def _between(left: tuple[int, int], right: tuple[int, int], tail: bytes) -> bytes:
    """An item's origin and right origin, then ``tail`` (its content)."""
    return b"".join(write_var_uint(n) for n in (*left, *right)) + tail


def _placed(doc: pycrdt.Doc) -> ItemIndex:
    return ItemIndex.of_update(doc.get_update(), DOCUMENT_ROOTS["notebook"])


def _ids(doc: pycrdt.Doc) -> dict[str, tuple[int, int]]:
    """Ids of a few items of the loaded notebook: a character of cell 0's source, one of
    cell 1's, the cells array's first element (a map type) and an entry of ``meta``."""
    index = _placed(doc)
    found: dict[str, tuple[int, int]] = {}
    for client, (start, _end, parent, ref, keyed, _kind) in index.runs():
        ident = (client, start)
        if ref == 4 and "text0" not in found:
            found["text0"] = ident
        elif ref == 4 and parent != index.find(found["text0"])[PARENT] and "text1" not in found:
            found["text1"] = ident
        elif ref == 7 and parent == "cells" and "cell" not in found:
            found["cell"] = ident
        elif parent == "meta" and keyed and "entry" not in found:
            found["entry"] = ident
    return found


@pytest.mark.parametrize(
    "make, reason",
    [
        # neighbours in two different cells' sources
        (lambda ids: _item(7, 0, 0xC4, _between(ids["text0"], ids["text1"], write_var_string("x"))), "not in one list"),
        # left and right neighbour the same item
        (lambda ids: _item(7, 0, 0xC4, _between(ids["text0"], ids["text0"], write_var_string("x"))), "both its left and its right"),
        # a string straight into the cells array
        (lambda ids: _item(7, 0, 0x04, b"\x01" + write_var_string("cells") + write_var_string("x")), "string content does not belong in a array"),
        # a root the notebook does not have
        (lambda ids: _item(7, 0, 0x08, b"\x01" + write_var_string("fuzz") + b"\x01\x7e"), "no shared type 'fuzz'"),
        # a map entry without a key, and a key in an array
        (lambda ids: _item(7, 0, 0x08, b"\x01" + write_var_string("meta") + b"\x01\x7e"), "without a key in a map"),
        (lambda ids: _item(7, 0, 0x28, b"\x01" + write_var_string("cells") + write_var_string("k") + b"\x01\x7e"), "with a key in a array"),
        # a character as a parent
        (lambda ids: _item(7, 0, 0x04, b"\x00" + write_var_uint(ids["text0"][0]) + write_var_uint(ids["text0"][1]) + write_var_string("x")), "not a shared type"),
        # a value after a map entry, with a right neighbour (map entries never have one)
        (lambda ids: _item(7, 0, 0xC8, _between(ids["entry"], ids["cell"], b"\x01\x7e")), "not in one list"),
        # pointing at its own client's future, beyond 32-bit clocks, XML, a NaN embed
        (lambda ids: _item(7, 0, 0x84, _string_after((7, 3), "x")), "its own future"),
        (lambda ids: _item(7, 0, 0x01, b"\x01" + write_var_string("cells") + write_var_uint(2**32)), "2\\*\\*32"),
        (lambda ids: _item(7, 0, 0x07, b"\x01" + write_var_string("cells") + b"\x06"), "XML"),
        (lambda ids: _item(7, 0, 0x05, b"\x01" + write_var_string("cells") + write_var_string("NaN")), "not JSON"),
    ],
)
async def test_items_that_would_land_where_they_do_not_fit_are_refused(make, reason: str) -> None:
    doc = loaded_notebook()
    ids = _ids(doc)
    assert {"text0", "text1", "cell", "entry"} <= set(ids), ids
    update = make(ids)
    before = doc.get_update()
    guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
    with pytest.raises(BadUpdate, match=reason) as err:
        await guard.apply(update)
    assert not isinstance(err.value, DocumentDamaged)
    assert doc.get_update() == before


async def test_generated_hostile_updates_never_leave_a_document_that_replays_differently() -> None:
    """The fuzz generator's structured and mutated updates (tests/_fuzz_frames.py), offline
    against a loaded notebook with a typist: whatever the guard lets through encodes and
    replays to the same content, and a peer applying what the room relays agrees."""
    from _fuzz_frames import FrameGenerator

    base = loaded_notebook()
    typist = pycrdt.Doc(client_id=1000003)
    typist.apply_update(base.get_update())
    typed: list[bytes] = []
    typist.observe(lambda event: typed.append(event.update))
    nb = YNotebook(typist)
    for i in range(20):
        source = nb.ycells[i % 2]["source"]
        source.insert(len(str(source)) // 2, "ab"[i % 2])
    for update in typed:
        base.apply_update(update)
    start = base.get_update()
    generator = FrameGenerator(20261203, kinds=("structured", "mutated", "random", "known"))
    generator.set_view(start)
    for update in typed:
        generator.capture(update)
    accepted = refused = 0
    for _ in range(1500):
        update = generator.next_frame().update
        if update is None:
            continue
        doc = pycrdt.Doc()
        doc.apply_update(start)
        peer = pycrdt.Doc()
        peer.apply_update(start)
        relayed: list[bytes] = []
        doc.observe(lambda event: relayed.append(event.update))
        guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
        try:
            await guard.apply(update)
        except DocumentDamaged as exc:  # pragma: no cover - would be a finding
            pytest.fail(f"{update.hex()} damaged the document: {exc}")
        except BadUpdate:
            refused += 1
            continue
        accepted += 1
        for change in relayed:
            peer.apply_update(change)
        replay = pycrdt.Doc()
        replay.apply_update(doc.get_update())
        live = YNotebook(doc).get()
        assert YNotebook(replay).get() == live, update.hex()
        assert YNotebook(peer).get() == live, update.hex()
    assert accepted >= 15 and refused > 500, (accepted, refused)  # (20, 1389) at 20261203


def edited_by_many(sessions: int) -> pycrdt.Doc:
    """A notebook ``sessions`` past clients have typed in (each one character)."""
    doc = loaded_notebook()
    rng = random.Random(7)
    for _ in range(sessions):
        past = pycrdt.Doc(client_id=rng.getrandbits(32))
        past.apply_update(doc.get_update())
        source = YNotebook(past).ycells[0]["source"]
        source.insert(len(source), "z")
        doc.apply_update(past.get_update(doc.get_state()))
    return doc


async def test_a_keystroke_checks_the_state_without_decoding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state after a keystroke is compared as bytes, not decoded client by client (that
    cost O(clients) in Python per keystroke); what the guard knows stays exact."""
    from jupyter_ystore.core import update_guard

    doc = edited_by_many(200)
    guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
    doc.observe(lambda event: guard.note_change(event.update))
    await guard.prepare()
    updates = typing_updates(doc, 200)[:-1]  # keystrokes (the last one adds a cell)
    decoded = []
    real = update_guard.parse_state_vector
    monkeypatch.setattr(update_guard, "parse_state_vector", lambda data: decoded.append(1) or real(data))
    for update in updates:
        assert guard.apply_now(update)
    assert len(decoded) <= 3  # the first state, the new client's first keystroke
    assert guard._state is not None
    assert guard._state.clocks == parse_state_vector(doc.get_state())
    assert guard._state.encoded in (None, doc.get_state())  # None: its observer saw the update as sent


async def test_a_keystroke_its_observer_saw_integrate_as_sent_reads_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The document's observer saw the keystroke integrate as exactly its bytes: the state is
    not read back at all, and what the guard knows stays exact."""
    doc = edited_by_many(30)
    guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
    doc.observe(lambda event: guard.note_change(event.update))
    await guard.prepare()
    updates = typing_updates(doc, 50)[:-1]
    assert guard.apply_now(updates[0])
    reads = []
    real = doc.get_state
    monkeypatch.setattr(doc, "get_state", lambda: reads.append(1) or real())
    for update in updates[1:]:
        assert guard.apply_now(update)
    assert reads == []
    assert guard._state is not None
    assert guard._state.clocks == parse_state_vector(real())


@pytest.mark.parametrize("observed", [False, True], ids=["unobserved", "observed"])
@pytest.mark.parametrize("misstep", ["nothing", "more", "other client"])
async def test_a_state_that_is_not_what_the_keystroke_said_is_damage(misstep: str, observed: bool) -> None:
    """(observed: what the document's observer sees integrate is not the update either.)"""
    doc = edited_by_many(50)
    guard = DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
    if observed:
        doc.observe(lambda event: guard.note_change(event.update))
    await guard.prepare()
    updates = typing_updates(doc, 6)
    for update in updates[:3]:
        assert guard.apply_now(update)  # the guard now knows where this client's clock is
    intruder = pycrdt.Doc(client_id=777)
    intruder.apply_update(doc.get_update())
    YNotebook(intruder).ycells[1]["source"] += "!"
    extra = intruder.get_update(doc.get_state())
    real_apply = doc.apply_update

    def misapply(update: bytes) -> None:  # yrs integrating something else than the update
        if misstep == "more":
            real_apply(update)
            real_apply(updates[5])  # the next keystroke too
        elif misstep == "other client":
            real_apply(extra)

    doc.apply_update = misapply  # type: ignore[method-assign]
    with pytest.raises(DocumentDamaged, match="state became"):
        guard.apply_now(updates[3])
