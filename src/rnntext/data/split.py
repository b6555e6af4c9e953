"""The validation split held out of the training rows: stratified by class, reproducible by seed.

Each class gives the same fraction of its rows to validation, so a rare class is not left out of (or
over-represented in) the split it is selected and early-stopped on. The total is exactly
round(n * fraction); the per-class shares are n_c * fraction rounded by largest remainder (ties broken by a
seeded draw, not by label order, so no class is favoured systematically). A multi-label row (a list of
labels) is stratified by its label set as a whole (the sorted tuple), which keeps the frequent combinations'
proportions; a set that occurs once goes to either side by the seeded draw."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from ..errors import ConfigError


def _key(label: object) -> Hashable:
    if isinstance(label, str):
        return label
    if isinstance(label, (list, tuple, set, frozenset)):
        return tuple(sorted(str(x) for x in label))
    return str(label)


def stratified_indices(labels: Sequence[object], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) row indices, each in file order: `fraction` of the rows of each class, chosen at
    random by `seed`, as validation. The same labels, fraction and seed give the same split."""
    n = len(labels)
    n_valid = int(round(n * fraction))
    if n_valid == 0 or n_valid >= n:
        raise ConfigError(f"--valid-split {fraction} of {n} rows leaves no training or validation rows")
    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(_key(label), []).append(i)
    classes = sorted(by_class, key=repr)  # a total order that does not depend on PYTHONHASHSEED
    gen = torch.Generator().manual_seed(seed)

    exact = [len(by_class[c]) * fraction for c in classes]
    quota = [int(x) for x in exact]
    tie = torch.randperm(len(classes), generator=gen).tolist()
    # the rows still owed to validation go to the classes whose share was rounded down the most
    order = sorted(range(len(classes)), key=lambda k: (-(exact[k] - quota[k]), tie[k]))
    for k in order[: n_valid - sum(quota)]:
        quota[k] += 1

    valid: list[int] = []
    for c, q in zip(classes, quota):
        members = by_class[c]
        perm = torch.randperm(len(members), generator=gen).tolist()
        valid.extend(members[j] for j in perm[:q])
    chosen = set(valid)
    return [i for i in range(n) if i not in chosen], sorted(valid)
