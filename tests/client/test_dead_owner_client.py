"""A forked child that dies mid-request does not stall the parent's flush() for its lease."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Callable

import pytest
import segops
from _support import ingestion, lease_left, payload_ids
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]
EVENTS = 5


def fully_exited(pid: int) -> bool:
    """Every thread of our child ``pid`` has exited; it stays unreaped (a zombie)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return fields[0] == b"Z" and fields[17] == b"1"  # state, num_threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_flush_takes_over_the_batch_of_a_child_that_died_mid_request(
    server: DevServer, make_client: MakeClient, spool_file: Path, reaped: bool
) -> None:
    """The child's flusher os._exit()s mid-request; the parent's flush() resends at once."""
    if not reaped and not os.path.exists("/proc/self/stat"):
        pytest.skip("zombies are only told apart on Linux")
    server.latency_ms = 1500
    # The default retry policy and timeout: the lease a real sender holds (35 s).
    client = make_client(
        retry_policy=segops.RetryPolicy(), timeout=10.0, batch_size=EVENTS, flush_interval=60.0
    )
    pid = os.fork()
    if pid == 0:  # child: track, let the flusher send, die while the server is answering
        code = 1
        try:
            for i in range(EVENTS):
                client.track(user_id="child", event_type="e", payload={"i": i})
            deadline = time.monotonic() + 10
            while lease_left(spool_file) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # the request is on the wire; the server answers after 1.5 s
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while (left := lease_left(spool_file)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert left is not None and left > 30, "the child's flusher never claimed a batch"
    if reaped:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    else:
        while not fully_exited(pid):
            time.sleep(0.005)
    started = time.monotonic()
    client.flush(timeout=10)
    elapsed = time.monotonic() - started
    if not reaped:
        os.waitpid(pid, 0)
    assert elapsed < 5, f"flush() waited {elapsed:.1f}s"
    ids = payload_ids(server)
    assert sorted(ids) == list(range(EVENTS)), ids  # each stored once
    # The child's request and the parent's resend carry one key and one body; the server
    # drops the second copy, whichever arrives last.
    bodies = collections.defaultdict(set)
    for req in ingestion(server):
        if 200 <= req.status < 300:
            bodies[req.headers["idempotency-key"]].add(req.body)
    assert all(len(b) == 1 for b in bodies.values()), "a key was reused for a new body"
    assert server.stats()["duplicates_dropped"] <= 1


@pytest.mark.timeout(30)
def test_a_live_child_keeps_its_batch(
    server: DevServer, make_client: MakeClient, spool_file: Path
) -> None:
    """While the child's request is still being answered, the parent's flush() sends nothing."""
    server.latency_ms = 2000
    client = make_client(
        retry_policy=segops.RetryPolicy(), timeout=10.0, batch_size=EVENTS, flush_interval=60.0
    )
    pid = os.fork()
    if pid == 0:  # child: track and let its flusher deliver, then leave normally
        code = 1
        try:
            for i in range(EVENTS):
                client.track(user_id="child", event_type="e", payload={"i": i})
            client.flush(timeout=10)
            code = 0
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 10
        while lease_left(spool_file) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        client.flush(timeout=10)  # returns once the child has acked
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sorted(payload_ids(server)) == list(range(EVENTS))
    # Only the child's requests (its flusher may send the first event alone): none resent.
    keys = collections.Counter(r.headers["idempotency-key"] for r in ingestion(server))
    assert set(keys.values()) == {1} and server.stats()["duplicates_dropped"] == 0
