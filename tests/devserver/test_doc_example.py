"""The Python example of docs/dev-server.md, taken from the doc unchanged and run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import segops

REPO_ROOT = Path(segops.__file__).resolve().parents[1]
DEV_SERVER_DOC = REPO_ROOT / "docs" / "dev-server.md"


def python_api_example() -> str:
    """The first ``python`` block of the doc's ``## Python API`` section."""
    text = DEV_SERVER_DOC.read_text(encoding="utf-8")
    section = re.split(r"^## ", text, flags=re.MULTILINE)
    api = next(s for s in section if s.startswith("Python API"))
    return re.findall(r"```python\n(.*?)```", api, flags=re.DOTALL)[0]


def test_python_api_example_runs_as_written(tmp_path: Path) -> None:
    """The example delivers its event, exits 0 and leaves no spool file behind."""
    code = python_api_example()
    assert "DevServer" in code
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGOPS_", "XDG_"))}
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(home.iterdir()) == [] and list(tmp.iterdir()) == []
