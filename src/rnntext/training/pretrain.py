"""`rnntext pretrain`: a classifier's embedding and recurrent encoder pretrained as a language model on
unlabelled text (model/lm.py), written as an encoder directory (data/encoder_dir.py) that
`rnntext train --encoder DIR` fine-tunes from.

Read top to bottom: the texts are read (plain lines or CSV/TSV/JSONL columns), a seeded fraction held
out, the vocabulary built on the rest, long texts cut into pieces of --seq-len tokens; then epochs of
length-bucketed batches under the token budget (as training's), AdamW and the run's LR schedule, the
held-out perplexity after each epoch, the best epoch's weights kept.

Checkpoints follow training/checkpoint.py's conventions and reuse its parts: OUT/checkpoint/ holds a
safetensors file of every tensor (the language model, its best weights, the optimiser's moments, the
RNG states) and checkpoint.json, the commit point, written last and atomically; a checkpoint at every
epoch's end, every --checkpoint-every steps and on Ctrl-C. `--resume OUT` reads the same texts again,
refuses them if they changed, and continues bit-identically: the batch order is a function of the
seed and the epoch, and the weights, optimiser, schedule and generators are restored as they were."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import Tensor

from ..data.batching import epoch_batches, eval_batches, padded_batch
from ..data.encode import Encoded, encode_tokens
from ..data.encoder_dir import ENCODER_JSON, METRICS, PretrainSettings, save_encoder
from ..data.tokenizer import Tokenizer
from ..data.train_vectors import read_texts
from ..data.vocab import Vocab
from ..errors import CheckpointError, ConfigError, DataError, RnnTextError, TrainingInterrupted
from ..io import atomic_write_json
from ..model.lm import STACKED_BIDIRECTIONAL, RecurrentLM
from . import checkpoint as ckpt_io
from .device import AUTO, adapt_threads, resolve_device, set_threads
from .schedule import make_schedule
from .stopping import planned_epochs

KIND = "rnntext-pretrain-checkpoint"
FORMAT_VERSION = 1


class PretrainDiverged(RnnTextError):
    """The language model's loss became NaN or infinite."""


# --- data -------------------------------------------------------------------------------------------

@dataclass
class LMData:
    vocab: Vocab
    train: Encoded  # pieces of <= seq_len tokens, >= 2 each (a single word predicts nothing)
    valid: Encoded
    texts: int
    fingerprint: dict[str, Any]


def _pieces(token_lists: list[list[str]], seq_len: int) -> list[list[str]]:
    return [t[i:i + seq_len] for t in token_lists for i in range(0, len(t), seq_len) if len(t[i:i + seq_len]) >= 2]


def prepare_lm_data(settings: PretrainSettings, log: Callable[[str], None]) -> LMData:
    """Read the texts, hold out a seeded fraction, build the vocabulary on the rest, encode in pieces."""
    d, p, seed = settings.run.data, settings.pretrain, settings.run.train.seed
    if not p.text:
        raise ConfigError("give --text FILE [FILE ...]: the texts to pretrain on")
    t0 = time.perf_counter()
    tokenizer = Tokenizer(d.tokenizer, 1, d.max_len)
    tokens = [tokenizer(t) for t in read_texts(p.text, d.text_columns, None, None, d.skip_bad_rows, d.quoting)]
    tokens = [t for t in tokens if t]
    n = len(tokens)
    n_valid = max(1, round(n * p.valid_fraction))
    if n_valid >= n:
        raise DataError(f"{n} non-empty text(s): too few to hold out --valid-fraction {p.valid_fraction:g} and "
                        "train on the rest", ", ".join(p.text))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    valid_idx, train_idx = sorted(perm[:n_valid]), sorted(perm[n_valid:])
    train_tokens = [tokens[i] for i in train_idx]
    vocab = Vocab.build(train_tokens, d.min_freq, d.max_vocab)
    train = encode_tokens(_pieces(train_tokens, p.seq_len), vocab)
    valid = encode_tokens(_pieces([tokens[i] for i in valid_idx], p.seq_len), vocab)
    if len(train) == 0 or len(valid) == 0:
        raise DataError("no text of two or more words to learn from" if len(train) == 0 else
                        "the held-out texts have no text of two or more words; raise --valid-fraction",
                        ", ".join(p.text))
    h = hashlib.sha256()
    for t in (train.tokens, train.offsets, valid.tokens, valid.offsets):
        h.update(t.numpy().tobytes())
    fingerprint = {"texts": n, "pieces": len(train), "vocab_size": len(vocab), "sha256": h.hexdigest()}
    log(f"data: {n:,} texts ({n - n_valid:,} to train on, {n_valid:,} held out), {int(train.tokens.numel()):,} "
        f"training tokens in {len(train):,} pieces; vocabulary {len(vocab):,}; {time.perf_counter() - t0:.1f}s")
    return LMData(vocab, train, valid, n, fingerprint)


# --- the loop ---------------------------------------------------------------------------------------

class Pretrainer:
    def __init__(self, settings: PretrainSettings, out_dir: str | None, *, progress: bool = True,
                 log: Callable[[str], None] | None = None,
                 on_step: Callable[[Pretrainer], None] | None = None):
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.settings = settings = copy.deepcopy(settings)
        check_settings(settings)
        self.out_dir, self.progress, self.on_step = out_dir, progress, on_step
        t = settings.run.train
        set_threads(t.threads or AUTO)  # unset: as a training run, the cores other processes leave free
        self.device = resolve_device(t.device)
        self.data = prepare_lm_data(settings, self.log)
        m = settings.run.model
        m.vocab_size, m.num_classes = len(self.data.vocab), 1
        torch.manual_seed(t.seed)
        try:
            self.lm = RecurrentLM.from_config(m, settings.pretrain.tie_weights).to(self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.params = list(self.lm.parameters())
        fused = self.device.type in ("cpu", "cuda") or None
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
        self.steps_per_epoch = len(self.epoch_order(0))
        if t.epochs is None:  # as a classifier's run: enough epochs for --min-steps steps (fixed from here on)
            t.epochs = planned_epochs(t, self.steps_per_epoch)
            self.log(f"epochs: {t.epochs} of {self.steps_per_epoch} steps (--min-steps {t.min_steps})")
        self.schedule = make_schedule(settings.run, self.optimizer, self.steps_per_epoch * t.epochs)
        self.log(f"language model: {m.model}{' (bidirectional)' if m.bidirectional else ''}, "
                 f"{sum(q.numel() for q in self.params):,} parameters, output layer "
                 f"{'tied to the embedding' if settings.pretrain.tie_weights else 'separate'}, device {self.device}")
        self.epoch, self.step, self.global_step, self.seq = 0, 0, 0, 0
        self.running = (0.0, 0, 0.0)  # the current epoch so far: summed NLL, predicted words, seconds
        self.history: list[dict[str, Any]] = []
        self.best_ppl, self.best_epoch = math.inf, 0
        self.best_state: dict[str, Tensor] | None = None
        self.initial_ppl: float | None = None
        self.interrupt = ckpt_io.InterruptFlag()

    def epoch_order(self, epoch: int) -> list[Tensor]:
        t = self.settings.run.train
        return epoch_batches(self.data.train.lengths, t.batch_size, t.seed, epoch, t.bucket,
                             max_tokens=t.max_batch_tokens)

    def train_step(self, index: Tensor) -> tuple[float, int]:
        b = padded_batch(self.data.train, index)
        total, count = self.lm(b.tokens.to(self.device), b.lengths, self.settings.pretrain.softmax_samples)
        for q in self.params:
            q.grad = None
        (total / max(count, 1)).backward()
        clip = self.settings.run.train.clip
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.schedule.step()
        return total.item(), count

    @torch.no_grad()
    def perplexity(self, data: Encoded) -> float:
        self.lm.eval()
        total, count = 0.0, 0
        t = self.settings.run.train
        for index in eval_batches(data.lengths, 256, t.max_batch_tokens):
            b = padded_batch(data, index)
            s, c = self.lm(b.tokens.to(self.device), b.lengths)
            total, count = total + s.item(), count + c
        return math.exp(min(total / max(count, 1), 700.0))

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        self.lm.train()
        order = self.epoch_order(epoch)
        epochs = self.settings.run.train.epochs
        nll, words, before = self.running
        t0 = time.perf_counter()
        bar = _progress(len(order), f"epoch {epoch + 1}/{epochs}", self.progress)
        if bar is not None:
            bar.update(self.step)
        try:
            for step in range(self.step, len(order)):
                adapt_threads()
                s, c = self.train_step(order[step])
                if not math.isfinite(s):
                    raise PretrainDiverged(f"pretraining diverged: the loss is {s:g} at epoch {epoch + 1}, step "
                                           f"{step + 1}; try a lower --lr (now {self.settings.run.train.lr:g})")
                nll, words = nll + s, words + c
                self.step, self.global_step = step + 1, self.global_step + 1
                self.running = (nll, words, before + time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(ppl=f"{math.exp(min(nll / max(words, 1), 700.0)):.1f}", refresh=False)
                self.after_step()
        finally:
            if bar is not None:
                bar.close()
        seconds = before + time.perf_counter() - t0
        loss = nll / max(words, 1)
        return {"epoch": epoch + 1, "train_loss": loss, "train_perplexity": math.exp(min(loss, 700.0)),
                "seconds": seconds, "tokens_per_second": words / seconds if seconds else 0.0,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def after_step(self) -> None:
        if self.on_step is not None:
            self.on_step(self)
        every = self.settings.run.train.checkpoint_every
        if (every and self.global_step % every == 0) or self.interrupt.set:
            self.save_checkpoint()
        self.stop_if_interrupted()

    def stop_if_interrupted(self) -> None:
        if self.interrupt.set:
            raise TrainingInterrupted(f"pretraining interrupted; checkpoint saved at epoch {self.epoch + 1}, step "
                                      f"{self.step}. Resume with: rnntext pretrain --resume "
                                      f"{shlex.quote(str(self.out_dir))}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        row["valid_perplexity"] = self.perplexity(self.data.valid)
        self.history.append(row)
        self.epoch, self.step, self.running = row["epoch"], 0, (0.0, 0, 0.0)
        self.log(f"epoch {row['epoch']}: train perplexity {row['train_perplexity']:.1f}, held-out perplexity "
                 f"{row['valid_perplexity']:.1f}, {row['seconds']:.1f}s ({row['tokens_per_second']:.0f} words/s)")
        if row["valid_perplexity"] < self.best_ppl:
            self.best_ppl, self.best_epoch = row["valid_perplexity"], row["epoch"]
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in self.lm.state_dict().items()}

    def fit(self) -> dict[str, Any]:
        if self.initial_ppl is None:
            self.initial_ppl = self.perplexity(self.data.valid)
            self.log(f"held-out perplexity before pretraining: {self.initial_ppl:.1f}")
        with ckpt_io.catch_sigint(self.log) if self.out_dir is not None else _no_interrupt() as self.interrupt:
            for epoch in range(self.epoch, self.settings.run.train.epochs):
                self.end_epoch(self.run_epoch(epoch))
                self.save_checkpoint()
                self.stop_if_interrupted()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        assert self.best_state is not None
        self.lm.load_state_dict(self.best_state)
        metrics = {"epochs": self.history, "best_epoch": self.best_epoch, "valid_perplexity": self.best_ppl,
                   "initial_valid_perplexity": self.initial_ppl, "texts": self.data.texts,
                   "train_tokens": int(self.data.train.tokens.numel()),
                   "valid_tokens": int(self.data.valid.tokens.numel()), "vocab_size": len(self.data.vocab),
                   "train_seconds": sum(r["seconds"] for r in self.history)}
        if self.out_dir is not None:
            save_encoder(self.out_dir, self.settings, self.data.vocab, self.lm.encoder.encoder_state(), metrics)
            self.mark_finished()
            self.log(f"held-out perplexity {self.initial_ppl:.1f} -> {self.best_ppl:.1f} (best epoch "
                     f"{self.best_epoch}); encoder saved to {self.out_dir}")
        return metrics

    # --- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        d = ckpt_io.checkpoint_dir(self.out_dir)
        self.seq += 1
        tensors: dict[str, Tensor] = {}
        for k, v in self.lm.state_dict().items():
            tensors[f"lm.{k}"] = v.detach().to("cpu").contiguous()
        for k, v in (self.best_state or {}).items():
            tensors[f"best.{k}"] = v.contiguous()
        nll, words, seconds = self.running
        manifest: dict[str, Any] = {
            "kind": KIND, "format_version": FORMAT_VERSION, "finished": False, "seq": self.seq,
            "progress": {"epoch": self.epoch, "step": self.step, "global_step": self.global_step},
            "running": {"nll": nll, "words": words, "seconds": seconds},
            "history": self.history,
            "best": {"perplexity": self.best_ppl if math.isfinite(self.best_ppl) else None,
                     "epoch": self.best_epoch, "has_state": self.best_state is not None},
            "initial_valid_perplexity": self.initial_ppl,
            "data": self.data.fingerprint,
            "optimizer": ckpt_io.encode_state(self.optimizer.state_dict(), "optimizer", tensors),
            "schedule": ckpt_io.encode_state(self.schedule.state_dict(), "schedule", tensors),
            "rng": ckpt_io.encode_state(ckpt_io.capture_rng(), "rng", tensors),
            "config": self.settings.to_dict(),
        }
        ckpt_io.commit(d, self.seq, manifest, tensors)

    def mark_finished(self) -> None:
        d = ckpt_io.checkpoint_dir(self.out_dir or ".")
        if not d.is_dir():
            return
        atomic_write_json(d / ckpt_io.MANIFEST, {"kind": KIND, "format_version": FORMAT_VERSION, "finished": True,
                                                 "seq": self.seq + 1, "history": self.history,
                                                 "config": self.settings.to_dict()})
        _remove_stale(d, keep="")

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint read by read_checkpoint()."""
        where = str(ckpt_io.manifest_path(self.out_dir or "."))
        if state["data"] != self.data.fingerprint:
            raise CheckpointError("the texts differ from those the checkpoint was pretrained on; were the files "
                                  "changed?", where)
        ckpt_io.check_state(state["lm"], self.lm.state_dict(), where)
        if state["best"] is not None:
            ckpt_io.check_state(state["best"], self.lm.state_dict(), where)
        self.lm.load_state_dict(state["lm"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"optimizer or schedule state does not fit this model ({e})", where) from None
        p = state["progress"]
        self.epoch, self.step, self.global_step, self.seq = p["epoch"], p["step"], p["global_step"], state["seq"]
        if not (0 <= self.epoch <= self.settings.run.train.epochs and 0 <= self.step <= self.steps_per_epoch
                and self.global_step == self.epoch * self.steps_per_epoch + self.step):
            raise CheckpointError(f"progress (epoch {self.epoch}, step {self.step}, global step {self.global_step}) "
                                  f"does not fit {self.steps_per_epoch} steps per epoch", where)
        r = state["running"]
        self.running = (float(r["nll"]), int(r["words"]), float(r["seconds"]))
        self.history, self.best_state = state["history"], state["best"]
        self.best_epoch = state["best_epoch"]
        self.best_ppl = state["best_perplexity"] if state["best_perplexity"] is not None else math.inf
        self.initial_ppl = state["initial_valid_perplexity"]
        ckpt_io.restore_rng(state["rng"], where)  # last: nothing above may draw from them
        self.log(f"resumed from {where}: epoch {self.epoch + 1}, step {self.step} ({self.global_step} steps done)")


def _remove_stale(d: Path, keep: str) -> None:
    for p in d.iterdir():
        if (p.name.startswith("state-") and p.name.endswith(".safetensors") and p.name != keep) or \
                (p.name.startswith(".") and p.name.endswith(".tmp")):
            try:
                p.unlink()
            except OSError:
                pass


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = ckpt_io.manifest_path(out_dir)
    if not Path(out_dir).is_dir():
        raise CheckpointError("encoder directory does not exist", str(out_dir))
    if not path.is_file():
        raise CheckpointError("missing file: no checkpoint to resume from (killed before its first checkpoint?)",
                              str(path))
    if path.stat().st_size > ckpt_io.MAX_MANIFEST_BYTES:
        raise CheckpointError("larger than a manifest can be", str(path))
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"corrupted or truncated JSON ({str(e)[:100]})", str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise CheckpointError("not a checkpoint of `rnntext pretrain`", str(path))
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"unknown format_version {version!r}", str(path))
    return manifest


def read_checkpoint(out_dir: str | Path) -> tuple[PretrainSettings, dict[str, Any]]:
    """The settings and the state of an unfinished pretraining's checkpoint; every problem one line."""
    manifest = read_manifest(out_dir)
    mpath = str(ckpt_io.manifest_path(out_dir))
    if manifest.get("finished") is True:
        raise CheckpointError("this pretraining has finished; there is nothing to resume", mpath)
    try:
        settings = PretrainSettings.from_dict(manifest["config"])
        check_settings(settings)
        info = manifest["tensors"]
        tpath = ckpt_io.checkpoint_dir(out_dir) / str(info["file"])
        if not str(info["file"]).startswith("state-") or "/" in str(info["file"]):
            raise ValueError(f"invalid tensor file name {info['file']!r}")
        progress = {k: int(manifest["progress"][k]) for k in ("epoch", "step", "global_step")}
        best = manifest["best"]
        state: dict[str, Any] = {
            "seq": int(manifest["seq"]), "progress": progress, "running": dict(manifest["running"]),
            "history": list(manifest["history"]), "data": dict(manifest["data"]),
            "best_epoch": int(best["epoch"]), "best_perplexity": best["perplexity"],
            "initial_valid_perplexity": manifest["initial_valid_perplexity"]}
        has_best = bool(best["has_state"])
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"invalid manifest ({type(e).__name__}: {str(e)[:200]})", mpath) from None
    if not tpath.is_file():
        raise CheckpointError("missing file (named by checkpoint.json)", str(tpath))
    if tpath.stat().st_size != info.get("bytes"):
        raise CheckpointError("corrupted or truncated file (its size is not checkpoint.json's)", str(tpath))
    blob = tpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise CheckpointError("corrupted or truncated file (sha256 does not match checkpoint.json)", str(tpath))
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupted safetensors file ({e})", str(tpath)) from None
    state["lm"] = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
    state["best"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} if has_best else None
    try:
        for key in ("optimizer", "schedule", "rng"):
            state[key] = ckpt_io.decode_state(manifest[key], tensors, mpath)
            if not isinstance(state[key], dict):
                raise TypeError(f"{key} must be an object")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"invalid manifest: undecodable state ({type(e).__name__}: {str(e)[:100]})",
                              mpath) from None
    return settings, state


# --- entry points -----------------------------------------------------------------------------------

def check_settings(settings: PretrainSettings) -> None:
    """The settings' ranges and the rules between them, and those of a language model."""
    settings.run.validate()
    settings.pretrain.validate()
    d, m = settings.run.data, settings.run.model
    if m.model not in ("rnn", "lstm", "gru"):
        raise ConfigError(f"--model {m.model}: only a recurrent encoder (rnn, lstm, gru) is pretrained")
    if m.bidirectional and m.num_layers > 1:
        raise ConfigError(STACKED_BIDIRECTIONAL)
    if d.ngrams != 1:
        raise ConfigError(f"--ngrams {d.ngrams}: a language model reads words (give --ngrams 1)")
    if d.encoder or d.embeddings:
        raise ConfigError("pretraining starts from random weights: drop --encoder and --embeddings")


def check_target(out_dir: str) -> None:
    """A new pretraining writes into a missing or empty directory, or over a finished encoder directory;
    an unfinished one is continued with --resume."""
    ckpt_io.check_out_dir(out_dir)
    d = Path(out_dir)
    if not d.exists():
        return
    if not d.is_dir():
        raise CheckpointError("exists and is not a directory", str(d))
    names = {p.name for p in d.iterdir()} - {ckpt_io.LOCK_FILE}
    if ckpt_io.manifest_path(d).is_file():
        if not read_manifest(d).get("finished"):
            raise ConfigError(f"{d} holds an unfinished pretraining; continue it with `rnntext pretrain --resume "
                              f"{d}`, or delete {ckpt_io.checkpoint_dir(d)} to start over")
    elif names and ENCODER_JSON not in names and names != {ckpt_io.CHECKPOINT_DIR}:
        shown = ", ".join(sorted(names)[:3])
        raise CheckpointError(f"is not empty ({shown}) and is not an encoder directory; choose a new or empty "
                              "directory", str(d))


def pretrain(settings: PretrainSettings, out_dir: str | None = None, *, progress: bool = True,
             log: Callable[[str], None] | None = None,
             on_step: Callable[[Pretrainer], None] | None = None) -> dict[str, Any]:
    """Pretrain an encoder as `settings` say; with `out_dir`, write the encoder directory (and checkpoints)
    there. Returns the metrics (metrics.json)."""
    if out_dir is None:
        return Pretrainer(settings, None, progress=progress, log=log, on_step=on_step).fit()
    check_target(out_dir)
    with ckpt_io.run_lock(out_dir):
        check_target(out_dir)
        ckpt_io.ensure_writable(out_dir)
        if ckpt_io.manifest_path(out_dir).is_file():  # a finished pretraining's: this one starts afresh
            ckpt_io.manifest_path(out_dir).unlink()
        for name in (ENCODER_JSON, METRICS):  # the encoder being replaced is no longer one
            (Path(out_dir) / name).unlink(missing_ok=True)
        return Pretrainer(settings, out_dir, progress=progress, log=log, on_step=on_step).fit()


def resume_pretrain(out_dir: str, *, progress: bool = True, log: Callable[[str], None] | None = None,
                    on_step: Callable[[Pretrainer], None] | None = None) -> dict[str, Any]:
    """Continue the pretraining in `out_dir` from its last checkpoint."""
    with ckpt_io.run_lock(out_dir):
        settings, state = read_checkpoint(out_dir)
        trainer = Pretrainer(settings, out_dir, progress=progress, log=log, on_step=on_step)
        trainer.restore(state)
        return trainer.fit()


class _no_interrupt:
    def __enter__(self) -> ckpt_io.InterruptFlag:
        return ckpt_io.InterruptFlag()

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)


# --- fine-tuning from an encoder ----------------------------------------------------------------------

def check_encoder(cfg: Any) -> None:
    """`train --encoder DIR`: the encoder's settings fit the RunConfig `cfg` (cell, sizes, tokenizer)."""
    from ..data.encoder_dir import check_fits, read_settings

    settings, _ = read_settings(cfg.data.encoder)
    check_fits(settings, cfg.model, cfg.data, str(Path(cfg.data.encoder) / ENCODER_JSON))


def start_from_encoder(model: Any, cfg: Any, vocab: Vocab, log: Callable[[str], None]) -> None:
    """`train --encoder DIR`: the classifier `model` (of the RunConfig `cfg`, whose data were encoded with
    `vocab`) starts its embedding and recurrent layers from the encoder's weights, through the model
    interface (TextClassifier.load_encoder). A model of another cell, size or depth is a one-line error
    naming the encoder's file."""
    from ..data.encoder_dir import WEIGHTS, load_encoder

    enc = load_encoder(cfg.data.encoder)
    enc.check_fits(cfg.model, cfg.data)
    if enc.vocab.itos != vocab.itos:  # data prepared elsewhere (not by prepare(), which takes the encoder's)
        raise ConfigError(f"the data were encoded with a vocabulary of {len(vocab):,} words, not the encoder's "
                          f"({len(enc.vocab):,}); prepare them with data.encoder set")
    try:
        model.load_encoder(enc.state)
    except ValueError as e:
        raise CheckpointError(str(e), str(enc.path / WEIGHTS)) from None
    ppl = json.loads((enc.path / METRICS).read_text()).get("valid_perplexity") if (enc.path / METRICS).is_file() \
        else None
    log(f"encoder: embedding and recurrent layers from {enc.path}" + (f" (held-out perplexity {ppl:.1f})"
                                                                        if isinstance(ppl, float) else ""))
