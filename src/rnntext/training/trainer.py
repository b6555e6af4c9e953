"""Training, top to bottom: prepare data -> build model -> AdamW + LR schedule -> epochs over
length-bucketed batches -> validate each epoch, keep the best weights -> test -> run directory.

The trainer talks to models through their interface (model/base.py) and gets its optimiser and
inference forward from rnntext.fast, which decides whether a CPU fast path applies."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import fast
from ..config import MAX_BATCH_TOKENS, RunConfig
from ..data import Batch, Encoded, Prepared, epoch_batches, make_batch, padded_batches, prepare
from ..data.memory import given_again, given_data
from ..data.vectors import Pretrained, describe, load_pretrained
from ..errors import CheckpointError, ConfigError, DataError, RnnTextError, TrainingInterrupted
from ..model import build_model
from ..model.base import TextClassifier
from . import checkpoint as ckpt_io
from . import distributed, stopping
from . import multilabel as ml
from .calibration import fit_on_validation
from .callbacks import Callback, Callbacks
from .class_weight import class_weights
from .class_weight import describe as describe_weights
from .device import AUTO, adapt_threads, resolve_device, set_threads
from .logits import predict_logits
from .metrics import classification_report
from .rundir import save_run, state_to_cpu
from .schedule import make_schedule


class TrainingDiverged(RnnTextError):
    """The training loss (or the weights) became NaN or infinite: the run stops without saving."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def evaluate_encoded(model: TextClassifier, data: Encoded, label_names: list[str], device: torch.device,
                     dist: distributed.DistContext | None = None,
                     max_tokens: int | None = MAX_BATCH_TOKENS,
                     thresholds: list[float] | None = None) -> dict[str, Any]:
    """Metrics of `model` on `data`; with a distributed `dist`, every rank predicts its share of the rows.
    `max_tokens`: padded tokens per model call (predict_logits). Multi-label data (multi-hot labels): the
    multi-label metrics (training/multilabel.py) at `thresholds` (default 0.5 each)."""
    if data.labels.dim() == 2:
        return ml.evaluate_multilabel(model, data, label_names, device, dist, max_tokens, thresholds)
    predict = lambda d: predict_logits(model, d, device, max_tokens=max_tokens).argmax(1)  # noqa: E731
    pred = dist.predict_sharded(data, predict) if dist is not None else predict(data)
    return classification_report(data.labels, pred, label_names)


@dataclass
class TrainResult:
    config: RunConfig
    prepared: Prepared
    model: TextClassifier
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None


def cut_to_budget(prepared: Prepared, max_tokens: int, log: Callable[[str], None]) -> Prepared:
    """The texts longer than the token budget (--max-batch-tokens) cut to their first max_tokens tokens:
    a batch of one such text must fit in the budget too. Prediction cuts them the same way."""
    cut = {}
    for name in ("train", "valid", "test"):
        enc: Encoded | None = getattr(prepared, name)
        if enc is not None and len(enc) and int(enc.lengths.max()) > max_tokens:
            log(f"{name}: {int((enc.lengths > max_tokens).sum())} texts longer than {max_tokens} tokens cut to "
                f"their first {max_tokens} (--max-batch-tokens)")
            cut[name] = enc.truncated(max_tokens)
    return dataclasses.replace(prepared, **cut) if cut else prepared


def pretrained_embeddings(cfg: RunConfig, prepared: Prepared, log: Callable[[str], None]) -> Pretrained | None:
    """With --embeddings, the vectors for the vocabulary (their dimension becomes cfg.model.embed_dim)."""
    d = cfg.data
    if not d.embeddings:
        return None
    pre = load_pretrained(d.embeddings, prepared.vocab, prepared.train.tokens.numpy(),
                          lowercase=d.embeddings_lowercase, seed=cfg.train.seed)
    if cfg.model.embed_dim != pre.lookup.dim:
        log(f"embed_dim {cfg.model.embed_dim} -> {pre.lookup.dim}, the dimension of the vectors")
        cfg.model.embed_dim = pre.lookup.dim
    log(describe(pre.lookup, pre.coverage) + ("; frozen" if cfg.model.freeze_embeddings else "; tuned"))
    return pre


class Trainer:
    """One training run. Read top to bottom: __init__ builds data, model, optimiser and schedule;
    fit() runs the epochs; run_epoch() is one pass over the batches; finish() restores the best
    weights, tests and writes the run directory."""

    def __init__(self, cfg: RunConfig, out_dir: str | None = None, *, prepared: Prepared | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 callbacks: Iterable[Callback] = ()):
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.cfg = cfg = copy.deepcopy(cfg)
        cfg.validate()
        self.out_dir = out_dir
        self.progress = progress
        self.t_start = time.perf_counter()
        # unset: one process follows the cores others leave free (training/device.py); ranks share them evenly
        set_threads(cfg.train.threads or (distributed.threads_per_rank() if distributed.launched() else AUTO))
        self.dist = distributed.setup(resolve_device(cfg.train.device), cfg.train.dist_timeout)
        self.device = self.dist.device
        if not self.dist.is_main:  # one progress bar and one log: rank 0's
            progress = self.progress = False
            self.log = lambda s: None
        self.callbacks = Callbacks(callbacks if self.dist.is_main else ())  # training/callbacks.py: rank 0's

        # --- data: read, tokenise and encode once
        if cfg.data.encoder:  # before the data are read: an encoder of other sizes is said at once
            from .pretrain import check_encoder

            check_encoder(cfg)
        if prepared is None:
            prepared = prepare(cfg.data, seed=cfg.train.seed, progress=progress)
        self.data = p = prepared
        cfg.model.vocab_size, cfg.model.num_classes = len(p.vocab), len(p.label_names)
        self.log(f"data: {len(p.train)} train, {len(p.valid) if p.valid else 0} valid, "
                 f"{len(p.test) if p.test else 0} test rows; vocabulary {len(p.vocab)}; "
                 f"{len(p.label_names)} classes; {p.seconds:.1f}s")
        for path, n in p.skipped.items():
            self.log(f"skipped {n} bad rows in {path}")
        self.data = p = cut_to_budget(p, cfg.train.max_batch_tokens, self.log)  # the memory bound
        self.class_weight = class_weights(cfg.train.class_weight, p.train.labels, p.label_names)  # None: unweighted
        if self.class_weight is not None:
            self.log(describe_weights(self.class_weight, p.label_names))
            self.class_weight = self.class_weight.to(self.device)

        # --- model, optimiser, schedule
        self.embeddings = pretrained_embeddings(cfg, p, self.log)  # --embeddings: sets embed_dim from the file
        self.steps_per_epoch = len(self.epoch_order(0))
        tokens = int(p.train.lengths.sum())  # an epoch's training tokens
        if cfg.train.epoch_size:  # epochs cut to --epoch-size batches read that share of the tokens
            tokens = round(tokens * min(1.0, cfg.train.epoch_size * cfg.train.batch_size / max(len(p.train), 1)))
        if cfg.train.epochs is None:  # a run's epochs are fixed here: config.json and checkpoints hold them
            by_steps = stopping.planned_epochs(cfg.train, self.steps_per_epoch)
            cfg.train.epochs = stopping.planned_epochs(cfg.train, self.steps_per_epoch, tokens)
            self.log(f"epochs: {cfg.train.epochs} of {self.steps_per_epoch} steps (--min-steps {cfg.train.min_steps}"
                     + (f"; {by_steps} would read more than {stopping.EPOCH_BUDGET:,} tokens"
                        if by_steps > cfg.train.epochs else "") + ")")
        if cfg.model.members is None:  # and its members (model/members.py), from what one of them costs
            cfg.model.members = stopping.planned_members(cfg.train.epochs * tokens)
            if cfg.model.members > 1:
                self.log(f"members: {cfg.model.members} models trained side by side (small data: --members 1 "
                         "for one)")
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        if self.embeddings is not None:  # before DDP wraps the model: it must see frozen weights as such
            self.model.load_embeddings(torch.from_numpy(self.embeddings.weight), cfg.model.freeze_embeddings)
        if cfg.data.encoder:  # `rnntext pretrain`'s encoder (prepare() took its vocabulary)
            from .pretrain import start_from_encoder

            start_from_encoder(self.model, cfg, p.vocab, self.log)
        self.train_module = self.dist.wrap(self.model)  # DDP when distributed; self.model stays unprefixed
        distributed.seed_rank(cfg.train.seed, self.dist)
        self.flat = self.model.batch_layout == "flat"
        self.params = list(self.model.parameters())
        self.clip_groups = self.model.clip_groups()
        self.n_params = sum(q.numel() for q in self.params)
        self.log(f"model: {cfg.model.model}, {self.n_params:,} parameters, device {self.device}")
        self.optimizer = fast.make_optimizer(self.model, cfg.train, self.device, self.dist.active, self.log)
        self.schedule = make_schedule(cfg, self.optimizer, self.steps_per_epoch * cfg.train.epochs)
        if self.dist.active:
            n, bs = self.dist.world_size, cfg.train.batch_size
            self.log(f"distributed: {n} processes ({self.dist.backend}), batch {bs} per process, effective batch "
                     f"{bs * n}, peak lr {cfg.train.lr:g}, {self.steps_per_epoch} steps per epoch")

        # --- progress of the run (what a checkpoint must capture besides the weights)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_epoch = -1.0, 0
        self.best_state: dict[str, Tensor] | None = None
        self.step = 0  # batches of the current epoch done (a resumed run starts there)
        self.running = (0.0, 0, 0, 0.0)  # the current epoch so far: loss sum, correct, rows, seconds
        self.global_step, self.checkpoint_seq = 0, 0
        self.interrupt = ckpt_io.InterruptFlag()
        self._data_fingerprint: dict[str, Any] | None = None

    def epoch_order(self, epoch: int) -> list[Tensor]:
        """The batches (row indices) of `epoch`: a pure function of the seed and the epoch; when
        distributed, this rank's shard of the order that every rank computes alike."""
        t = self.cfg.train
        batches = self.dist.shard(epoch_batches(self.data.train.lengths, t.batch_size, t.seed, epoch, t.bucket,
                                                max_tokens=t.max_batch_tokens))
        return batches[: t.epoch_size] if t.epoch_size else batches

    def train_step(self, batch: Batch | Tensor) -> tuple[float, int, int]:
        """One optimiser step on `batch` (or the rows of an index tensor): (summed loss, correct, rows)."""
        b = self._batch(batch)
        logits = self.train_module(b.tokens, b.lengths, b.offsets)
        if logits.dim() == 3:  # [B, K, C]: K members (model/members.py), each trained on its own loss
            # their losses summed, each computed as alone: one loss over the K members' rows would divide
            # a class-weighted sum by all the rows' weights at once, which rounds differently (by an ulp)
            losses = [self._loss(logits[:, k], b.labels) for k in range(logits.shape[1])]
            objective = torch.stack(losses).sum()
            loss = objective.detach() / len(losses)  # reported: the members' mean loss
            hits = self._hits(logits.detach().mean(1), b.labels)  # the joint prediction's
        else:
            objective = loss = self._loss(logits, b.labels)
            hits = self._hits(logits.detach(), b.labels)
        for q in self.params:  # optimizer.zero_grad(set_to_none=True) without its per-step overhead
            q.grad = None
        objective.backward()
        if self.cfg.train.clip:
            for group in self.clip_groups:  # sparse gradients too; each member's norm clipped on its own
                fast.clip_grad_norm(group, self.cfg.train.clip)
        self.optimizer.step()
        self.schedule.step()
        n = len(b)
        return loss.item() * n, hits, n

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The training loss of `logits` [B, C]: cross-entropy (class-weighted with --class-weight), or for
        multi-label targets binary cross-entropy per label (training/multilabel.py)."""
        if labels.dim() == 2:
            return ml.loss(logits, labels)
        return F.cross_entropy(logits, labels, weight=self.class_weight)

    @staticmethod
    def _hits(logits: Tensor, labels: Tensor) -> int:
        if labels.dim() == 2:
            return ml.hits(logits, labels)
        return int((logits.argmax(1) == labels).sum())

    def _batch(self, batch: Batch | Tensor) -> Batch:
        return (batch if isinstance(batch, Batch) else make_batch(self.data.train, batch, self.flat)).to(self.device)

    def _batches(self, order: list[Tensor], start: int) -> Iterator[Batch]:
        """order[start:] as Batches, padded ~4k rows or ~1M padded tokens at a time (padded_batches; its
        temporaries stay small)."""
        data = self.data.train
        if self.flat:
            yield from (make_batch(data, idx, True) for idx in order[start:])
            return
        chunk: list[Tensor] = []
        rows = cells = 0
        for idx in order[start:]:
            chunk.append(idx)
            rows, cells = rows + idx.numel(), cells + idx.numel() * int(data.lengths[idx].max())
            if rows >= 4096 or cells >= 1 << 20:
                yield from padded_batches(data, chunk)
                chunk, rows, cells = [], 0, 0
        yield from padded_batches(data, chunk)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        batches = self.epoch_order(epoch)
        t0 = time.perf_counter()
        loss_sum, correct, seen, before = self.running  # zeros, unless resumed mid-epoch
        bar = _progress(len(batches), f"epoch {epoch + 1}/{self.cfg.train.epochs}", self.progress)
        if bar is not None:
            bar.update(self.step)
        try:
            stream = fast.look_ahead(self.optimizer, self._batches(batches, self.step))
            for step, batch in enumerate(stream, start=self.step):
                loss, ok, n = self.train_step(batch)
                adapt_threads()  # between steps: the threads follow the cores other processes leave free
                self.stop_if_diverged(loss, f"epoch {epoch + 1}, step {step + 1} of {len(batches)}")
                loss_sum, correct, seen = loss_sum + loss, correct + ok, seen + n
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0 or step == len(batches) - 1:
                        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
                self.after_step(step + 1, (loss_sum, correct, seen, before + time.perf_counter() - t0))
        finally:
            if bar is not None:
                bar.close()
        loss_sum, correct, seen = self.dist.sum(loss_sum, correct, seen)  # over all ranks
        seconds = before + time.perf_counter() - t0
        return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "seconds": seconds, "rows_per_second": seen / seconds if seconds else 0.0,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Validate, log, and remember the best weights."""
        p = self.data
        if p.valid is not None and p.valid.labels.dim() == 1:  # accuracy, macro-F1 and loss: --select-by's choices
            v = stopping.validation_metrics(self.model, p.valid, p.label_names, self.device, self.dist,
                                            self.cfg.train.max_batch_tokens)
            row.update(valid_accuracy=v["accuracy"], valid_macro_f1=v["macro_f1"], valid_loss=v["loss"])
        elif p.valid is not None:  # multi-label (training/multilabel.py): subset accuracy, F1s and BCE at 0.5
            v = ml.validation_metrics(self.model, p.valid, p.label_names, self.device, self.dist,
                                      self.cfg.train.max_batch_tokens)
            row.update(valid_accuracy=v["accuracy"], valid_macro_f1=v["macro_f1"], valid_micro_f1=v["micro_f1"],
                       valid_loss=v["loss"])
        self.history.append(row)
        self.epoch = row["epoch"]
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                 + (f", valid acc {row['valid_accuracy']:.4f}" if "valid_accuracy" in row else "")
                 + f", {row['seconds']:.1f}s ({row['rows_per_second']:.0f} rows/s)")
        self.callbacks.on_epoch(self, row)
        score = stopping.score(row, self.cfg.train.select_by)
        score = float(row["epoch"]) if score is None else score  # without validation, the last epoch wins
        if stopping.is_better(score, self.best_score, self.best_epoch):
            self.best_score, self.best_epoch, self.best_state = score, row["epoch"], state_to_cpu(self.model)

    def fit(self) -> TrainResult:
        result = None
        try:
            with ckpt_io.catch_sigint(self.log) if self.out_dir is not None else _no_interrupt() as self.interrupt:
                for epoch in range(self.epoch, self.cfg.train.epochs):
                    if stopping.should_stop(self.history, self.best_epoch, self.cfg.train.patience):
                        break  # a resumed run that had stopped early (checkpointed before finishing)
                    self.end_epoch(self.run_epoch(epoch))
                    self.step, self.running = 0, (0.0, 0, 0, 0.0)
                    self.save_checkpoint()
                    self.stop_if_interrupted()
                    if stopping.should_stop(self.history, self.best_epoch, self.cfg.train.patience):
                        self.log(f"early stop after epoch {self.epoch}: {self.cfg.train.patience} epochs without a "
                                 f"better validation {self.cfg.train.select_by} than epoch {self.best_epoch}")
                        break
            result = self.finish()
            return result
        finally:
            self.callbacks.on_end(self, result)  # None: stopped early

    # --- checkpoints (training/checkpoint.py): resume, Ctrl-C -------------------------------------

    def after_step(self, step: int, running: tuple[float, int, int, float]) -> None:
        """Record the position in the epoch; checkpoint every `checkpoint_every` steps and on Ctrl-C."""
        self.step, self.running, self.global_step = step, running, self.global_step + 1
        self.callbacks.on_step(self, running)
        self.interrupt.set = self.dist.any(self.interrupt.set)  # distributed: all ranks stop at the same step
        every = self.cfg.train.checkpoint_every
        if every and self.global_step % every == 0:
            self.save_checkpoint()
        elif self.interrupt.set:
            self.save_checkpoint()
        self.stop_if_interrupted()

    def stop_if_diverged(self, loss: float, where: str) -> None:
        """A NaN or infinite loss (on any rank) stops the run before anything more is saved: the run
        directory keeps its last checkpoint and is not a finished run."""
        if self.dist.any(not math.isfinite(loss)):
            raise self.diverged(f"the training loss is {loss:g} at {where}")

    def diverged(self, what: str) -> TrainingDiverged:
        t = self.cfg.train
        kept = "nothing was saved"
        if self.out_dir is not None and ckpt_io.has_checkpoint(self.out_dir):
            kept = f"{self.out_dir} keeps its last checkpoint (not a finished run)"
        return TrainingDiverged(f"training diverged: {what}; stopped, {kept}. Try a lower --lr (now {t.lr:g})"
                                + ("" if t.clip else " or --clip 1"))

    def weights_finite(self) -> bool:
        fast.finish_update(self.optimizer)
        return bool(torch.stack([torch.isfinite(q).all() for q in self.params]).all())

    def stop_if_interrupted(self) -> None:
        if self.interrupt.set:
            import shlex

            raise TrainingInterrupted(
                f"training interrupted; checkpoint saved at epoch {self.epoch + 1}, step {self.step}. "
                f"Resume with: rnntext train --resume {shlex.quote(str(self.out_dir))}"
                + (f" --nproc {self.dist.world_size}" if self.dist.active else ""))

    def make_checkpoint(self, rng: dict[str, Any] | None = None,
                        running: tuple[float, float, float, float] | None = None) -> ckpt_io.Checkpoint:
        optimizer = self.optimizer.state_dict()  # first: it waits for an update still running (fast.look_ahead)
        if self._data_fingerprint is None:
            t = self.data.train
            self._data_fingerprint = ckpt_io.data_fingerprint(t.tokens, t.offsets, t.labels, self.data.label_names,
                                                              len(self.data.vocab))
        loss_sum, correct, seen, seconds = running or self.running
        return ckpt_io.Checkpoint(
            config=self.cfg, epoch=self.epoch, step=self.step, global_step=self.global_step, seq=self.checkpoint_seq,
            running={"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds},
            history=self.history, best_score=self.best_score, best_epoch=self.best_epoch,
            data=self._data_fingerprint, model=self.model.state_dict(), best=self.best_state,
            optimizer=optimizer, schedule=self.schedule.state_dict(),
            rng=rng if rng is not None else ckpt_io.capture_rng(), processes=self.dist.world_size)

    def save_checkpoint(self) -> None:
        """Write RUN_DIR/checkpoint (rank 0 only; nothing without an output directory)."""
        if self.out_dir is None:
            return
        if not self.weights_finite():  # a finite loss whose update overflowed: never checkpoint that
            where = f"epoch {self.epoch + 1}, step {self.step}" if self.step else f"the end of epoch {self.epoch}"
            raise self.diverged(f"the weights are NaN or infinite at {where}")
        rng = self.dist.gather_rng(ckpt_io.capture_rng())  # every rank's generators (all ranks take part)
        running = (*self.dist.sum(*self.running[:3]), self.running[3])  # the partial epoch of all ranks
        if not self.dist.is_main:
            return
        self.checkpoint_seq += 1
        ckpt_io.save_checkpoint(self.out_dir, self.make_checkpoint(rng, running))

    def restore_checkpoint(self, ckpt: ckpt_io.Checkpoint) -> None:
        """Continue from `ckpt` (see resume()): weights, optimiser, schedule, RNGs, position in the epoch."""
        where = str(ckpt_io.checkpoint_dir(self.out_dir or "."))
        if ckpt.processes != self.dist.world_size:  # each rank's position is `step` batches into its own shard
            raise CheckpointError(f"this run was trained by {ckpt.processes} process(es) and this resume has "
                                  f"{self.dist.world_size}; resume with --nproc {ckpt.processes}", where)
        t = self.data.train
        now = ckpt_io.data_fingerprint(t.tokens, t.offsets, t.labels, self.data.label_names, len(self.data.vocab))
        if ckpt.data != now:
            raise CheckpointError(f"the training data differ from the checkpoint's ({now['rows']} rows, vocabulary "
                                  f"{now['vocab_size']} now; {ckpt.data.get('rows')} rows, vocabulary "
                                  f"{ckpt.data.get('vocab_size')} then); were the data files changed?", where)
        self._data_fingerprint = now
        ckpt_io.check_state(ckpt.model, self.model.state_dict(), where)
        if ckpt.best is not None:
            ckpt_io.check_state(ckpt.best, self.model.state_dict(), where)
        self.model.load_state_dict(ckpt.model)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.schedule.load_state_dict(ckpt.schedule)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"optimizer or schedule state does not fit this model ({e})", where) from None
        r = ckpt.running
        self.epoch, self.step, self.global_step, self.checkpoint_seq = ckpt.epoch, ckpt.step, ckpt.global_step, ckpt.seq
        self.running = (float(r["loss_sum"]), int(r["correct"]), int(r["seen"]), float(r["seconds"]))
        if not self.dist.is_main:  # the sums are all ranks'; rank 0 carries them, the epoch end adds the rest
            self.running = (0.0, 0, 0, self.running[3])
        self.history, self.best_score, self.best_epoch = ckpt.history, ckpt.best_score, ckpt.best_epoch
        self.best_state = ckpt.best
        ckpt_io.restore_rng(self.dist.rank_rng(ckpt.rng, where))  # last: nothing above may draw from them
        self.log(f"resumed from {where}: epoch {self.epoch + 1}, step {self.step} ({self.global_step} steps done)")

    def finish(self) -> TrainResult:
        """Best weights back in the model, test metrics, run directory."""
        assert self.best_state is not None
        p = self.data
        self.model.load_state_dict(self.best_state)
        metrics: dict[str, Any] = {
            "epochs": self.history, "best_epoch": self.best_epoch, "epochs_planned": self.cfg.train.epochs,
            "select_by": self.cfg.train.select_by, "parameters": self.n_params,
            "train_seconds": sum(r["seconds"] for r in self.history), "data_seconds": p.seconds,
            "device": str(self.device), "threads": torch.get_num_threads()}
        if self.embeddings is not None:
            metrics["embeddings"] = self.embeddings.summary()
        if self.class_weight is not None:
            metrics["class_weights"] = dict(zip(p.label_names, self.class_weight.tolist()))
        calibration = None  # a temperature fitted on validation (rank 0's: it alone writes the run)
        if self.dist.is_main:
            calibration = fit_on_validation(self.model, p.valid, self.device, self.cfg.train.max_batch_tokens, self.log)
        if calibration is not None:
            metrics["calibration"] = calibration
        thresholds = None
        if p.train.labels.dim() == 2:  # multi-label: each label's threshold, chosen on validation
            thresholds = ml.choose_thresholds(self.model, p.valid, len(p.label_names), self.device,
                                              self.cfg.train.max_batch_tokens)
            metrics["thresholds"] = dict(zip(p.label_names, thresholds))
        if p.test is not None:
            metrics["test"] = evaluate_encoded(self.model, p.test, p.label_names, self.device, self.dist,
                                               self.cfg.train.max_batch_tokens, thresholds)
            self.log(f"test accuracy {metrics['test']['accuracy']:.4f} (best epoch {self.best_epoch}), "
                     f"macro-F1 {metrics['test']['macro_f1']:.4f}" + (  # multi-label: accuracy of whole sets
                         f", micro-F1 {metrics['test']['micro_f1']:.4f}" if thresholds is not None else ""))
        metrics["total_seconds"] = time.perf_counter() - self.t_start
        if self.dist.active:
            metrics["processes"] = self.dist.world_size
        if self.out_dir is not None and self.dist.is_main:
            if thresholds is not None:  # before save_run, whose config.json (written last) marks a complete run
                ml.save_thresholds(self.out_dir, p.label_names, thresholds, len(p.valid) if p.valid else 0)
            save_run(self.out_dir, self.cfg, p.vocab, p.label_names, self.best_state, metrics, calibration)
            self.log(f"saved run to {self.out_dir}")
            if ckpt_io.has_checkpoint(self.out_dir):
                ckpt_io.mark_finished(self.out_dir, self.make_checkpoint())
        return TrainResult(self.cfg, p, self.model, metrics, self.out_dir)


def _fit(trainer: Trainer, ckpt: ckpt_io.Checkpoint | None = None) -> TrainResult:
    """Run `trainer` (from `ckpt` when resuming); a broken process group becomes a one-line error."""
    try:
        if ckpt is not None:
            trainer.restore_checkpoint(ckpt)
        return trainer.fit()
    except RuntimeError as e:
        if (err := trainer.dist.comm_error(e)) is None:
            raise
        raise err from e
    finally:
        # DistributedDataParallel's reducer holds the process group: release it first, so that the group
        # is really torn down here and not by the interpreter's exit (where gloo's threads can abort it)
        trainer.train_module = trainer.model
        trainer.dist.close()


def train(cfg: RunConfig | None = None, out_dir: str | None = None, *, train: Any = None, valid: Any = None,
          test: Any = None, prepared: Prepared | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train a model as `cfg` (default: the defaults) says; with `out_dir`, write the run directory there.
    `train`, `valid`, `test`: data held in Python instead of the files cfg.data names (a pandas DataFrame,
    a Hugging Face datasets.Dataset, a pyarrow Table, a dict of columns or (texts, labels); data/memory.py),
    read with cfg.data's columns; config.json records what each was. `callbacks` (training/callbacks.py)
    are told of the steps, the epochs and the end."""
    cfg, given = given_data(cfg if cfg is not None else RunConfig(), train, valid, test)
    with given:
        if out_dir is None:
            return _fit(Trainer(cfg, None, prepared=prepared, progress=progress, log=log, callbacks=callbacks))
        with ckpt_io.run_lock(out_dir):  # the whole run: a second process writing `out_dir` fails at once
            ckpt_io.prepare_new_run(out_dir)
            return _fit(Trainer(cfg, out_dir, prepared=prepared, progress=progress, log=log, callbacks=callbacks))


def resume(run_dir: str, *, train: Any = None, valid: Any = None, test: Any = None, progress: bool = True,
           log: Callable[[str], None] | None = None, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Continue the run in `run_dir` from its last checkpoint, with the configuration stored there. A run
    trained from data held in Python is given that data again (`train=df`, ...; the checkpoint checks
    that it holds the same rows)."""
    with ckpt_io.run_lock(run_dir):
        ckpt = ckpt_io.load_checkpoint(run_dir)
        if ckpt.finished:
            raise CheckpointError("this run has finished; there is nothing to resume",
                                  str(ckpt_io.manifest_path(run_dir)))
        try:  # the data are prepared again from the files the checkpoint's config names
            with given_again(ckpt.config, train, valid, test):
                trainer = Trainer(ckpt.config, str(run_dir), progress=progress, log=log, callbacks=callbacks)
        except (ConfigError, DataError) as e:
            raise CheckpointError(f"cannot prepare the training data its config names ({e})",
                                  str(ckpt_io.manifest_path(run_dir))) from None
        return _fit(trainer, ckpt)


@contextmanager
def _no_interrupt() -> Iterator[ckpt_io.InterruptFlag]:
    yield ckpt_io.InterruptFlag()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)
