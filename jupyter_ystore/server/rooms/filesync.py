"""The file side of a document room: loading, saving, and changes made to the file outside.

The room keeps the content it last saved to or loaded from the file (the *base*), also as a
store attribute, so that it survives restarts. When the file changes on disk (``git pull``,
an editor, a script), with the room open or not, the change from the base to the file is
merged into the document as minimal edits (``core.merge``); the merged document is saved
back if collaborators' edits were kept. A save that fails keeps the document dirty, is logged
once and retried. With a store shared by several servers, one server's save is not taken
for an edit by the others, and a change on disk is imported by one server only (a claim in
the shared ``state`` map).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Tuple

import anyio
from anyio.abc import TaskGroup

from jupyter_ystore.core import threads
from jupyter_ystore.core.merge import MergeResult, merge_into
from jupyter_ystore.server.rooms import file_convert, fingerprints, save_slots
from jupyter_ystore.server.rooms.files import FileChanged, FileGone, FileMoved, FileState
from jupyter_ystore.server.rooms.frozen_content import FrozenContent
from jupyter_ystore.server.rooms.writer import Origin

if TYPE_CHECKING:
    from jupyter_ystore.server.rooms.document import DocumentRoom

#: The store attribute holding the base.
BASE = "base"

#: The ``state`` keys that record each version of the file a server's document held
#: (``synced:`` and a digest of its hash and modification time: when it was recorded; a
#: short key, since a deleted map entry keeps its key in the document), so that the other servers
#: know a write by one of them for what it is. The ``hash`` key alone cannot tell them: when
#: two servers save at once, only one of the two values survives the CRDT's merge, and a hash
#: without its time would also pass off a later revert of the file to that content as known.
SYNCED = "synced:"
#: How many of those records the state keeps (the oldest are deleted).
SYNCED_KEPT = 16

#: How many times a save looks at the file again when it changed just before the write.
SAVE_RACES = 5

#: How long a save that found no file at its path waits for the file id manager to learn
#: of a rename (seconds). Another server renames the file on disk first and tells the shared
#: file ids after: for a few milliseconds (more when that server is busy), this server's
#: file id still names the old path.
RENAME_WAIT = 1.0

SERVER_FILE = Origin("server", reason="file-changed")
SERVER_SAVE = Origin("server", reason="save")


def synced_key(state: FileState) -> str | None:
    """The ``state`` key recording that the document held the file as ``state`` says."""
    if state.hash is None or state.last_modified is None:
        return None
    version = f"{state.hash}@{state.last_modified.isoformat()}".encode()
    return SYNCED + hashlib.blake2b(version, digest_size=8).hexdigest()


#: What a save was handed: the room's change count, the content then, its frozen form, and
#: how many saves had been asked for when it was converted.
Taken = Tuple[int, Any, FrozenContent, int]


class SaveRefused(RuntimeError):
    """A save that would lose content (an empty document over a file with content)."""


def encode_base(content: Any) -> bytes:
    """The base content as a store attribute: compressed JSON (bytes for blobs)."""
    if isinstance(content, FrozenContent):
        content = content.content()
    if isinstance(content, (bytes, bytearray)):
        return b"B" + zlib.compress(bytes(content), 6)
    return b"J" + zlib.compress(json.dumps(content, separators=(",", ":")).encode(), 6)


def decode_base(data: bytes | None) -> Any:
    """The inverse of ``encode_base``; None for no (or an unreadable) base."""
    if not data:
        return None
    try:
        raw = zlib.decompress(data[1:])
        return raw if data[:1] == b"B" else json.loads(raw)
    except (zlib.error, ValueError):
        return None


class FileSync:
    """Keeps one room's document and its file in step (see the module)."""

    def __init__(self, room: DocumentRoom) -> None:
        self.room = room
        self.file = room.file
        self.settings = room.settings
        self.log = room.log
        self.room_id = room.room_id
        self.writer = room.writer
        self._save_lock = anyio.Lock()
        self._save_wakeup = anyio.Event()
        self._last_change = 0.0
        # the content last saved to or loaded from the file (kept out of the GC's walk)
        self._base: FrozenContent | None = None
        self._pending_base: FrozenContent | None = None  # a base not stored yet
        # The room's change count at which the document was last found equal to ``_base``,
        # and that base: while both still hold, a save has nothing to convert (see ``_save``).
        self._base_current: tuple[int, FrozenContent] | None = None
        # The file as this room last knew it: its modification time, and its hash (a write by
        # another process in the same tick of a coarse file-system clock keeps the time).
        self._file_mtime: Any = None
        self._file_hash: str | None = None
        self._save_failure: str | None = None
        # Saves asked for (``schedule_save``) so far, and how many of them the file (or the
        # last comparison with it) covers: equal, nothing to convert.
        self._save_requests = 0
        self._requests_saved = 0
        self._claim = uuid.uuid4().hex  # names this room in file-import claims
        self._watch: fingerprints.Watch | None = None  # the file poll (``watch_file``)
        self._poll_failures = 0

    @property
    def document(self) -> Any:
        return self.room.document

    def _changes_by(self, origin: Origin) -> Any:
        return self.room._changes_by(origin)

    def _set_state(self, **fields: Any) -> None:
        self.room._set_state(**fields)

    def record_file(self, state: FileState, **fields: Any) -> None:
        """The document holds the file as ``state`` says: set the state's hash (and
        ``fields``) and record that version for the other servers (see ``SYNCED``)."""
        ystate = self.document.ystate
        with self.room.ydoc.transaction():
            self._set_state(hash=state.hash, **fields)
            key = synced_key(state)
            if key is None or key in ystate:
                return
            ystate[key] = time.time()
            records = sorted(
                (when, name)
                for name, when in ystate.items()
                if name.startswith(SYNCED) and isinstance(when, (int, float))
            )
            for _when, name in records[:-SYNCED_KEPT]:
                del ystate[name]

    def loaded(self, state: FileState, content: Any) -> None:
        """The document was just loaded from the file (``content``, as the document has it)."""
        self._seen(state)
        self._base = FrozenContent(content)

    def opened(self, state: FileState) -> None:
        """The document was loaded from the store; the file is as ``state`` says."""
        self._seen(state)

    def _seen(self, state: FileState) -> None:
        """The file is as ``state`` says, as far as this room knows."""
        self._file_mtime = state.last_modified
        if state.hash is not None:
            self._file_hash = state.hash

    def _changed_since_seen(self, disk: FileState) -> bool:
        """Whether the file is not as this room last knew it (by time, or by hash)."""
        if self._file_mtime is None:
            return False
        if disk.last_modified != self._file_mtime:
            return True
        return disk.hash is not None and self._file_hash is not None and disk.hash != self._file_hash

    async def reconcile(self, file_state: FileState, base: Any) -> None:
        """After loading from the store, bring in what changed in the file since the last
        save: the change from the base to the file, merged (never simply replaced)."""
        content = self.document.get()
        if (
            base is not None
            and file_state.hash is not None
            and self.document.hash == file_state.hash
            and self.document.path == self.file.path
            and _comparable(content) == _comparable(base)
        ):
            # The file is the one last saved (or loaded), and the document still holds what
            # was saved: nothing to do, and no need to read the file into a document (on a
            # notebook, most of the cost of opening a room).
            self._adopt_base(base, stored=base)
            self.log.info("Room %s: store and %s agree", self.room_id, self.file.path)
            return
        if file_state.content is None:  # only its time and hash were read
            file_state = await self.file.load()
            self._seen(file_state)
        file_content = await file_convert.as_document(self.file.file_type, file_state.content)
        if _comparable(content) == _comparable(file_content):
            self._adopt_base(file_content, stored=base)
            if self.document.hash != file_state.hash or self.document.path != self.file.path:
                with self._changes_by(SERVER_SAVE):
                    self.record_file(file_state, path=self.file.path)
            self.log.info("Room %s: store and %s agree", self.room_id, self.file.path)
            return
        unchanged = self.document.hash == file_state.hash or (
            base is not None and _comparable(file_content) == _comparable(base)
        )
        if not unchanged and base is None and self.document.hash is None:
            # A history another server wrote (jupyter-collaboration keeps neither the file's
            # hash nor a base): its edits are newer than the file when its last update is.
            unchanged = await self._store_newer_than(file_state)
        if unchanged:
            self.log.warning(
                "Room %s: the store holds edits newer than %s (e.g. after a crash); "
                "the file will be rewritten",
                self.room_id,
                self.file.path,
            )
            self._adopt_base(file_content, stored=base)
            self.schedule_save()
            return
        await self._merge_file(file_state, file_content, base, when="since the last save")

    async def _store_newer_than(self, state: FileState) -> bool:
        """Whether the stored history's last update is later than the file's last change."""
        if state.last_modified is None:
            return False
        try:
            info = await self.room.store.info()
        except Exception:  # no summary: the file is taken as the newer
            return False
        last = info.last_timestamp
        return last is not None and last > state.last_modified.timestamp()

    async def _merge_file(self, state: FileState, file_content: Any, base: Any, *, when: str) -> None:
        """Merge the file's change since ``base`` into the document (one update)."""
        with self._changes_by(SERVER_FILE):
            try:
                result = merge_into(self.document, base, state.content)
            except Exception as exc:  # a file the merge cannot read: the file wins outright
                self.log.error("Room %s: merging %s failed (%s); taking the file as it is", self.room_id, self.file.path, exc)
                self.document.set(state.content)
                result = MergeResult(changed=True)
            self.record_file(state, path=self.file.path)
        self._log_merge(result, when, with_base=base is not None)
        self._adopt_base(file_content)
        if self.document.get() != file_content:
            self.schedule_save()  # live edits kept: the file must get them too
        else:
            with self._changes_by(SERVER_SAVE):
                self._set_state(dirty=False)

    def _log_merge(self, result: MergeResult, when: str, *, with_base: bool) -> None:
        how = "merged into the open document" if with_base else "applied (no earlier save to merge from)"
        self.log.warning("Room %s: %s changed on disk %s; %s", self.room_id, self.file.path, when, how)
        for conflict in result.conflicts:
            self.log.warning(
                "Room %s: %s and an edit since the last save changed the same text%s; the file's "
                "version was kept: %s",
                self.room_id,
                self.file.path,
                f" (cell {conflict.cell_id})" if conflict.cell_id else "",
                conflict.description,
            )

    def _adopt_base(self, content: Any, *, stored: Any = None) -> None:
        """``content`` is what the file holds now; remember it (in the store too)."""
        self._base = FrozenContent(content)
        if stored is None or stored != content:
            self._pending_base = self._base
            self._save_wakeup.set()  # the saver stores it (off the open path)

    def schedule_save(self) -> None:
        self._last_change = time.monotonic()
        self._save_requests += 1
        self._save_wakeup.set()

    def _nothing_to_save(self) -> bool:
        """Whether every save asked for is covered by a save (or a comparison) that
        converted the document after it was asked, and none failed since."""
        return self._requests_saved == self._save_requests and self._save_failure is None

    async def saver(self) -> None:
        """Debounced autosave: save once no change came for ``save_delay`` seconds; a failed
        save is retried (every ``save_retry_delay`` s, doubling up to a minute)."""
        delay = self.settings.save_delay
        retry = self.settings.save_retry_delay
        while True:
            await self._save_wakeup.wait()
            self._save_wakeup = anyio.Event()
            await self._store_pending_base()
            if delay is None and self._save_failure is None:
                continue
            while (wait := self._last_change + (delay or 0) - time.monotonic()) > 0:
                await anyio.sleep(wait)
            failure: Exception | None = None
            if self._nothing_to_save():
                # Edits that came while the last save waited out the delay woke us again,
                # but its conversion came after them: converting again would find it equal
                # (5 ms of the loop for a mid-sized notebook, in every room a class stopped
                # typing in, one after another).
                continue
            await self.writer.settle(self.settings.store_wait)  # (not holding a slot)
            async with save_slots.save_slot():  # (converting the document is part of the save)
                if self._nothing_to_save():
                    continue  # a save (by request) covered it while we waited for the slot
                asked = self._save_requests
                changes, content = await self._content_in_steps()
                taken = (changes, content, FrozenContent(content), asked)
                if self._base == taken[2] and self._save_failure is None:
                    self._requests_saved = asked
                    self._note_base_current(changes)
                    continue  # nothing new since the last save (e.g. only the state map changed)
                try:
                    await self._save(reason="auto", taken=taken)
                except Exception as exc:
                    failure = exc
            if isinstance(failure, FileGone) and await self.renamed_since(failure.path):
                self._log_renamed(failure.path)  # another server's rename: save at the new path now
                self._save_wakeup.set()
                continue
            if failure is not None:
                self.save_failed(failure, "autosave")
                await anyio.sleep(retry)
                retry = min(60.0, retry * 2)
                self._save_wakeup.set()
            else:
                retry = self.settings.save_retry_delay

    def _note_base_current(self, changes: int) -> None:
        """The document, at the room's change count ``changes``, is ``_base``."""
        if self._base is not None:
            self._base_current = (changes, self._base)

    def _unchanged_since_base(self) -> bool:
        """Whether the document is still what ``_note_base_current`` found: no change of any
        kind came since (the count moves with every update, the state map's included), and
        the base was not replaced (a load or merge from the file sets a new one)."""
        current = self._base_current
        return current is not None and current[0] == self.room.changes and current[1] is self._base

    async def _content_in_steps(self) -> tuple[int, Any]:
        """The room's change count and the document's content as of that count, read a cell
        at a time where the document can (jupyter_ydoc 4's ``aget``), the loop running
        between cells: read at once, a 48-room class's autosaves held the loop 12-15 ms
        per notebook, 25-36 ms when two saves' reads fell in one turn of the loop. Content
        read while an edit came in mixes two states (a cell moved could be in it twice), and
        a cell deleted meanwhile fails the read: then it is read again at once."""
        changes = self.room.changes
        read_in_steps = getattr(self.document, "aget", None)
        if read_in_steps is not None:
            try:
                content = await read_in_steps()
            except Exception:
                if self.room.changes == changes:
                    raise  # not an edit midway: the document cannot be read
            else:
                if self.room.changes == changes:
                    return changes, content
        return self.room.changes, self.document.get()

    def save_failed(self, exc: Exception, what: str) -> None:
        """Log a failing save once (not at every retry); the document stays dirty."""
        reason = f"{type(exc).__name__}: {exc}"
        if self._save_failure != reason:
            self.log.error(
                "Room %s: cannot save %s (%s): %s; edits are kept in the store, the tab shows "
                "unsaved changes, and saving is retried",
                self.room_id,
                self.file.path if not isinstance(exc, FileGone) else "the file",
                what,
                reason,
            )
        self._save_failure = reason

    async def save(self, *, reason: str = "auto", taken: Taken | None = None) -> bool:
        """Write the document to its file if it changed; whether the file was written.
        Waits for one of the loop's save slots first (``save_slots``); see ``_save``. A file
        renamed by another server as it was saved is saved at its new path."""
        await self.writer.settle(self.settings.store_wait)  # (not holding a slot)
        try:
            async with save_slots.save_slot():
                return await self._save(reason=reason, taken=taken)
        except FileGone as exc:
            if not await self.renamed_since(exc.path):
                raise
            self._log_renamed(exc.path)
        async with save_slots.save_slot():
            return await self._save(reason=reason, taken=taken)

    def _path_or_none(self) -> str | None:
        """The file's path as the file id manager knows it now; None if it knows none."""
        try:
            return self.file.path
        except FileGone:
            return None

    async def renamed_since(self, path: str | None) -> bool:
        """Whether the file id names another path than ``path`` now, or does within
        ``RENAME_WAIT`` seconds: a save that found no file at ``path`` (``FileGone.path``) may
        have raced a rename made by another server, which its file ids learn of just after.
        Waited for outside the save slot and the save lock: a deleted file's room holds up
        no other save."""
        if path is None:
            return False
        deadline = time.monotonic() + RENAME_WAIT
        while True:
            now = self._path_or_none()
            if now is None:
                return False  # the id is gone: deleted, not renamed
            if now != path:
                return True
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(0.05)

    def _log_renamed(self, path: str | None) -> None:
        self.log.info(
            "Room %s: %s was renamed to %s as it was saved; saving there",
            self.room_id,
            path,
            self._path_or_none(),
        )

    async def _save(self, *, reason: str = "auto", taken: Taken | None = None) -> bool:
        """``save`` in a save slot already taken.

        Waits for the store at most ``store_wait`` seconds and never for a failing one: the
        file is the users' copy and must not fall behind because the store is down. Raises
        if the file could not be written. ``taken``: the room's change count, the content
        the caller converted then and its frozen form, used if nothing changed since
        (converting a notebook of 400 cells holds the event loop for 20 ms).
        """
        async with self._save_lock:
            written = False
            moved: FrozenContent | None = None  # written, then the file moved (FileMoved)
            content_at = -1  # the room's change count the content saved or compared is of
            for attempt in range(SAVE_RACES + 1):
                await self.writer.settle(self.settings.store_wait)
                disk = await self.file.stat()  # FileGone: the file was deleted
                if self._changed_since_seen(disk):
                    if moved is not None and await self._holds_our_write(moved):
                        pass  # our own write, at the file's new path: not a change to merge
                    elif disk.hash is None or disk.hash != self.document.hash:
                        if not await self._settled_elsewhere(disk):
                            await self._apply_file_change()
                            return False
                        await self._adopt_saved_file()  # unchanged since: nothing to write
                if taken is not None and taken[0] == self.room.changes:
                    content_at, content, frozen, asked = taken
                elif self._unchanged_since_base() and disk.hash == self.document.hash:
                    # (a close or a save request after an autosave: converting the notebook
                    # again, at once, held the loop 7.6 ms for 61 cells, 51 ms for 410)
                    content_at, asked = self.room.changes, self._save_requests
                    state = disk
                    break
                else:
                    asked = self._save_requests
                    content_at, content = await self._content_in_steps()
                    frozen = FrozenContent(content)
                if self._base == frozen and disk.hash == self.document.hash:
                    state = disk
                    break
                if is_empty(content) and not self.room._changed_by_people and disk.size:
                    raise SaveRefused(
                        "refusing to write an empty document over a non-empty file that no "
                        "collaborator emptied"
                    )
                self.log.info("Room %s: saving %s (%s)", self.room_id, self.file.path, reason)
                try:
                    state = await self.file.save(content, expected=disk)
                except FileChanged as exc:
                    if attempt == SAVE_RACES:
                        raise
                    moved = frozen if isinstance(exc, FileMoved) else None
                    # written, renamed or deleted in between (by another server, most
                    # likely): look again
                    self.log.info("Room %s: %s; looking again", self.room_id, exc)
                    continue
                self._seen(state)
                self._base = self._pending_base = frozen
                written = True
                break
            # the content saved or compared is the document's still: no edit came since
            current = content_at == self.room.changes
            with self._changes_by(SERVER_SAVE):
                self.record_file(state, dirty=False)
            if current:
                self._note_base_current(self.room.changes)
            self._requests_saved = max(self._requests_saved, asked)
            if self._save_failure is not None:
                self.log.info("Room %s: %s saved again", self.room_id, self.file.path)
                self._save_failure = None
            await self._store_pending_base()
            return written

    async def _store_pending_base(self) -> None:
        """Store the base (the content last saved or loaded) as a document attribute, so
        that a merge after a restart starts from it. A failing store is logged by the
        writer; the base is then stored with the next save."""
        content, self._pending_base = self._pending_base, None
        if content is None:
            return
        try:
            data = await threads.run_sync(encode_base, content)
            await self.room.store_attributes({BASE: data})
        except Exception as exc:
            if self._pending_base is None:
                self._pending_base = content
            self.log.debug("Room %s: the base was not stored: %s", self.room_id, exc)

    async def _apply_file_change(self) -> None:
        """The file changed on disk behind our back: merge its change since the base."""
        state = await self.file.load()
        self._seen(state)
        # Read here, without an await between the file's read and the merge: another server's
        # import of the same change, coming through the store meanwhile, made both import.
        file_content = file_convert.as_document_has_it(self.file.file_type, state.content)
        base = self._base.content() if self._base is not None else None
        if _comparable(file_content) == _comparable(base):  # touched, or saved again
            with self._changes_by(SERVER_SAVE):
                self.record_file(state)
            return
        await self._merge_file(state, file_content, base, when="while open")
        await self.writer.settle(self.settings.store_wait)

    async def _settled_elsewhere(self, disk: FileState) -> bool:
        """Whether a file change that lacks our document's hash is in the document already.

        With a store shared by several servers (``supports_live_updates``) it usually is:
        another server saved the document (its new hash comes through the store a moment
        after the file), or imported an out-of-band edit. Taking either for a new edit
        would merge the file again, so wait for the hash; if it does not come, claim the
        import in the shared state: every server sees the same winning claim, and only its
        owner imports (the others import only if the winner never does).
        """
        if not getattr(self.room.store, "supports_live_updates", False) or disk.hash is None:
            return False
        grace = self.settings.shared_file_grace
        if await self._version_arrives(disk, grace):
            return True
        claim = f"{disk.hash}:{self._claim}"
        with self._changes_by(SERVER_SAVE):
            self._set_state(file_import=claim)
        await self.writer.settle(self.settings.store_wait)
        if await self._version_arrives(disk, grace):
            return True
        if self.document.ystate.get("file_import") == claim:
            return False  # our claim won: we import
        return await self._version_arrives(disk, grace)

    async def _version_arrives(self, disk: FileState, timeout: float) -> bool:
        """Whether the record of the file's version (or its hash) reaches the document
        within ``timeout`` seconds."""
        key = synced_key(disk)

        def known() -> bool:
            return self.document.hash == disk.hash or (key is not None and key in self.document.ystate)

        with anyio.move_on_after(timeout):
            while not known():
                await anyio.sleep(0.02)
        return known()

    async def _holds_our_write(self, written: FrozenContent) -> bool:
        """Whether the file (at its path now) holds ``written``, a save of ours it was
        renamed after; if so it is remembered as saved, with no merge."""
        state = await self.file.load()
        content = file_convert.as_document_has_it(self.file.file_type, state.content)
        if _comparable(content) != _comparable(written.content()):
            return False
        self._seen(state)
        self._base = FrozenContent(content)
        return True

    async def _adopt_saved_file(self) -> None:
        """Another server wrote the file: remember what it holds, so that we write it only
        if our document differs (not the same content again)."""
        state = await self.file.load()
        self._seen(state)
        self._base = FrozenContent(file_convert.as_document_has_it(self.file.file_type, state.content))
        if not self._base.matches(self.document.get()):
            self.schedule_save()  # it saved before our latest changes reached it

    def watch_file(self, work: TaskGroup) -> None:
        """Notice out-of-band file changes and renames every ``poll_interval`` seconds, until
        ``unwatch_file``; each change is handled by ``poll`` in a task of ``work``.

        The loop's ``FileWatcher`` looks at the file for us and calls back only when the
        file's path or ``stat(2)`` is not what the contents manager last confirmed (``known``),
        and not again until that call is done: no task of the room waits for it."""

        def looks_changed(found: fingerprints.Found) -> None:
            try:
                work.start_soon(self.poll, found)
            except RuntimeError:  # the room's work group has ended: it is closing
                pass

        self._watch = fingerprints.watch(
            self.settings.poll_interval, lambda: self.file.path, self.file.os_path, looks_changed
        )

    def unwatch_file(self) -> None:
        if self._watch is not None:
            fingerprints.unwatch(self._watch)
            self._watch = None

    async def poll(self, found: fingerprints.Found) -> None:
        """Ask the contents manager about a file the watcher found changed (``found``: the
        path and fingerprint it saw). The stat is taken without the save lock: a save
        meanwhile changes our modification time, so the contents manager's answer is
        compared with the time of that save."""
        watch = self._watch
        seen, fingerprint = found
        try:
            path = self.file.path
            async with self._save_lock:
                if self.document.path != path:
                    with self._changes_by(SERVER_SAVE):
                        self._set_state(path=path)
                disk = await self.file.stat(with_hash=False)  # the time only
                if disk.last_modified == self._file_mtime:
                    if fingerprint is not None and seen == path and watch is not None:
                        watch.known = (path, fingerprint)
                    self._poll_failures = 0
                    return
                disk = await self.file.stat()  # changed: its hash says whether by us
                if self._changed_since_seen(disk):
                    if disk.hash == self.document.hash:  # a save we know of
                        self._seen(disk)
                    elif await self._settled_elsewhere(disk):
                        await self._adopt_saved_file()
                    else:
                        await self._apply_file_change()
            self._poll_failures = 0
        except Exception as exc:
            if isinstance(exc, FileGone) and await self.renamed_since(exc.path):
                return  # renamed by another server, as the file ids now say: the next look follows
            self._poll_failures += 1
            if self._poll_failures == 1:
                self.log.warning("Room %s: cannot poll its file: %s", self.room_id, exc)
        finally:
            if watch is not None:
                watch.rearm()


def _comparable(content: Any) -> Any:
    """``content`` without what the contents manager adds on reading and drops on saving
    (cells' ``metadata.trusted``, from the notebook's signature): not a change of the file."""
    if not isinstance(content, dict) or not any(
        "trusted" in cell.get("metadata", {}) for cell in content.get("cells", ())
    ):
        return content
    cells = []
    for cell in content["cells"]:
        metadata = cell.get("metadata", {})
        if "trusted" in metadata:
            cell = {**cell, "metadata": {k: v for k, v in metadata.items() if k != "trusted"}}
        cells.append(cell)
    return {**content, "cells": cells}


def document_is_empty(document: Any) -> bool:
    """``is_empty(document.get())`` without converting the whole document (a notebook's
    cells are counted)."""
    cells = getattr(document, "cell_number", None)
    if isinstance(cells, int):
        return cells == 0
    return is_empty(document.get())


def is_empty(content: Any) -> bool:
    """A document with nothing in it (no cells, no text)."""
    if isinstance(content, dict):
        return not content.get("cells")
    return not content
