"""`rnntext tune`: hyperparameter search with Optuna (the optional `tune` extra).

`tune(base, out_dir, opts)` starts a study in `out_dir`, `resume(out_dir)` continues a stopped one; the
search space is `space.Space` (the default one, changed by a TOML file). See docs/guides/tuning-tracking.md.
Optuna is imported when a study runs, not with this package."""

from .space import DEFAULT_SPACE, Param, Space, default_space, load_space
from .study import resume, tune

__all__ = ["DEFAULT_SPACE", "Param", "Space", "default_space", "load_space", "resume", "tune"]
