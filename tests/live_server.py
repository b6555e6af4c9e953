"""Start `rnntext serve` as a real process (uvicorn) on a free loopback port, for the server and
web-page tests and the load benchmark's style of use. Not a test module itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(run_dir: str | Path, extra: Sequence[str] = (), timeout: float = 90.0) -> Iterator[str]:
    """Yields the base URL once /health answers; stops the server afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "rnntext", "serve", str(run_dir), "--port", str(port), "--threads", "1",
           "--device", "cpu", "--log-level", "warning", *extra]
    log = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe could fill up and stall the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer on {url} within {timeout:.0f}s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
