"""Shared fixtures for the spool suite: real files under tmp_path, closed on teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from spool import Spool


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A not-yet-existing spool file inside a not-yet-existing directory."""
    return tmp_path / "spooldir" / "events.db"


@pytest.fixture
def make_spool(db_path: Path) -> Iterator[Callable[..., Spool]]:
    """Factory opening Spools on ``db_path`` (or another path); all closed at teardown."""
    opened: list[Spool] = []

    def make(path: Optional[Path] = None, **kwargs: object) -> Spool:
        s = Spool(path or db_path, **kwargs)  # type: ignore[arg-type]
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def sp(make_spool: Callable[..., Spool]) -> Spool:
    """An open Spool on a fresh file."""
    return make_spool()
