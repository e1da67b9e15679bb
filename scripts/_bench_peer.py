"""Child side of ``scripts/bench.py`` for the in-memory peer SDKs (Segment, PostHog).

Run by the benchmark, never by hand, under ``.venv-peers/bin/python -I``: times Segment's
``track()`` or PostHog's ``capture()`` with the events, warm-up and loop shape that
``_bench_child.py`` uses for ours. Both SDKs run with their default settings; their
background threads upload to a local sink in the parent process that answers 200 to
every request, so their queues drain as they would against the real services.

JSON lines, like ``_bench_child.py``: ``{"ready": ...}``, then it waits for "go" on stdin,
then ``{"done": ..., "lat_ns": [...]}``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

# -I leaves this directory off sys.path; the shared helpers are stdlib only.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_child import WARMUP, emit, event_args, to_ns, wait_go

Call = Tuple[str, str, Dict[str, Any]]
DISTRIBUTIONS = {"segment": "segment-analytics-python", "posthog": "posthog"}


def segment_client(url: str) -> Any:
    from segment.analytics.client import Client  # type: ignore[import-not-found]

    return Client("bench-write-key", host=url)


def posthog_client(url: str) -> Any:
    from posthog import Posthog  # type: ignore[import-not-found]

    return Posthog("phc_bench", host=url)


# One loop per SDK, not one loop calling an adapter: an adapter would add a Python frame
# to every timed call of theirs and none to ours (``_bench_child.timed_tracks``).
def timed_segment(client: Any, calls: List[Call]) -> List[float]:
    """Seconds per ``track(user_id=..., event=..., properties=...)``."""
    out: List[float] = []
    clock = time.perf_counter
    for user_id, event_type, payload in calls:
        t0 = clock()
        client.track(user_id=user_id, event=event_type, properties=payload)
        out.append(clock() - t0)
    return out


def timed_posthog(client: Any, calls: List[Call]) -> List[float]:
    """Seconds per ``capture(event, distinct_id=..., properties=...)``."""
    out: List[float] = []
    clock = time.perf_counter
    for user_id, event_type, payload in calls:
        t0 = clock()
        client.capture(event_type, distinct_id=user_id, properties=payload)
        out.append(clock() - t0)
    return out


PEERS: Dict[str, Tuple[Callable[[str], Any], Callable[[Any, List[Call]], List[float]]]] = {
    "segment": (segment_client, timed_segment),
    "posthog": (posthog_client, timed_posthog),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    make, timed = PEERS[args.peer]
    client = make(args.url)
    calls: List[Call] = [
        (ev["user_id"], ev["event_type"], ev["payload"])
        for ev in map(event_args, range(WARMUP + args.events))
    ]
    timed(client, calls[:WARMUP])
    emit(ready=True, version=importlib.metadata.version(DISTRIBUTIONS[args.peer]))
    wait_go()
    lat = timed(client, calls[WARMUP:])
    client.shutdown()  # untimed: flush and join the upload threads
    emit(done=True, lat_ns=to_ns(lat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
