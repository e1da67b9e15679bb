"""flush() on a big backlog: one cheap check per batch, not a count of the whole backlog."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Callable, List

import pytest
import segops
from segops.devserver import DevServer

import spool

BACKLOG = 200_000
RECORD = b'{"user_id":"u","event_type":"e","payload":{"pad":"' + b"x" * 100 + b'"}}'


def test_flush_waiting_on_a_leased_backlog_does_not_hold_back_track(
    make_client: Callable[..., segops.SegOpsClient], server: DevServer, spool_file: Path
) -> None:
    """A backlog leased elsewhere: flush() polls it without holding track() back for a
    count per poll, times out with ``pending`` = the backlog, then returns once it is acked."""
    holder = spool.Spool(spool_file)
    try:
        for _ in range(BACKLOG // 10_000):
            holder.append_many([RECORD] * 10_000)
        backlog = holder.claim(BACKLOG, lease=60.0)  # another sender's, still in flight
        assert backlog is not None and len(backlog) == BACKLOG
        counts = []
        for _ in range(3):
            t = time.perf_counter()
            assert holder.pending_through(holder.last_id()) == BACKLOG
            counts.append(time.perf_counter() - t)
        count = statistics.median(counts)

        client = make_client(batch_size=500)
        waits: List[float] = []
        stop = threading.Event()

        def tracker() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                client.track(user_id="live", event_type="e")
                waits.append(time.perf_counter() - t)
                time.sleep(0.001)

        thread = threading.Thread(target=tracker)
        thread.start()
        try:
            time.sleep(0.05)
            with pytest.raises(segops.FlushTimeout) as info:
                client.flush(timeout=2.0)
        finally:
            stop.set()
            thread.join()
        # Events tracked before the flush count too, but those all went out meanwhile.
        assert info.value.pending == BACKLOG
        waits.sort()
        # Behind a count per poll (one every 20 ms), most track() calls wait for much of a
        # count; the top 2% are left to the machine (a busy disk stalls any write now and then).
        assert waits[int(len(waits) * 0.98)] < count / 4, (count, waits[-10:])
        assert waits[len(waits) // 2] < count / 20, (count, waits[len(waits) // 2])

        holder.ack(backlog)  # the other sender delivered it
        client.track(user_id="last", event_type="e")
        client.flush(timeout=10.0)
        assert client.stats().pending == 0
        assert server.events(user_id="last")
    finally:
        holder.close()
