"""Ensembles at inference: an ensemble directory (OUT/ensemble.json, written by `rnntext train
--ensemble N`, training/ensemble.py) names its member run directories; the ensemble's prediction
is the mean of the members' class probabilities (training/logits.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import CheckpointError
from ..training.ensemble import ENSEMBLE, FORMAT, MAX_MEMBERS
from ..training.rundir import check_run_files

MAX_ENSEMBLE_BYTES = 1 * 2**20  # ensemble.json: member names and the ensemble's metrics
# a member is a directory beside ensemble.json (member-K): one path component, no "..", no absolute path
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


def member_dirs(path: str | Path) -> list[Path] | None:
    """The member run directories of the ensemble in `path`, or None if `path` is not an ensemble.
    ensemble.json is checked field by field (a one-line CheckpointError naming it), and every member's
    files are there before anything loads weights."""
    path = Path(path)
    file = path / ENSEMBLE
    if not file.is_file():
        return None
    try:
        size = file.stat().st_size
        if size > MAX_ENSEMBLE_BYTES:
            raise ValueError(f"{size:,} bytes, more than an ensemble file holds ({MAX_ENSEMBLE_BYTES:,})")
        raw = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, found {type(raw).__name__}")
        version = raw.get("format", FORMAT)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"'format' must be an integer >= 1, got {json.dumps(version)[:40]}")
        if "members" not in raw:
            raise ValueError("no 'members'")
        members = raw["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ValueError("'members' must be a non-empty list of directory names")
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"not a readable ensemble file ({str(e)[:200]})", str(file)) from None
    if version > FORMAT:
        raise CheckpointError(f"ensemble format {version} is newer than this rnntext reads ({FORMAT})", str(file))
    if len(members) > MAX_MEMBERS:
        raise CheckpointError(f"{len(members):,} members, more than an ensemble may have ({MAX_MEMBERS})", str(file))
    for m in members:
        if not _MEMBER_NAME.fullmatch(m):
            raise CheckpointError(f"member {m[:60]!r} is not a directory name beside ensemble.json", str(file))
    if len(set(members)) != len(members):
        raise CheckpointError("a member is listed twice", str(file))
    dirs = [path / m for m in members]
    for d in dirs:  # all members complete before the first one's weights are read
        check_run_files(d)
    return dirs
