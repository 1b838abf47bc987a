"""FileYStore: a log damaged in the middle is set aside and its intact records kept.

A crash tears only the last record (``file._LogFile`` cuts that back). A record that cannot
be decoded with intact records after it is damage: a bad disk block, a stray write. Then,
under the file's exclusive ``flock``:

* the records before the damage are kept, and the ones after it when decoding can resume:
  from some offset after the damage, records decode one after the other to the very end of
  the file, each with a plausible time and a Yjs update (looked for within
  ``format.RESYNC_WINDOW`` bytes of the damage);
* the damaged file keeps its bytes under ``<name>.damaged-<UTC time>`` (a hard link, or a
  copy where links are not supported), never deleted;
* the kept records become a fresh file at the original path (temporary file, fsync,
  ``os.replace``, fsync of the folder): the path always names a whole file. If the records
  after the damage need updates lost with it (structs left pending), only those before it
  are kept; if even those do not replay, nothing is kept (its attributes go with the copy)
  and the document opens from its file.

A file named ``*.damaged-<time>`` is only read: its intact records, nothing repaired.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from jupyter_ystore.errors import YStoreCorruptError
from jupyter_ystore.stores.damaged import copy_name, replays_cleanly, usable_update
from jupyter_ystore.stores.file import attrs as _file_attrs
from jupyter_ystore.stores.file.format import (
    HEADER,
    Intact,
    Record,
    Scan,
    encode_record,
    find_intact,
    parse_log,
)
from jupyter_ystore.stores.file.store import _fsync_dir, _replace_file


def intact_records(buf: bytes, path: str) -> Intact:
    """The records of a log (its ``VERSION:2`` header checked) before and after damage;
    records that hold no Yjs update are left out."""
    found = find_intact(buf, path)
    found.before = [record for record in found.before if usable_update(record[0])]
    return found


def kept_records(found: Intact) -> list[Record]:
    """What the fresh file holds: everything that replays cleanly (see the module)."""
    if found.after and replays_cleanly([r[0] for r in found.records]):
        return found.records
    if found.before and replays_cleanly([r[0] for r in found.before]):
        return found.before
    return []


def salvage(
    logfile: Any, fd: int, buf: bytes, key: str | None
) -> tuple[Scan, tuple[int, int, int] | None]:
    """Set the damaged log held exclusively as ``fd`` aside and write what is kept.

    Returns the new file's scan and identity (None: no file, the document opens from its
    file). ``buf`` is the file's content, read under the lock.
    """
    path = logfile.path
    try:
        scan = parse_log(buf, path)
        st = os.fstat(fd)
        scan.tail = buf[scan.intact_end :]
        return scan, (st.st_dev, st.st_ino, len(buf))  # intact after all (raced a repair)
    except YStoreCorruptError:
        pass
    found = intact_records(buf, path)
    kept = kept_records(found)
    copy = copy_name(path)
    _keep_damaged_bytes(path, copy, buf)
    identity: tuple[int, int, int] | None = None
    if kept:
        data = HEADER + b"".join(encode_record(*record) for record in kept)
        st = _replace_file(path, data)
        identity = (st.st_dev, st.st_ino, len(data))
    else:
        os.unlink(path)  # its bytes live on under the copy's name
        attributes = _file_attrs.sidecar(path)
        if os.path.exists(attributes):  # nothing stored for the document: they go with it
            os.rename(attributes, _file_attrs.sidecar(copy))
    _fsync_dir(os.path.dirname(path))
    logfile.log.warning(_announcement(path, copy, key, found, kept))
    fresh = Scan(records=kept, size=identity[2] if identity else 0)
    fresh.intact_end = fresh.size
    return fresh, identity


def _keep_damaged_bytes(path: str, copy: str, buf: bytes) -> None:
    """``copy`` names the damaged bytes: the same file (a link), or a copy of them."""
    try:
        os.link(path, copy)
        return
    except OSError:  # no hard links here (some network and FAT file systems)
        pass
    out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(buf)
        while view:
            view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)


def _announcement(path: str, copy: str, key: str | None, found: Intact, kept: list[Record]) -> str:
    """The one line saying what happened and what to run."""
    if kept:
        after = len(kept) - len(found.before)  # kept: all records, or those before
        what = (
            f"kept {len(kept)} intact records in a fresh file ({len(found.before)} before the "
            f"damage, {after} after it)"
        )
        if len(found.after) > after:
            what += (
                f"; the {len(found.after)} records after it were left out: they need "
                "records that were lost"
            )
    else:
        what = "nothing could be kept (the document opens from its file)"
    read_copy = (
        f"`jupyter ystore verify {shlex.quote(key + copy[len(path):])}`" if key else copy
    )
    return (
        f"ystore log {path} was damaged at byte {found.stop} (a record that cannot be "
        f"decoded, intact records after it): moved it to {copy}, never deleted, and {what}. "
        f"Check the store with `jupyter ystore verify --all`; read the damaged copy with "
        f"{read_copy}"
    )
