"""Users' code type-checks against our annotations (py.typed) under mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

REPO = Path(__file__).resolve().parents[2]

GOOD = """
import datetime
import os
import segops

signed = segops.sign_user_id(os.environ["SEGOPS_HMAC_SECRET"], "user-123")
client = segops.SegOpsClient(
    "https://api.segops.ai",
    "pk_...",
    get_user=lambda: segops.UserContext(
        user_id=signed["user_id"],
        user_id_sig=signed["user_id_sig"],
        user_id_ts=signed["user_id_ts"],
    ),
)
client.track(user_id=42, event_type="e", occurred_at=datetime.date(2026, 11, 26))
client.track(segops.Event("u", "e", occurred_at=datetime.datetime.now()))
client.identify(user_id="u", traits={"plan": "pro"})
stats: segops.ClientStats = client.stats()
client.shutdown(timeout=2.0)
"""

BAD = """
import segops
c = segops.SegOpsClient("http://127.0.0.1:1", "sk_x")
c.track(user_id=["u"], event_type="e")
c.identify(user_id={"id": 1})
c.track(user_id="u", event_type="e", occurred_at=123)
segops.Event("u", "e", occurred_at=1.5)
"""


def test_mypy_strict_passes_correct_code_and_catches_wrong_types(tmp_path: Path) -> None:
    """The documented pk_ example checks clean; ids and timestamps of wrong types do not."""
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
    result = subprocess.run(
        [*mypy, "--cache-dir", str(tmp_path / "cache"), "good.py", "bad.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], result.stdout
    assert sorted(int(e.split(":")[1]) for e in errors) == [4, 5, 6, 7], result.stdout
