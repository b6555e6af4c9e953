"""Reporting a run to TensorBoard and MLflow, as training callbacks (rnntext.training.callbacks).

- `TensorBoardTracker(DIR)`: scalars per step (`step/loss`, `step/accuracy`, `step/lr`, `step/rows_per_second`,
  at the optimiser step; means over the `every` steps since the last report) and per epoch (`epoch/...`: the
  values of metrics.json's "epochs", at the epoch number), and the test metrics (`test/accuracy`,
  `test/macro_f1`, at the best epoch).
- `MLflowTracker(URI)`: one MLflow run per training run: the configuration flattened as params
  (`model.hidden_dim`, ...), metrics per epoch (at the epoch number), the test metrics, and the run directory
  (without its checkpoint) as artifacts under `run/`. Ended FINISHED, or KILLED when training stopped early.

Both need the optional `track` extra (`pip install 'rnntext[track]'`: tensorboard, mlflow-skinny); without
it, building a tracker raises a one-line ConfigError that says so. Each creates its files on its first event,
so a tracker built in every process of a distributed run writes from rank 0 only (only rank 0 calls them)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import TrackConfig
from ..errors import ConfigError
from ..training.callbacks import Callback, StepMetrics

if TYPE_CHECKING:
    from ..training.trainer import Trainer, TrainResult

EXTRA = "pip install 'rnntext[track]'"
EPOCH_SCALARS = ("train_loss", "train_accuracy", "valid_accuracy", "lr", "rows_per_second", "seconds")
SKIP_ARTIFACTS = {"checkpoint"}  # the run directory's resumable state: large, and not part of the result


def _need(module: str, option: str) -> None:
    try:
        __import__(module)
    except ImportError as e:
        raise ConfigError(f"{option} needs the {module.split('.')[0]} package: {EXTRA} ({e})") from None


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's layout -> {"model.hidden_dim": 128, ...}: one level of sections; their values as they are."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


class TensorBoardTracker(Callback):
    """Scalars for TensorBoard in `log_dir` (a new event file per run)."""

    def __init__(self, log_dir: str | os.PathLike, every: int = 10):
        _need("tensorboard", "--tensorboard")
        self.log_dir, self.every = os.path.abspath(log_dir), every
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.log_dir)
        return self._writer

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        for name in ("loss", "accuracy", "lr", "rows_per_second"):
            self.writer.add_scalar(f"step/{name}", getattr(metrics, name), metrics.step)

    def on_epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        for name in EPOCH_SCALARS:
            if name in row:
                self.writer.add_scalar(f"epoch/{name}", row[name], row["epoch"])
        self.writer.flush()

    def on_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        if result is not None and "test" in result.metrics:
            for name in ("accuracy", "macro_f1"):
                self.writer.add_scalar(f"test/{name}", result.metrics["test"][name], result.metrics["best_epoch"])
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MLflowTracker(Callback):
    """One MLflow run in `experiment` at `tracking_uri` (a `file:` store, `sqlite:///...`, or a server)."""

    every = 1 << 62  # per-epoch metrics only: a per-step metric is a write to the store each time

    def __init__(self, tracking_uri: str, experiment: str = "rnntext", run_name: str | None = None,
                 tags: Mapping[str, str] | None = None):
        _need("mlflow", "--mlflow")
        if tracking_uri.startswith("file:") or "://" not in tracking_uri:
            # MLflow 3 refuses its file store unless told: the user asked for one by name
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = dict(tags or {})
        self._client: Any = None
        self.run_id: str | None = None
        self._check()

    def _check(self) -> None:
        """Reach the store now (a read), so that a wrong URI is said before training, not after an epoch."""
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(self.tracking_uri).get_experiment_by_name(self.experiment)
        except Exception as e:  # MlflowException, OSError, a connection error: the user's to fix
            message = " ".join(str(e).split())[:300]
            raise ConfigError(f"--mlflow {self.tracking_uri}: cannot use this tracking store ({message})") from None

    def _start(self, trainer: Trainer) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(self.experiment)
            run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self._client, self.run_id = client, run.info.run_id
            from mlflow.entities import Param

            params = flatten(trainer.cfg.to_dict())
            items = [Param(k, _param_text(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(self.run_id, params=items[i:i + 100])
        return self._client

    def on_epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        client = self._start(trainer)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), now, row["epoch"])
                                               for k in EPOCH_SCALARS if k in row])

    def on_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        if result is None:  # stopped early (even before its first epoch): the run is there, KILLED
            self._start(trainer).set_terminated(self.run_id, "KILLED")
            return
        client = self._start(trainer)
        test = result.metrics.get("test")
        if test is not None:
            for name in ("accuracy", "macro_f1"):
                client.log_metric(self.run_id, f"test_{name}", float(test[name]), step=result.metrics["best_epoch"])
        client.log_metric(self.run_id, "best_epoch", float(result.metrics["best_epoch"]))
        if result.run_dir is not None:
            _log_run_dir(client, self.run_id, Path(result.run_dir))
        client.set_terminated(self.run_id, "FINISHED")


def _param_text(value: Any) -> str:
    return "" if value is None else str(value)[:6000]  # MLflow's limit on a param's length


def _log_run_dir(client: Any, run_id: str, run_dir: Path) -> None:
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") or path.name in SKIP_ARTIFACTS:
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"run/{path.name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), "run")


def trackers(opts: TrackConfig, *, run_name: str | None = None, tensorboard_subdir: str | None = None,
             tags: Mapping[str, str] | None = None) -> list[Callback]:
    """The callbacks that `opts` (--tensorboard, --mlflow) ask for; none when neither is set. `tensorboard_subdir`
    puts the event file in a subdirectory of --tensorboard (a tuning trial's)."""
    callbacks: list[Callback] = []
    if opts.tensorboard:
        log_dir = os.path.join(opts.tensorboard, tensorboard_subdir) if tensorboard_subdir else opts.tensorboard
        callbacks.append(TensorBoardTracker(log_dir, opts.log_every))
    if opts.mlflow:
        callbacks.append(MLflowTracker(opts.mlflow, opts.mlflow_experiment, run_name, tags))
    return callbacks
