"""Parent side of the peer rows in ``scripts/bench.py``: their venv and a local sink.

The issue that set our targets measured the live in-memory peers at 45 µs (Segment) to
150 µs (PostHog) per call and wants a durable ``track()`` that costs no more than their
non-durable one. These helpers let the benchmark check that claim in the same run:

* ``peers_python()``: the interpreter of ``<repo>/.venv-peers``, created on first use with
  the pinned peer SDKs (they and their dependencies never enter our own venv);
* ``Sink``: a tiny HTTP server on 127.0.0.1 that answers 200 ``{}`` to every request, so
  the peers' upload threads drain their queues as they would against the real services.

Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Optional, Type

REPO = Path(__file__).resolve().parents[1]
PEERS_VENV = REPO / ".venv-peers"
PEER_PINS = ("segment-analytics-python==2.4.0", "posthog==7.91.1")
PEER_NAMES = ("segment", "posthog")


def peers_python(venv: Path = PEERS_VENV) -> Path:
    """The python of a venv holding exactly ``PEER_PINS`` (created or updated when needed).

    Raises ``RuntimeError`` with pip's last lines when they cannot be installed.
    """
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if _installed(python) != set(PEER_PINS):
        pip = [str(python), "-I", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        proc = subprocess.run([*pip, *PEER_PINS], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
            raise RuntimeError(f"pip could not install {' '.join(PEER_PINS)}: {tail}")
    return python


def _installed(python: Path) -> set[str]:
    """The pinned distributions present in that venv, as ``name==version`` strings."""
    names = [pin.split("==")[0] for pin in PEER_PINS]
    code = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(f'{n}=={m.version(n)}')\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", code, *names], capture_output=True, text=True, check=False
    )
    return set(proc.stdout.split())


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services offer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        server = self.server
        if isinstance(server, _SinkServer):
            server.count()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Ok)
        self.requests = 0
        self._lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.requests += 1


class Sink:
    """``with Sink() as sink: sink.url``: answers 200 ``{}`` to anything, on 127.0.0.1."""

    def __init__(self) -> None:
        self._server = _SinkServer()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> int:
        return self._server.requests

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
