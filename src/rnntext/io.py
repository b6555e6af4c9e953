"""Atomic file writes: a kill during a save leaves the previous file complete. Files get the mode an
ordinary `open(path, "w")` would give them: 0o666 less the process's umask (0644 under umask 022)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_umask: int | None = None
_umask_lock = threading.Lock()


def process_umask() -> int:
    """The process's umask, read once. Linux reports it in /proc/self/status, which changes nothing;
    elsewhere os.umask must set it to read it, so it is set back at once, under a lock."""
    global _umask
    with _umask_lock:
        if _umask is None:
            try:
                with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                    for line in f:
                        if line.startswith("Umask:"):
                            _umask = int(line.split()[1], 8)
                            break
            except (OSError, ValueError, IndexError):
                pass
            if _umask is None:
                _umask = os.umask(0o022)
                os.umask(_umask)
        return _umask


def file_mode() -> int:
    """The mode of a new file: 0o666 less the umask."""
    return 0o666 & ~process_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # mkstemp makes 0600 files whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
