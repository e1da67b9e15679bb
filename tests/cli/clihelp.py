"""Helpers shared by the CLI tests (a module name unique across the test tree)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from segops.devserver import DevServer

import spool

SECRET = "sk_cli_test_0123456789"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    """A finished ``segops`` run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> List[str]:
        return [line for line in self.err.splitlines() if line.strip()]


Runner = Callable[..., Result]


def make_runner(default_env: Dict[str, str]) -> Runner:
    def run(
        *args: str,
        stdin: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        timeout: float = 60.0,
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "segops", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env if env is not None else default_env,
            timeout=timeout,
            cwd=str(REPO),
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def event(demo_id: str, **extra: Any) -> Dict[str, Any]:
    """A wire event tagged with a unique payload id."""
    return {
        "user_id": "u-1",
        "event_type": "cli_test",
        "occurred_at": "2024-05-01T12:00:00+00:00",
        "payload": {"demo_id": demo_id, **extra},
    }


def seed(path: Path, count: int, prefix: str = "e") -> List[str]:
    """Put ``count`` events straight into a spool file; returns their payload ids."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    with spool.Spool(path) as store:
        store.append_many(json.dumps(event(i)).encode() for i in ids)
    return ids


def server_ids(srv: DevServer) -> List[str]:
    """The payload ids of every stored event, duplicates included."""
    return [str(e["payload"].get("demo_id")) for e in srv.events()]


def pending(path: Path) -> int:
    """Pending + leased records of a spool file."""
    with spool.Spool(path) as store:
        stats = store.stats()
    return stats.pending + stats.leased
