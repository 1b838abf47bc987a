"""The document timeline and fork endpoints of the JupyterLab collaboration front end.

- ``GET /api/collaboration/timeline/{path}?format=…&type=…`` opens a read-only fork of the
  document (a copy the client connects its document to) and returns the points in time the
  slider can show: ``{roomId, timestamps, forkRoom, sessionId}``. The points come from the
  store's history (``history.py``): groups of updates, kept only where the content changed,
  at most ``MAX_TIMELINE_POINTS`` of them.
- ``PUT /api/collaboration/undo_redo/{room}?action=undo|redo&steps=N&forkRoom=…`` moves the
  slider: the fork's content becomes the document as it was at that point, as edits on the
  fork that its clients receive live. ``action=restore`` makes the root document equal to
  the fork: the fork's edits go to the root as a new update on top (stored with who did it,
  history kept), and every client of the root sees the change.
- ``PUT /api/collaboration/fork/{root}`` (body ``{title, description, synchronize}``),
  ``GET fork/{root}`` (the forks of a root) and ``DELETE fork/{fork}?merge=true|false``.
- Named versions, ``/api/collaboration/versions/{path}?format=…&type=…``: ``GET`` lists them
  (and how far back the history reaches), ``PUT`` with ``{"name"}`` saves the current state
  under that name (409 if taken), with ``{"name", "action": "restore"}`` makes the document
  equal to that version as a new update every client sees (restoring again undoes it),
  ``DELETE …&name=`` removes a name (the point stays, thinned by retention).
- ``GET /api/collaboration/blame/{path}?format=…&type=…``: who last changed each cell and
  line, and when (``core/blame.py``).

Permissions are the room's: reading the ``contents`` resource opens the timeline, moves
the slider, lists versions and reads blame; writing is needed to restore, to save or delete
a version, and to create, merge or delete a fork.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import ensure_async
from pycrdt import Doc
from tornado import web

from jupyter_ystore.core import threads
from jupyter_ystore.core import content as cli_content
from jupyter_ystore.core.blame import BlameError, blame
from jupyter_ystore.core.history import (
    History,
    HistoryError,
    format_time,
    group_points,
    read_history,
)
from jupyter_ystore.core.keys import check_format
from jupyter_ystore.core.ydoc import CRDTError, crdt_errors
from jupyter_ystore.errors import YDocNotFound, YStoreError
from jupyter_ystore.server.rooms import DocumentRoom, Origin, RoomError
from jupyter_ystore.server.rooms.forks import ForkInfo, ForkRoom
from jupyter_ystore.server.sessions import new_session_id
from jupyter_ystore.stores.retention import VersionExists, VersionNotFound, check_version_name

if TYPE_CHECKING:
    from jupyter_ystore.server.app import YStoreExtension

#: Most points a timeline slider gets (a long history is grouped in time buckets).
MAX_TIMELINE_POINTS = 200
#: Seconds a timeline fork stays open without a client before it is dropped.
TIMELINE_IDLE_TIMEOUT = 300.0
#: Roots the timeline leaves as they are: ``state`` holds the file's hash and dirty flag,
#: which describe the file on disk, not a version of the content.
KEPT_ROOTS = frozenset({"state"})

#: Timeline forks one document keeps at once (each holds the history in memory): opening
#: one more closes the oldest. Forks made through the fork API, per document: beyond this
#: ``PUT fork`` answers 429.
MAX_TIMELINES_PER_DOCUMENT = 4
MAX_FORKS_PER_DOCUMENT = 16
#: Seconds a fork made through the fork API stays open without a client.
FORK_IDLE_TIMEOUT = 3600.0


# ---------------------------------------------------------------------------- the timeline


def timeline_points(history: History, max_points: int = MAX_TIMELINE_POINTS) -> list[float]:
    """The times the slider offers, oldest first: the end of each group of updates (see
    ``group_points``) after which the content differs from the point before.

    Replays the history once in time order, so the cost is one pass plus one content
    comparison per point. Raises ``HistoryError`` when a record does not decode.
    """
    if not history.records:
        return []
    points, _width = group_points(history.records, max_points=max_points)
    full = history.state_at(None)  # HistoryError for undecodable records
    types = {k: v for k, v in cli_content.root_types(full).items() if k not in KEPT_ROOTS}
    doc = Doc()
    roots = cli_content.typed_roots(doc, types)
    records = history.records
    order = sorted(range(len(records)), key=lambda i: (records[i].timestamp, i))
    applied = 0
    previous: Any = None
    times: list[float] = []
    for point in points:
        while applied < len(order) and records[order[applied]].timestamp <= point.end:
            with crdt_errors():  # stored bytes: a yrs panic becomes an error for this request
                doc.apply_update(history.updates[order[applied]])
            applied += 1
        content = {name: root.to_py() for name, root in roots.items()}
        if not times or content != previous:
            times.append(point.end)
            previous = content
    return times


@dataclass
class Timeline:
    """The slider of one timeline fork: its points and where it stands."""

    history: History
    timestamps: list[float]
    position: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def move(self, action: str, steps: int) -> int:
        """The new position after ``steps`` undo (back) or redo (forward) steps."""
        delta = -steps if action == "undo" else steps
        self.position = max(0, min(len(self.timestamps) - 1, self.position + delta))
        return self.position


def _version_edit(history: History, at: float, fork_state: bytes) -> bytes | None:
    """The edit turning the fork's content into the document's content at ``at``."""
    target = history.state_at(at)
    return cli_content.reset_update(fork_state, target, skip=KEPT_ROOTS)


def _forks_of(manager: Any, root_id: str) -> list[ForkRoom]:
    """The open forks (timeline or API) of the document room ``root_id``."""
    return [
        room
        for room in manager.rooms.values()
        if isinstance(room, ForkRoom) and not room.closing and room.info.root_roomid == root_id
    ]


# ---------------------------------------------------------------------------- handlers


class _Base(APIHandler):
    auth_resource = "contents"

    def initialize(self, extension: YStoreExtension) -> None:
        self.extension = extension

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def fail(self, status: int, message: str) -> None:
        """An error the front end can show (it reads ``status`` and ``message``)."""
        self.reply(status, {"code": status, "status": message, "message": message, "error": message})

    async def can_write(self) -> bool:
        return bool(
            await ensure_async(
                self.authorizer.is_authorized(self, self.current_user, "write", "contents")
            )
        )

    @property
    def username(self) -> str:
        return getattr(self.current_user, "username", None) or "anonymous"

    async def root_room(self, room_id: str) -> DocumentRoom | None:
        """The open document room ``room_id`` (opened if needed), or None after replying."""
        manager = await self.extension.rooms()
        try:
            room = await manager.get_room(room_id)
        except RoomError as exc:
            status = {4404: 404, 4400: 400}.get(exc.code, 500)
            self.fail(status, f"room {room_id!r}: {exc}")
            return None
        if not isinstance(room, DocumentRoom):
            self.fail(400, f"room {room_id!r} is not a document")
            return None
        return room

    async def fork(self, fork_id: str) -> ForkRoom | None:
        manager = await self.extension.rooms()
        fork = manager.rooms.get(fork_id)
        if not isinstance(fork, ForkRoom) or fork.closing:
            self.fail(404, f"fork {fork_id!r} not found (closed, or the server restarted)")
            return None
        return fork


class _DocumentHandler(_Base):
    """An endpoint about the document at a file path (``?format=…&type=…``, as timeline)."""

    async def document(self, path: str) -> tuple[str, str, str] | None:
        """(file type, file id, room id) of ``path``, or None after replying."""
        file_format = self.get_query_argument("format", "")
        file_type = self.get_query_argument("type", "")
        try:
            check_format(file_format, file_type)
        except ValueError as exc:
            self.fail(400, str(exc))
            return None
        path = path.strip("/")
        file_id = await self._file_id(path)
        if file_id is None:
            self.fail(404, f"file {path!r} does not exist")
            return None
        return file_type, file_id, f"{file_format}:{file_type}:{file_id}"

    async def _file_id(self, path: str) -> str | None:
        try:
            exists = await ensure_async(self.contents_manager.file_exists(path))
        except web.HTTPError:
            return None
        if not exists:
            return None
        file_ids = self.extension.file_id_manager
        return file_ids.get_id(path) or file_ids.index(path)

    async def history(self, room: DocumentRoom, file_type: str, file_id: str) -> History:
        """The document's history, once the room's pending writes are stored; read through
        a store of its own (the room's store's watch() must not move)."""
        await room.writer.settle(10)
        async with self.extension.create_store(file_type, file_id) as store:
            return await read_history(store)


class TimelineHandler(_Base):
    """``GET timeline/{path}``: open a read-only fork and list the slider's points."""

    @web.authenticated
    @authorized("read")
    async def get(self, path: str) -> None:
        file_format = self.get_query_argument("format", "")
        file_type = self.get_query_argument("type", "")
        try:
            check_format(file_format, file_type)
        except ValueError as exc:
            return self.fail(400, str(exc))
        path = path.strip("/")
        file_id = await self._file_id(path)
        if file_id is None:
            return self.fail(404, f"file {path!r} does not exist")
        room = await self.root_room(f"{file_format}:{file_type}:{file_id}")
        if room is None:
            return None
        try:
            await room.writer.settle(10)
            # A store of its own: reading through the room's store would move where that
            # store's watch() (other servers' updates) goes on from.
            async with self.extension.create_store(file_type, file_id) as store:
                history = await read_history(store)
            timestamps = await threads.run_sync(timeline_points, history)
        except (YDocNotFound, HistoryError, YStoreError, CRDTError) as exc:
            self.log.error("Timeline of %s: %s", path, exc)
            return self.fail(500, f"the history of {path!r} cannot be read: {exc}")
        fork = ForkRoom(
            uuid.uuid4().hex,
            ForkInfo(root_roomid=room.room_id, title="timeline"),
            room.ydoc.get_update(),
            self.log,
            idle_timeout=TIMELINE_IDLE_TIMEOUT,
            read_only=True,
        )
        fork.timeline = Timeline(history, timestamps, position=max(0, len(timestamps) - 1))
        manager = await self.extension.rooms()
        timelines = sorted(
            (r for r in _forks_of(manager, room.room_id) if r.timeline is not None),
            key=lambda r: r.created,
        )
        for old in timelines[: max(0, len(timelines) + 1 - MAX_TIMELINES_PER_DOCUMENT)]:
            await old.close()
        await manager.add_room(fork)
        self.log.info(
            "Timeline of %s for %s: fork %s, %d points", path, self.username, fork.room_id, len(timestamps)
        )
        self.reply(
            200,
            {
                "roomId": room.room_id,
                "timestamps": timestamps,
                "forkRoom": fork.room_id,
                "sessionId": new_session_id(room.history_id or ""),
            },
        )

    async def _file_id(self, path: str) -> str | None:
        try:
            exists = await ensure_async(self.contents_manager.file_exists(path))
        except web.HTTPError:
            return None
        if not exists:
            return None
        file_ids = self.extension.file_id_manager
        return file_ids.get_id(path) or file_ids.index(path)


class UndoRedoHandler(_Base):
    """``PUT undo_redo/{room}``: move a timeline fork, or restore its version."""

    @web.authenticated
    @authorized("read")
    async def put(self, room_id: str) -> None:
        action = self.get_query_argument("action", "")
        fork_id = self.get_query_argument("forkRoom", "")
        try:
            steps = int(self.get_query_argument("steps", "1"))
        except ValueError:
            steps = -1
        if action not in ("undo", "redo", "restore") or steps < 0:
            return self.fail(400, "action must be undo, redo or restore and steps a count >= 0")
        fork = await self.fork(fork_id)
        if fork is None:
            return None
        timeline: Timeline | None = fork.timeline
        if timeline is None or fork.info.root_roomid != room_id:
            return self.fail(404, f"fork {fork_id!r} is not a timeline of room {room_id!r}")
        if action == "restore":
            return await self._restore(room_id, fork, timeline)
        async with timeline.lock:
            position = timeline.move(action, steps)
            if not timeline.timestamps:
                return self.reply(200, {"code": 200, "status": "nothing to show", "position": 0})
            at = timeline.timestamps[position]
            try:
                edit = await threads.run_sync(
                    _version_edit, timeline.history, at, fork.ydoc.get_update()
                )
            except (HistoryError, cli_content.ContentError, CRDTError) as exc:
                return self.fail(500, f"cannot show the version of {at}: {exc}")
            if edit is not None:
                with crdt_errors():
                    fork.ydoc.apply_update(edit)
        status = "undone" if action == "undo" else "redone"
        self.reply(200, {"code": 200, "status": status, "position": position, "timestamp": at})

    async def _restore(self, room_id: str, fork: ForkRoom, timeline: Timeline) -> None:
        if not await self.can_write():
            return self.fail(403, "restoring a version needs write access to the document")
        room = await self.root_room(room_id)
        if room is None:
            return None
        origin = Origin("client", user=self.username, reason="restore")
        async with timeline.lock:
            at = timeline.timestamps[timeline.position] if timeline.timestamps else None
            try:
                # The fork's edits are what its clients hold: the root gets exactly those...
                await room.apply_change(fork.changes(), origin)
                # ...and, if someone edited the root meanwhile, what it takes to equal the fork.
                rest = await threads.run_sync(
                    lambda: cli_content.reset_update(
                        room.ydoc.get_update(), fork.ydoc.get_update(), skip=KEPT_ROOTS
                    )
                )
                if rest is not None:
                    await room.apply_change(rest, origin)
            except cli_content.ContentError as exc:
                return self.fail(500, f"cannot restore: {exc}")
        await fork.close()
        self.log.info("Room %s restored to its version of %s by %s", room_id, at, self.username)
        self.reply(200, {"code": 200, "status": "Document restored successfully", "timestamp": at})


class ForkHandler(_Base):
    """``PUT``/``GET fork/{root}``, ``DELETE fork/{fork}?merge=``."""

    @web.authenticated
    @authorized("read")
    async def get(self, root_id: str) -> None:
        manager = await self.extension.rooms()
        forks = {
            fork_id: room.info.to_json()
            for fork_id, room in list(manager.rooms.items())
            if isinstance(room, ForkRoom)
            and room.timeline is None
            and not room.closing
            and room.info.root_roomid == root_id
        }
        self.reply(200, forks)

    @web.authenticated
    @authorized("write")
    async def put(self, root_id: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.fail(400, 'the body must be a JSON object {"title", "description", "synchronize"}')
        room = await self.root_room(root_id)
        if room is None:
            return None
        manager = await self.extension.rooms()
        if sum(1 for r in _forks_of(manager, root_id) if r.timeline is None) >= MAX_FORKS_PER_DOCUMENT:
            return self.fail(429, f"{root_id!r} has {MAX_FORKS_PER_DOCUMENT} forks already; delete one first")
        await room.writer.settle(10)
        info = ForkInfo(
            root_roomid=root_id,
            synchronize=bool(body.get("synchronize", False)),
            title=str(body.get("title", "")),
            description=str(body.get("description", "")),
        )
        fork = ForkRoom(uuid.uuid4().hex, info, room.ydoc.get_update(), self.log, idle_timeout=FORK_IDLE_TIMEOUT)
        if info.synchronize:
            fork.follow(room.ydoc)
        await manager.add_room(fork)
        self.log.info("Fork %s of %s created by %s", fork.room_id, root_id, self.username)
        self.reply(
            201,
            {
                "sessionId": new_session_id(room.history_id or ""),
                "fork_roomid": fork.room_id,
                "fork_info": info.to_json(),
            },
        )

    @web.authenticated
    @authorized("write")
    async def delete(self, fork_id: str) -> None:
        fork = await self.fork(fork_id)
        if fork is None:
            return None
        if self.get_query_argument("merge", "false") == "true":
            room = await self.root_room(fork.info.root_roomid)
            if room is None:
                return None
            await room.apply_change(
                fork.changes(), Origin("client", user=self.username, reason="fork-merge")
            )
        await fork.close()
        self.log.info("Fork %s deleted by %s", fork_id, self.username)
        self.set_status(200)
        self.finish()


class VersionsHandler(_DocumentHandler):
    """Named versions of a document: list, save, restore, delete (see the module)."""

    @web.authenticated
    @authorized("read")
    async def get(self, path: str) -> None:
        found = await self.document(path)
        if found is None:
            return None
        file_type, file_id, room_id = found
        room = await self.root_room(room_id)
        if room is None:
            return None
        try:
            history = await self.history(room, file_type, file_id)
        except (YDocNotFound, HistoryError, YStoreError) as exc:
            return self.fail(500, f"the history of {path!r} cannot be read: {exc}")
        oldest = history.oldest
        self.reply(
            200,
            {
                "versions": [_version_json(r) for r in history.records if r.name is not None],
                "since": oldest.timestamp if oldest else None,
                "since_at": format_time(oldest.timestamp) if oldest else None,
            },
        )

    @web.authenticated
    @authorized("read")
    async def put(self, path: str) -> None:
        if not await self.can_write():
            return self.fail(403, "saving or restoring a version needs write access to the document")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("action", "save") not in ("save", "restore"):
            return self.fail(400, 'the body must be {"name": NAME} or {"name": NAME, "action": "restore"}')
        try:
            name = check_version_name(body.get("name"))
        except (TypeError, ValueError) as exc:
            return self.fail(400, str(exc))
        found = await self.document(path)
        if found is None:
            return None
        file_type, file_id, room_id = found
        room = await self.root_room(room_id)
        if room is None:
            return None
        if body.get("action") == "restore":
            return await self._restore(room, file_type, file_id, name)
        await room.writer.settle(10)
        try:
            async with self.extension.create_store(file_type, file_id) as store:
                point = await store.save_version(name, saved_by=self.username)
        except VersionExists:
            return self.fail(409, f"{path!r} has a version named {name!r} already")
        except NotImplementedError as exc:
            return self.fail(501, str(exc))
        except (YDocNotFound, YStoreError) as exc:
            return self.fail(500, f"cannot save a version of {path!r}: {exc}")
        self.log.info("Version %r of %s saved by %s", name, path, self.username)
        self.reply(201, {"name": name, "time": point.end, "at": format_time(point.end), "saved_by": self.username})

    async def _restore(self, room: DocumentRoom, file_type: str, file_id: str, name: str) -> None:
        try:
            history = await self.history(room, file_type, file_id)
            version = history.version(name)
            target = await threads.run_sync(history.state_of, version)
        except HistoryError as exc:
            return self.fail(404, str(exc))
        except (YDocNotFound, YStoreError) as exc:
            return self.fail(500, f"the history cannot be read: {exc}")
        origin = Origin("client", user=self.username, reason="restore")
        try:
            # An edit on top of what the room holds now: every client sees it, the history
            # keeps what was there (restoring another version undoes it).
            update = await threads.run_sync(
                lambda: cli_content.reset_update(room.ydoc.get_update(), target, skip=KEPT_ROOTS)
            )
            if update is not None:
                await room.apply_change(update, origin)
        except (cli_content.ContentError, CRDTError) as exc:
            return self.fail(500, f"cannot restore: {exc}")
        self.log.info("Room %s restored to version %r by %s", room.room_id, name, self.username)
        self.reply(
            200,
            {
                "code": 200,
                "status": "Document restored successfully" if update else "already at that version",
                "name": name,
                "time": version.timestamp,
                "changed": update is not None,
            },
        )

    @web.authenticated
    @authorized("read")
    async def delete(self, path: str) -> None:
        if not await self.can_write():
            return self.fail(403, "deleting a version needs write access to the document")
        name = self.get_query_argument("name", "")
        found = await self.document(path)
        if found is None:
            return None
        file_type, file_id, _room_id = found
        try:
            async with self.extension.create_store(file_type, file_id) as store:
                await store.delete_version(name)
        except VersionNotFound:
            return self.fail(404, f"{path!r} has no version named {name!r}")
        except NotImplementedError as exc:
            return self.fail(501, str(exc))
        except YStoreError as exc:
            return self.fail(500, f"cannot delete the version: {exc}")
        self.log.info("Version %r of %s deleted by %s", name, path, self.username)
        self.reply(200, {"deleted": name})


def _version_json(record: Any) -> dict[str, Any]:
    return {
        "name": record.name,
        "time": record.timestamp,
        "at": format_time(record.timestamp),
        "saved_by": record.saved_by,
    }


class BlameHandler(_DocumentHandler):
    """``GET blame/{path}``: who last changed each cell and line, and when."""

    @web.authenticated
    @authorized("read")
    async def get(self, path: str) -> None:
        found = await self.document(path)
        if found is None:
            return None
        file_type, file_id, room_id = found
        room = await self.root_room(room_id)
        if room is None:
            return None
        try:
            history = await self.history(room, file_type, file_id)
            result = await threads.run_sync(blame, history)
        except BlameError as exc:
            return self.fail(400, str(exc))
        except (YDocNotFound, HistoryError, YStoreError, CRDTError) as exc:
            return self.fail(500, f"the history of {path!r} cannot be read: {exc}")
        self.reply(200, result.to_json())


def timeline_handlers(extension: YStoreExtension) -> list[tuple[str, type, dict[str, Any]]]:
    """The routes of this module, for ``YStoreExtension.initialize_handlers``."""
    kwargs = {"extension": extension}
    return [
        (r"/api/collaboration/timeline/(.*)", TimelineHandler, kwargs),
        (r"/api/collaboration/undo_redo/(.*)", UndoRedoHandler, kwargs),
        (r"/api/collaboration/fork/(.*)", ForkHandler, kwargs),
        (r"/api/collaboration/versions/(.*)", VersionsHandler, kwargs),
        (r"/api/collaboration/blame/(.*)", BlameHandler, kwargs),
    ]
