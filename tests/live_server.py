"""Start `rnntext serve` as a real process (uvicorn) on a free loopback port, for the server and
web-page tests and the load benchmark's style of use. Not a test module itself.

- `live_server(run_dir, extra)`: yields the base URL.
- `server_process(run_dir, extra)`: yields a LiveServer (url, port, the Popen, its output so far), for
  tests that signal the process or read its memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    port: int
    proc: subprocess.Popen
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A raw TCP connection to the server (for requests no HTTP client would send)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s


@contextmanager
def server_process(run_dir: str | Path, extra: Sequence[str] = (), timeout: float = 90.0,
                   preexec_fn=None) -> Iterator[LiveServer]:
    """Yields a LiveServer once /health answers; stops the server afterwards (SIGTERM, then SIGKILL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "rnntext", "serve", str(run_dir), "--port", str(port), "--threads", "1",
           "--device", "cpu", "--log-level", "warning", *extra]
    log = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe could fill up and stall the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = LiveServer(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer on {server.url} within {timeout:.0f}s")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextmanager
def live_server(run_dir: str | Path, extra: Sequence[str] = (), timeout: float = 90.0) -> Iterator[str]:
    """Yields the base URL once /health answers; stops the server afterwards."""
    with server_process(run_dir, extra, timeout) as server:
        yield server.url
