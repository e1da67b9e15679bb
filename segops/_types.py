"""Public data types, field for field the official SDK's."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union


@dataclass
class Event:
    """A single user event."""

    #: Your identifier for the user (email, UUID, ...).
    user_id: str
    #: Snake-case event name, e.g. ``"page_viewed"``.
    event_type: str
    #: ISO-8601 timestamp (or a ``datetime``). Defaults to the time of ``track()`` (UTC).
    occurred_at: Union[str, datetime.datetime, datetime.date, None] = None
    #: Arbitrary JSON-compatible properties.
    payload: Dict[str, Any] = field(default_factory=dict)
    #: Optional anonymous id, sent only when set.
    anonymous_id: Optional[str] = None


@dataclass
class Context:
    """A user identity / trait update, sent as a ``context_identified`` event."""

    user_id: str
    traits: Dict[str, Any] = field(default_factory=dict)


@dataclass
class UserContext:
    """The identity exchanged for a session token (pk_ keys), read at mint time."""

    user_id: Optional[str] = None
    anonymous_id: Optional[str] = None
    user_id_sig: Optional[str] = None
    user_id_ts: Optional[int] = None
