"""Thread-safety: many threads tracking at once, with the flusher running."""

from __future__ import annotations

import collections
import threading
from typing import Callable, List

import pytest
import segops
from _support import payload_ids
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]


@pytest.mark.timeout(90)
def test_eight_threads_times_500_delivered_exactly_once(
    server: DevServer, make_client: MakeClient
) -> None:
    """8 threads x 500 track() with a busy flusher: 4,000 events, each stored once."""
    client = make_client(flush_interval=0.05, batch_size=20)
    barrier = threading.Barrier(8)
    failures: List[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(500):
                client.track(user_id=f"t{t}", event_type="threaded", payload={"i": f"{t}-{i}"})
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    client.flush(timeout=60)
    ids = payload_ids(server)
    dupes = [k for k, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, dupes[:10]
    assert sorted(ids) == sorted(f"{t}-{i}" for t in range(8) for i in range(500))
    assert server.stats()["duplicates_dropped"] == 0
    stats = client.stats()
    assert (stats.pending, stats.in_flight, stats.delivered) == (0, 0, 4000)


@pytest.mark.timeout(60)
def test_flush_from_several_threads_at_once(server: DevServer, make_client: MakeClient) -> None:
    """Concurrent flush() calls from 4 threads all return and nothing is sent twice."""
    client = make_client()
    for i in range(1500):
        client.track(user_id="u", event_type="e", payload={"i": i})
    failures: List[BaseException] = []

    def flusher() -> None:
        try:
            client.flush(timeout=30)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=flusher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not failures, failures[:3]
    ids = payload_ids(server)
    assert sorted(ids) == list(range(1500))
