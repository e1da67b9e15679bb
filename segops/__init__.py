"""SegOps: a durable, disk-spooled client for the SegOps event-ingestion API."""

from ._version import __version__

__all__ = ["__version__"]
