"""gevent monkey-patching after segops was imported, or after the client was made and the
process forked (gunicorn's gevent worker with --preload), must not hang the process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _support import payload_ids, run_script, write_script
from segops.devserver import DevServer

pytest.importorskip("gevent")

PATCHED_AFTER_IMPORT = """\
    import sys
    import segops  # before the patch: its module-level objects are unpatched
    from gevent import monkey

    monkey.patch_all()
    import gevent

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    client.track(user_id="u", event_type="e", payload={"i": "after-import"})
    gevent.sleep(0.3)  # every greenlet gets to run: the reaper, the flusher, the checkpointer
    client.flush(timeout=5)
    client.shutdown(timeout=5)
    print("done")
"""

PATCHED_IN_FORKED_CHILD = """\
    import os, sys, time
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    client.track(user_id="u", event_type="e", payload={"i": "parent"})
    client.flush(timeout=5)
    pid = os.fork()
    if pid == 0:  # like gunicorn's gevent worker: patch after the fork, then serve
        code = 1
        try:
            from gevent import monkey

            monkey.patch_all()
            import gevent

            gaps = []

            def ticker():  # how long the hub goes without running other greenlets
                last = time.monotonic()
                while True:
                    gevent.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            gevent.spawn(ticker)
            for i in range(20):  # batch_size: the child's flusher wakes and delivers
                client.track(user_id="u", event_type="e", payload={"i": f"child-{i}"})
                gevent.sleep(0.05)
            client.flush(timeout=5)
            print("longest stall", max(gaps), flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    client.shutdown(timeout=5)
"""


PK_MINTS_IN_FORKED_CHILD = """\
    import os, sys, time
    import segops

    client = segops.SegOpsClient(
        sys.argv[1], "pk_dev_public", spool_path=sys.argv[2],
        get_user=lambda: segops.UserContext(user_id="u-1"),
    )
    pid = os.fork()  # before any mint: the child's first sends race for the token
    if pid == 0:
        code = 1
        try:
            from gevent import monkey

            monkey.patch_all()
            import gevent

            def send(i):
                client.track(user_id="u-1", event_type="e", payload={"i": f"g-{i}"})
                client.flush(timeout=8)  # each on its own send greenlet, needing a token

            started = time.monotonic()
            gevent.joinall([gevent.spawn(send, i) for i in range(3)], raise_error=True)
            print("took", time.monotonic() - started, flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    client.shutdown(timeout=5)
"""


def test_concurrent_mints_in_a_patched_child_do_not_stall(
    server: DevServer, tmp_path: Path
) -> None:
    """Greenlets that need a pk_ token at once share one mint: the mint lock the child uses
    is made after the patch, so a waiter does not block the minting greenlet for its whole
    timeout."""
    server.latency_ms = 300  # the mint (and each request) takes a while: waiters pile up
    script = write_script(tmp_path, "pk_fork.py", PK_MINTS_IN_FORKED_CHILD)
    done = run_script(script, server.url, str(tmp_path / "s.db"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "child 0" in done.stdout, done.stdout + done.stderr
    took = float(next(x for x in done.stdout.splitlines() if x.startswith("took")).split()[1])
    assert took < 4.0, done.stdout
    assert sorted(payload_ids(server)) == [f"g-{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (PATCHED_AFTER_IMPORT, ["after-import"]),
        (PATCHED_IN_FORKED_CHILD, ["parent"] + [f"child-{i}" for i in range(20)]),
    ],
    ids=["patched-after-import", "patched-in-forked-child"],
)
def test_late_monkey_patching_does_not_hang(
    server: DevServer, tmp_path: Path, source: str, expected: list
) -> None:
    """The script finishes, without stalling its other greenlets (a greenlet blocked in an
    unpatched wait blocks them all), and every event is delivered once."""
    script = write_script(tmp_path, "late_patch.py", source)
    try:
        done = run_script(script, server.url, str(tmp_path / "s.db"), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung after gevent's monkey-patching")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(payload_ids(server)) == sorted(expected)
    for line in done.stdout.splitlines():
        if line.startswith("longest stall"):
            # A greenlet waiting on an unpatched Event stops the hub for the whole wait
            # (flush_interval, 5 s); the flusher must wait on patched ones.
            assert float(line.split()[-1]) < 1.0, line
