"""SegOps: a durable, disk-spooled client for the SegOps event-ingestion API.

import segops

client = segops.SegOpsClient("https://api.segops.ai", "sk_...")
client.track(user_id="u-123", event_type="order_placed", payload={"total": 42})
client.shutdown()  # final flush; anything undelivered stays on disk for next time
"""

from ._client import ClientClosed, ClientStats, SegOpsClient
from ._errors import (
    AuthError,
    ConfigurationError,
    DeliveryError,
    EventRejected,
    EventsSkipped,
    FlushTimeout,
    SegOpsError,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
)
from ._retry import RetryPolicy
from ._signing import sign_user_id, verify_user_id
from ._types import Context, Event, UserContext
from ._version import __version__

__all__ = [
    "AuthError",
    "ClientClosed",
    "ClientStats",
    "ConfigurationError",
    "Context",
    "DeliveryError",
    "Event",
    "EventRejected",
    "EventsSkipped",
    "FlushTimeout",
    "RetryPolicy",
    "SegOpsClient",
    "SegOpsError",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "UserContext",
    "__version__",
    "sign_user_id",
    "verify_user_id",
]
