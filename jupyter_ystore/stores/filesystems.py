"""Which file system a path lives on, and whether it is one SQLite must not trust.

SQLite's WAL mode keeps its index in shared memory (the ``-shm`` file, mapped by every
process), which only works between processes of one host: on NFS, SMB/CIFS or a FUSE file
system, two hosts (or even one host, where the mapping is not coherent) can corrupt the
database without an error, and POSIX locks there range from slow to absent. Such paths are
found here from the kernel's mount table (``/proc/self/mountinfo``), so that the store can
say so at start-up and fall back to a rollback journal (see ``SQLiteYStore.journal_mode``).

Tests (and unusual systems) can point ``JUPYTER_YSTORE_MOUNTINFO`` at a file in the
mountinfo format instead of the kernel's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: The kernel's table of this process's mounts.
MOUNTINFO = "/proc/self/mountinfo"
#: Environment variable naming another mountinfo file to read (tests, containers).
MOUNTINFO_ENV = "JUPYTER_YSTORE_MOUNTINFO"

#: File system types shared over a network or between hosts (a fuse.* type counts too: its
#: locking and mapping are whatever its daemon implements).
NETWORK_TYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda", "9p", "virtiofs",
        "vboxsf", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "orangefs", "pvfs2",
        "ocfs2", "gfs2", "panfs", "davfs", "fuse", "fuseblk", "sshfs", "s3fs", "gcsfuse",
        "wekafs", "quobyte",
    }
)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo that matters here."""

    mount_point: str
    fs_type: str
    source: str

    @property
    def is_network(self) -> bool:
        kind = self.fs_type.lower()
        return kind in NETWORK_TYPES or kind.startswith("fuse.")

    def __str__(self) -> str:
        return f"{self.fs_type} ({self.source} on {self.mount_point})"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo`` octal escapes."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text (lines that do not parse are skipped)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-", 6)
            mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], _unescape(fields[dash + 2])))
        except (ValueError, IndexError):
            continue
    return mounts


def read_mounts() -> list[Mount]:
    """This process's mounts; empty where there is no mountinfo (not Linux)."""
    source = os.environ.get(MOUNTINFO_ENV) or MOUNTINFO
    try:
        with open(source, encoding="utf-8", errors="replace") as file:
            return parse_mountinfo(file.read())
    except OSError:
        return []


def _real(path: str) -> str:
    """``path`` made absolute, with the symlinks of its existing part resolved (a database
    file that is not created yet lives where its folder is)."""
    path = os.path.abspath(os.path.expanduser(path))
    missing: list[str] = []
    while not os.path.exists(path):
        parent, name = os.path.split(path)
        if parent == path:
            break
        missing.insert(0, name)
        path = parent
    return os.path.join(os.path.realpath(path), *missing)


def mount_of(path: str, mounts: list[Mount] | None = None) -> Mount | None:
    """The mount holding ``path`` (the longest mount point above it; the last one mounted
    wins when several share a point). Touches the file system: not on the event loop."""
    mounts = read_mounts() if mounts is None else mounts
    if not mounts:
        return None
    real = _real(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        if real == point or real.startswith(point if point == "/" else point + "/"):
            if best is None or len(point) >= len(best.mount_point.rstrip("/") or "/"):
                best = mount
    return best


def network_mount(path: str, mounts: list[Mount] | None = None) -> Mount | None:
    """The network or FUSE mount holding ``path``, or None for a local disk (or unknown)."""
    mount = mount_of(path, mounts)
    return mount if mount is not None and mount.is_network else None


def network_warning(store: object, mounts: list[Mount] | None = None) -> str | None:
    """One line for the server's log when ``store`` keeps its files on a network or FUSE
    file system (a SQLite ``db_path``, a ``FileYStore`` ``root_dir``): what was found,
    what the store does about it and what to do; None on a local disk. Touches the file
    system: not on the event loop."""
    db_path = getattr(store, "db_path", None)
    root_dir = getattr(store, "root_dir", None)
    name = type(store).__name__
    if isinstance(db_path, str) and db_path and db_path != ":memory:":
        mount = network_mount(db_path, mounts)
        if mount is None:
            return None
        mode = str(getattr(store, "journal_mode", "auto")).upper()
        if mode == "WAL":
            doing = "journal_mode=WAL was forced: the database can be corrupted silently there"
        else:
            doing = (
                "running SQLite without WAL (journal_mode=DELETE, synchronous=FULL), which is "
                "safe there but writes are slower"
            )
        return (
            f"jupyter_ystore: {name}.db_path {db_path} is on a network file system, {mount}; "
            f"{doing}. Set c.{name}.db_path to a local disk (one server), or use "
            "jupyter_ystore.PostgresYStore (several servers)"
        )
    if isinstance(root_dir, str) and root_dir:
        mount = network_mount(root_dir, mounts)
        if mount is None:
            return None
        return (
            f"jupyter_ystore: {name}.root_dir {root_dir} is on a network file system, {mount}: "
            "appends and fsyncs there are slow, and two hosts appending to one document can "
            f"interleave. Set c.{name}.root_dir to a local disk (one server), or use "
            "jupyter_ystore.PostgresYStore (several servers)"
        )
    return None


__all__ = ["Mount", "mount_of", "network_mount", "network_warning", "parse_mountinfo", "read_mounts"]
