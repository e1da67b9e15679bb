"""eventlet monkey-patching after the client was made (gunicorn's eventlet worker with
--preload, Celery's eventlet pool): its threads keep working and shutdown() stays clean."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
from _support import payload_ids, run_script, write_script
from segops.devserver import DevServer

# Not importorskip: importing eventlet here would install its fork hooks in the test process.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("eventlet") is None, reason="eventlet is not installed"
)

# eventlet's monkey_patch() swaps every existing RLock for a green one by rewriting the
# references to it; a Condition that copied the old lock's methods at creation then waits
# on one lock and checks ownership of the other ("cannot wait on un-acquired lock").
PATCHED_AFTER_THE_CLIENT = """\
    import os, sys
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    client.track(user_id="u", event_type="e", payload={"i": "parent"})
    client.flush(timeout=5)
    pid = os.fork()
    if pid == 0:  # like gunicorn's eventlet worker: patch after the fork, then serve
        code = 1
        try:
            import eventlet

            eventlet.monkey_patch()
            for i in range(20):  # batch_size: the child's flusher wakes and delivers
                client.track(user_id="u", event_type="e", payload={"i": f"child-{i}"})
                eventlet.sleep(0.02)
            client.flush(timeout=5)
            client.shutdown(timeout=5)
            code = 0
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    client.shutdown(timeout=5)
"""


def test_patching_after_the_client_was_made_keeps_its_threads(
    server: DevServer, tmp_path: Path
) -> None:
    """The child's flusher and checkpointer run, shutdown() raises nothing, and every
    event is delivered once, by the child itself."""
    script = write_script(tmp_path, "eventlet_child.py", PATCHED_AFTER_THE_CLIENT)
    try:
        done = run_script(script, server.url, str(tmp_path / "s.db"), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung after eventlet's monkey-patching")
    assert "child 0" in done.stdout, done.stdout + done.stderr
    assert "un-acquired lock" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert sorted(payload_ids(server)) == sorted(["parent"] + [f"child-{i}" for i in range(20)])
