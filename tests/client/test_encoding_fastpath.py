"""The fast encoder of the common track() call matches the general one byte for byte."""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict

import pytest
from segops import _encoding

PAYLOADS: Dict[str, Dict[str, Any]] = {
    "empty": {},
    "flat": {"path": "/home", "n": 3, "ok": True, "none": None, "pi": 3.25},
    "nested": {"items": [{"sku": "a", "qty": 2}], "meta": {"tags": ["x", "y"]}},
    "unicode": {"name": "Zoë", "emoji": "🎉", "quote": 'say "hi"\n'},
    "converted": {"when": __import__("datetime").date(2026, 1, 2), "tags": ("a", "b")},
}


@pytest.mark.parametrize("name", list(PAYLOADS), ids=list(PAYLOADS))
@pytest.mark.parametrize("user_id", ["user-123", 'Zoë "q" \\'])
def test_encode_common_matches_encode_event(
    monkeypatch: pytest.MonkeyPatch, name: str, user_id: str
) -> None:
    """Same event, same bytes, whichever encoder ran."""
    monkeypatch.setattr(_encoding, "now_iso", lambda: "2026-11-26T04:16:56.709521+00:00")
    payload = PAYLOADS[name]
    fast = _encoding.encode_common(user_id, "page_viewed", payload)
    wire = _encoding.build_event(user_id, "page_viewed", None, payload)
    assert fast == _encoding.encode_event(wire)


@pytest.mark.parametrize(
    ("user_id", "payload", "named"),
    [
        ("u\udcff", {}, "user_id"),
        ("u", {"file": "caf\udce9.txt"}, "payload['file']"),
        ("u", {"x": [{"caf\udce9": 1}]}, "payload['x'][0] key"),
        ("u", {"split pair": "\ud83d\ude00"}, "payload['split pair']"),
    ],
)
def test_lone_surrogates_fail_alike_on_both_paths(
    user_id: str, payload: Dict[str, Any], named: str
) -> None:
    """A lone surrogate is a ValueError naming where it is, from either encoder."""
    with pytest.raises(ValueError) as fast:
        _encoding.encode_common(user_id, "e", payload)
    with pytest.raises(ValueError) as general:
        _encoding.encode_event(_encoding.build_event(user_id, "e", None, payload))
    assert type(fast.value) is type(general.value) is ValueError
    assert str(fast.value) == str(general.value)
    assert str(fast.value).startswith(f"{named}") and "surrogate" in str(fast.value)


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": [1, object()]}])
def test_encode_common_errors_name_the_field(bad: Dict[str, Any]) -> None:
    """A payload JSON cannot carry fails with the path of the bad value."""
    with pytest.raises((TypeError, ValueError), match=r"payload\['x'\]"):
        _encoding.encode_common("u", "e", bad)


def test_encode_common_refuses_oversized_events() -> None:
    """Over 1 MiB encoded is a ValueError, as on the general path."""
    with pytest.raises(ValueError, match="1 MiB"):
        _encoding.encode_common("u", "e", {"blob": "x" * _encoding.MAX_EVENT_BYTES})


@pytest.mark.parametrize(
    "fraction_ns", [0, 999, 1_000, 1_000_000, 250_000_000, 500_000_000, 999_999_000, 999_999_999]
)
@pytest.mark.parametrize("second", [1_764_140_000, 1_764_140_001])
def test_now_iso_matches_datetime_isoformat(
    monkeypatch: pytest.MonkeyPatch, second: int, fraction_ns: int
) -> None:
    """The cached-second, table-built timestamp is what the official client sends,
    ``datetime.now(timezone.utc).isoformat()``: microseconds, none when they are 0."""
    monkeypatch.setattr(_encoding.time, "time_ns", lambda: second * 10**9 + fraction_ns)
    expected = dt.datetime.fromtimestamp(second, dt.timezone.utc) + dt.timedelta(
        microseconds=fraction_ns // 1000  # floored, as datetime.now() does
    )
    assert _encoding.now_iso() == expected.isoformat()


def test_now_iso_is_now() -> None:
    """The default occurred_at is the wall clock at the call, to the microsecond."""
    before = dt.datetime.now(dt.timezone.utc)
    stamped = dt.datetime.fromisoformat(_encoding.now_iso())
    after = dt.datetime.now(dt.timezone.utc)
    assert before <= stamped <= after
