"""Code written against the official 0.2.2 client keeps working: its error type, copies."""

from __future__ import annotations

import contextlib
import copy
import gc
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import segops
from _support import FAST, SK, ErrorLog, payload_ids, wait_until
from segops._transport import Response
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]

ERRORS = [
    segops.SegOpsError("m"),
    segops.ConfigurationError("m"),
    segops.SpoolError("m"),
    segops.SpoolFull("m"),
    segops.SpoolCorrupt("m"),
    segops.DeliveryError("m", status=503, detail="busy", retry_after=2.0),
    segops.AuthError("m", status=401, detail="bad key"),
    segops.EventRejected("m", status=422, detail="bad event"),
    segops.EventsSkipped("m", skipped=3, status=200),
    segops.FlushTimeout("m", pending=7),
    segops.ClientClosed("m"),
]


def test_a_failed_flush_is_caught_as_runtime_error(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """0.2.2 raises RuntimeError from flush() and passes it to on_error; so do we."""
    client = make_client(key="sk_wrong_key_000000", on_error=errors, flush_interval=0.1)
    client.track(user_id="u", event_type="e")
    with pytest.raises(RuntimeError, match="401"):
        client.flush(timeout=5)
    wait_until(lambda: errors.of(segops.DeliveryError), timeout=5)
    assert all(isinstance(exc, RuntimeError) for exc in errors.of(segops.DeliveryError))


@pytest.mark.parametrize("cls", [segops.AuthError, segops.EventRejected, segops.FlushTimeout])
def test_every_delivery_error_is_a_runtime_error(cls: type) -> None:
    """The whole DeliveryError branch is both SegOpsError and RuntimeError."""
    assert issubclass(cls, segops.DeliveryError)
    assert issubclass(cls, RuntimeError) and issubclass(cls, segops.SegOpsError)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickle_and_copy(error: segops.SegOpsError) -> None:
    """A worker process can hand any segops error back to its parent (pickle), fields intact."""
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone) == vars(error)


def test_a_copy_of_the_client_is_the_client(server: DevServer, make_client: MakeClient) -> None:
    """copy/deepcopy return the client itself: a dropped copy cannot retire the original."""
    client = make_client()
    assert copy.copy(client) is client
    assert copy.deepcopy({"client": client})["client"] is client
    copied = copy.copy(client)
    del copied
    gc.collect()
    client.track(user_id="u", event_type="e", payload={"i": 0})
    client.flush(timeout=10)
    assert payload_ids(server) == [0]


def test_pickling_the_client_says_why_not(make_client: MakeClient) -> None:
    """pickle.dumps(client) is a TypeError that says what to do instead."""
    with pytest.raises(TypeError, match="in each process"):
        pickle.dumps(make_client())


# -- 0.2.2's transport= callable -------------------------------------------------------------


class FakeTransport:
    """A 0.2.2-style transport, as users' tests write them: records calls, answers in turn."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls: List[Dict[str, Any]] = []

    def __call__(
        self, url: str, *, body: Dict[str, Any], headers: Dict[str, str], timeout: float
    ) -> Response:
        self.calls.append({"url": url, "body": body, "headers": headers, "timeout": timeout})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, Response)
        return answer


@pytest.fixture
def fake_client(tmp_path: Path) -> Iterator[Callable[..., segops.SegOpsClient]]:
    """Clients on a 0.2.2-style transport (no server), shut down at teardown."""
    clients: List[segops.SegOpsClient] = []

    def make(transport: FakeTransport, **kwargs: Any) -> segops.SegOpsClient:
        kwargs.setdefault("retry_policy", FAST)
        client = segops.SegOpsClient(
            "http://segops.test",
            SK,
            spool_path=tmp_path / "s.sqlite3",
            flush_interval=60,
            transport=transport,  # type: ignore[arg-type]  # FakeTransport is a Transport
            **kwargs,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(segops.DeliveryError):  # what a failing fake leaves behind
            client.shutdown(timeout=1)


@pytest.mark.parametrize("gzip", [False, True])
def test_a_callable_transport_gets_what_0_2_2_gave_it(
    fake_client: Callable[..., segops.SegOpsClient], gzip: bool
) -> None:
    """The callable sees the URL, the JSON body as a dict, the Authorization header, a timeout."""
    transport = FakeTransport(Response(200, '{"queued": 2, "skipped": 0}'))
    client = fake_client(transport, gzip=gzip, timeout=7.0)
    client.track(user_id="u", event_type="e", payload={"i": 0})
    client.track(user_id="u", event_type="e", payload={"i": 1})
    client.flush(timeout=5)
    sent = [e["payload"]["i"] for call in transport.calls for e in call["body"]["events"]]
    assert sent == [0, 1]  # in one request, or two when the start-up pass took the first
    for call in transport.calls:
        assert call["url"] == "http://segops.test/api/ingestion/track/batch/"
        assert call["headers"]["Authorization"] == f"ApiKey {SK}"
        assert "Content-Length" not in call["headers"] and "Host" not in call["headers"]
        assert 0 < call["timeout"] <= 7.0  # flush(timeout=5) bounds it too
    assert client.stats().delivered == 2


def test_a_callable_transport_non_2xx_is_retried_then_raised(
    fake_client: Callable[..., segops.SegOpsClient],
) -> None:
    """A 503 from the callable is retried; a lasting one raises DeliveryError, events kept."""
    transport = FakeTransport(Response(503, '{"detail": "busy"}'))
    client = fake_client(transport)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.DeliveryError, match="503"):
        client.flush(timeout=5)
    assert len(transport.calls) >= FAST.attempts  # flush()'s cycle, and maybe the flusher's
    assert client.stats().pending == 1
    transport.answers = [Response(200, "")]
    client.flush(timeout=5)
    assert client.stats().delivered == 1


def test_a_callable_transport_that_raises_is_an_unreachable_server(
    fake_client: Callable[..., segops.SegOpsClient],
) -> None:
    """The callable's own exception becomes a DeliveryError naming it; events stay spooled."""
    transport = FakeTransport(OSError("no route"))
    client = fake_client(transport)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.DeliveryError, match="OSError: no route"):
        client.flush(timeout=5)
    assert client.stats().pending == 1


def test_a_transport_that_is_neither_is_refused(tmp_path: Path) -> None:
    """transport= something not callable is a ConfigurationError at construction."""
    with pytest.raises(segops.ConfigurationError, match="transport"):
        segops.SegOpsClient(
            "http://segops.test",
            SK,
            spool_path=tmp_path / "s.sqlite3",
            transport="http://proxy",  # type: ignore[arg-type]
        )
    assert not (tmp_path / "s.sqlite3").exists()
