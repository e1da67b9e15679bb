"""Server errors: retries, Retry-After, auth failures, poison events, skipped, on_error, stats,
batch=False, and the client's lifecycle."""

from __future__ import annotations

import email.utils
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import segops
from _support import FAST, ErrorLog, free_port, ingestion, payload_ids, wait_until
from segops.devserver import DevServer

import spool

MakeClient = Callable[..., segops.SegOpsClient]
PATIENT = segops.RetryPolicy(attempts=4, timeout=8.0, wait_initial=0.05, wait_max=0.2)


def track_n(client: segops.SegOpsClient, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        client.track(user_id="u", event_type="e", payload={"i": i})


# -- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["seconds", "http-date"])
def test_429_retry_after_is_honoured(server: DevServer, make_client: MakeClient, hint: str) -> None:
    """A scripted 429 with Retry-After delays the retry by about the hint, then delivers."""
    if hint == "seconds":
        value, low = "1", 0.9
    else:  # HTTP dates have 1 s resolution: 2 s ahead means a wait of 1..2 s
        value, low = email.utils.formatdate(time.time() + 2, usegmt=True), 0.9
    server.script([(429, {"detail": "Request was throttled."}, {"Retry-After": value})])
    client = make_client(retry_policy=PATIENT)
    track_n(client, 3)
    started = time.monotonic()
    client.flush(timeout=15)
    elapsed = time.monotonic() - started
    # without the hint the policy would retry within wait_max=0.2 s
    assert low <= elapsed < 4.0, f"retried after {elapsed:.2f}s"
    assert [r.status for r in ingestion(server)] == [429, 200]
    assert sorted(payload_ids(server)) == [0, 1, 2]
    assert client.stats().retries == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_transient_status_is_retried(
    server: DevServer, make_client: MakeClient, status: int
) -> None:
    """5xx and 408 are retried within the cycle and the batch is delivered."""
    server.script([status, status])
    client = make_client(retry_policy=PATIENT)
    track_n(client, 5)
    client.flush(timeout=15)
    assert [r.status for r in ingestion(server)] == [status, status, 200]
    assert sorted(payload_ids(server)) == list(range(5))
    assert client.stats().retries == 2


def test_dropped_connection_is_retried(server: DevServer, make_client: MakeClient) -> None:
    """A connection closed without an answer is retried with the same Idempotency-Key."""
    from segops.devserver import DROP

    server.script([DROP])
    client = make_client(retry_policy=PATIENT)
    track_n(client, 4)
    client.flush(timeout=15)
    assert sorted(payload_ids(server)) == list(range(4))
    keys = {r.headers["idempotency-key"] for r in ingestion(server)}
    assert len(keys) == 1


def test_persistent_5xx_flush_raises_delivery_error_events_kept(
    server: DevServer, make_client: MakeClient
) -> None:
    """After the policy's retries a 503 makes flush() raise DeliveryError; nothing is lost."""
    server.fail_rate = 1.0
    client = make_client()
    track_n(client, 6)
    with pytest.raises(segops.DeliveryError) as info:
        client.flush(timeout=10)
    assert not isinstance(info.value, segops.FlushTimeout) or info.value.pending == 6
    assert client.stats().pending == 6
    server.fail_rate = 0.0
    client.flush(timeout=10)
    assert sorted(payload_ids(server)) == list(range(6))


# -- auth failures with sk_ -------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_sk_auth_failure_keeps_events_reports_and_raises(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, status: int
) -> None:
    """401/403 with sk_: events stay, flush raises AuthError, on_error gets AuthError."""
    server.script([(status, {"detail": "nope"})] * 20)
    client = make_client(on_error=errors, flush_interval=0.1)
    track_n(client, 5)
    with pytest.raises(segops.AuthError) as info:
        client.flush(timeout=5)
    assert info.value.status == status
    assert "nope" in str(info.value)
    wait_until(lambda: errors.of(segops.AuthError), timeout=5)
    assert all(e.status == status for e in errors.of(segops.AuthError))  # type: ignore[attr-defined]
    assert client.stats().pending == 5
    server.clear_script()
    client.flush(timeout=10)
    assert sorted(payload_ids(server)) == list(range(5))


def test_wrong_sk_key_is_auth_error(server: DevServer, make_client: MakeClient) -> None:
    """A key the server does not know gives AuthError (status 401), not a retry storm."""
    client = make_client(key="sk_wrong_key_000000")
    track_n(client, 2)
    started = time.monotonic()
    with pytest.raises(segops.AuthError) as info:
        client.flush(timeout=5)
    assert time.monotonic() - started < 2.0
    assert info.value.status == 401
    assert len(ingestion(server)) == 1
    assert client.stats().pending == 2


def test_404_wrong_url_is_delivery_error(server: DevServer, make_client: MakeClient) -> None:
    """A wrong api_url (404) raises DeliveryError with status 404 and keeps the events."""
    client = make_client(url=server.url + "/wrong-prefix")
    track_n(client, 2)
    with pytest.raises(segops.DeliveryError) as info:
        client.flush(timeout=5)
    assert info.value.status == 404
    assert client.stats().pending == 2


# -- poison events ---------------------------------------------------------------------------


def test_poison_event_isolated_into_dead_letters(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, spool_file: Path
) -> None:
    """One refused event in a batch of 50: the 49 others land, it goes to the dead letters."""
    server.reject_when = lambda ev: (
        "payload.i: 17 is cursed" if ev["payload"].get("i") == 17 else None
    )
    client = make_client(on_error=errors)
    track_n(client, 50)
    with pytest.raises(segops.EventRejected, match="17 is cursed") as raised:
        client.flush(timeout=20)  # raises once the 49 others are delivered, as 0.2.2's does
    assert raised.value.status == 400
    assert sorted(payload_ids(server)) == [i for i in range(50) if i != 17]
    stats = client.stats()
    assert stats.dead_letters == 1 and stats.pending == 0 and stats.delivered == 49
    (rejected,) = errors.of(segops.EventRejected)
    assert rejected.status == 400  # type: ignore[attr-defined]
    assert "17 is cursed" in str(rejected)
    with spool.Spool(spool_file) as s:
        (dead,) = s.dead_letters()
    assert b'"i":17' in dead.data
    assert "17 is cursed" in dead.reason
    assert server.stats()["duplicates_dropped"] == 0


@pytest.mark.parametrize("finish", ["flush", "shutdown", "with"])
def test_a_rejection_the_flusher_met_first_is_raised_by_the_next_flush(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, finish: str
) -> None:
    """The background flusher dead-lettered the event before flush() (or shutdown(), or the
    end of a ``with`` block) was called: that call raises it all the same, once; on_error
    had it too. Whoever sent the batch, a script sees what 0.2.2's flush() would raise."""
    server.reject_when = lambda ev: "no thanks" if ev["payload"].get("i") == 1 else None
    client = make_client(on_error=errors, flush_interval=0.05)
    track_n(client, 3)
    wait_until(lambda: client.stats().dead_letters == 1 and client.stats().pending == 0)
    wait_until(lambda: errors.of(segops.EventRejected))  # reported once the batch is done
    with pytest.raises(segops.EventRejected, match="no thanks"):
        if finish == "flush":
            client.flush(timeout=10)
        elif finish == "shutdown":
            client.shutdown(timeout=10)
        else:
            with client:
                pass
    if finish == "flush":
        client.flush(timeout=10)  # raised once
    assert sorted(payload_ids(server)) == [0, 2]


def test_a_rejection_another_client_on_the_spool_met_is_raised_by_my_flush(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """Two clients on one spool (two workers, a Celery parent and child, a dropped client's
    last pass): the other one sent my event and the server refused it. My flush() waited
    for it, so it raises, once, as it does when my own flusher met the refusal."""
    server.reject_when = lambda ev: "no thanks" if ev["payload"].get("i") == 1 else None
    mine = make_client(on_error=errors)
    other = make_client(on_error=errors)
    track_n(mine, 3)
    with pytest.raises(segops.EventRejected):
        other.flush(timeout=10)  # it waited for them too
    with pytest.raises(segops.EventRejected, match="no thanks") as raised:
        mine.flush(timeout=10)
    assert raised.value.status == 400 and raised.value.detail == "no thanks"
    mine.flush(timeout=10)  # raised once
    assert sorted(payload_ids(server)) == [0, 2]


def test_an_on_error_that_raises_its_argument_does_not_pin_the_delivery(
    server: DevServer, make_client: MakeClient
) -> None:
    """on_error re-raising what it got (the client logs it) gives that object a traceback
    of the flusher's frames, which hold the whole claimed batch: the rejection kept for the
    next flush() must not be that object (up to 10,000 are kept, each pinning a batch)."""
    server.reject_when = lambda ev: "no thanks" if ev["payload"].get("i") == 1 else None
    reported = []

    def on_error(exc: segops.SegOpsError) -> None:
        reported.append(exc)
        raise exc

    client = make_client(on_error=on_error, flush_interval=0.05)
    track_n(client, 3)
    wait_until(lambda: reported and reported[0].__traceback__ is not None)
    with pytest.raises(segops.EventRejected, match="no thanks") as raised:
        client.flush(timeout=10)
    names = set()
    tb = raised.value.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "on_error" not in names and "_deliver" not in names


def test_two_poison_events_and_order_of_the_rest(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """Two refused events are both isolated; all the others are delivered exactly once."""
    bad = {3, 40}
    server.reject_when = lambda ev: "bad" if ev["payload"].get("i") in bad else None
    client = make_client(on_error=errors)
    track_n(client, 64)
    with pytest.raises(segops.EventRejected, match="rejected 2 events"):
        client.flush(timeout=20)
    client.flush(timeout=20)  # raised once: a later flush has nothing new to say
    ids = payload_ids(server)
    assert sorted(ids) == [i for i in range(64) if i not in bad]
    assert len(ids) == len(set(ids))
    assert client.stats().dead_letters == 2
    assert len(errors.of(segops.EventRejected)) == 2


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (422, {"event_type": ["Unknown event type."]}, "Unknown event type."),
        # Not "failing to store the reason and sending the event again forever".
        (400, {"detail": ["bad \ud800 value"]}, "bad ? value"),
    ],
    ids=["422-field-errors", "lone-surrogate"],
)
def test_a_single_refused_event_is_dead_lettered_with_the_reason(
    server: DevServer,
    make_client: MakeClient,
    errors: ErrorLog,
    spool_file: Path,
    status: int,
    body: object,
    shown: str,
) -> None:
    """A single event refused (422 {field: [msg]}, or a reason carrying a lone surrogate,
    shown as "?") is dead-lettered with that reason, which the report shows too."""
    server.script([(status, body)])
    client = make_client(on_error=errors)
    client.track(user_id="u", event_type="bogus")
    with pytest.raises(segops.EventRejected) as raised:
        client.flush(timeout=10)
    assert raised.value.status == status and shown in str(raised.value)
    with spool.Spool(spool_file) as s:
        (dead,) = s.dead_letters()
    assert shown in dead.reason
    rejected = errors.of(segops.EventRejected)[0]
    assert rejected.status == status  # type: ignore[attr-defined]
    assert shown in str(rejected)


def test_413_splits_the_batch(server: DevServer, make_client: MakeClient) -> None:
    """A 413 answer splits the batch; both halves are delivered."""
    server.script([(413, {"detail": "Request Entity Too Large"})])
    client = make_client()
    track_n(client, 10)
    client.flush(timeout=10)
    assert sorted(payload_ids(server)) == list(range(10))
    assert [len(r.json["events"]) for r in ingestion(server)] == [10, 5, 5]
    assert client.stats().dead_letters == 0


# -- skipped, on_error, stats --------------------------------------------------------------


def test_skipped_reported_as_events_skipped(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """A 2xx with skipped>0 counts as delivered and is reported as EventsSkipped."""
    server.script([(200, {"queued": 3, "skipped": 1})])
    client = make_client(on_error=errors)
    track_n(client, 4)
    client.flush(timeout=10)
    (skipped,) = errors.of(segops.EventsSkipped)
    assert skipped.skipped == 1  # type: ignore[attr-defined]
    stats = client.stats()
    assert stats.skipped == 1 and stats.pending == 0 and stats.delivered == 4
    assert len(ingestion(server)) == 1  # not resent


@pytest.mark.parametrize("raised", [RuntimeError("handler bug"), SystemExit(3)])
def test_raising_on_error_does_not_kill_the_flusher(
    server: DevServer, make_client: MakeClient, raised: BaseException
) -> None:
    """An on_error that raises is survived: the flusher keeps delivering in the background."""
    calls = []

    def angry(exc: BaseException) -> None:
        calls.append(exc)
        raise raised

    server.script([503] * 3)  # FAST: 3 attempts -> one failed cycle
    client = make_client(on_error=angry, flush_interval=0.1, batch_size=1)
    client.track(user_id="u", event_type="e", payload={"i": 0})
    wait_until(lambda: calls, timeout=10)
    client.track(user_id="u", event_type="e", payload={"i": 1})
    wait_until(lambda: len(server.events()) == 2, timeout=30, interval=0.1)
    assert sorted(payload_ids(server)) == [0, 1]


def test_default_on_error_logs_to_segops_logger(
    server: DevServer, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Without on_error, background failures are logged on the 'segops' logger."""
    caplog.set_level("WARNING", logger="segops")
    server.script([(200, {"queued": 0, "skipped": 1})])
    client = make_client(flush_interval=0.1, batch_size=1)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: any(r.name.startswith("segops") for r in caplog.records), timeout=10)
    assert any("skipped" in r.getMessage() for r in caplog.records)


def test_stats_move_as_expected(
    server: DevServer, make_client: MakeClient, spool_file: Path
) -> None:
    """stats(): pending after track, delivered/retries after flush, last_error after a 503."""
    client = make_client(on_error=lambda exc: None)
    s0 = client.stats()
    assert (s0.pending, s0.in_flight, s0.dead_letters, s0.delivered, s0.retries) == (0, 0, 0, 0, 0)
    assert s0.last_error is None and s0.spool_path == str(spool_file)
    track_n(client, 7)
    s1 = client.stats()
    assert s1.pending == 7 and s1.oldest_age is not None and s1.oldest_age >= 0
    server.script([503])
    client.flush(timeout=10)
    s2 = client.stats()
    assert (s2.pending, s2.delivered, s2.retries) == (0, 7, 1)
    assert s2.oldest_age is None
    server.fail_rate = 1.0
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.DeliveryError):
        client.flush(timeout=5)
    assert client.stats().pending == 1


def test_stats_after_flush_counts_what_the_flusher_delivered(
    server: DevServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flush() that waited for the flusher's batch returns with stats() already counting
    it (the flusher counted after its ack, so a stats() right after flush() could miss it)."""
    real_ack = spool.Spool.ack

    def ack_then_pause(self: spool.Spool, batch: spool.Batch) -> int:
        acked = real_ack(self, batch)
        if threading.current_thread().name == "segops-flusher":
            time.sleep(0.3)  # widens the window between the ack and what follows it
        return acked

    monkeypatch.setattr(spool.Spool, "ack", ack_then_pause)
    server.latency_ms = 200  # the flusher's request is in flight when flush() starts
    client = make_client(flush_interval=0.05, batch_size=1)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: client.stats().in_flight == 1, timeout=5)
    client.flush(timeout=10)
    assert client.stats().delivered == 1


def test_a_batch_whose_lease_lapsed_is_counted_once(
    server: DevServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock jumps forward while the flusher's request is in flight: its lease
    lapses, flush() sends the batch again (same Idempotency-Key), and the flusher's late
    ack finds nothing to delete. delivered counts the events once, not twice."""
    server.latency_ms = 600
    client = make_client(flush_interval=0.05, batch_size=1)
    for i in range(3):
        client.track(user_id="u", event_type="e", payload={"i": i})
    wait_until(lambda: client.stats().in_flight, timeout=10)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    client.flush(timeout=10)
    wait_until(lambda: server.stats()["duplicates_dropped"], timeout=5)  # the flusher's too
    time.sleep(0.2)  # its late ack
    assert len(server.events()) == 3
    assert client.stats().delivered == 3


def test_last_error_is_set_by_background_failures(
    server: DevServer, make_client: MakeClient
) -> None:
    """A background failure leaves its message in stats().last_error."""
    server.script([(403, {"detail": "plan limit"})] * 5)
    client = make_client(on_error=lambda exc: None, flush_interval=0.1, batch_size=1)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: client.stats().last_error, timeout=10)
    assert "403" in (client.stats().last_error or "")


def test_skipped_count_is_capped_at_the_batch(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """A server that reports more skipped events than the batch held counts the batch only."""
    client = make_client(on_error=errors)
    for i in range(2):
        client.track(user_id="u", event_type="e", payload={"i": i})
    server.script([(200, {"queued": 0, "skipped": 7})])
    client.flush(timeout=10)
    assert client.stats().skipped == 2 and client.stats().delivered == 2


# -- batch=False -----------------------------------------------------------------------------


def test_batch_false_with_server_down_spools_and_reports(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: a failed inline send keeps the event, calls on_error; flush delivers it."""
    client = make_client(batch=False, on_error=errors)
    server.stop()
    started = time.monotonic()
    client.track(user_id="u", event_type="offline", payload={"i": 0})
    assert time.monotonic() - started < 3.0
    assert errors.of(segops.DeliveryError)
    assert client.stats().pending == 1
    server.start()
    client.flush(timeout=10)
    assert payload_ids(server) == [0]


def test_batch_false_sends_its_own_event_after_a_failure(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: after one failed send, each track() still sends its own event at once."""
    client = make_client(batch=False, on_error=errors)
    server.script([503])
    client.track(user_id="u", event_type="e", payload={"i": 1})
    assert errors.of(segops.DeliveryError) and client.stats().pending == 1
    for i in (2, 3):
        client.track(user_id="u", event_type="e", payload={"i": i})
        assert i in payload_ids(server), f"track #{i} did not send its own event"
    client.flush(timeout=10)
    assert sorted(payload_ids(server)) == [1, 2, 3]


def test_batch_false_track_many_sends_at_once(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: track_many() sends its events before it returns, like track()."""
    client = make_client(batch=False, on_error=errors)
    events = [{"user_id": "u", "event_type": "e", "payload": {"i": i}} for i in range(3)]
    assert client.track_many(events) == 3
    assert sorted(e["payload"]["i"] for e in server.events()) == [0, 1, 2]
    assert errors.items == []


def test_batch_false_single_event_refused_is_dead_lettered(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: a 400 on the single-event path dead-letters that event and reports it."""
    server.reject_when = lambda ev: "no thanks"
    client = make_client(batch=False, on_error=errors)
    client.track(user_id="u", event_type="e")
    assert client.stats().dead_letters == 1
    assert "no thanks" in str(errors.of(segops.EventRejected)[0])


@pytest.mark.parametrize("retried_by", ["flusher", "another_client"])
def test_batch_false_send_whose_answer_was_lost_is_stored_once(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, retried_by: str
) -> None:
    """An inline send that timed out after the server stored it is retried on the same
    endpoint under the same Idempotency-Key, by this client or the next: stored once."""
    server.latency_ms = 1500  # longer than the client's 1 s timeout
    # The first client's flusher retries only for the "flusher" case.
    interval = 0.2 if retried_by == "flusher" else 60.0
    client = make_client(batch=False, timeout=1.0, on_error=errors, flush_interval=interval)
    for i in range(3):
        client.track(user_id="u", event_type="e", payload={"i": i})
    assert len(errors.of(segops.DeliveryError)) == 3
    wait_until(lambda: len(server.events()) == 3, timeout=5)  # the server took all three
    server.latency_ms = 0
    if retried_by == "another_client":
        with pytest.raises(segops.FlushTimeout):  # no time given: the events stay spooled
            client.shutdown(timeout=0)
        client = make_client()  # batch=True: the tag on the spooled batches decides
    client.flush(timeout=15)
    assert sorted(payload_ids(server)) == [0, 1, 2]
    sent = ingestion(server)
    assert {r.path for r in sent} == {"/api/ingestion/track/"}, "a retry changed endpoint"
    assert len({r.headers["idempotency-key"] for r in sent}) == 3
    assert server.stats()["duplicates_dropped"] == len(sent) - 3


# -- lifecycle -------------------------------------------------------------------------------


def test_shutdown_is_idempotent_and_close_is_alias(
    server: DevServer, make_client: MakeClient
) -> None:
    """shutdown() twice is fine, close() after it too; the event was delivered once."""
    client = make_client()
    client.track(user_id="u", event_type="e")
    client.shutdown(timeout=5)
    client.shutdown(timeout=5)
    client.close()
    assert len(server.events()) == 1


@pytest.mark.parametrize("call", ["track", "identify", "flush"])
def test_use_after_shutdown_raises_client_closed(make_client: MakeClient, call: str) -> None:
    """track/identify/flush after shutdown raise ClientClosed (a SegOpsError)."""
    client = make_client()
    client.shutdown(timeout=5)
    with pytest.raises(segops.ClientClosed):
        if call == "track":
            client.track(user_id="u", event_type="e")
        elif call == "identify":
            client.identify(user_id="u", traits={})
        else:
            client.flush()
    assert issubclass(segops.ClientClosed, segops.SegOpsError)


def test_context_manager_flushes(server: DevServer, spool_file: Path) -> None:
    """Leaving the with-block delivers and closes the client."""
    with segops.SegOpsClient(server.url, "sk_dev_secret", spool_path=spool_file) as client:
        track_n(client, 3)
        assert server.events() == []
    assert sorted(payload_ids(server)) == [0, 1, 2]
    with pytest.raises(segops.ClientClosed):
        client.track(user_id="u", event_type="e")


def test_context_manager_does_not_hide_user_exception(server: DevServer, spool_file: Path) -> None:
    """An exception inside the with-block propagates; the events are still delivered."""
    client = segops.SegOpsClient(server.url, "sk_dev_secret", spool_path=spool_file)
    with pytest.raises(KeyError), client:
        client.track(user_id="u", event_type="e")
        raise KeyError("app bug")
    assert len(server.events()) == 1


def test_no_third_party_exception_reaches_the_user(spool_file: Path) -> None:
    """With nothing listening, flush raises a SegOpsError, never an httpx error."""
    client = segops.SegOpsClient(
        f"http://127.0.0.1:{free_port()}",
        "sk_x",
        spool_path=spool_file,
        retry_policy=FAST,
        on_error=lambda exc: None,
    )
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.SegOpsError) as info:
        client.flush(timeout=2)
    assert type(info.value).__module__.startswith("segops")
    with pytest.raises(segops.SegOpsError):
        client.shutdown(timeout=0.5)


def test_unusable_spool_path_is_spool_error(tmp_path: Path) -> None:
    """A spool path that cannot be a file raises SpoolError (not sqlite3/OSError)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(segops.SpoolError):
        segops.SegOpsClient("http://127.0.0.1:9", "sk_x", spool_path=blocker / "s.sqlite3")


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("", "sk_x"),
        ("   ", "sk_x"),
        ("http://127.0.0.1:9", ""),
        ("ftp://host", "sk_x"),
        ("http://", "sk_x"),
        ("http://exa mple.com", "sk_x"),
        ("http://127.0.0.1:99999", "sk_x"),
    ],
)
def test_bad_settings_are_value_errors(tmp_path: Path, url: str, key: str) -> None:
    """An empty key or URL (or a non-http or malformed URL) is a ValueError at construction."""
    with pytest.raises(ValueError):
        segops.SegOpsClient(url, key, spool_path=tmp_path / "s.sqlite3")


def test_spool_full_raises_and_keeps_what_was_stored(
    server: DevServer, make_client: MakeClient
) -> None:
    """With max_spool_bytes reached, track() raises SpoolFull; stored events still deliver."""
    client = make_client(max_spool_bytes=4000)
    stored = 0
    with pytest.raises(segops.SpoolFull):
        for i in range(1000):
            client.track(user_id="u", event_type="e", payload={"i": i, "pad": "x" * 100})
            stored += 1
    assert 0 < stored < 1000
    assert client.stats().pending == stored
    client.flush(timeout=10)
    assert sorted(payload_ids(server)) == list(range(stored))
    client.track(user_id="u", event_type="after_drain", payload={"i": "ok"})  # room again
