"""uWSGI set-ups beyond the plain preforked workers of test_uwsgi.py: mules, the spooler, no
master at all, and a graceful reload of the master mid-traffic.

Each is a process uWSGI forks from the master (or a master it re-executes) without Python's
fork hooks. An event counts as acknowledged once the track() that stored it returned: a 200
for a request, a line in the ``acks`` file for code a mule or the spooler runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Set

import httpx
import pytest
from _apps import AppServer, app_env, free_port, stored_counts, wait_for
from segops.devserver import DevServer

pytest.importorskip("flask")
from test_uwsgi import APP, UWSGI  # the app and the binary of the basic cases

pytestmark = pytest.mark.skipif(UWSGI is None, reason="uwsgi is not installed in this venv")

EXTRAS = """
import uwsgi

LOADED_IN = os.getpid()  # the master: a mule that imports app finds it loaded already


def ack(i):  # after track() returned: the event is on disk
    with open(os.environ["ACKS"], "a") as f:
        f.write(f"{i}\\n")


def spooled(job):  # the uWSGI spooler runs this, in its own process
    i = int(job[b"i"])
    client.track(user_id=f"s{i}", event_type="spooled", payload={"i": i, "pid": os.getpid()})
    ack(i)
    return uwsgi.SPOOL_OK


if uwsgi.opt.get("spooler"):
    uwsgi.spooler = spooled


@app.post("/spool/<int:i>")
def spool_job(i):
    uwsgi.spool({b"i": str(i).encode()})
    return {"pid": os.getpid()}
"""

# Run by ``--mule=mule.py`` in a mule forked off the master that loaded app.py. A mule whose
# script returns is respawned by the master: it tracks once, then stays.
MULE_INHERITED = """
import os, time
from app import LOADED_IN, ack, client  # the master's client, inherited through the fork

assert LOADED_IN != os.getpid()  # else the mule re-imported app and made a client itself

for i in range(int(os.environ["MULE_EVENTS"])):
    client.track(user_id=f"m{i}", event_type="mule", payload={"i": i, "pid": os.getpid()})
    ack(i)
while True:
    time.sleep(1)
"""

MULE_OWN_CLIENT = """
import os, time
import segops
from app import ack

# A client made in the mule itself, after the fork.
client = segops.SegOpsClient(
    os.environ["SEGOPS_API_URL"], os.environ["SEGOPS_SECRET_KEY"],
    flush_interval=30.0, batch_size=10,
)
for i in range(int(os.environ["MULE_EVENTS"])):
    client.track(user_id=f"m{i}", event_type="mule", payload={"i": i, "pid": os.getpid()})
    ack(i)
while True:
    time.sleep(1)
"""

# Tracks one batch (sent at once: batch_size events wake the flusher), then 5 events more
# that wait for the 30 s interval; a respawned mule tracks nothing.
MULE_KILLED = """
import os, time
from app import LOADED_IN, ack, client

assert LOADED_IN != os.getpid()
if not os.path.exists("tracked"):
    for i in range(15):
        client.track(user_id=f"m{i}", event_type="mule", payload={"i": i, "pid": os.getpid()})
        ack(i)
        if i == 9:
            time.sleep(1.0)
    open("tracked", "w").close()
while True:
    time.sleep(1)
"""

MULE_EVENTS = 30  # a multiple of batch_size: every batch goes out on a wake-up, not at 30 s


@pytest.fixture
def start_uwsgi(
    tmp_path: Path, server: DevServer, spool_dir: Path
) -> Iterator[Callable[..., AppServer]]:
    """Start uWSGI on app.py (test_uwsgi's app, plus a spooler job) with two workers;
    ``--master`` unless ``master=False``."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP) + EXTRAS, encoding="utf-8")
    (tmp_path / "acks").touch()
    started = contextlib.ExitStack()

    def start(*options: str, master: bool = True, **app_vars: str) -> AppServer:
        port = free_port()
        argv = [
            *(["--master", "--die-on-term"] if master else []),
            "--processes", "2", "--http-socket", f"127.0.0.1:{port}", "--pythonpath", ".",
            "--module", "app:app", "--enable-threads", *options,
        ]  # fmt: skip
        env = {
            **app_env(server.url, spool_dir),
            "ACKS": str(tmp_path / "acks"),
            "MULE_EVENTS": str(MULE_EVENTS),
            **app_vars,
        }
        app = started.enter_context(AppServer(argv, tmp_path, env, port, program=UWSGI))
        app.wait_ready()
        return app

    with started:
        yield start


def acked_ids(tmp_path: Path) -> List[int]:
    """The ids the mule or spooler acknowledged, in order (repeats included)."""
    return [int(line) for line in (tmp_path / "acks").read_text().split()]


def post_all(app: AppServer, path: str, ids: List[int]) -> None:
    for i in ids:
        assert app.post(f"{path}/{i}").status_code == 200


@pytest.mark.parametrize(
    ("script", "env"),
    [
        (MULE_INHERITED, {}),
        (MULE_INHERITED, {"IMPORT_UWSGIDECORATORS": "1"}),
        (MULE_OWN_CLIENT, {}),
    ],
    ids=["inherited", "inherited-uwsgidecorators", "own"],
)
def test_mule_delivers_what_it_tracked_once(
    start_uwsgi: Callable[..., AppServer],
    server: DevServer,
    tmp_path: Path,
    script: str,
    env: Dict[str, str],
) -> None:
    """A mule that tracks, with the master's client (post-fork hook chained, or replaced by
    uwsgidecorators) or one of its own, runs its own flusher: all it acknowledged arrives
    while it runs, once, and the stop does not hang."""
    (tmp_path / "mule.py").write_text(textwrap.dedent(script), encoding="utf-8")
    app = start_uwsgi("--mule=mule.py", **env)
    wait_for(lambda: len(acked_ids(tmp_path)) >= MULE_EVENTS, timeout=10, what="the mule tracked")
    wait_for(lambda: len(server.events()) >= MULE_EVENTS, timeout=5, what="the mule's flusher sent")
    assert app.stop() < 10
    assert acked_ids(tmp_path) == list(range(MULE_EVENTS))  # tracked once: never respawned
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert counts == {i: 1 for i in range(MULE_EVENTS)}
    mule_pids = {e["payload"]["pid"] for e in server.events()}
    assert len(mule_pids) == 1 and app.proc.pid not in mule_pids
    assert "segops" not in app.output()


def test_sigkilled_mule_loses_nothing_it_acknowledged(
    start_uwsgi: Callable[..., AppServer], server: DevServer, tmp_path: Path
) -> None:
    """A mule SIGKILLed with acknowledged events unsent: the workers' flushers deliver
    them along with their own, each once, while uWSGI runs."""
    (tmp_path / "mule.py").write_text(textwrap.dedent(MULE_KILLED), encoding="utf-8")
    app = start_uwsgi("--mule=mule.py")
    wait_for(lambda: (tmp_path / "tracked").exists(), timeout=10, what="the mule tracked")
    wait_for(lambda: len(server.events()) >= 10, timeout=5, what="the mule's first batch")
    (mule,) = {e["payload"]["pid"] for e in server.events()}
    held = set(range(15)) - {e["payload"]["i"] for e in server.events()}
    assert held == set(range(10, 15))  # acknowledged, waiting for the mule's interval
    os.kill(mule, signal.SIGKILL)
    ids = list(range(100, 120))  # 20 requests: one of the 2 workers tracks batch_size
    post_all(app, "/hit", ids)
    # That worker's flusher claims the oldest events first: the mule's. (Waiting for all
    # 35 was flaky: events the workers tracked after that claim may wait for the interval,
    # or for the stop, which sends them.)
    wait_for(
        lambda: held <= {e["payload"]["i"] for e in server.events()},
        timeout=5,
        what="a worker's flusher sent the mule's events",
    )
    assert app.stop() < 10
    assert acked_ids(tmp_path) == list(range(15))
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert counts == {i: 1 for i in [*range(15), *ids]}
    assert "segops" not in app.output()


def test_spooler_delivers_every_job_once(
    start_uwsgi: Callable[..., AppServer], server: DevServer, tmp_path: Path
) -> None:
    """Jobs the workers hand to the uWSGI spooler, which tracks with the inherited client:
    every event it acknowledged arrives while it runs, once, and the stop does not hang."""
    app = start_uwsgi("--spooler", str(tmp_path / "jobs"), "--spooler-frequency", "1")
    ids = list(range(30))
    post_all(app, "/spool", ids)
    wait_for(lambda: len(acked_ids(tmp_path)) >= len(ids), timeout=10, what="the spooler ran")
    wait_for(lambda: len(server.events()) >= len(ids), timeout=5, what="the spooler's flusher")
    assert app.stop() < 10
    assert sorted(acked_ids(tmp_path)) == ids
    assert stored_counts(server.events(), lambda e: e["payload"]["i"]) == {i: 1 for i in ids}
    assert app.proc.pid not in {e["payload"]["pid"] for e in server.events()}
    assert "segops" not in app.output()


def group_pids(pgid: int) -> Set[int]:
    """The live (not zombie) processes of a process group (Linux /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.add(int(entry.name))
    return pids


def test_without_master_delivers_every_event_once(
    start_uwsgi: Callable[..., AppServer], server: DevServer
) -> None:
    """No --master: the first worker is the process that loaded the app and the second is
    forked from it; both deliver while they run, and a SIGINT to both ends them promptly
    with every acknowledged event stored once."""
    app = start_uwsgi(master=False)
    ids = list(range(40))
    pids = set()
    for i in ids:
        response = app.post(f"/hit/{i}")
        assert response.status_code == 200
        pids.add(response.json()["pid"])
    for _ in range(6):
        answer = httpx.get(app.base + "/pids", timeout=10).json()
        assert answer["spool_owner_pid"] == answer["pid"]
    wait_for(lambda: len(server.events()) >= 30, timeout=5.0, what="the workers delivered")
    os.killpg(app.proc.pid, signal.SIGINT)  # no master to pass a signal on: one to each
    wait_for(lambda: not group_pids(app.proc.pid), timeout=10, what="both workers ended")
    assert stored_counts(server.events(), lambda e: e["payload"]["i"]) == {i: 1 for i in ids}
    assert "segops" not in app.output()


class Traffic:
    """Requests to /hit/<i> from a thread, each id once, until stopped; acknowledged ids
    (answered 200) and the pids that answered are kept."""

    def __init__(self, app: AppServer) -> None:
        self.app = app
        self.acked: Dict[int, int] = {}
        self.answered_by: List[int] = []  # pids, in answer order
        self.tried = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                response = httpx.post(f"{self.app.base}/hit/{i}", timeout=10.0)
                if response.status_code == 200:
                    self.acked[i] = response.json()["pid"]
                    self.answered_by.append(self.acked[i])
            except httpx.TransportError:
                time.sleep(0.01)  # refused while the master re-executes: not acknowledged
            i += 1
            self.tried = i

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "a request hung"


@pytest.mark.parametrize("how", ["sighup", "touch-reload"])
def test_graceful_reload_mid_traffic_delivers_every_event_once(
    start_uwsgi: Callable[..., AppServer], server: DevServer, tmp_path: Path, how: str
) -> None:
    """A graceful reload of the master (SIGHUP, or --touch-reload) while requests keep
    coming: the new workers serve, and every acknowledged event, before, during and after
    the reload, is stored exactly once."""
    touch = tmp_path / "reload.txt"
    touch.touch()
    app = start_uwsgi("--touch-reload", str(touch))
    traffic = Traffic(app)
    wait_for(lambda: len(traffic.acked) >= 30, timeout=10, what="traffic before the reload")
    old_workers = set(traffic.acked.values())
    if how == "sighup":
        app.proc.send_signal(signal.SIGHUP)
    else:
        time.sleep(1.1)  # uWSGI compares mtimes in whole seconds
        touch.write_text("reload")
    wait_for(
        lambda: set(traffic.answered_by[-10:]).isdisjoint(old_workers),
        timeout=20,
        what="new workers answering after the reload",
    )
    wait_for(lambda: len(traffic.acked) >= 90, timeout=10, what="traffic after the reload")
    traffic.stop()
    assert app.stop() < 10
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert {i: counts.get(i, 0) for i in traffic.acked} == {i: 1 for i in traffic.acked}
    assert set(counts) <= set(range(traffic.tried))
    assert "segops" not in app.output()
