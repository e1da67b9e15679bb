"""Validation at the call site: bad input raises before anything is spooled; obvious values
are converted to their JSON equivalents."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import segops
from _support import payload_ids
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]
MIB = 1024 * 1024


class Plan(enum.Enum):
    PRO = "pro"


class Level(enum.IntEnum):
    HIGH = 3


class Kind(str, enum.Enum):
    ORDER = "order_placed"


class Shouty(str):
    def __str__(self) -> str:
        return self.upper()


TZ_PLUS_1 = dt.timezone(dt.timedelta(hours=1))


class KW(dict):  # type: ignore[type-arg]
    """Marks keyword arguments for track(); anything else is passed as the event."""


BAD_INPUTS: Dict[str, Any] = {
    # name: (KW(...) keyword arguments or a positional event, exception, text in the message)
    "user_id missing": (KW(event_type="e"), TypeError, "user_id"),
    "user_id empty": (KW(user_id="", event_type="e"), ValueError, "user_id"),
    "user_id blank": (KW(user_id="   ", event_type="e"), ValueError, "user_id"),
    "user_id None in dict": ({"user_id": None, "event_type": "e"}, TypeError, "user_id"),
    "user_id object": (KW(user_id=object(), event_type="e"), TypeError, "user_id"),
    "user_id bool": (KW(user_id=True, event_type="e"), TypeError, "user_id"),
    "event_type missing": (KW(user_id="u"), TypeError, "event_type"),
    "event_type empty": (KW(user_id="u", event_type=""), ValueError, "event_type"),
    "event_type missing in dict": ({"user_id": "u"}, TypeError, "event_type"),
    "event_type empty in Event": (
        segops.Event(user_id="u", event_type=""),
        ValueError,
        "event_type",
    ),
    "payload list": (KW(user_id="u", event_type="e", payload=[1, 2]), TypeError, "payload"),
    "payload str": (KW(user_id="u", event_type="e", payload="{}"), TypeError, "payload"),
    "payload NaN": (
        KW(user_id="u", event_type="e", payload={"score": float("nan")}),
        ValueError,
        "score",
    ),
    "payload Infinity": (
        KW(user_id="u", event_type="e", payload={"x": {"deep": [1, float("inf")]}}),
        ValueError,
        "deep",
    ),
    "payload -Infinity": (
        KW(user_id="u", event_type="e", payload={"neg": float("-inf")}),
        ValueError,
        "neg",
    ),
    "payload Decimal NaN": (
        KW(user_id="u", event_type="e", payload={"d": Decimal("NaN")}),
        ValueError,
        "d",
    ),
    "payload object": (
        KW(user_id="u", event_type="e", payload={"thing": object()}),
        TypeError,
        "thing",
    ),
    "user_id lone surrogate": (KW(user_id="u\udcff", event_type="e"), ValueError, "user_id"),
    "payload lone surrogate": (
        KW(user_id="u", event_type="e", payload={"file": "caf\udce9.txt"}),
        ValueError,
        "file",
    ),
    "payload bytes": (KW(user_id="u", event_type="e", payload={"raw": b"\x00"}), TypeError, "raw"),
    "occurred_at unparsable": (
        KW(user_id="u", event_type="e", occurred_at="yesterday at noon"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at bad month": (
        KW(user_id="u", event_type="e", occurred_at="2024-13-01T00:00:00Z"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at full-width digits": (
        KW(user_id="u", event_type="e", occurred_at="\uff12\uff10\uff12\uff14-01-01T00:00:00Z"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at offset minutes": (
        KW(user_id="u", event_type="e", occurred_at="2024-01-01T00:00:00+05:75"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at before year 1 in UTC": (
        KW(user_id="u", event_type="e", occurred_at=dt.datetime(1, 1, 1, tzinfo=TZ_PLUS_1)),
        ValueError,
        "occurred_at",
    ),
    "payload datetime before year 1 in UTC": (
        KW(user_id="u", event_type="e", payload={"born": dt.datetime(1, 1, 1, tzinfo=TZ_PLUS_1)}),
        ValueError,
        "born",
    ),
    "occurred_at epoch seconds as text": (
        KW(user_id="u", event_type="e", occurred_at="1700000000"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at basic format, month 13": (
        KW(user_id="u", event_type="e", occurred_at="20241326T000000Z"),
        ValueError,
        "occurred_at",
    ),
    "occurred_at number": (
        KW(user_id="u", event_type="e", occurred_at=1700000000),
        TypeError,
        "occurred_at",
    ),
    "unknown dict key": (
        {"user_id": "u", "event_type": "e", "colour": "red"},
        ValueError,
        "colour",
    ),
    "event of wrong type": (["u", "e"], TypeError, "Event"),
    "over 1 MiB": (
        KW(user_id="u", event_type="e", payload={"blob": "x" * MIB}),
        ValueError,
        "1 MiB",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_naming_the_field_and_spools_nothing(
    server: DevServer, make_client: MakeClient, case: str
) -> None:
    """Each bad input raises TypeError/ValueError naming the field; spooled events are intact."""
    args, exc_type, needle = BAD_INPUTS[case]
    client = make_client()
    client.track(user_id="u", event_type="good", payload={"i": "before"})
    with pytest.raises(exc_type) as info:
        if isinstance(args, KW):
            client.track(**args)
        else:
            client.track(args)
    assert needle in str(info.value), f"message does not name {needle!r}: {info.value}"
    assert client.stats().pending == 1
    client.track(user_id="u", event_type="good", payload={"i": "after"})
    client.flush(timeout=10)
    assert payload_ids(server) == ["before", "after"]
    assert server.stats()["skipped"] == 0


def test_event_exactly_at_limit_is_accepted_and_over_is_not(make_client: MakeClient) -> None:
    """An encoded event of 1 MiB is accepted; one byte more is refused."""
    client = make_client()
    base = {"user_id": "u", "event_type": "e", "occurred_at": "2024-01-01T00:00:00Z"}
    overhead = len(
        '{"user_id":"u","event_type":"e","occurred_at":"2024-01-01T00:00:00Z","payload":{"b":""}}'
    )
    client.track({**base, "payload": {"b": "x" * (MIB - overhead)}})
    with pytest.raises(ValueError):
        client.track({**base, "payload": {"b": "x" * (MIB - overhead + 1)}})
    assert client.stats().pending == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(user_id="u", traits=[1]), "traits"),
        (dict(user_id="", traits={"a": 1}), "user_id"),
        (dict(user_id="u", traits={"a": float("nan")}), "traits"),
        ({"context": {"user_id": "u", "plan": "pro"}}, "plan"),
    ],
)
def test_identify_validates_too(
    make_client: MakeClient, kwargs: Dict[str, Any], message: str
) -> None:
    """identify() validates user_id and traits (naming 'traits') before spooling."""
    client = make_client()
    with pytest.raises((TypeError, ValueError)) as info:
        client.identify(**kwargs)
    assert message in str(info.value)
    assert client.stats().pending == 0


def test_track_rejects_event_plus_keywords(make_client: MakeClient) -> None:
    """Passing an Event and keyword fields at once is a TypeError, nothing spooled."""
    client = make_client()
    with pytest.raises(TypeError):
        client.track(segops.Event(user_id="u", event_type="e"), user_id="v")
    assert client.stats().pending == 0


def test_conversions_reach_the_server_as_json(server: DevServer, make_client: MakeClient) -> None:
    """datetime (naive=UTC), date, Decimal, UUID, Enum, tuple, set and int ids are converted."""
    client = make_client()
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    paris = dt.timezone(dt.timedelta(hours=2))
    client.track(
        user_id=42,
        event_type="converted",
        occurred_at=dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        payload={
            "naive": dt.datetime(2024, 1, 2, 3, 4, 5),
            "aware": dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=paris),
            "day": dt.date(2024, 1, 2),
            "price": Decimal("19.99"),
            "count": Decimal("3"),
            "id": ident,
            "plan": Plan.PRO,
            "level": Level.HIGH,
            "pair": (1, "two"),
            "tags": {"solo"},
            "nested": {"when": dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)},
        },
    )
    client.flush(timeout=10)
    (event,) = server.events()
    raw = event["raw"]
    assert raw["user_id"] == "42"
    assert raw["occurred_at"] == "2024-05-06T07:08:09.123456+00:00"
    assert raw["payload"] == {
        "naive": "2024-01-02T03:04:05+00:00",
        "aware": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
        "price": 19.99,
        "count": 3,
        "id": "12345678-1234-5678-1234-567812345678",
        "plan": "pro",
        "level": 3,
        "pair": [1, "two"],
        "tags": ["solo"],
        "nested": {"when": "2024-01-02T00:00:00+00:00"},
    }


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (dt.date(2024, 2, 29), "2024-02-29T00:00:00+00:00"),
        (
            dt.datetime(2024, 2, 29, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2024-03-01T04:00:00+00:00",
        ),
        ("2024-02-29T12:00:00.5+01:00", "2024-02-29T12:00:00.5+01:00"),
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"),
        ("2024-02-29 12:00", "2024-02-29 12:00"),
        ("2024-02-29T12:00:00+0530", "2024-02-29T12:00:00+0530"),
        # ISO-8601 the server would skip: the same instant in the wire's layout instead
        ("2024-02-29", "2024-02-29T00:00:00+00:00"),
        ("2024-02-29T12:00:00+05", "2024-02-29T07:00:00+00:00"),
        (" 2024-02-29T12:00:00Z\n", "2024-02-29T12:00:00+00:00"),
        ("2024-02-29T12:00:00.1234567891Z", "2024-02-29T12:00:00.123456+00:00"),
        # ISO-8601's basic format
        ("20240229T120000Z", "2024-02-29T12:00:00+00:00"),
        ("20240229T120000.25+0530", "2024-02-29T06:30:00.250000+00:00"),
        ("20240229", "2024-02-29T00:00:00+00:00"),
    ],
)
def test_occurred_at_forms(
    server: DevServer, make_client: MakeClient, given: Any, sent: str
) -> None:
    """occurred_at accepts dates, datetimes and ISO-8601 strings; the server takes them all."""
    client = make_client()
    client.track(user_id="u", event_type="e", occurred_at=given)
    client.flush(timeout=10)
    assert server.events()[0]["raw"]["occurred_at"] == sent
    assert server.stats()["skipped"] == 0


@pytest.mark.parametrize(
    ("given", "sent"),
    [(Kind.ORDER, "order_placed"), (Level.HIGH, "3"), (Shouty("quiet"), "quiet")],
)
def test_ids_are_sent_as_json_sees_them(
    server: DevServer, make_client: MakeClient, given: Any, sent: str
) -> None:
    """Enum ids are sent as their value and str subclasses as their text, like json.dumps."""
    client = make_client()
    client.track(user_id=given, event_type=given)
    client.identify(user_id=given)
    client.flush(timeout=10)
    assert [(e["user_id"], e["event_type"]) for e in server.events()] == [
        (sent, sent),
        (sent, "context_identified"),
    ]


@pytest.mark.parametrize("absent", [None, ""])
def test_absent_occurred_at_is_the_time_of_the_call(
    server: DevServer, make_client: MakeClient, absent: Any
) -> None:
    """occurred_at None or "" (a missing column) is the time of track(), as in 0.2.2."""
    client = make_client()
    before = dt.datetime.now(dt.timezone.utc)
    client.track(user_id="u", event_type="e", occurred_at=absent)
    client.track({"user_id": "u", "event_type": "e", "occurred_at": absent})
    after = dt.datetime.now(dt.timezone.utc)
    client.flush(timeout=10)
    for event in server.events():
        assert before <= dt.datetime.fromisoformat(event["raw"]["occurred_at"]) <= after


def _circular() -> Dict[str, Any]:
    loop: Dict[str, Any] = {"a": 1, "items": [1, 2]}
    loop["items"].append({"back": loop})
    return loop


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (_circular(), "payload['items'][2]['back']"),
        ({"scores": {float("nan"): 1}}, "payload['scores'] key nan"),
        ({"by": {("a", 1): 1}}, "payload['by'] key ('a', 1)"),
    ],
    ids=["circular", "NaN key", "tuple key"],
)
def test_errors_name_the_exact_spot(make_client: MakeClient, payload: Any, named: str) -> None:
    """A circular reference is named where it closes, a bad key as that key."""
    client = make_client()
    with pytest.raises((TypeError, ValueError)) as info:
        client.track(user_id="u", event_type="e", payload=payload)
    assert str(info.value).startswith(f"{named}: ")
    assert client.stats().pending == 0


def test_set_payload_is_a_list_of_its_members(server: DevServer, make_client: MakeClient) -> None:
    """A set of several members arrives as a list with the same members."""
    client = make_client()
    client.track(user_id="u", event_type="e", payload={"s": {3, 1, 2}, "f": frozenset({"a"})})
    client.flush(timeout=10)
    payload = server.events()[0]["payload"]
    assert sorted(payload["s"]) == [1, 2, 3] and payload["f"] == ["a"]


def test_payload_is_snapshotted_at_track_time(server: DevServer, make_client: MakeClient) -> None:
    """Mutating the payload dict after track() does not change the stored event."""
    client = make_client()
    payload: Dict[str, Any] = {"n": 1}
    client.track(user_id="u", event_type="e", payload=payload)
    payload["n"] = 2
    payload["extra"] = True
    client.flush(timeout=10)
    assert server.events()[0]["payload"] == {"n": 1}


def test_track_many_is_all_or_nothing(server: DevServer, make_client: MakeClient) -> None:
    """track_many with one bad event raises with its position and spools none of them."""
    client = make_client()
    events = [{"user_id": "u", "event_type": "e", "payload": {"i": i}} for i in range(5)]
    events[3]["payload"] = {"bad": float("nan")}
    with pytest.raises(ValueError, match="#3"):
        client.track_many(events)
    assert client.stats().pending == 0
    events[3]["payload"] = {"i": 3}
    assert client.track_many(events) == 5
    client.flush(timeout=10)
    assert payload_ids(server) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "setting",
    [
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": 0},
        {"timeout": True},
        {"flush_interval": float("nan")},
        {"flush_interval": -1.0},
        {"batch_size": 0},
        {"batch_size": 2.5},
    ],
    ids=repr,
)
def test_bad_settings_are_refused_at_construction(tmp_path: Path, setting: Dict[str, Any]) -> None:
    """A NaN, infinite, zero or mistyped setting is a ConfigurationError naming the setting."""
    with pytest.raises(segops.ConfigurationError, match=next(iter(setting))):
        segops.SegOpsClient(
            "http://127.0.0.1:9", "sk_x", spool_path=tmp_path / "s.sqlite3", **setting
        )
    assert not (tmp_path / "s.sqlite3").exists()


@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_nan_timeout_of_flush_and_shutdown_is_refused(make_client: MakeClient, call: str) -> None:
    """flush/shutdown(timeout=nan) raise at once instead of never timing out."""
    client = make_client()
    with pytest.raises(segops.ConfigurationError, match="timeout"):
        getattr(client, call)(timeout=float("nan"))
    client.track(user_id="u", event_type="still open")  # shutdown did not begin


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/?", "http://127.0.0.1:9?", "http://127.0.0.1:9/#"]
)
def test_api_url_with_an_empty_query_or_fragment_is_refused(tmp_path: Path, url: str) -> None:
    """Even an empty ?query or #fragment would end up in the middle of every request URL."""
    with pytest.raises(segops.ConfigurationError, match="base URL"):
        segops.SegOpsClient(url, "sk_x", spool_path=tmp_path / "s.sqlite3")
