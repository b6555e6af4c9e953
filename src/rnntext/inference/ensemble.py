"""Ensembles at inference: an ensemble directory (OUT/ensemble.json, written by `rnntext train
--ensemble N`, training/ensemble.py) names its member run directories; the ensemble's prediction
is the mean of the members' class probabilities (training/logits.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..training.ensemble import ENSEMBLE, FORMAT


def member_dirs(path: str | Path) -> list[Path] | None:
    """The member run directories of the ensemble in `path`, or None if `path` is not an ensemble."""
    path = Path(path)
    file = path / ENSEMBLE
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        members = raw["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ValueError("'members' must be a non-empty list of directory names")
        version = raw.get("format", FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"'format' must be an integer, got {version!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"not a readable ensemble file ({e})", str(file)) from None
    if version > FORMAT:
        raise CheckpointError(f"ensemble format {version} is newer than this rnntext reads ({FORMAT})", str(file))
    return [path / m for m in members]
