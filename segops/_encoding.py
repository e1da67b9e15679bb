"""Validation and JSON encoding of events, done at the call site before anything is spooled.

The spool stores each event as the exact JSON object sent on the wire, so a batch body is
built by joining stored records, never by decoding and encoding them again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import json.encoder as json_encoder
import re
import time
import uuid
from decimal import Decimal
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union, cast

from ._types import Context, Event

#: Largest encoded event accepted by ``track()``.
MAX_EVENT_BYTES = 1024 * 1024
IDENTIFY_EVENT_TYPE = "context_identified"

_EVENT_FIELDS = frozenset({"user_id", "event_type", "occurred_at", "payload", "anonymous_id"})
_CONTEXT_FIELDS = frozenset({"user_id", "traits"})
_ISO_8601 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?)?$",
    re.ASCII,  # \d alone would take full-width and other Unicode digits
)
# ISO-8601's basic format (20261126T041656Z), sent as the same instant in the wire's layout.
_ISO_8601_BASIC = re.compile(
    r"^(\d{4})(\d{2})(\d{2})"
    r"(?:[Tt](\d{2})(\d{2})(?:(\d{2})(?:[.,](\d+))?)?"
    r"(Z|z|[+-]\d{2}(?:\d{2})?)?)?$",
    re.ASCII,
)
# The layouts the server accepts as they are (date and time; seconds, 1-9 fraction digits
# and the offset optional); other ISO-8601 that parse_iso8601 takes is normalized first.
_WIRE_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?\Z",
    re.ASCII,
)
_UTC = dt.timezone.utc


def _json_default(value: Any) -> Any:
    """Convert what users obviously mean into JSON; anything else is an error."""
    if isinstance(value, dt.datetime):
        return _datetime_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _decimal_number(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, Mapping):  # e.g. MappingProxyType: a dict to JSON
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decimal_number(value: Decimal) -> Union[int, float]:
    if not value.is_finite():
        raise ValueError("Out of range float values are not JSON compliant")
    return int(value) if value == value.to_integral_value() else float(value)


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
)
# The C encoder built once: JSONEncoder.encode() rebuilds it on every call, which costs a
# few microseconds of every track(). Circular references surface as RecursionError.
_MAKE_C_ENCODER: Any = getattr(json_encoder, "c_make_encoder", None)
_C_ENCODER = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None,
        _json_default,
        json_encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
)


def _to_json(value: Any) -> str:
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_C_ENCODER(value, 0))
    except RecursionError:
        raise ValueError("circular reference detected (or nesting too deep)") from None


def _datetime_text(value: dt.datetime) -> str:
    """ISO-8601 in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC).isoformat()
    try:
        return value.astimezone(_UTC).isoformat()
    except OverflowError:  # e.g. year 1 at +01:00: the UTC time would fall in year 0
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from None


_second_cache: Tuple[int, str] = (-1, "")
# The fraction as two lookups: faster than formatting "%06d" on every track().
_MILLIS = tuple(f".{n:03d}" for n in range(1000))
_MICROS_UTC = tuple(f"{n:03d}+00:00" for n in range(1000))


def now_iso() -> str:
    """The current time as the wire's ISO-8601 UTC text (``datetime.isoformat`` layout).

    The text of the current second is cached: formatting a timezone-aware datetime costs
    more than the rest of ``track()``'s encoding together.
    """
    global _second_cache
    micros = time.time_ns() // 1000  # floored to the microsecond, like datetime.now()
    second = micros // 1_000_000
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)  # one tuple: threads never see a torn pair
    fraction = micros % 1_000_000
    if not fraction:  # isoformat() leaves out a zero fraction (once in a million calls)
        return prefix + "+00:00"
    return prefix + _MILLIS[fraction // 1000] + _MICROS_UTC[micros % 1000]


def parse_iso8601(text: str) -> dt.datetime:
    """Parse an RFC 3339 / ISO-8601 timestamp (``Z`` or offset, any fraction) on Python 3.9+.

    Raises ``ValueError`` for text that is not one, ``TypeError`` for a value that is not text
    (a server's ``"expires_at": 1700000000``)."""
    if not isinstance(text, str):
        raise TypeError(f"an ISO-8601 timestamp must be a string, not {type(text).__name__}")
    stripped = text.strip()
    match = _ISO_8601.match(stripped) or _ISO_8601_BASIC.match(stripped)
    if match is None:
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return dt.datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=_zone(zone),
    )


def _zone(text: Optional[str]) -> dt.tzinfo:
    if not text or text in ("Z", "z"):
        return _UTC
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"UTC offset out of range: {text!r}")
    offset = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-offset if text[0] == "-" else offset)


def _occurred_at(value: Any) -> str:
    if value is None or value == "":  # "" is absent, as in the official client
        return now_iso()
    try:
        if isinstance(value, dt.datetime):
            return _datetime_text(value)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=_UTC).isoformat()
        if isinstance(value, str):
            parsed = parse_iso8601(value)
            if _WIRE_ISO_8601.match(value):
                return value  # as given, like the official client: the server takes it
            # ISO-8601 the server would refuse ("2026-11-26", "+05", " ...Z\n"): send the
            # same instant in the wire's own layout instead of an event it would skip.
            return _datetime_text(parsed)
    except ValueError as exc:
        raise ValueError(f"occurred_at: {exc}") from None
    raise TypeError(
        f"occurred_at must be an ISO-8601 string or a datetime, not {type(value).__name__}"
    )


def id_text(value: Any) -> Optional[str]:
    """A ``str`` or ``int`` id (not a bool) as JSON sees it, else None: ``str()``/``repr()``
    of a subclass may say something else."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    return None


def _identifier(name: str, value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value  # what json.dumps (the official client) sends for a str Enum
    text = id_text(value)
    if text is None:
        raise TypeError(f"{name} must be a non-empty string, not {type(value).__name__}")
    if not text or text.isspace():
        raise ValueError(f"{name} must be a non-empty string (not blank)")
    return text


def _payload(name: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, not {type(value).__name__}")
    return value


def build_event(
    user_id: Any,
    event_type: Any,
    occurred_at: Any = None,
    payload: Any = None,
    anonymous_id: Any = None,
    *,
    payload_name: str = "payload",
) -> Dict[str, Any]:
    """Validate one event and return its wire object (fields in the official SDK's order)."""
    # Fast paths first: this runs inside every track() call.
    if type(user_id) is not str or not user_id or user_id.isspace():
        user_id = _identifier("user_id", user_id)
    if type(event_type) is not str or not event_type or event_type.isspace():
        event_type = _identifier("event_type", event_type)
    if type(payload) is not dict:
        payload = _payload(payload_name, payload)
    event: Dict[str, Any] = {
        "user_id": user_id,
        "event_type": event_type,
        "occurred_at": now_iso() if occurred_at is None else _occurred_at(occurred_at),
        "payload": payload,
    }
    if anonymous_id is not None:
        event["anonymous_id"] = _identifier("anonymous_id", anonymous_id)
    return event


def encode_event(event: Dict[str, Any], *, payload_name: str = "payload") -> bytes:
    """JSON-encode a wire event; errors name the offending field."""
    try:
        data = _to_json(event).encode()
    except UnicodeEncodeError:
        where = _lone_surrogate_at(event, payload_name)
        raise ValueError(f"{where}: {_SURROGATE_ERROR}") from None
    except (TypeError, ValueError) as exc:
        where = _find_bad_value(event["payload"], payload_name) or payload_name
        raise type(exc)(f"{where}: {exc}") from None
    return _within_limit(data)


# A str can hold half a UTF-16 pair (e.g. from a surrogateescape'd file name): it has no
# UTF-8 form, and servers that parse it as a \u escape refuse it, mangle it or crash.
_SURROGATE_ERROR = "a lone surrogate is not valid Unicode (and has no UTF-8 form)"


def _lone_surrogate_at(event: Mapping[str, Any], payload_name: str) -> str:
    for field in ("user_id", "event_type", "anonymous_id"):
        if not _utf8_ok(event.get(field)):
            return field
    return _find_bad_value(event["payload"], payload_name) or payload_name


def _utf8_ok(value: Any) -> bool:
    try:
        _to_json(value).encode()
        return True
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False


def encode_common(user_id: str, event_type: str, payload: Dict[str, Any]) -> bytes:
    """``encode_event`` for the common, already-checked ``track()`` call, a bit faster.

    The caller has checked that both ids are non-blank ``str`` and ``payload`` a ``dict``.
    The output is byte for byte what ``encode_event`` makes of the same event; any error in
    the payload goes through ``encode_event`` so that it names the field.
    """
    occurred_at = now_iso()
    try:
        data = (
            f'{{"user_id":{_quote(user_id)},"event_type":{_quote(event_type)},'
            f'"occurred_at":"{occurred_at}","payload":{_to_json(payload)}}}'
        ).encode()
    except (TypeError, ValueError):  # UnicodeEncodeError (a lone surrogate) is one too
        event = {"user_id": user_id, "event_type": event_type, "occurred_at": occurred_at}
        return encode_event({**event, "payload": payload})  # raises, naming the field
    return _within_limit(data)


_quote: Callable[[str], str] = json_encoder.encode_basestring


def _within_limit(data: bytes) -> bytes:
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(
            f"event is {len(data)} bytes encoded; the limit is {MAX_EVENT_BYTES} bytes (1 MiB)"
        )
    return data


def _find_bad_value(value: Any, path: str, outer: Tuple[int, ...] = ()) -> Optional[str]:
    """Walk a value and name the first part JSON cannot carry (slow path, errors only).

    ``outer`` holds the ids of the containers around ``value``: meeting one again is a
    circular reference, named where it closes (``payload['self']``).
    """
    if _utf8_ok(value):
        return None
    if id(value) in outer or len(outer) >= 100:  # a cycle, or nesting JSON gives up on
        return path
    children: Iterable[Any] = ()
    if isinstance(value, Mapping):
        children = ((f"{path}[{k!r}]", v) for k, v in value.items())
        for key in value:
            if not _utf8_ok({key: None}):  # a key JSON cannot carry: NaN, an object, ...
                return f"{path} key {key!r}"
    elif isinstance(value, (list, tuple)):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    inside = (*outer, id(value))
    for child_path, child in children:
        found = _find_bad_value(child, child_path, inside)
        if found is not None:
            return found
    return path


def event_from_args(
    event: Any,
    *,
    user_id: Any,
    event_type: Any,
    occurred_at: Any,
    payload: Any,
) -> Dict[str, Any]:
    """Accept an ``Event``, a dict, or keyword arguments, as ``track()`` does."""
    if event is None:
        if user_id is None or event_type is None:
            raise TypeError("track() requires an Event/dict or user_id= and event_type=")
        return build_event(user_id, event_type, occurred_at, payload)
    if any(v is not None for v in (user_id, event_type, occurred_at, payload)):
        raise TypeError("track() takes an Event/dict or keyword fields, not both")
    fields = _fields_of(event, Event, _EVENT_FIELDS, "track()")
    for required in ("user_id", "event_type"):
        if required not in fields:
            raise TypeError(f"track(): the event has no {required}")
    return build_event(
        fields["user_id"],
        fields["event_type"],
        fields.get("occurred_at"),
        fields.get("payload"),
        fields.get("anonymous_id"),
    )


def identify_from_args(context: Any, *, user_id: Any, traits: Any) -> Dict[str, Any]:
    """Accept a ``Context``, a dict, or keyword arguments, as ``identify()`` does."""
    if context is None:
        if user_id is None:
            raise TypeError("identify() requires a Context/dict or user_id=")
        fields: Dict[str, Any] = {"user_id": user_id, "traits": traits}
    else:
        if user_id is not None or traits is not None:
            raise TypeError("identify() takes a Context/dict or keyword fields, not both")
        fields = _fields_of(context, Context, _CONTEXT_FIELDS, "identify()")
        if "user_id" not in fields:
            raise TypeError("identify(): the context has no user_id")
    return build_event(
        fields["user_id"], IDENTIFY_EVENT_TYPE, None, fields.get("traits"), payload_name="traits"
    )


def _fields_of(obj: Any, cls: type, allowed: frozenset[str], where: str) -> Dict[str, Any]:
    if isinstance(obj, cls):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cast(Any, obj))}
    if isinstance(obj, Mapping):
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        return dict(obj)
    raise TypeError(f"{where} takes a {cls.__name__} or a dict, not {type(obj).__name__}")


def batch_body(records: List[bytes]) -> bytes:
    """The batch request body, joined from already-encoded events."""
    return b'{"events":[' + b",".join(records) + b"]}"
