"""A Trainer that is sent Ctrl-C (a real SIGINT) after a given optimiser step: the trainer's own handler
finishes the step, checkpoints and stops, as when a person presses Ctrl-C."""

from __future__ import annotations

import signal

from rnntext.training.trainer import Trainer


def ctrl_c_after(step: int) -> type[Trainer]:
    class CtrlCAfter(Trainer):
        def train_step(self, batch):  # type: ignore[no-untyped-def]
            out = super().train_step(batch)
            if self.global_step + 1 == step:
                signal.raise_signal(signal.SIGINT)
            return out

    return CtrlCAfter
