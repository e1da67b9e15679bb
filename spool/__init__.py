"""spool: a small durable FIFO queue on one SQLite file (WAL)."""

__all__: list[str] = []
