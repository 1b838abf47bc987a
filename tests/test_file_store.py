"""FileYStore / TempFileYStore: the on-disk format, durability, recovery, path safety, admin."""

from __future__ import annotations

import logging
import os
import struct
import sys
import time
from pathlib import Path

import anyio
import pycrdt
import pytest

from jupyter_ystore import (
    FileYStore,
    TempFileYStore,
    YDocNotFound,
    YStoreError,
    YStoreInvalidPath,
    YStoreLockedError,
    YStorePermissionError,
    YStoreVersionError,
)
from jupyter_ystore.core.codec import read_var_bytes
from jupyter_ystore.stores.file.store import HEADER, encode_record, parse_log

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_file_store")


def text_updates(n: int) -> tuple[list[bytes], str]:
    """``n`` real Yjs updates typing into a Text, and the final text."""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"line {i}\n"
    return updates, str(text)


async def read_all(store) -> list[tuple[bytes, bytes, float]]:
    return [record async for record in store.read()]


async def restored_text(store) -> str:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return str(doc.get("source", type=pycrdt.Text))


def decode_file(path: Path) -> list[tuple[bytes, bytes, float]]:
    """An independent decoder of the seed's format, to check what is on disk."""
    buf = path.read_bytes()
    assert buf.startswith(b"VERSION:2\n")
    pos = len(b"VERSION:2\n")
    records = []
    while pos < len(buf):
        update, pos = read_var_bytes(buf, pos)
        metadata, pos = read_var_bytes(buf, pos)
        stamp, pos = read_var_bytes(buf, pos)
        assert len(stamp) == 8
        records.append((update, metadata, struct.unpack("<d", stamp)[0]))
    return records


# ---------------------------------------------------------------------- format and basics


async def test_file_format_is_the_seeds(tmp_path: Path) -> None:
    updates, _ = text_updates(3)
    before = time.time()
    async with FileYStore(str(tmp_path / "doc.y"), metadata_callback=lambda: b"alice") as store:
        for update in updates:
            await store.write(update)
    on_disk = decode_file(tmp_path / "doc.y")
    assert [(u, m) for u, m, _ in on_disk] == [(u, b"alice") for u in updates]
    assert all(before <= ts <= time.time() for _, _, ts in on_disk)


async def test_parent_folders_made_on_first_write_not_on_open(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "doc.y"
    async with FileYStore(str(target)) as store:
        assert not (tmp_path / "a").exists()
        with pytest.raises(YDocNotFound):
            await read_all(store)
        await store.write(b"\x00\x00")
    assert target.exists()
    assert len(decode_file(target)) == 1


@pytest.mark.parametrize("content", [b"", HEADER])
async def test_empty_file_means_not_found(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "doc.y"
    target.write_bytes(content)
    async with FileYStore(str(target)) as store:
        with pytest.raises(YDocNotFound):
            await read_all(store)
        await store.write(b"\x00\x00")
    assert target.read_bytes() == HEADER + decode_and_reencode(target)


def decode_and_reencode(path: Path) -> bytes:
    return b"".join(encode_record(*record) for record in decode_file(path))


async def test_write_before_start_is_refused(tmp_path: Path) -> None:
    store = FileYStore(str(tmp_path / "doc.y"))
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(b"\x00\x00")
    assert not (tmp_path / "doc.y").exists()


# ---------------------------------------------------------------------- durability


@pytest.fixture
def io_trace(monkeypatch: pytest.MonkeyPatch):
    """Record os.write / os.fsync calls on files named ``*.y``, in order."""
    trace: list[tuple[str, str, int]] = []
    real_write, real_fsync = os.write, os.fsync

    def name(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def write(fd: int, data) -> int:
        if name(fd).endswith(".y"):
            trace.append(("write", name(fd), len(data)))
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        if name(fd).endswith(".y"):
            trace.append(("fsync", name(fd), 0))
        return real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    return trace


async def test_each_record_is_one_write_then_fsync(tmp_path: Path, io_trace) -> None:
    target = tmp_path / "doc.y"
    updates, _ = text_updates(3)
    async with FileYStore(str(target)) as store:
        await store.write(updates[0])  # creates the file: header first
        io_trace.clear()
        for update in updates[1:]:
            await store.write(update)
            # the record went out in one write and was fsync'd before write() returned
            assert [kind for kind, _, _ in io_trace[-2:]] == ["write", "fsync"]
            assert io_trace[-2][2] == len(encode_record(update, b"", 0.0))
    assert [kind for kind, _, _ in io_trace] == ["write", "fsync"] * 2


async def test_concurrent_writers_share_a_write_and_fsync(tmp_path: Path, io_trace) -> None:
    updates, final = text_updates(50)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target)) as store:
        await store.write(updates[0])
        io_trace.clear()
        async with anyio.create_task_group() as tg:
            for update in updates[1:]:
                tg.start_soon(store.write, update)
        writes = [t for t in io_trace if t[0] == "write"]
        assert 1 <= len(writes) <= 3, writes  # 49 records, grouped
        assert sum(size for _, _, size in writes) == sum(
            len(encode_record(u, b"", 0.0)) for u in updates[1:]
        )
        assert await restored_text(store) == final
        assert len(await read_all(store)) == 50


async def test_two_stores_of_one_file_share_it(tmp_path: Path) -> None:
    updates, final = text_updates(20)
    a = FileYStore(str(tmp_path / "doc.y"))
    b = FileYStore(str(tmp_path / "doc.y"))
    async with a, b:
        async with anyio.create_task_group() as tg:
            for i, update in enumerate(updates):
                tg.start_soon((a if i % 2 else b).write, update)
        await a.compact()  # swaps the file under b's feet
        await b.write(b"\x00\x00")
        assert len(await read_all(a)) == 2
        assert await restored_text(b) == final


# ---------------------------------------------------------------------- failures


async def test_write_where_a_file_blocks_the_folder_raises(tmp_path: Path) -> None:
    async with FileYStore(str(tmp_path / "blocker" / "doc.y")) as store:
        (tmp_path / "blocker").write_text("a file where the folder should be made")
        with pytest.raises(YStoreError, match="blocker") as info:
            await store.write(b"\x00\x00")
        assert not isinstance(info.value, YDocNotFound)


async def test_disk_full_raises_to_every_writer_and_keeps_the_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates, final = text_updates(6)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target)) as store:
        await store.write(updates[0])
        good = target.read_bytes()
        real_write = os.write

        def short_write(fd: int, data) -> int:
            return real_write(fd, bytes(data)[: len(data) // 2])  # the disk filled up

        monkeypatch.setattr(os, "write", short_write)
        errors: list[BaseException] = []

        async def write(update: bytes) -> None:
            try:
                await store.write(update)
            except YStoreError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for update in updates[1:4]:
                tg.start_soon(write, update)
        assert len(errors) == 3
        assert all("no space" in str(e) and str(target) in str(e) for e in errors)
        assert len({id(e) for e in errors}) == 3  # each writer its own exception
        assert target.read_bytes() == good  # the partial record was undone
        monkeypatch.setattr(os, "write", real_write)
        for update in updates[1:]:
            await store.write(update)
        assert await restored_text(store) == final


# ---------------------------------------------------------------------- recovery


def write_log(path: Path, records: list[tuple[bytes, bytes, float]]) -> bytes:
    data = HEADER + b"".join(encode_record(*r) for r in records)
    path.write_bytes(data)
    return data


def sample_records(n: int) -> list[tuple[bytes, bytes, float]]:
    updates, _ = text_updates(n)
    now = time.time()
    return [(u, b"meta-%d" % i, now + i) for i, u in enumerate(updates)]


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(1, id="inside-update-length"),
        pytest.param(5, id="inside-update"),
        pytest.param(-9, id="inside-metadata-or-before-timestamp"),
        pytest.param(-3, id="inside-timestamp"),
    ],
)
async def test_torn_last_record_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    records = sample_records(5)
    target = tmp_path / "doc.y"
    data = write_log(target, records)
    last = encode_record(*records[-1])
    intact = len(data) - len(last)
    torn_at = intact + (cut if cut > 0 else len(last) + cut)
    target.write_bytes(data[:torn_at])
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        async with FileYStore(str(target), log=LOG) as store:
            assert await read_all(store) == records[:-1]
            [aside] = [p for p in tmp_path.iterdir() if ".torn-" in p.name]
            assert aside.name.startswith("doc.y.torn-")
            assert aside.read_bytes() == data[intact:torn_at]
            assert target.read_bytes() == data[:intact]
            assert "torn" in caplog.text and str(aside) in caplog.text
            await store.write(records[-1][0])
    assert [r[0] for r in decode_file(target)] == [r[0] for r in records]


async def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    records = sample_records(3)
    target = tmp_path / "doc.y"
    data = write_log(target, records)
    target.write_bytes(data + b"\x00" * 37)  # a power loss left the file longer than written
    async with FileYStore(str(target), log=LOG) as store:
        assert await read_all(store) == records
    assert target.read_bytes() == data
    assert [p.read_bytes() for p in tmp_path.glob("doc.y.torn-*")] == [b"\x00" * 37]


async def test_torn_header_of_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.y"
    target.write_bytes(HEADER[:4])
    async with FileYStore(str(target), log=LOG) as store:
        with pytest.raises(YDocNotFound):
            await read_all(store)
        await store.write(b"\x00\x00")
    assert len(decode_file(target)) == 1
    assert [p.read_bytes() for p in tmp_path.glob("doc.y.torn-*")] == [HEADER[:4]]


@pytest.mark.parametrize("damage", ["timestamp-length", "huge-length"])
async def test_damage_in_the_middle_is_set_aside_and_the_intact_records_kept(
    tmp_path: Path, damage: str
) -> None:
    """(More in test_damaged_store.py.)"""
    records = sample_records(5)
    target = tmp_path / "doc.y"
    data = bytearray(write_log(target, records))
    second = len(HEADER) + len(encode_record(*records[0]))
    if damage == "timestamp-length":
        # the timestamp field of record 2 claims 7 bytes
        rec = encode_record(*records[1])
        data[second + len(rec) - 9] = 7
    else:
        data[second] = 0xFF  # record 2's update length runs past the end of the file
        data[second + 1] = 0x7F
    target.write_bytes(bytes(data))
    async with FileYStore(str(target)) as store:
        kept = await read_all(store)
    # records 3 to 5 decode again after the damage, but need record 2: only record 1 is kept
    assert kept == records[:1]
    [copy] = tmp_path.glob("doc.y.damaged-*")
    assert copy.read_bytes() == bytes(data)  # moved aside, never deleted


@pytest.mark.parametrize(
    "content", [b"VERSION:3\n\x01\x00\x08" + b"\x00" * 8, b"VERSION:1\n", b"\x11hello world\n"]
)
async def test_unknown_version_is_refused_and_never_moved(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "doc.y"
    target.write_bytes(content)
    for _ in range(2):
        store = FileYStore(str(target))
        with pytest.raises(YStoreVersionError) as info:
            async with store:
                pass
        assert str(target) in str(info.value)
    assert target.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.y"]


# ---------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    ["../x.y", "a/../../x.y", "/etc/passwd", "a\x00b", "./", "a/", "..", "a/./../.."],
)
def test_paths_leaving_root_dir_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(YStoreInvalidPath):
        FileYStore(path, root_dir=str(tmp_path / "root"))


def test_symlink_out_of_root_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(YStoreInvalidPath):
        FileYStore("out/x.y", root_dir=str(root))


@pytest.mark.parametrize(
    "path", ["x.y", "a/b/x.y", "a/../x.y", "a//x.y", "json:notebook:1234", "~/x.y"]
)
async def test_paths_inside_root_dir_work(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    async with FileYStore(path, root_dir=str(root)) as store:
        await store.write(b"\x00\x00")
        assert store.file_path == root / os.path.normpath(path)
        assert store.file_path.exists()


def test_without_root_dir_paths_are_used_as_given_but_nul_is_refused(tmp_path: Path) -> None:
    assert FileYStore(str(tmp_path / "x.y")).file_path == tmp_path / "x.y"
    assert FileYStore("../x.y").file_path == Path(os.path.abspath("../x.y"))
    with pytest.raises(YStoreInvalidPath):
        FileYStore(str(tmp_path / "x\x00.y"))
    with pytest.raises(ValueError):  # YStoreInvalidPath is a ValueError too
        FileYStore("x\x00")


async def test_temp_file_store_folder_per_class(tmp_path: Path) -> None:
    class MyTemp(TempFileYStore):
        prefix_dir = "my_test_prefix_"

    base = MyTemp.get_base_dir()
    assert Path(base).name.startswith("my_test_prefix_")
    assert MyTemp.get_base_dir() == base  # made once
    assert TempFileYStore.get_base_dir() != base
    async with MyTemp("sub/doc.y") as store:
        await store.write(b"\x00\x00")
        assert store.file_path == Path(base) / "sub" / "doc.y"
    async with MyTemp("sub/doc.y") as store:
        assert len(await read_all(store)) == 1
    for bad in ("../doc.y", "/tmp/doc.y"):
        with pytest.raises(YStoreInvalidPath):
            MyTemp(bad)


# ---------------------------------------------------------------------- admin


async def test_compact_keeps_content_and_shrinks_the_file(tmp_path: Path) -> None:
    updates, final = text_updates(200)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target), metadata_callback=lambda: b"m") as store:
        for update in updates:
            await store.write(update)
        before = target.stat().st_size
        last_ts = (await read_all(store))[-1][2]
        await store.compact()
        records = await read_all(store)
        assert len(records) == 1 and records[0][1:] == (b"m", last_ts)
        # One record: the text itself plus a little framing, a fraction of the log it replaced.
        assert target.stat().st_size < len(final.encode()) + 100
        assert target.stat().st_size < before / 4
        assert await restored_text(store) == final
        # no temp file left; the history it replaced is kept beside the log (retention)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.y", "doc.y.history"]
        await store.write(b"\x00\x00")
    async with FileYStore(str(target)) as store:
        assert await restored_text(store) == final
        assert len(await read_all(store)) == 2


async def test_compact_keeps_updates_with_missing_dependencies(tmp_path: Path) -> None:
    updates, _ = text_updates(5)
    kept = [updates[0], updates[2], updates[3]]  # updates[1] never arrived
    async with FileYStore(str(tmp_path / "doc.y")) as store:
        for update in kept:
            await store.write(update)
        await store.compact()
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        doc.apply_update(updates[1])  # the missing one arrives: everything integrates
        assert str(doc.get("source", type=pycrdt.Text)) == "".join(f"line {i}\n" for i in range(4))


async def test_document_ttl_squashes_an_idle_history(tmp_path: Path) -> None:
    updates, final = text_updates(10)
    target = tmp_path / "doc.y"
    old = time.time() - 3600
    write_log(target, [(u, b"", old + i) for i, u in enumerate(updates[:-2])])
    async with FileYStore(str(target), document_ttl=600) as store:
        await store.write(updates[-2])  # idle for an hour: history squashed first
        assert len(await read_all(store)) == 2
        await store.write(updates[-1])  # not idle: appended
        assert len(await read_all(store)) == 3
        assert await restored_text(store) == final


async def test_list_documents_and_delete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stores = [FileYStore(p, root_dir=str(root)) for p in ("a.y", "sub/b.y", "sub/deep/c")]
    for i, store in enumerate(stores):
        async with store:
            for _ in range(i + 1):
                await store.write(b"\x00\x00")
    (root / "notes.txt").write_text("not a store")
    (root / "a.y.torn-20260101T000000.000000Z").write_bytes(b"\x05ab")
    async with FileYStore("a.y", root_dir=str(root)) as store:
        infos = await store.list_documents()
        assert [(i.path, i.updates, i.bytes) for i in infos] == [
            ("a.y", 1, 2),
            ("sub/b.y", 2, 4),
            ("sub/deep/c", 3, 6),
        ]
        assert all(i.first_timestamp <= i.last_timestamp for i in infos)
        await store.delete()
        assert not (root / "a.y").exists()
        with pytest.raises(YDocNotFound):
            await read_all(store)
        assert [i.path for i in await store.list_documents()] == ["sub/b.y", "sub/deep/c"]
        await store.write(b"\x00\x00")  # a deleted document can start again
        assert len(await read_all(store)) == 1


async def test_list_documents_without_root_dir_stays_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "deeper").mkdir()
    for name in ("a.y", "deeper/b.y"):
        async with FileYStore(str(tmp_path / name)) as store:
            await store.write(b"\x00\x00")
    async with FileYStore(str(tmp_path / "a.y")) as store:
        [info] = await store.list_documents()
        assert info.path == str(tmp_path / "a.y")  # opens the document again as given
        async with FileYStore(info.path) as again:
            assert len(await read_all(again)) == 1


# ---------------------------------------------------------------------- permissions


@pytest.fixture
def read_only_files(monkeypatch: pytest.MonkeyPatch):
    """Make opening ``*.y`` files for writing fail as for a read-only file (tests run as
    root, where chmod does not stop anything)."""
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if str(path).endswith(".y") and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


async def test_read_only_file_reads_but_refuses_writes(
    tmp_path: Path, read_only_files, caplog: pytest.LogCaptureFixture
) -> None:
    records = sample_records(4)
    target = tmp_path / "doc.y"
    data = write_log(target, records)
    target.write_bytes(data[:-4])  # and a torn tail it cannot repair
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        async with FileYStore(str(target), log=LOG) as store:
            assert await read_all(store) == records[:-1]
            assert "read-only" in caplog.text
            with pytest.raises(YStorePermissionError) as info:
                await store.write(b"\x00\x00")
            assert str(target) in str(info.value) and info.value.hint
    assert target.read_bytes() == data[:-4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.y"]


async def test_torn_tail_appearing_while_open_is_repaired_on_read(tmp_path: Path) -> None:
    records = sample_records(3)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target), log=LOG) as store:
        for update, _, _ in records[:2]:
            await store.write(update)
        good = target.read_bytes()
        with open(target, "ab") as f:  # another writer died mid-record
            f.write(encode_record(*records[2])[:7])
        assert [r[0] for r in await read_all(store)] == [r[0] for r in records[:2]]
        assert target.read_bytes() == good
        await store.write(records[2][0])
        assert [r[0] for r in await read_all(store)] == [r[0] for r in records]


# ---------------------------------------------------------------------- other processes

WRITER = """
import sys, anyio
from jupyter_ystore import FileYStore

async def main(path, action, count):
    async with FileYStore(path, metadata_callback=lambda: action.encode()) as store:
        if action == "compact":
            await store.compact()
        for i in range(int(count)):
            await store.write(b"\\x00\\x00")

anyio.run(main, *sys.argv[1:])
"""


async def run_writer(path: Path, action: str, count: int) -> None:
    await anyio.run_process([sys.executable, "-c", WRITER, str(path), action, str(count)])


async def test_processes_appending_to_one_file_lose_nothing(tmp_path: Path) -> None:
    target = tmp_path / "doc.y"
    async with FileYStore(str(target), metadata_callback=lambda: b"here") as store:
        await store.write(b"\x00\x00")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_writer, target, "p1", 150)
            tg.start_soon(run_writer, target, "p2", 150)
            for _ in range(150):
                await store.write(b"\x00\x00")
        records = await read_all(store)
    assert len(records) == 451 and decode_file(target) == records
    counts = {m: sum(1 for r in records if r[1] == m) for m in (b"here", b"p1", b"p2")}
    assert counts == {b"here": 151, b"p1": 150, b"p2": 150}


async def test_compaction_by_another_process_does_not_swallow_our_writes(tmp_path: Path) -> None:
    updates, final = text_updates(12)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target)) as store:
        for update in updates[:10]:
            await store.write(update)  # our append descriptor is open on the file
        await run_writer(target, "compact", 0)  # e.g. `jupyter ystore compact`
        for update in updates[10:]:
            await store.write(update)
    async with FileYStore(str(target)) as store:
        assert len(await read_all(store)) == 3  # the snapshot and our two updates
        assert await restored_text(store) == final


async def test_torn_tail_left_by_another_process_is_set_aside_before_appending(
    tmp_path: Path,
) -> None:
    records = sample_records(3)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target), log=LOG) as store:
        for update, _, _ in records[:2]:
            await store.write(update)
        with open(target, "ab") as f:  # another process died in the middle of a record
            f.write(encode_record(*records[2])[:6])
        await store.write(records[2][0])  # no read in between
    assert [r[0] for r in decode_file(target)] == [r[0] for r in records]
    [aside] = tmp_path.glob("doc.y.torn-*")
    assert aside.read_bytes() == encode_record(*records[2])[:6]


async def test_a_file_held_by_a_stuck_process_raises_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from jupyter_ystore.stores.file import store as file_module

    monkeypatch.setattr(file_module, "LOCK_TIMEOUT", 0.05)
    target = tmp_path / "doc.y"
    async with FileYStore(str(target)) as store:
        await store.write(b"\x00\x00")
        with open(target, "rb") as other:  # flock: another open file conflicts like a process
            fcntl.flock(other, fcntl.LOCK_EX)
            with pytest.raises(YStoreLockedError) as info:
                await store.write(b"\x00\x00")
            assert str(target) in str(info.value) and info.value.hint
            fcntl.flock(other, fcntl.LOCK_UN)
        await store.write(b"\x00\x00")
        assert len(await read_all(store)) == 2


async def test_every_cut_inside_the_last_record_is_recovered(tmp_path: Path) -> None:
    records = sample_records(4)
    records[-1] = (records[-1][0], b"x" * 200, records[-1][2])  # a 2-byte metadata length
    data = HEADER + b"".join(encode_record(*r) for r in records)
    intact = len(data) - len(encode_record(*records[-1]))
    cuts = range(intact + 1, len(data))
    for cut in cuts:  # the decoder, at every byte
        scan = parse_log(data[:cut], "doc.y")
        assert (scan.records, scan.intact_end) == (records[:-1], intact), cut
    for cut in cuts[:: len(cuts) // 6]:  # the store, at a few
        folder = tmp_path / f"cut-{cut}"
        folder.mkdir()
        (folder / "doc.y").write_bytes(data[:cut])
        async with FileYStore(str(folder / "doc.y"), log=LOG) as store:
            assert await read_all(store) == records[:-1], cut
        assert (folder / "doc.y").read_bytes() == data[:intact]
        [aside] = folder.glob("doc.y.torn-*")
        assert aside.read_bytes() == data[intact:cut]
