"""Prediction from a run directory: `rnntext.load(RUN_DIR).predict(["..."])`; from several run
directories trained on the same labels, an ensemble: the mean of their class probabilities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .. import fast
from ..config import MAX_BATCH_TOKENS
from ..data import Encoded
from ..data.encode import encode_tokens
from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, ConfigError, RnnTextError
from ..training.device import resolve_device, set_threads
from ..training.logits import mean_probabilities
from ..training.rundir import Run, load_run
from .ensemble import member_dirs
from .prediction import Prediction, check_min_confidence, confident, label_set

# The memory bound of prediction: a cap on rows x longest text per model call (without the GRU's inference
# loop a model holds every step's outputs), and on the tokens of one text, which is cut to its first
# BATCH_TOKENS. A run's own train.max_batch_tokens replaces it (its default is this): prediction cuts the
# texts as its training did. The texts per call are fast.prediction_batch() unless given.
BATCH_TOKENS = MAX_BATCH_TOKENS
# Texts are tokenised and predicted this many (or this many characters) at a time: what is held besides
# the texts themselves (token lists, ids) stays bounded however many there are.
CHUNK_TEXTS = 16_384
CHUNK_CHARS = 8_000_000
PRECISIONS = ("fp32", "bf16")  # of the inference fast path (rnntext.fast.gru)




class Predictor:
    """One run, or an ensemble of runs (`also`): each reads the texts with its own tokenizer and
    vocabulary, and the class probabilities are averaged."""

    def __init__(self, run: Run, device: torch.device, also: Sequence[Run] = (), precision: str = "fp32",
                 calibration: bool = True):
        """`precision` "bf16": GRU models on a CPU run their recurrence in bfloat16 (rnntext.fast.gru; opt-in,
        probabilities within ~0.01 of float32's); other models, and other devices, float32. `calibration`:
        each run's temperature (calibration.json, training/calibration.py) applied to its logits; False:
        the raw softmax."""
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.run = run
        self.runs = [run, *also]
        self.device = device
        self.calibration = calibration
        self.temperatures = [r.temperature if calibration else 1.0 for r in self.runs]
        self.tokenizer = run.tokenizer
        self.labels = run.label_names
        # these models only predict: what the fast path precomputes from their weights may stay
        self.forwards = [fast.inference_forward(r.model, device, precision) for r in self.runs]
        for other in also:
            if other.label_names != self.labels:
                raise ConfigError(f"cannot ensemble {other.path} with {run.path}: labels "
                                  f"{', '.join(other.label_names)} differ from {', '.join(self.labels)}")
        # multi-label (training/multilabel.py): sigmoid probabilities, each label's threshold; an ensemble
        # averages its members' probabilities and their thresholds
        self.multi_label = run.config.data.multi_label
        self.thresholds: list[float] | None = None
        if any(r.config.data.multi_label != self.multi_label for r in also):
            raise ConfigError(f"cannot ensemble multi-label runs with single-label ones ({run.path})")
        if self.multi_label:
            from ..training.multilabel import load_thresholds

            each = [load_thresholds(r.path, self.labels) for r in self.runs]
            self.thresholds = [sum(t) / len(t) for t in zip(*each)]

    @classmethod
    def load(cls, run_dir: str | Path | Sequence[str | Path], device: str = "auto",
             threads: int | str | None = None, precision: str = "fp32", calibration: bool = True) -> Predictor:
        # N threads, or "auto" (as many as the cores other processes leave free, followed batch by batch:
        # training/device.py); None leaves the process's setting alone (a library must not change it)
        if threads is not None:
            set_threads(threads)
        dev = resolve_device(device)
        dirs: list[str | Path] = []
        for d in [run_dir] if isinstance(run_dir, (str, Path)) else run_dir:
            dirs.extend(member_dirs(d) or [d])  # an ensemble directory stands for its members
        if not dirs:
            raise ConfigError("no run directory given")
        runs = [load_run(d, dev) for d in dirs]
        return cls(runs[0], dev, runs[1:], precision, calibration)

    @staticmethod
    def chunks(texts: Sequence[str]) -> Iterator[Sequence[str]]:
        """`texts` in consecutive slices of at most CHUNK_TEXTS texts and (one long text aside)
        CHUNK_CHARS characters."""
        start, chars = 0, 0
        for i, text in enumerate(texts):
            if i > start and (i - start >= CHUNK_TEXTS or chars + len(text) > CHUNK_CHARS):
                yield texts[start:i]
                start, chars = i, 0
            chars += len(text)
        if start < len(texts):
            yield texts[start:]

    def probabilities(self, texts: list[str], batch_size: int | None = None, calibrated: bool = True) -> torch.Tensor:
        """[len(texts), classes] class probabilities (an ensemble's: the mean over its runs), calibrated
        unless `calibrated` is False or the predictor was loaded with calibration=False. Memory: the texts
        are read CHUNK_TEXTS at a time, each cut to its run's token budget (train.max_batch_tokens), and a
        model call holds at most that many padded tokens."""
        texts = list(texts)
        if len(texts) <= CHUNK_TEXTS and sum(map(len, texts)) <= CHUNK_CHARS:
            return self._probabilities(texts, batch_size, calibrated)
        return torch.cat([self._probabilities(list(c), batch_size, calibrated) for c in self.chunks(texts)])

    def _probabilities(self, texts: list[str], batch_size: int | None, calibrated: bool = True) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, len(self.labels))
        tokenized: dict[tuple, list[list[str]]] = {}  # members with the same tokenizer settings share one pass

        def encoded(r: Run) -> Encoded:
            t, budget = r.tokenizer, r.config.train.max_batch_tokens
            # the words cut to the budget before n-grams are added: the tokens kept are those training kept
            t = Tokenizer(t.name, t.ngrams, min(t.max_len or budget, budget))
            key = (t.name, t.ngrams, t.max_len)
            if key not in tokenized:
                tokenized[key] = [t(x) for x in texts]
            return encode_tokens(tokenized[key], r.vocab, max_len=budget)

        members = ((r.model, encoded(r), forward) for r, forward in zip(self.runs, self.forwards))
        budget = max(r.config.train.max_batch_tokens for r in self.runs)
        return mean_probabilities(members, (len(texts), len(self.labels)), self.device, batch_size, budget,
                                  self.multi_label, temperatures=self.temperatures if calibrated else None)

    def predict(self, texts: list[str] | str, batch_size: int | None = None,
                min_confidence: float | None = None) -> list[Prediction]:
        """A NaN model (weights damaged, a diverged training) is an error, never NaN probabilities.
        `min_confidence` P: a text whose most probable class has a probability below P gets no label
        (None; its probabilities are still given)."""
        if isinstance(texts, str):
            texts = [texts]
        check_min_confidence(min_confidence)
        probs = self.probabilities(texts, batch_size)
        finite = torch.isfinite(probs).all(1)
        if not bool(finite.all()):
            raise self._not_finite(int((~finite).nonzero()[0]))
        top, best = probs.max(1)
        answered = confident(top.tolist(), min_confidence)
        rows = probs.tolist()
        return [Prediction(self.labels[b] if ok else None, dict(zip(self.labels, (round(p, 6) for p in row))),
                           None if self.thresholds is None else label_set(self.labels, row, self.thresholds))
                for b, ok, row in zip(best.tolist(), answered, rows)]

    def _not_finite(self, i: int) -> RnnTextError:
        for r in self.runs:
            if not all(bool(torch.isfinite(q).all()) for q in r.model.parameters()):
                return CheckpointError("the model's weights hold NaN or infinite values (a training that diverged?); "
                                       "it cannot predict: retrain it", str(r.path))
        return RnnTextError(f"the model's class probabilities for text {i + 1} are not finite numbers")

    def explain(self, texts: list[str] | str, label: str | None = None, method: str = "ig",
                steps: int | None = None) -> list:
        """Each word's attribution to the probability of the predicted class (or of `label`), one
        rnntext.inference.explain.Explanation per text; an ensemble's: the mean over its runs. Needs
        Captum (`pip install 'rnntext[explain]'`)."""
        from .explain import DEFAULT_STEPS, explain

        return explain(self, texts, label, method, steps or DEFAULT_STEPS)


def load(run_dir: str | Path | Sequence[str | Path], device: str = "auto", threads: int | str | None = None,
         precision: str = "fp32", calibration: bool = True) -> Predictor:
    """A trained model ready to predict, from the run directory `rnntext train --out` wrote; given
    several run directories, their ensemble. `calibration` False: the raw probabilities, without the
    temperature fitted on validation."""
    return Predictor.load(run_dir, device, threads, precision, calibration)
