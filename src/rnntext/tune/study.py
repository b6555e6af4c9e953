"""`rnntext tune`: an Optuna study over a run's settings, kept in DIR so that a stopped tune continues.

DIR holds:

- `study.db`: the Optuna study (SQLite; every trial, its parameters and its validation accuracy per epoch);
- `tune.json`: what the study searches and from what: the base configuration, the search space and the
  tuning settings, read back by `--resume`;
- `best.json`: the best trial's configuration, a config file for `rnntext train --config best.json`;
- `best-run/`: the best trial's run directory (the model it trained, for predict/evaluate/serve);
- `summary.json`, `report.md`, `report.html` (+ `history.png`, `importances.png` with matplotlib).

Each trial trains with `rnntext.training.train` on data prepared once (again only for a trial whose data
settings differ) and reports each epoch's validation accuracy to the pruner from a training callback; its
value is its best epoch's validation accuracy. The test set plays no part in the search: its rows are not
given to the trials, and the best configuration's model is evaluated on it once, at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig, TrackConfig, TuneConfig
from ..errors import ConfigError, RnnTextError, TrainingInterrupted
from ..io import atomic_write_json
from ..training.callbacks import Callback
from .space import Space, load_space

STUDY_NAME = "rnntext"
FORMAT_VERSION = 1
STUDY_DB, TUNE_JSON, BEST_JSON, BEST_RUN, SUMMARY = "study.db", "tune.json", "best.json", "best-run", "summary.json"
LOCK = ".tune.lock"
TRIAL_FILE = "tune-trial.json"  # in best-run/: which trial trained it

Log = Callable[[str], None]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(f"rnntext tune needs Optuna: pip install 'rnntext[tune]' ({e})") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # rnntext logs each trial itself
    return optuna


class PruneCallback(Callback):
    """Reports each epoch's validation accuracy to the trial; raises optuna.TrialPruned when the pruner says so."""

    def __init__(self, trial: Any):
        self.trial = trial
        self.epoch = 0  # the last epoch reported

    def on_epoch(self, trainer: Any, row: dict[str, Any]) -> None:
        self.trial.report(row["valid_accuracy"], row["epoch"])
        self.epoch = row["epoch"]
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"pruned after epoch {row['epoch']} "
                                        f"(valid accuracy {row['valid_accuracy']:.4f})")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One tune per directory: a second (or a --resume while one runs) fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another rnntext tune is running in this directory") from None
        yield


class _Data:
    """The prepared data, shared by the trials: prepared again only for other data settings (or seed)."""

    def __init__(self, log: Log):
        self.key: str | None = None
        self.prepared: Any = None
        self.log = log

    def __call__(self, cfg: RunConfig) -> Any:
        from ..data import prepare

        key = json.dumps([dataclasses.asdict(cfg.data), cfg.train.seed], sort_keys=True)
        if key != self.key:
            p = prepare(cfg.data, seed=cfg.train.seed, progress=False)
            if p.valid is None:
                raise ConfigError("tune chooses by validation accuracy: give --valid FILE or a --valid-split > 0")
            self.log(f"data: {len(p.train)} train, {len(p.valid)} valid rows (the test set takes no part in "
                     f"the search); vocabulary {len(p.vocab)}; {len(p.label_names)} classes; {p.seconds:.1f}s")
            self.key, self.prepared = key, p
        return dataclasses.replace(self.prepared, test=None)  # trials never see the test rows


@dataclasses.dataclass
class Study:
    """An open tuning directory: its settings, and the Optuna study in study.db."""

    out: Path
    base: RunConfig
    space: Space
    opts: TuneConfig
    study: Any
    storage: Any  # the study's RDBStorage
    log: Log

    def finished(self) -> list[Any]:
        optuna = _optuna()
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return self.study.get_trials(deepcopy=False, states=states)

    def fail_stale_trials(self) -> None:
        """Trials left RUNNING by a killed tune (this process holds the directory's lock, so no other runs them)."""
        optuna = _optuna()
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            self.log(f"trial {t.number} was stopped with the previous tune: marked failed; it does not count")


def _sampler_and_pruner(opts: TuneConfig, n_before: int, pruner: Any = None) -> tuple[Any, Any]:
    optuna = _optuna()
    # a resumed study seeds its sampler after the trials it has, so that it does not draw the first ones again
    sampler = optuna.samplers.TPESampler(seed=opts.sampler_seed + n_before)
    if pruner is None:
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=opts.prune_startup, n_warmup_steps=opts.prune_warmup)
                  if opts.prune else optuna.pruners.NopPruner())
    return sampler, pruner


def _open(out: Path, base: RunConfig, space: Space, opts: TuneConfig, log: Log, pruner: Any = None) -> Study:
    optuna = _optuna()
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / STUDY_DB}")
    try:
        n_before = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    except KeyError:
        n_before = 0
    sampler, pruner = _sampler_and_pruner(opts, n_before, pruner)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    return Study(out, base, space, opts, study, storage, log)


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def tune(base: RunConfig, out_dir: str | os.PathLike, opts: TuneConfig | None = None, *, space: Space | None = None,
         fixed: Sequence[str] = (), track: TrackConfig | None = None, callbacks: Sequence[Callback] = (),
         pruner: Any = None, log: Log | None = None) -> dict[str, Any]:
    """Start a study in `out_dir` (new or empty): `opts.trials` trials over `space` (default: `opts.space`'s
    file, else the default space) without the settings in `fixed` (`train.epochs`: given as options), on top of
    `base`. `track` reports each trial (--tensorboard, --mlflow); `callbacks` are given to every trial's
    training too. Returns the summary (summary.json). `pruner` replaces the MedianPruner."""
    opts = opts or TuneConfig()
    opts.validate()
    base.validate()
    log = log or _stderr
    out = Path(out_dir)
    if (out / STUDY_DB).exists() or (out / TUNE_JSON).exists():
        raise ConfigError(f"{out} has a study already: continue it with `rnntext tune --resume {out}`, "
                          "or choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out needs a directory")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise ConfigError(f"{out} is not empty; --out needs a new or empty directory")
    space = (space or load_space(opts.space)).without(fixed)
    if not space.searched():
        raise ConfigError("the search space is empty: every setting in it is fixed")
    _optuna()
    with _lock(out):
        data = _Data(log)
        data(base)  # a problem with the data is said before the directory holds a study
        atomic_write_json(out / TUNE_JSON, {"format_version": FORMAT_VERSION, "config": base.to_dict(),
                                            "space": space.to_dict(), "tune": dataclasses.asdict(opts)})
        log(f"tune: {opts.trials} trials into {out}; searching " + "; ".join(f"{k}: {d}" for k, d in space.table()))
        return _run(_open(out, base, space, opts, log, pruner), data, _per_trial(out, track, callbacks))


def resume(out_dir: str | os.PathLike, *, trials: int | None = None, timeout: float | None = None,
           track: TrackConfig | None = None, callbacks: Sequence[Callback] = (),
           log: Log | None = None) -> dict[str, Any]:
    """Continue the study in `out_dir` until it has its trials (or `trials`), with what tune.json recorded."""
    log = log or _stderr
    out = Path(out_dir)
    if not (out / TUNE_JSON).is_file():
        raise ConfigError(f"{out}: no study to resume here (no {TUNE_JSON}); start one with --out")
    from ..config import read_config_file

    saved = read_config_file(out / TUNE_JSON, "tuning")
    if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{out / TUNE_JSON}: not a tuning file this rnntext can read")
    base = RunConfig.from_dict(saved["config"], str(out / TUNE_JSON))
    space = Space.from_dict(saved["space"], str(out / TUNE_JSON))
    opts = TuneConfig()
    opts.update(saved["tune"])
    if trials is not None:
        opts.update({"trials": trials})
    opts.timeout = timeout
    _optuna()
    with _lock(out):
        if trials is not None:  # the new target is the study's from now on
            saved["tune"]["trials"] = trials
            atomic_write_json(out / TUNE_JSON, saved)
        study = _open(out, base, space, opts, log)
        study.fail_stale_trials()
        return _run(study, _Data(log), _per_trial(out, track, callbacks))


PerTrial = Callable[[int], list[Callback]]  # trial number -> the training callbacks besides pruning


def _per_trial(out: Path, track: TrackConfig | None, callbacks: Sequence[Callback]) -> PerTrial:
    def make(number: int) -> list[Callback]:
        extra = list(callbacks)
        if track is not None and (track.tensorboard or track.mlflow):
            from ..report.tracking import trackers

            extra += trackers(track, run_name=f"trial-{number}", tensorboard_subdir=f"trial-{number:04d}",
                              tags={"rnntext.tune": str(out.resolve()), "rnntext.trial": str(number)})
        return extra

    return make


def _run(s: Study, data: _Data, per_trial: PerTrial) -> dict[str, Any]:
    """Run the trials still to run, then write best.json, best-run/ (tested once) and the report."""
    done = len(s.finished())
    todo = s.opts.trials - done
    if done:
        s.log(f"tune: {done} of {s.opts.trials} trials finished before; {max(todo, 0)} to run")
    if todo > 0:
        try:
            s.study.optimize(lambda trial: _objective(s, trial, data, per_trial), n_trials=todo,
                             timeout=s.opts.timeout, gc_after_trial=True)
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"tuning interrupted; the finished trials are in {s.out / STUDY_DB}. "
                                      f"Continue with: rnntext tune --resume {s.out}") from None
    return _finish(s, data)


def _objective(s: Study, trial: Any, data: _Data, per_trial: PerTrial) -> float:
    from ..training import train
    from ..training.trainer import TrainingDiverged

    values = s.space.suggest(trial)
    cfg = s.base.with_overrides(values, f"trial {trial.number}")
    cfg.validate()
    trial.set_user_attr("config", cfg.to_dict())
    prepared = data(cfg)
    prune = PruneCallback(trial)
    callbacks = [prune, *per_trial(trial.number)]
    shown = ", ".join(f"{k.split('.')[1]}={_short(v)}" for k, v in values.items())
    s.log(f"trial {trial.number}: {shown}")
    t0 = time.perf_counter()

    def log(line: str) -> None:
        if line.startswith("epoch "):
            s.log(f"  trial {trial.number}: {line}")

    optuna = _optuna()
    try:
        result = train(cfg, None, prepared=prepared, progress=False, log=log, callbacks=callbacks)
    except optuna.TrialPruned:
        s.log(f"trial {trial.number}: pruned after epoch {prune.epoch}; {time.perf_counter() - t0:.1f}s")
        raise
    except TrainingDiverged as e:  # a NaN loss: a bad configuration, stopped like a pruned trial
        s.log(f"trial {trial.number}: {e.args[0].split(';')[0]}; counted as pruned")
        raise optuna.TrialPruned(str(e)) from None
    best = result.metrics["epochs"][result.metrics["best_epoch"] - 1]
    value = float(best["valid_accuracy"])
    trial.set_user_attr("best_epoch", result.metrics["best_epoch"])
    trial.set_user_attr("seconds", result.metrics["train_seconds"])
    previous = [t.value for t in s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    is_best = not previous or value > max(previous)
    if is_best:
        _save_best_run(s.out, trial.number, value, result)
    s.log(f"trial {trial.number}: valid accuracy {value:.4f} (epoch {result.metrics['best_epoch']})"
          + (", the best so far" if is_best else "") + f"; {time.perf_counter() - t0:.1f}s")
    return value


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _save_best_run(out: Path, number: int, value: float, result: Any) -> None:
    """best-run/ := this trial's run directory (written beside it, then swapped in)."""
    from ..training.rundir import save_run, state_to_cpu

    tmp, old = out / f".{BEST_RUN}.new", out / f".{BEST_RUN}.old"
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)
    p = result.prepared
    save_run(tmp, result.config, p.vocab, p.label_names, state_to_cpu(result.model), result.metrics)
    atomic_write_json(tmp / TRIAL_FILE, {"trial": number, "valid_accuracy": value})
    if (out / BEST_RUN).exists():
        os.replace(out / BEST_RUN, old)
    os.replace(tmp, out / BEST_RUN)
    shutil.rmtree(old, ignore_errors=True)


def _best_run_trial(out: Path) -> int | None:
    try:
        return int(json.loads((out / BEST_RUN / TRIAL_FILE).read_text())["trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish(s: Study, data: _Data) -> dict[str, Any]:
    from .report import write_report

    optuna = _optuna()
    complete = s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RnnTextError(f"no trial of {s.out} has completed; nothing to report")
    best = max(complete, key=lambda t: (t.value, -t.number))
    cfg = RunConfig.from_dict(best.user_attrs["config"], f"trial {best.number}")
    atomic_write_json(s.out / BEST_JSON, _config_file(cfg))
    if _best_run_trial(s.out) != best.number:  # the best trial's run was not kept (a tune killed while saving it)
        s.log(f"tune: training the best configuration (trial {best.number}) again for {s.out / BEST_RUN}")
        from ..training import train

        result = train(cfg, None, prepared=data(cfg), progress=False, log=lambda line: None)
        _save_best_run(s.out, best.number, float(best.value), result)
    summary = _summary(s, best, cfg)
    write_report(s.out, summary, s.study, s.log)  # adds the parameter importances
    atomic_write_json(s.out / SUMMARY, summary)
    return summary


def _config_file(cfg: RunConfig) -> dict[str, Any]:
    """A config file for `rnntext train --config`: the trial's settings, less what training fills in."""
    d = cfg.to_dict()
    for name in ("vocab_size", "num_classes"):
        d["model"].pop(name, None)
    return d


def _has_test(cfg: RunConfig) -> bool:
    return bool(cfg.data.test or cfg.data.dataset)


def _summary(s: Study, best: Any, cfg: RunConfig) -> dict[str, Any]:
    trials = []
    for t in s.study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value,
            "epochs": len(t.intermediate_values), "best_epoch": t.user_attrs.get("best_epoch"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
            "params": dict(t.params)})
    counts = {state: sum(1 for t in trials if t["state"] == state) for state in ("complete", "pruned", "fail")}
    summary: dict[str, Any] = {
        "trials": trials, "counts": counts, "target": s.opts.trials, "space": s.space.table(),
        "searched": [p.name for p in s.space.searched()],
        "sampler": f"TPE, seed {s.opts.sampler_seed}",
        "pruner": (f"median, after {s.opts.prune_startup} trials and {s.opts.prune_warmup} epoch(s)"
                   if s.opts.prune else "none"),
        "best": {"trial": best.number, "valid_accuracy": best.value, "epoch": best.user_attrs.get("best_epoch"),
                 "params": dict(best.params)},
        "best_json": str(s.out / BEST_JSON), "best_run": str(s.out / BEST_RUN)}
    if _has_test(cfg):
        from ..inference.evaluate import evaluate_run

        test = evaluate_run(s.out / BEST_RUN, threads=cfg.train.threads, device=cfg.train.device)
        summary["test"] = {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "file": test.get("file")}
        s.log(f"tune: the best configuration (trial {best.number}) on the test set, evaluated once after the "
              f"search: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}")
    return summary
