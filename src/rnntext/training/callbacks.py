"""What the trainer tells the code that watches it: a `Callback` is called every `every` optimiser steps
(`on_step`), after each epoch's validation (`on_epoch`) and when training ends (`on_end`).

The trainer calls them and nothing else: a callback may read the trainer (its config, model, history) and
may stop training by raising (tuning prunes a trial this way: the exception leaves `train()`), but it
changes nothing the trainer owns. Under DDP only rank 0 calls them. Trackers (TensorBoard, MLflow) live in
`rnntext.report.tracking`, tuning's pruning in `rnntext.tune`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The trainer imports this module; callbacks receive its objects without importing it back.
Trainer = Any  # rnntext.training.trainer.Trainer
TrainResult = Any  # rnntext.training.trainer.TrainResult


@dataclass(frozen=True)
class StepMetrics:
    """The training steps since a callback's previous `on_step` (this rank's batches under DDP)."""

    step: int  # optimiser steps done in the run (1, 2, ...; counts across epochs)
    epoch: int  # the epoch of the step (1-based)
    loss: float  # mean training loss over the rows of those steps
    accuracy: float  # training accuracy over them
    lr: float  # the learning rate after the step
    rows_per_second: float  # training rows per second over them


class Callback:
    """Override what you need; the trainer calls the rest as no-ops."""

    every: int = 1  # on_step every `every` optimiser steps

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        """After every `every`-th optimiser step."""

    def on_epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch's validation: `row` is the epoch's entry of metrics.json ("epochs")."""

    def on_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        """When training ends: `result` after the run directory is written; None when it stopped early
        (an error, Ctrl-C, a callback that raised)."""


class Callbacks:
    """The trainer's callbacks, called in order; keeps each one's window of steps for `on_step`."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        # per callback: (loss sum, correct, rows, seconds) of the epoch at its last on_step, and the epoch
        self._last: list[tuple[int, tuple[float, int, int, float]]] = [(0, (0.0, 0, 0, 0.0))] * len(self.callbacks)

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def on_step(self, trainer: Trainer, running: tuple[float, int, int, float]) -> None:
        """After each optimiser step: `running` is the epoch so far (loss sum, correct, rows, seconds)."""
        step, epoch = trainer.global_step, trainer.epoch + 1
        for i, cb in enumerate(self.callbacks):
            if step % max(1, cb.every):
                continue
            last_epoch, last = self._last[i]
            if last_epoch != epoch:  # a new epoch: its running sums started from zero
                last = (0.0, 0, 0, 0.0)
            loss, correct, rows, seconds = (a - b for a, b in zip(running, last))
            self._last[i] = (epoch, running)
            if rows <= 0:
                continue
            cb.on_step(trainer, StepMetrics(step, epoch, loss / rows, correct / rows,
                                            trainer.optimizer.param_groups[0]["lr"],
                                            rows / seconds if seconds > 0 else 0.0))

    def on_epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch(trainer, row)

    def on_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        """Every callback's on_end, even when one raises: the first error is raised after the others ran, unless
        training already failed (result None), whose error is the one to see; this one is then logged."""
        error: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.on_end(trainer, result)
            except Exception as e:  # the others still close their files
                error = error or e
        if error is not None and result is not None:
            raise error
        if error is not None:
            trainer.log(f"a callback failed while training stopped: {type(error).__name__}: {error}")
