"""Load a real ``jupyter server`` with y-websocket clients typing at a human rate.

    python benchmarks/bench_server.py                       # full ramp, every server, ~1 h
    python benchmarks/bench_server.py --quick               # a short ramp, ~10 min
    python benchmarks/bench_server.py --servers ours-sqlite,collab --max-clients 40 --seconds 20
    python benchmarks/bench_server.py --tiny                # CI: 1 room x 2 clients, ours only

Servers, each measured in phases of its own, interleaved (ours, theirs, ours, ...):

- ``ours-sqlite``: this repository's extension (installed in the running interpreter), SQLite;
- ``ours-postgres``: the same with ``jupyter_ystore.PostgresYStore`` in a fresh schema
  (``--dsn``, default the local test database), dropped afterwards;
- ``collab``: jupyter-collaboration 5.0.4 (jupyter-server-ydoc 3.0.4, pycrdt-store SQLite),
  in ``benchmarks/.venv-collab``, created from the ``bench-collab`` extra on first use: it must
  never be installed beside ours (it would serve /api/collaboration itself).

A load step opens R notebooks with C clients each (``benchmarks/_loadclient.py``, a process of
its own: real websockets, PUT session then the room with the returned sessionId, sync step 1/2,
awareness as the front end sends it). Every client makes one edit every 100–300 ms (the mix of
``benchmarks/data/updates-50000.bin``: typing, backspaces, pastes, cell inserts and deletes,
executions replacing outputs), each edit an update and an awareness (cursor) frame
(`--cursor-every S`: a cursor at most every S seconds). Reported per step: updates/s sent and
relayed, edit → other client latency p50/p99, server CPU seconds per 1,000 updates, RSS at rest
and per open room, CPU per open room at rest (all synced, nobody typing), the clients' own CPU.
A step holds when p99 ≤ 100 ms and nothing is lost: every client converges to what all edits
make, a new client gets that from the server, the file matches after a save request, and the
store replays to it after the server stopped. Then room open times (PUT → connect → sync step
2) of notebooks with 1,000 and 100,000 stored updates: cold (new server process), reopened
(room closed, server warm), joined (room open). Whether each server sets TCP_NODELAY is read on
its end of a websocket (pidfd_getfd + getsockopt).

Only 127.0.0.1 traffic; every loop is bounded in time. Not a test: ``--tiny`` is the exception
(it exits 1 when an invariant fails; tests/test_bench_server.py runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _loadclient as lc  # noqa: E402

STREAM = HERE / "data" / "updates-50000.bin"
COLLAB_VENV = HERE / ".venv-collab"
DEFAULT_DSN = os.environ.get("JUPYTER_YSTORE_TEST_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
TOKEN = "bench-token"
OURS_SRC: list[str] = []  # --ours-src: put first on our servers' PYTHONPATH
OURS_CONFIG: dict[str, Any] = {}  # --ours-config: merged into our servers' config
P99_LIMIT_MS = 100.0
ALL_SERVERS = ("ours-sqlite", "ours-postgres", "collab")
# Up to 64x10: the faster VMs hold 40x10 (each server leaves the ramp at its first failed step).
FULL_STEPS = [
    (1, 2), (1, 5), (2, 5), (4, 5), (3, 10), (4, 10), (6, 10), (8, 10), (12, 10), (16, 10), (24, 10),
    (32, 10), (40, 10), (48, 10), (64, 10),
]
QUICK_STEPS = [(1, 2), (2, 5), (4, 10), (8, 10)]


# --------------------------------------------------------------------------- /proc


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (all cores, /proc/stat), to tell how much
    other processes took during a window on this shared host."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU of every PostgreSQL process on the machine (its backends do our SQL)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += proc_cpu(int(entry.name))
            except OSError:
                continue
    return total


def wait_idle(pid: int, timeout: float, below: float = 0.05, window: float = 0.5) -> float:
    """Seconds until the process uses less than ``below`` of a core over ``window`` (its
    backlog done: store writes, saves), at most ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = proc_cpu(pid)
        time.sleep(window)
        if proc_cpu(pid) - before < below * window:
            break
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- servers


def collab_python() -> str:
    """The virtualenv with jupyter-collaboration, made from the ``bench-collab`` extra."""
    python = COLLAB_VENV / "bin" / "python"
    probe = [str(python), "-c", "import jupyter_server_ydoc, jupyter_server_fileid"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python)
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench-collab"]
    print(f"creating {COLLAB_VENV} with {extra} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(COLLAB_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *extra], check=True)
    return str(python)


@dataclass
class Kind:
    """How to start one of the servers under test."""

    name: str
    python: str
    config: dict[str, Any]
    store: str  # sqlite | postgres | collab
    schema: str = ""


def make_kind(name: str, dsn: str, cleanup_delay: float | None = None) -> Kind:
    off = {
        "jupyterlab": False,
        "jupyter_lsp": False,
        "notebook_shim": False,
        "jupyter_server_terminals": False,
        "jupyter_collaboration": False,
        "jupyter_server_ydoc_legacy": False,
    }
    if name == "collab":
        exts = {**off, "jupyter_server_ydoc": True, "jupyter_server_fileid": True, "jupyter_ystore": False}
        config: dict[str, Any] = {"ServerApp": {"jpserver_extensions": exts}}
        if cleanup_delay is not None:
            config["YDocExtension"] = {"document_cleanup_delay": cleanup_delay}
        return Kind(name, collab_python(), config, "collab")
    exts = {**off, "jupyter_ystore": True, "jupyter_server_fileid": True, "jupyter_server_ydoc": False}
    config = {"ServerApp": {"jpserver_extensions": exts}, "YStoreExtension": {}}
    if cleanup_delay is not None:
        config["YStoreExtension"]["document_cleanup_delay"] = cleanup_delay
    for section, values in OURS_CONFIG.items():
        config.setdefault(section, {}).update(values)
    if name == "ours-postgres":
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        config["YStoreExtension"]["ystore_class"] = "jupyter_ystore.PostgresYStore"
        config["PostgresYStore"] = {"dsn": dsn, "schema": schema}
        return Kind(name, sys.executable, config, "postgres", schema)
    return Kind(name, sys.executable, config, "sqlite")


class Server:
    """A ``jupyter server`` subprocess on 127.0.0.1 with a token; only the extensions asked."""

    def __init__(self, kind: Kind, root: Path, home: Path) -> None:
        self.kind, self.root, self.home = kind, root, home
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90.0) -> Server:
        self.port = free_port()
        config_dir = self.home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "ServerApp": {
                "ip": "127.0.0.1",
                "port": self.port,
                "port_retries": 0,
                "open_browser": False,
                "root_dir": str(self.root),
                "allow_root": True,
            },
            "IdentityProvider": {"token": TOKEN},
            "BaseFileIdManager": {"db_path": str(self.home / "file_id_manager.db")},
        }
        for section, values in self.kind.config.items():
            config.setdefault(section, {}).update(values)
        config_file = config_dir / "jupyter_server_config.json"
        config_file.write_text(json.dumps(config))
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTER", "VIRTUAL_ENV", "PYTHONPATH"))
        }
        env.update(
            {
                "JUPYTER_CONFIG_DIR": str(config_dir),
                "JUPYTER_DATA_DIR": str(self.home / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
                "JUPYTER_PLATFORM_DIRS": "1",
                "HOME": str(self.home),
                "PATH": str(Path(self.kind.python).parent) + os.pathsep + env.get("PATH", ""),
            }
        )
        if OURS_SRC and self.kind.store != "collab":
            env["PYTHONPATH"] = OURS_SRC[0]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.kind.python, "-m", "jupyter_server", f"--config={config_file}"],
                cwd=str(self.root),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{self.port}/api/status", headers={"Authorization": f"token {TOKEN}"}
                )
                urllib.request.urlopen(req, timeout=5).read()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.kind.name} did not start:\n{self.log()[-3000:]}") from None
                time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (rooms flush and close), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# --------------------------------------------------------------------------- documents


def base_notebook(updates: int = 3000) -> dict[str, Any]:
    """The notebook every room starts from: the stream's document after ``updates`` edits."""
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc

    doc = Doc()
    data = STREAM.read_bytes()
    pos = 0
    for _ in range(updates):
        length, pos = lc.read_var_uint(data, pos)
        doc.apply_update(data[pos : pos + length])
        pos += length
    return YNotebook(doc).get()


def write_notebook(path: Path, content: dict[str, Any]) -> None:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nbformat.from_dict(content)), encoding="utf-8")


def comparable(content: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must match between the shared document and a file: each cell's type, source,
    outputs and execution count."""
    out = []
    for cell in content.get("cells", []):
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        outputs = json.loads(json.dumps(cell.get("outputs", []), sort_keys=True))
        for output in outputs:
            if isinstance(output.get("text"), list):
                output["text"] = "".join(output["text"])
        out.append((cell.get("cell_type"), source, json.dumps(outputs, sort_keys=True), cell.get("execution_count")))
    return out


def file_matches(path: Path, expected: dict[str, Any]) -> bool:
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return False
    return comparable(nb) == comparable(expected)


def store_document(kind: Kind, root: Path, key: str, dsn: str) -> dict[str, Any]:
    """Replay what the server's store holds for ``key`` (after the server stopped)."""
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc

    doc = Doc()
    if kind.store == "collab":
        import sqlite3

        conn = sqlite3.connect(root / ".jupyter_ystore.db")
        try:
            row = conn.execute("SELECT checkpoint, timestamp FROM ycheckpoints WHERE path = ?", (key,)).fetchone()
            since = 0.0
            if row:
                doc.apply_update(row[0])
                since = row[1]
            for (update,) in conn.execute(
                "SELECT yupdate FROM yupdates WHERE path = ? AND timestamp >= ? ORDER BY timestamp", (key, since)
            ):
                doc.apply_update(update)
        finally:
            conn.close()
        return YNotebook(doc).get()

    async def replay() -> None:
        if kind.store == "postgres":
            from jupyter_ystore import PostgresYStore

            store: Any = PostgresYStore(key, dsn=dsn, schema=kind.schema)
        else:
            from jupyter_ystore import SQLiteYStore

            store = SQLiteYStore(key, db_path=str(root / ".jupyter_ystore.db"))
        async with store:
            await store.apply_updates(doc)

    asyncio.run(replay())
    return YNotebook(doc).get()


def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


# --------------------------------------------------------------------------- a load step


@dataclass
class StepResult:
    server: str
    rooms: int
    clients: int
    round: int
    ok: bool = False
    failures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.rooms * self.clients


class Worker:
    """The load-client process, driven line by line (``@@tag json`` on its stdout)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_loadclient.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def expect(self, tag: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        import select

        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load clients exited ({self.proc.wait()}) before {tag!r}")
            if line.startswith(f"@@{tag} "):
                return json.loads(line[len(tag) + 3 :])
            sys.stdout.write("  [clients] " + line)
        raise TimeoutError(f"load clients: no {tag!r} within {timeout:.0f} s")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def metrics_text(server: Server) -> str:
    """Our server's ``/metrics``."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics", headers={"Authorization": f"token {TOKEN}"}
    )
    return urllib.request.urlopen(req, timeout=10).read().decode()


def labelled_counter(server: Server, name: str, label: str) -> dict[str, float]:
    """A counter of our server's ``/metrics`` by the value of ``label``."""
    found = {}
    for line in metrics_text(server).splitlines():
        if line.startswith(name + "{"):
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            found[value] = float(line.rsplit(" ", 1)[1])
    return found


def paused_windows(server: Server) -> dict[str, float]:
    """Our server's time in windows that ended in a pause over 20 ms, by what it went to."""
    return labelled_counter(server, "jupyter_ystore_event_loop_paused_window_seconds_total", "cause")


def pause_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """What the windows that ended in a pause went to during a run (% of their time), or
    None without such a window."""
    delta = {cause: after.get(cause, 0.0) - before.get(cause, 0.0) for cause in after}
    total = sum(delta.values())
    if total <= 0:
        return None
    return {cause: round(100 * seconds / total, 1) for cause, seconds in delta.items()}


def histogram_buckets(server: Server, name: str) -> dict[float, float]:
    """A histogram of our server's ``/metrics``: cumulative count per bound."""
    text = metrics_text(server)
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def loop_lag_buckets(server: Server) -> dict[float, float]:
    """Our server's event-loop lag histogram."""
    return histogram_buckets(server, "jupyter_ystore_event_loop_lag_seconds")


def full_collection_buckets(server: Server) -> dict[float, float]:
    """Our server's full garbage collections (their durations)."""
    return histogram_buckets(server, "jupyter_ystore_gc_full_collection_seconds")


def full_collections(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Full garbage collections during the window: how many, and the bucket of the longest
    (ms). Each one stops every thread of the server, the event loop's included."""
    longest = loop_pauses(before, after)["loop_pause_max_ms"]
    inf = float("inf")
    return {"full_gcs": int(after.get(inf, 0.0) - before.get(inf, 0.0)), "full_gc_max_ms": longest}


def loop_pauses(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """During the window: the bucket holding the longest pause (its lower and upper bound,
    ms) and how many wake-ups came over 20 ms late. The monitor wakes every 50 ms."""
    delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in sorted(after)}
    bounds = sorted(delta)
    longest = None
    for i, bound in enumerate(bounds):
        below = delta[bounds[i - 1]] if i else 0.0
        if delta[bound] > below:
            longest = (bounds[i - 1] if i else 0.0, bound)
    over_20 = delta.get(float("inf"), 0.0) - delta.get(0.02, 0.0)
    over_10 = delta.get(float("inf"), 0.0) - delta.get(0.01, 0.0)
    return {
        "loop_pause_max_ms": None if longest is None else [1000 * longest[0], 1000 * longest[1]],
        "loop_pauses_over_20ms": int(over_20),
        # (more frequent than those over 20 ms: tells two settings apart in fewer runs)
        "loop_pauses_over_10ms": int(over_10),
    }


#: Seconds of the at-rest CPU measurement before each typing window.
IDLE_WINDOW = 4.0


def run_step(
    kind_name: str, rooms: int, clients: int, seconds: float, round_no: int, args: argparse.Namespace, script: Path, base: dict[str, Any]
) -> StepResult:
    """One server, R rooms × C clients, ``seconds`` of typing; a fresh server and store."""
    result = StepResult(kind_name, rooms, clients, round_no)
    kind = make_kind(kind_name, args.dsn)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind_name}-"))
    root, home = tmp / "root", tmp / "home"
    paths = [f"room{r:02d}.ipynb" for r in range(rooms)]
    for path in paths:
        write_notebook(root / path, base)
    server = Server(kind, root, home)
    worker: Worker | None = None
    d = result.data
    try:
        server.start()
        time.sleep(1.0)
        d["rss_rest"] = proc_rss_mib(server.pid)
        d["clients_idle"] = bool(args.clients_idle)
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "token": TOKEN,
            "rooms": paths,
            "clients": clients,
            "seconds": seconds,
            "seed": 1000 * round_no + rooms * 31 + clients,
            "cursor_every": args.cursor_every,
            "script": str(script),
            "out": str(tmp),
            "drain": 15,
            "sched_idle": args.clients_idle,
        }
        worker = Worker(spec)
        ready = worker.expect("ready", 300)
        d["rss_synced"] = proc_rss_mib(server.pid)
        # Every client connected and synced, nobody typing: what open rooms cost at rest
        # (file polls, timers); a hub's idle notebooks pay it all day.
        time.sleep(1.0)
        idle0, idle_t0 = proc_cpu(server.pid), time.monotonic()
        time.sleep(IDLE_WINDOW)
        d["idle_cpu_per_room_ms"] = (
            1000 * (proc_cpu(server.pid) - idle0) / (time.monotonic() - idle_t0) / rooms
        )
        spy = None
        if args.py_spy and kind.store != "collab":
            target = args.py_spy.parent / f"{args.py_spy.name}-{kind_name}-{rooms}x{clients}-r{round_no}.txt"
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200",
                 "--nonblocking", "--threads", "--output", str(target)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        cpu0, pg0, wcpu0 = proc_cpu(server.pid), postgres_cpu(), proc_cpu(worker.proc.pid)
        busy0 = machine_busy()
        t0 = time.monotonic()
        lag0 = loop_lag_buckets(server) if kind.store != "collab" else None
        gc0 = full_collection_buckets(server) if lag0 is not None else None
        windows0 = paused_windows(server) if lag0 is not None else None
        worker.send("go")
        worker.expect("typed", seconds + 120)
        lag_typed = loop_lag_buckets(server) if lag0 is not None else None
        windows_typed = paused_windows(server) if lag0 is not None else None
        gc_typed = full_collection_buckets(server) if lag0 is not None else None
        done = worker.expect("done", 120)
        elapsed = time.monotonic() - t0
        if lag0 is not None:
            # the whole run (typing, then the drain while rooms relay the last edits and
            # autosave), and the typing alone
            d.update(loop_pauses(lag0, loop_lag_buckets(server)))
            typing = loop_pauses(lag0, lag_typed)
            d["loop_pause_max_ms_typing"] = typing["loop_pause_max_ms"]
            d["loop_pauses_over_20ms_typing"] = typing["loop_pauses_over_20ms"]
            d["loop_pauses_over_10ms_typing"] = typing["loop_pauses_over_10ms"]
            assert windows0 is not None and windows_typed is not None
            d["paused_window_pct_typing"] = pause_shares(windows0, windows_typed)
            assert gc0 is not None and gc_typed is not None
            d.update(full_collections(gc0, full_collection_buckets(server)))
            typed = full_collections(gc0, gc_typed)
            d["full_gcs_typing"] = typed["full_gcs"]
            d["full_gc_max_ms_typing"] = typed["full_gc_max_ms"]
        cpu1, pg1, wcpu1 = proc_cpu(server.pid), postgres_cpu(), proc_cpu(worker.proc.pid)
        busy1 = machine_busy()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        d["rss_loaded"] = proc_rss_mib(server.pid)
        out = worker.expect("result", 300)
        worker.finish()
        d.update(out)
        d["setup_seconds"] = ready["setup_seconds"]
        d["server_cpu"] = cpu1 - cpu0
        d["postgres_cpu"] = pg1 - pg0 if kind.store == "postgres" else 0.0
        d["elapsed"] = elapsed  # window + drain
        d["worker_cpu"] = wcpu1 - wcpu0
        d["drained"] = done["drained"]
        window = out["window"]
        d["updates_per_s"] = out["sent"] / window
        d["relayed_per_s"] = out["relayed_in_window"] / window
        d["cpu_per_1000"] = 1000 * d["server_cpu"] / max(1, out["sent"])
        d["pg_cpu_per_1000"] = 1000 * d["postgres_cpu"] / max(1, out["sent"])
        d["server_cpu_pct"] = 100 * d["server_cpu"] / elapsed
        d["client_cpu_pct"] = 100 * d["worker_cpu"] / elapsed
        others = (busy1 - busy0) - d["server_cpu"] - d["worker_cpu"] - d["postgres_cpu"]
        d["other_cpu_pct"] = max(0.0, 100 * others / elapsed)
        d["rss_per_room"] = (d["rss_loaded"] - d["rss_rest"]) / rooms
        if spy is not None and target.exists():
            d["profile"] = profile_summary(target, out["sent"], d["server_cpu"])
            print(d["profile"], flush=True)
        # the server's backlog (store writes, saves) before the files and the store are read
        d["settle_seconds"] = wait_idle(server.pid, 120)
        # the files after the save request (autosave may still be on its way: bounded wait)
        expected = [json.loads((tmp / f"expected-{r}.json").read_text()) for r in range(rooms)]
        deadline = time.monotonic() + 15
        while True:
            bad_files = [p for r, p in enumerate(paths) if not file_matches(root / p, expected[r])]
            if not bad_files or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        server.stop()
        bad_stores = []
        for r, file_id in enumerate(out["file_ids"]):
            try:
                if comparable(store_document(kind, root, f".notebook:{file_id}.y", args.dsn)) != comparable(expected[r]):
                    bad_stores.append(paths[r])
            except Exception as exc:  # reported, not raised: one bad store fails the step
                bad_stores.append(f"{paths[r]} ({type(exc).__name__}: {exc})")
        checks = {
            f"p99 {out['p99_ms']} ms > {P99_LIMIT_MS:.0f} ms": (out["p99_ms"] or 0) > P99_LIMIT_MS,
            f"{out['missing']} deliveries still missing 15 s after the window": out["missing"] > 0,
            # with deliveries still missing, the documents cannot agree yet: that is the line above
            f"{out['diverged_clients']} clients diverged": out["diverged_clients"] > 0 and not out["missing"],
            f"the server's document differs in {out['server_diverged_rooms']} rooms": out["server_diverged_rooms"] > 0
            and not out["missing"],
            f"files differ after save: {bad_files}": bool(bad_files),
            f"stores do not replay to the document: {bad_stores}": bool(bad_stores),
            f"{out['closed_early']} clients disconnected ({out['close_codes']})": out["closed_early"] > 0,
            f"{out['negative']} arrivals before their send": out["negative"] > 0,
            "no latency sample": out["latency_n"] == 0,
        }
        result.failures = [text for text, failed in checks.items() if failed]
        result.ok = not result.failures
    except Exception as exc:
        result.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        if worker is not None and worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
        server.stop()
        server.kill()
        if kind.schema:
            try:
                drop_schema(args.dsn, kind.schema)
            except Exception as exc:
                print(f"  (could not drop schema {kind.schema}: {exc})")
        log = server.log()
        d["server_tracebacks"] = log.count("Traceback")
        d["database_locked"] = log.count("database is locked")
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


#: Where a sample of our server's CPU goes, first match wins (function names, not paths:
#: they survive the package's moves). Order matters: relays run inside the receive loop.
PROFILE_PARTS = [
    ("SQLite thread (commits, pending-table moves)", ("ystore-sqlite",)),
    ("PostgreSQL driver (asyncpg)", ("asyncpg",)),
    ("update: relay to every client", ("_relay_update",)),
    ("awareness: check + relay to every client", ("AwarenessRelay.handle", "read_awareness_entries")),
    ("update: read, guard, apply to the room's document", ("DocumentGuard", "receive_update", "update_guard")),
    ("update: store write (event-loop side)", ("WritePipeline", "YStore.write", "_checked_update")),
    ("file: poll for outside changes, save", ("FileSync.poll", "fingerprints", "DocumentFile", "save", "nbformat")),
    ("websocket: read and unframe (tornado)", ("_receive_frame", "_read_bytes", "read_from_fd")),
    ("websocket: writes", ("write_message", "write_to_fd", "write_now")),
    ("event loop, selectors, task switches, other", ("",)),
]


#: Leaf frames that wait (epoll, a lock, a queue): not CPU, left out of the shares. The
#: SQLite thread's own loop has no Python frame below it while it blocks on its job queue
#: (a C call), so its self samples are that wait.
IDLE_LEAVES = (
    "EpollSelector.select",
    "Condition.wait",
    "Event.wait",
    "SimpleQueue.get",
    "Queue.get",
    "_wait_for_tstate_lock",
    "SharedDatabase._main (",
)


def profile_summary(path: Path, edits: int, cpu_seconds: float) -> str:
    """Share of the samples per part of the server, and µs of CPU per edit for each (the
    server's CPU in the window divided among the parts by their samples)."""
    parts = {name: 0 for name, _ in PROFILE_PARTS}
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.rsplit(";", 1)[-1]
        if any(wait in leaf for wait in IDLE_LEAVES):
            idle += n  # waiting, though sampled as running (py-spy --nonblocking)
            continue
        total += n
        for name, markers in PROFILE_PARTS:
            if any(marker in stack for marker in markers):
                parts[name] += n
                break
    if not total:
        return "  (no samples)"
    per_edit = 1e6 * cpu_seconds / max(1, edits)
    lines = [
        f"  where our server's CPU went ({total} busy samples, {idle} waiting left out; "
        f"{per_edit:.0f} µs of CPU per edit):"
    ]
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {100 * n / total:5.1f}%  {per_edit * n / total:6.0f} µs/edit  {name}")
    return "\n".join(lines)


def noisy_failure(res: StepResult) -> bool:
    """Failed on latency alone while other processes used over a quarter of a core."""
    latency_only = res.failures and all(f.startswith("p99 ") for f in res.failures)
    return bool(latency_only) and res.data.get("other_cpu_pct", 0) > 25


def step_line(res: StepResult) -> str:
    d = res.data
    if "p50_ms" not in d:
        return f"{res.server:13s} {res.rooms:2d}x{res.clients:<2d} round {res.round}: FAILED {res.failures}"
    return (
        f"{res.server:13s} {res.rooms:2d}x{res.clients:<2d} round {res.round}: "
        f"{d['updates_per_s']:7.1f} upd/s stored, {d['relayed_per_s']:8.1f}/s relayed, "
        f"p50 {d['p50_ms']:6.1f} ms p99 {d['p99_ms']:7.1f} ms ({d.get('band_40ms_pct', 0):.1f}% at 38–48 ms), "
        f"CPU {d['cpu_per_1000']:5.2f} s/1000 upd ({d['server_cpu_pct']:.0f}% of a core"
        + (f", PostgreSQL {100 * d['postgres_cpu'] / d['elapsed']:.0f}%" if d.get("postgres_cpu") else "")
        + f"), at rest {d.get('idle_cpu_per_room_ms', 0):.2f} ms CPU/s a room, "
        f"RSS {d['rss_rest']:.0f} MiB at rest +{d['rss_per_room']:.1f}/room, "
        f"settled {d.get('settle_seconds', 0):.1f} s, "
        f"clients {d['client_cpu_pct']:.0f}% CPU (send lag p99 {d['send_lag_p99_ms']} ms), "
        f"other processes {d.get('other_cpu_pct', 0):.0f}%"
        + (
            f", the client's own stalls while typing: {len(d['client_late_wakeups'])} wake-ups over 20 ms late"
            + (f" (worst {max(ms for _, ms in d['client_late_wakeups']):.0f} ms)" if d["client_late_wakeups"] else "")
            + f", {len(d['client_full_gcs'])} full collections"
            if "client_late_wakeups" in d
            else ""
        )
        + (
            f", longest event-loop pause {d['loop_pause_max_ms'][0]:.0f}–{d['loop_pause_max_ms'][1]:.0f} ms "
            f"({d['loop_pauses_over_20ms']} over 20 ms"
            + (
                f"; while typing {d['loop_pause_max_ms_typing'][0]:.0f}–{d['loop_pause_max_ms_typing'][1]:.0f} ms, "
                f"{d['loop_pauses_over_20ms_typing']} over 20 ms"
                + (
                    ", their windows: "
                    + ", ".join(
                        f"{cause} {pct:.0f}%"
                        for cause, pct in sorted(d["paused_window_pct_typing"].items(), key=lambda kv: -kv[1])
                    )
                    if d.get("paused_window_pct_typing")
                    else ""
                )
                if d.get("loop_pause_max_ms_typing")
                else ""
            )
            + ")"
            if d.get("loop_pause_max_ms")
            else ""
        )
        + (
            f", full garbage collections {d['full_gcs']} ({d['full_gcs_typing']} while typing"
            + (
                f"; longest {d['full_gc_max_ms'][0]:.0f}–{d['full_gc_max_ms'][1]:.0f} ms"
                if d.get("full_gc_max_ms")
                else ""
            )
            + ")"
            if "full_gcs" in d
            else ""
        )
        + ("" if res.ok else f"  FAIL: {'; '.join(res.failures)}")
        + (f"\n    server log: {d['server_tracebacks']} tracebacks ({d.get('database_locked', 0)} 'database is locked')" if d.get("server_tracebacks") else "")
        + (f"\n    slow deliveries (second of the window, count > 50 ms, worst ms, rooms): {d['slow_seconds']}" if d.get("slow_seconds") else "")
    )


# --------------------------------------------------------------------------- open time


def emulate_collab_history(db: Path, key: str, updates: list[bytes]) -> None:
    """Append ``updates`` to jupyter-collaboration's store as its own writes would, row by row
    with a checkpoint every 100 writes (pycrdt-store 0.1.5's ``SQLiteYStore.write``), without
    waiting for its fsync per update. The rows before (its initial state) are its own."""
    import sqlite3

    from pycrdt import Doc

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT yupdate, timestamp FROM yupdates WHERE path = ? ORDER BY timestamp", (key,)).fetchall()
        doc = Doc()
        for update, _ in rows:
            doc.apply_update(update)
        count = len(rows)
        ts = max((t for _, t in rows), default=time.time() - 3600) + 1e-4
        batch = []
        with conn:
            for update in updates:
                count += 1
                ts += 1e-4
                if count % 100 == 0:
                    conn.execute(
                        "INSERT OR REPLACE INTO ycheckpoints (path, checkpoint, timestamp) VALUES (?, ?, ?)",
                        (key, doc.get_update(), ts),
                    )
                batch.append((key, update, b"", ts))
                doc.apply_update(update)
            conn.executemany("INSERT INTO yupdates VALUES (?, ?, ?, ?)", batch)
    finally:
        conn.close()


def history_updates(base_state: bytes, script: list[lc.Op], count: int, seed: int) -> list[bytes]:
    """``count`` edits (the stream's mix) made by one person on the synced document."""
    import random

    plan = lc.plan_client(base_state, script, 0, count * 1.0, random.Random(seed), "history", 1.0, 1.0)
    return plan.updates[:count]


def socket_nodelay(pid: int, server_port: int, client_port: int) -> str:
    """TCP_NODELAY of the server's end of one connection, read from the socket itself: the
    socket is found through /proc/net/tcp (ports → inode) and /proc/<pid>/fd, duplicated
    with pidfd_getfd(2) and asked with getsockopt."""
    import ctypes

    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote = cols[1], cols[2]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                inode = cols[9]
    if inode is None:
        return "unknown (connection not found)"
    fd = None
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(link) == f"socket:[{inode}]":
                fd = int(link.name)
        except OSError:
            continue
    if fd is None:
        return "unknown (socket not found in the server)"
    try:
        pidfd = os.pidfd_open(pid)
        libc = ctypes.CDLL(None, use_errno=True)
        copy = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd on x86_64 and arm64
        os.close(pidfd)
        if copy < 0:
            return f"unknown (pidfd_getfd: {os.strerror(ctypes.get_errno())})"
        sock = socket.socket(fileno=copy)
        try:
            value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            sock.close()  # closes the copy only
    except (OSError, AttributeError) as exc:
        return f"unknown ({exc})"
    return "yes" if value else "no"


def check_nodelay(server: Server, path: str) -> str:
    """Open a room and read TCP_NODELAY on the server's end of that websocket."""

    async def probe() -> str:
        session = lc.put_session(f"http://127.0.0.1:{server.port}", TOKEN, path)
        client = await lc.connect("127.0.0.1", server.port, lc.room_target(session, TOKEN), path)
        try:
            await asyncio.wait_for(client.synced, 60)
            await asyncio.sleep(0.2)
            assert client.transport is not None
            port = client.transport.get_extra_info("sockname")[1]
            return socket_nodelay(server.pid, server.port, port)
        finally:
            client.close()

    return asyncio.run(probe())


def open_times(kind_name: str, sizes: list[int], args: argparse.Namespace, script_ops: list[lc.Op], base: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Open times of notebooks with ``sizes`` stored updates: cold, reopened, joined."""
    kind = make_kind(kind_name, args.dsn, cleanup_delay=1.0)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-open-{kind_name}-"))
    root, home = tmp / "root", tmp / "home"
    paths = {size: f"history{size}.ipynb" for size in sizes}
    for path in paths.values():
        write_notebook(root / path, base)
    server = Server(kind, root, home)
    result: dict[str, Any] = {}

    def run(coro: Any) -> Any:
        return asyncio.run(coro)

    async def base_state(path: str) -> tuple[bytes, str]:
        session = lc.put_session(f"http://127.0.0.1:{server.port}", TOKEN, path)
        client = await lc.connect("127.0.0.1", server.port, lc.room_target(session, TOKEN), path)
        await asyncio.wait_for(client.synced, 60)
        client.close()
        assert client.step2 is not None
        return client.step2, session["fileId"]

    try:
        server.start()
        histories = {}
        for size, path in paths.items():
            state, file_id = run(base_state(path))
            histories[size] = (history_updates(state, script_ops, size, size), file_id, state)
        if kind.store == "collab":
            time.sleep(2.5)  # rooms close (cleanup delay 1 s), its initial rows written
            server.stop()
            for size, (updates, file_id, state) in histories.items():
                emulate_collab_history(root / ".jupyter_ystore.db", f".notebook:{file_id}.y", updates)
                from jupyter_ydoc import YNotebook
                from pycrdt import Doc, merge_updates

                doc = Doc()
                doc.apply_update(state)
                doc.apply_update(merge_updates(*updates))
                write_notebook(root / paths[size], YNotebook(doc).get())
            server.start()
            for size, path in paths.items():  # one open + save, as after a session
                run(lc.send_history("127.0.0.1", server.port, TOKEN, path, []))
            result["populate"] = "rows written in its layout (see emulate_collab_history), then opened and saved once"
        else:
            took = {}
            for size, (updates, _, _) in histories.items():
                took[size] = run(lc.send_history("127.0.0.1", server.port, TOKEN, paths[size], updates))
            result["populate"] = {str(s): f"{len(histories[s][0]) / t:.0f} updates/s through the server" for s, t in took.items()}
            print(f"  {kind_name:13s} history sent: {result['populate']}", flush=True)
        time.sleep(2.5)
        for size, path in paths.items():
            cold, reopen, joined = [], [], []
            for _ in range(repeats):
                server.stop()
                server.start()
                cold.append(run(lc.time_open("127.0.0.1", server.port, TOKEN, path)))
                time.sleep(2.5)  # the room closes (cleanup delay 1 s)
                reopen.append(run(lc.time_open("127.0.0.1", server.port, TOKEN, path)))

                async def hold_and_join() -> dict[str, float]:
                    session = lc.put_session(f"http://127.0.0.1:{server.port}", TOKEN, path)
                    holder = await lc.connect("127.0.0.1", server.port, lc.room_target(session, TOKEN), path)
                    await asyncio.wait_for(holder.synced, 600)
                    try:
                        return await lc.time_open("127.0.0.1", server.port, TOKEN, path)
                    finally:
                        holder.close()

                joined.append(run(hold_and_join()))
                time.sleep(2.5)
            result[str(size)] = {
                name: {
                    part: statistics.median(x[part] for x in runs) * 1000
                    for part in ("session", "connect_to_step2", "total")
                }
                for name, runs in (("cold", cold), ("reopen", reopen), ("joined", joined))
            }
            print(
                f"  {kind_name:13s} {size:>7,} updates: "
                + ", ".join(
                    f"{name} {v['connect_to_step2']:.0f} ms (PUT→step 2 {v['total']:.0f} ms)"
                    for name, v in result[str(size)].items()
                ),
                flush=True,
            )
        small = min(paths)
        result["tcp_nodelay"] = check_nodelay(server, paths[small])
        print(f"  {kind_name:13s} sets TCP_NODELAY on its websockets: {result['tcp_nodelay']}", flush=True)
        result["out_of_sync_logged"] = server.log().count("out-of-sync")
    finally:
        server.stop()
        server.kill()
        if kind.schema:
            try:
                drop_schema(args.dsn, kind.schema)
            except Exception as exc:
                print(f"  (could not drop schema {kind.schema}: {exc})")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if len(values) <= 1:
        return fmt.format(values[0]) if values else "–"
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


#: The issue's target for the event loop's longest pause at the largest load held (ms).
PAUSE_TARGET_MS = 20.0


def pause_at(results: list[StepResult], server: str, step: tuple[int, int]) -> str:
    """The longest event-loop pause of ``server``'s runs of ``step`` (the bucket holding it,
    over every run and the whole window: rooms opening, typing, settling), and whether it
    is within ``PAUSE_TARGET_MS``; empty when the server does not measure it (theirs)."""
    pauses = [
        r.data["loop_pause_max_ms"]
        for r in results
        if r.server == server and (r.rooms, r.clients) == step and r.data.get("loop_pause_max_ms")
    ]
    if not pauses:
        return ""
    low, high = max(pauses, key=lambda bucket: bucket[1])
    verdict = "within" if high <= PAUSE_TARGET_MS else "over"
    return (
        f" (longest event-loop pause there {low:.0f}–{high:.0f} ms in {len(pauses)} run(s): "
        f"{verdict} the {PAUSE_TARGET_MS:.0f} ms target)"
    )


def report(results: list[StepResult], servers: list[str], opens: dict[str, Any]) -> str:
    lines = []
    lines.append("| server | R×C | updates/s stored | relayed/s | p50 ms | p99 ms | CPU s / 1,000 upd | server CPU % | CPU at rest ms/s a room | RSS rest MiB | RSS / room MiB | clients CPU % | others CPU % | holds |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    steps = sorted({(r.rooms, r.clients) for r in results}, key=lambda rc: (rc[0] * rc[1], rc))
    held: dict[str, tuple[int, int] | None] = {s: None for s in servers}
    for rooms, clients in steps:
        for server in servers:
            runs = [r for r in results if r.server == server and (r.rooms, r.clients) == (rooms, clients)]
            if not runs:
                continue
            good = [r for r in runs if "p50_ms" in r.data]
            ok = all(r.ok for r in runs)
            if ok:
                held[server] = (rooms, clients)

            def col(name: str, fmt: str = "{:.1f}") -> str:
                return spread([r.data[name] for r in good if r.data.get(name) is not None], fmt)

            lines.append(
                f"| {server} | {rooms}×{clients} | {col('updates_per_s')} | {col('relayed_per_s', '{:.0f}')} | "
                f"{col('p50_ms')} | {col('p99_ms')} | {col('cpu_per_1000', '{:.2f}')}"
                + (f" + PostgreSQL {col('pg_cpu_per_1000', '{:.2f}')}" if server == "ours-postgres" else "")
                + f" | {col('server_cpu_pct', '{:.0f}')} | {col('idle_cpu_per_room_ms', '{:.2f}')} | "
                f"{col('rss_rest', '{:.0f}')} | {col('rss_per_room')} | {col('client_cpu_pct', '{:.0f}')} | {col('other_cpu_pct', '{:.0f}')} | "
                f"{'yes' if ok else 'no: ' + '; '.join(sorted({f for r in runs for f in r.failures}))[:200]} |"
            )
    lines.append("")
    lines.append("Largest R×C held (p99 ≤ 100 ms, nothing lost, every round): " + ", ".join(
        f"{s} {h[0]}×{h[1]} = {h[0] * h[1]} clients{pause_at(results, s, h)}" if h else f"{s} none"
        for s, h in held.items()
    ))
    if "collab" in servers:
        lines.append("")
        lines.append("Ratios against jupyter-collaboration (same step, medians; CPU: theirs / ours, latency: theirs / ours):")
        for server in servers:
            if server == "collab":
                continue
            for rooms, clients in steps:
                ours = [r for r in results if r.server == server and (r.rooms, r.clients) == (rooms, clients) and "p50_ms" in r.data]
                theirs = [r for r in results if r.server == "collab" and (r.rooms, r.clients) == (rooms, clients) and "p50_ms" in r.data]
                if not ours or not theirs:
                    continue

                def ratio(name: str) -> str:
                    a = med([r.data[name] for r in ours])
                    b = med([r.data[name] for r in theirs])
                    return f"{b / a:.2f}×" if a else "–"

                lines.append(
                    f"- {server} {rooms}×{clients}: CPU per update {ratio('cpu_per_1000')}, p50 {ratio('p50_ms')}, "
                    f"p99 {ratio('p99_ms')}, RSS per room {ratio('rss_per_room')}"
                )
    if opens:
        lines.append("")
        lines.append("| server | stored updates | cold: connect → step 2 ms (PUT → step 2) | reopened | joined |")
        lines.append("|---|---:|---:|---:|---:|")
        for server, res in opens.items():
            for key, value in res.items():
                if not key.isdigit():
                    continue
                cells = [f"{value[n]['connect_to_step2']:.0f} ({value[n]['total']:.0f})" for n in ("cold", "reopen", "joined")]
                lines.append(f"| {server} | {int(key):,} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("TCP_NODELAY set on websocket sockets: " + ", ".join(f"{s}: {r.get('tcp_nodelay', '?')}" for s, r in opens.items()))
        if "collab" in opens:
            for server, res in opens.items():
                if server == "collab":
                    continue
                parts = []
                for key in res:
                    if key.isdigit() and key in opens["collab"]:
                        for n in ("cold", "reopen", "joined"):
                            a, b = res[key][n]["total"], opens["collab"][key][n]["total"]
                            parts.append(f"{int(key):,} {n} {b / a:.2f}×" if a else "")
                lines.append(f"Open time (PUT → step 2), collab / {server}: " + ", ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_steps(text: str) -> list[tuple[int, int]]:
    steps = []
    for part in text.split(","):
        r, c = part.lower().split("x")
        steps.append((int(r), int(c)))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short ramp, 8 s steps, one round, small open test")
    parser.add_argument("--tiny", action="store_true", help="CI: 1 room x 2 clients, 3 s, ours-sqlite; exit 1 on any failed invariant")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS))
    parser.add_argument("--max-clients", type=int, default=640, help="largest R×C of the ramp")
    parser.add_argument("--seconds", type=float, default=None, help="typing time per step (default 20, quick 8)")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each step per server, interleaved (default 2, quick 1)")
    parser.add_argument("--steps", default=None, help="ramp as RxC,RxC,... (default 1x2,1x5,2x5,4x5,4x10,...)")
    parser.add_argument("--open-sizes", default=None, help="stored updates for the open test (default 1000,100000; 0 skips)")
    parser.add_argument("--open-repeats", type=int, default=3)
    parser.add_argument(
        "--cursor-every",
        type=float,
        default=0.0,
        help="seconds between a client's cursor (awareness) frames; 0 (default): one with "
        "every edit, as the front end sends it; the issue's first figures used 2",
    )
    parser.add_argument(
        "--clients-idle",
        action="store_true",
        help="run the load clients under SCHED_IDLE: they get a core only when the server "
        "leaves one free, as if they ran on other machines (their latency figures then include "
        "their own wait for a core); on a 2-core host this tells the server's own pauses from "
        "its loop waiting behind the clients",
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--json", type=Path, default=None, help="write every figure there")
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="profile our servers during each window with py-spy (collapsed stacks, "
        "<PREFIX>-<server>-<RxC>-r<round>.txt); its sampling costs the server some CPU",
    )
    parser.add_argument(
        "--ours-src",
        type=Path,
        default=None,
        help="a folder holding the jupyter_ystore package to measure (e.g. a `git archive` of a "
        "commit) instead of the installed one; our servers and the store checks import it",
    )
    parser.add_argument(
        "--ours-config",
        type=json.loads,
        default={},
        help='JSON merged into our servers\' config, e.g. \'{"SQLiteYStore": '
        '{"compact_after_updates": 0}}\' (to tell what a setting costs)',
    )
    args = parser.parse_args(argv)
    OURS_CONFIG.update(args.ours_config)
    if args.ours_src is not None:
        OURS_SRC.append(str(args.ours_src.resolve()))
        sys.path.insert(0, OURS_SRC[0])

    if args.tiny:
        servers, steps, seconds, rounds, sizes = ["ours-sqlite"], [(1, 2)], args.seconds or 3.0, 1, []
    else:
        servers = [s for s in args.servers.split(",") if s]
        for s in servers:
            if s not in ALL_SERVERS:
                parser.error(f"unknown server {s!r}: choose among {', '.join(ALL_SERVERS)}")
        steps = parse_steps(args.steps) if args.steps else (QUICK_STEPS if args.quick else FULL_STEPS)
        steps = [rc for rc in steps if rc[0] * rc[1] <= args.max_clients]
        seconds = args.seconds or (8.0 if args.quick else 20.0)
        rounds = args.rounds or (1 if args.quick else 2)
        default_sizes = "1000,10000" if args.quick else "1000,100000"
        sizes = [int(x) for x in (args.open_sizes or default_sizes).split(",") if int(x) > 0]

    started = time.time()
    print(
        f"bench_server: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    script_path = work / "script.json"
    script_ops = lc.edit_script(STREAM)
    script_path.write_text(json.dumps(lc.script_to_json(script_ops)))
    base = base_notebook()
    results: list[StepResult] = []
    noisy: list[StepResult] = []  # runs measured again because the host was busy
    alive = list(servers)
    for rooms, clients in steps:
        if not alive:
            break
        failed_here: set[str] = set()
        for round_no in range(rounds):
            order = alive if round_no % 2 == 0 else list(reversed(alive))
            for server in order:
                res = run_step(server, rooms, clients, seconds, round_no, args, script_path, base)
                print(step_line(res), flush=True)
                if noisy_failure(res):
                    # another process took the other core: measure this step again, once
                    noisy.append(res)
                    print(f"  (other processes took {res.data['other_cpu_pct']:.0f}% of a core: run again)", flush=True)
                    res = run_step(server, rooms, clients, seconds, round_no, args, script_path, base)
                    print(step_line(res), flush=True)
                results.append(res)
                if not res.ok:
                    failed_here.add(server)
        alive = [s for s in alive if s not in failed_here]

    opens: dict[str, Any] = {}
    if sizes:
        print("room open times (median of", args.open_repeats, "):", flush=True)
        for server in servers:
            try:
                opens[server] = open_times(server, sizes, args, script_ops, base, args.open_repeats)
            except Exception as exc:
                print(f"  {server}: open-time test failed: {type(exc).__name__}: {exc}", flush=True)
    table = report(results, servers, opens)
    if noisy:
        table += f"\n\n{len(noisy)} run(s) failed on latency alone while other processes used over 25 % of a core, and were measured again (the table has the second run): " + ", ".join(f"{r.server} {r.rooms}x{r.clients} (others {r.data['other_cpu_pct']:.0f}%, p99 {r.data['p99_ms']} ms)" for r in noisy)
    print()
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started,
                    "steps": [r.__dict__ | {"total": r.total} for r in results],
                    "noisy_runs_measured_again": [r.__dict__ for r in noisy],
                    "opens": opens,
                },
                indent=1,
                default=str,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    ok = all(r.ok for r in results)
    if args.tiny:
        res = results[0]
        d = res.data
        print(
            f"RESULT tiny: {'ok' if ok else 'FAILED'} sent={d.get('sent')} missing={d.get('missing')} "
            f"diverged={d.get('diverged_clients')} p99_ms={d.get('p99_ms')} failures={res.failures}",
            flush=True,
        )
        return 0 if ok else 1
    print(f"bench_server: {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
