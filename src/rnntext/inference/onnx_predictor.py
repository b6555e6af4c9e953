"""Prediction from an exported model (`rnntext export --format onnx`) with onnxruntime, without torch:
tokenising and encoding in plain Python, batching and softmax-free post-processing in numpy (the
model outputs probabilities). This module must not import torch (tests/test_onnx.py checks it in a
fresh process), so a server can run from an export directory alone.

    from rnntext.inference.onnx_predictor import OnnxPredictor
    OnnxPredictor.load("export/").predict(["Stocks fell on Wall Street"])

The interface is the Predictor's: `probabilities(texts) -> [texts, classes]` (a numpy array here) and
`predict(texts) -> [Prediction]`. Texts are read as the run read them (its tokenizer settings, each text
cut to the run's token budget), sorted by length and run in batches of `batch_size` texts and at most
`max_batch_tokens` padded tokens."""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.tokenizer import Tokenizer
from ..data.vocab import UNK_ID, UNSEEN, Vocab
from ..errors import CheckpointError, ConfigError, RnnTextError
from .prediction import Prediction, check_min_confidence, confident

MODEL, SETTINGS, VOCAB, LABELS = "model.onnx", "export.json", "vocab.json", "labels.json"
FORMAT = 2  # the newest export.json this reads: export.py's FORMAT (tests/test_onnx.py keeps them equal)
BATCH = 512  # texts per model call (benchmarks/predict.py)
CHUNK_TEXTS = 16_384  # texts tokenised and predicted at a time (bounded memory, as the Predictor)




def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from the model's softmax(logits): log(p) is the logits less a constant per row,
    which the softmax ignores. T == 1 returns `probs` itself. A probability that is 0 (float32 underflow)
    stays 0."""
    if temperature == 1.0:
        return probs
    with np.errstate(divide="ignore"):
        z = np.log(probs.astype(np.float64)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def is_export(path: str | Path) -> bool:
    """Whether `path` is an export directory (holds export.json and model.onnx)."""
    return (Path(path) / SETTINGS).is_file() and (Path(path) / MODEL).is_file()


def session_options(threads: int | None = None) -> Any:
    """onnxruntime session options: `threads` intra-op threads (None: onnxruntime's choice, all cores),
    sequential execution, all graph optimisations. The predictor runs one single-threaded session per
    core instead, each on its own batches (twice the texts/s of one two-threaded session on 2 busy
    cores, benchmarks/predict.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"not a readable JSON file ({str(e)[:200]})", str(path)) from None


class OnnxPredictor:
    """An exported model run by onnxruntime."""

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = BATCH,
                 calibration: bool = True):
        """`threads`: sessions run side by side, one thread each (default: the cores this process may use).
        `calibration`: the run's temperature (export.json's, 1 in exports without one) applied."""
        path = Path(path)
        if not is_export(path):
            raise ConfigError(f"{path} is not an export directory (no {SETTINGS} and {MODEL}): "
                              "write one with `rnntext export RUN --format onnx --out DIR`")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("--backend onnx needs onnxruntime: pip install 'rnntext[onnx]'") from None
        self.path = path
        cfg = _read_json(path / SETTINGS)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("tokenizer"), dict):
            raise CheckpointError("expected an object with 'tokenizer'", str(path / SETTINGS))
        if cfg.get("format", FORMAT) > FORMAT:
            raise CheckpointError(f"export format {cfg['format']} is newer than this rnntext reads ({FORMAT})",
                                  str(path / SETTINGS))
        self.settings = cfg
        t = cfg.get("temperature", 1.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.01 <= t <= 100):
            raise CheckpointError(f"temperature must be a number in [0.01, 100], got {str(t)[:40]}",
                                  str(path / SETTINGS))
        self.calibration = calibration
        self.temperature = float(t) if calibration else 1.0
        tok = cfg["tokenizer"]
        self.budget = int(cfg.get("max_batch_tokens") or 65_536)
        # the words cut to the budget before n-grams are added, as the Predictor does
        max_len = min(tok.get("max_len") or self.budget, self.budget)
        self.tokenizer = Tokenizer(tok.get("name", "basic_english"), int(tok.get("ngrams", 1)), max_len)
        unseen = tok.get("unseen_words", "unk")  # an export of format 1 read unseen words as <unk>
        if unseen not in UNSEEN:
            raise CheckpointError(f"tokenizer.unseen_words must be one of {', '.join(UNSEEN)}, got {str(unseen)[:40]}",
                                  str(path / SETTINGS))
        try:
            self.vocab = Vocab.from_json((path / VOCAB).read_text(encoding="utf-8"), unseen)
        except (OSError, ValueError) as e:
            raise CheckpointError(str(e)[:200], str(path / VOCAB)) from None
        labels = _read_json(path / LABELS)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError("expected a list of label names", str(path / LABELS))
        self.labels: list[str] = labels
        self.batch_size = batch_size
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        self.threads = threads
        try:
            self.sessions = [ort.InferenceSession(str(path / MODEL), session_options(1),
                                                  providers=["CPUExecutionProvider"]) for _ in range(threads)]
        except Exception as e:  # onnxruntime's own exception types
            raise CheckpointError(f"onnxruntime cannot load the model ({str(e).splitlines()[0][:200]})",
                                  str(path / MODEL)) from None
        self.session = self.sessions[0]
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="rnntext-onnx") if threads > 1 else None

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, batch_size: int = BATCH,
             calibration: bool = True) -> OnnxPredictor:
        return cls(path, threads, batch_size, calibration)

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text (an empty text: one <unk>, each cut to the token budget) and their lengths."""
        encode, budget, tokenize = self.vocab.encode, self.budget, self.tokenizer
        ids = [encode(tokenize(x)[:budget]) or [UNK_ID] for x in texts]
        return ids, np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))

    def batches(self, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Row indices sorted by length, in batches of at most `batch_size` rows and `max_batch_tokens`
        padded tokens (at least one row)."""
        order = np.argsort(lengths, kind="stable")
        ascending = lengths[order].tolist()
        out, start, n = [], 0, len(order)
        while start < n:
            # the padded size of rows start..end-1, (end - start) * ascending[end - 1], grows with end
            top = min(start + batch_size, n)
            end = bisect.bisect_right(range(start + 1, top + 1), self.budget,
                                      key=lambda e: (e - start) * ascending[e - 1]) + start
            end = max(end, start + 1)
            out.append(order[start:end])
            start = end
        return out

    def probabilities(self, texts: Sequence[str], batch_size: int | None = None, calibrated: bool = True) -> np.ndarray:
        """[len(texts), classes] float32 class probabilities, calibrated (the run's temperature) unless
        `calibrated` is False or the predictor was loaded with calibration=False."""
        texts = list(texts)
        if len(texts) > CHUNK_TEXTS:
            return np.concatenate([self.probabilities(texts[i:i + CHUNK_TEXTS], batch_size, calibrated)
                                   for i in range(0, len(texts), CHUNK_TEXTS)])
        probs = self._probabilities(texts, batch_size)
        return with_temperature(probs, self.temperature) if calibrated else probs

    def _probabilities(self, texts: list[str], batch_size: int | None) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        ids, lengths = self.encode(texts)
        batches = self.batches(lengths, batch_size or self.batch_size)

        def work(k: int) -> None:  # batches k, k + threads, ... on session k (onnxruntime releases the GIL)
            run = self.sessions[k].run
            for rows in batches[k::len(self.sessions)]:
                lens = lengths[rows]
                tokens = np.zeros((len(rows), int(lens.max())), dtype=np.int64)
                for i, r in enumerate(rows.tolist()):
                    row = ids[r]
                    tokens[i, : len(row)] = row
                out[rows] = run(None, {"tokens": tokens, "lengths": lens})[0]

        others = [self._pool.submit(work, k) for k in range(1, min(len(self.sessions), len(batches)))] \
            if self._pool is not None else []
        work(0)
        for f in others:
            f.result()
        return out

    def predict(self, texts: list[str] | str, batch_size: int | None = None,
                min_confidence: float | None = None) -> list[Prediction]:
        """As the Predictor's: `min_confidence` P, no label (None) below P."""
        if isinstance(texts, str):
            texts = [texts]
        check_min_confidence(min_confidence)
        probs = self.probabilities(texts, batch_size)
        finite = np.isfinite(probs).all(1)
        if not finite.all():
            raise RnnTextError(f"the model's class probabilities for text {int(np.argmin(finite)) + 1} "
                               "are not finite numbers")
        best = probs.argmax(1).tolist()
        answered = confident(probs.max(1).astype(np.float64).tolist(), min_confidence)
        return [Prediction(self.labels[b] if ok else None, dict(zip(self.labels, (round(p, 6) for p in row))))
                for b, ok, row in zip(best, answered, probs.astype(np.float64).tolist())]


    def explain(self, texts: list[str] | str, label: str | None = None, method: str = "ig",
                steps: int | None = None) -> list:
        raise ConfigError("explanations need the torch backend (the run directory): the ONNX model has no gradients")

    @staticmethod
    def chunks(texts: Sequence[str]) -> Iterator[Sequence[str]]:
        """`texts` in consecutive slices of CHUNK_TEXTS."""
        for i in range(0, len(texts), CHUNK_TEXTS):
            yield texts[i:i + CHUNK_TEXTS]


def load(path: str | Path, threads: int | None = None) -> OnnxPredictor:
    """An export directory ready to predict."""
    return OnnxPredictor.load(path, threads)


__all__ = ["OnnxPredictor", "Prediction", "is_export", "load", "session_options"]
