"""Explanations: how much each word of a text added to (or took from) the probability of a class.

`explain(predictor, texts, label=None)` (or `Predictor.explain`) returns one `Explanation` per text:
the words as tokenised, each with its attribution to the predicted class (or to `label`).

Method: Captum's `LayerIntegratedGradients` over the model's embedding layer, the baseline being
<pad> tokens (a zero vector), the target the class's softmax probability. So attributions are in
probability units and add up, over the words, to p(class | text) - p(class | all <pad>) up to
Captum's convergence delta, reported with each explanation. `method="occlusion"` instead replaces
one token at a time by <pad> (Captum's `FeatureAblation`) and reports the drop in probability.

Any model family works, and a layer that calls its embedding more than once (a bidirectional
recurrent model reads the reversed text through it again) or pools inside it (the bag model's
`nn.EmbeddingBag`): the model runs on a copy whose embedding reads from a table with one row per
(text, position), filled from the attributed layer's output. Whichever way the model permutes or
pools its tokens, each position's gradient reaches that position's row. Padding gets no
attribution (the rows past a text's length are never read, and the baseline equals the input
there), so a text explained in a batch with longer ones gets the attributions it gets alone.

With `data.ngrams` > 1 the model also sees n-gram tokens: each n-gram's attribution is shared out
equally among its words (the total stays the same), and the n-grams' own attributions are kept in
`Explanation.ngrams`. An ensemble's explanation is the mean of its runs' attributions, each run
over its own vocabulary and n-grams; the runs must split a text into the same words (the same
tokenizer and max_len), or a ConfigError says so. A members run (`--members K`, model/members.py)
is explained by the same rule: the mean of its members' attributions, each member explained alone
(its own word table), toward the class the run predicts; in an ensemble such a run weighs as one
run, as its probabilities do."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.tokenizer import Tokenizer, add_ngrams
from ..data.vocab import PAD_ID, UNK_ID
from ..errors import ConfigError
from ..model.base import TextClassifier
from ..model.members import MembersClassifier
from ..model.wide import WideClassifier, WidePart, join

# The predictor imports this module; explain() receives a Predictor without importing it back.
Predictor = Any  # rnntext.inference.predictor.Predictor

METHODS = ("ig", "occlusion")
DEFAULT_STEPS = 32  # integration steps (Gauss-Legendre): median convergence delta 0.003 on AG News
# A text whose |delta| is past this is integrated again with REFINE x the steps (a saturated model's probability
# can turn sharply along the path, between the steps): 32 steps leave 10% of AG News texts above 0.17.
DELTA_TOL = 0.02
REFINE = 4
CHUNK_TOKENS = 1024  # texts explained together: rows x longest text (larger is no faster)
# rows x longest text x (integration steps or occlusions) per model call (memory: a recurrent model keeps every step)
CALL_TOKENS = 64 * 1024


@dataclass
class Explanation:
    label: str  # the class explained: the predicted one unless asked for another
    predicted: str
    probabilities: dict[str, float]
    tokens: list[str]  # the text's words, as tokenised
    attributions: list[float]  # one per word: its contribution to the probability of `label`
    delta: float | None  # integrated gradients' convergence delta (sum of attributions - change of probability)
    method: str = "ig"
    ngrams: list[tuple[str, float]] = field(default_factory=list)  # n-gram tokens and their own attributions

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label, "predicted": self.predicted, "probabilities": self.probabilities,
            "method": self.method, "delta": None if self.delta is None else round(self.delta, 6),
            "attributions": [{"token": t, "attribution": round(a, 6)} for t, a in zip(self.tokens, self.attributions)],
        }
        if self.ngrams:
            out["ngrams"] = [{"token": t, "attribution": round(a, 6)} for t, a in self.ngrams]
        return out


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as e:
        raise ConfigError(f"explanations need Captum: pip install 'rnntext[explain]' ({e})") from None
    return captum.attr


class _TableEmbedding(nn.Module):
    """Stands in for a model's embedding: looks ids up in `table` (one row per text position),
    as the original module would (nn.Embedding, or nn.EmbeddingBag with its mode and padding)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.bag = isinstance(original, nn.EmbeddingBag)
        self.mode = getattr(original, "mode", "mean")
        self.padding_idx = original.padding_idx
        self.table: Tensor | None = None

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        assert self.table is not None
        if self.bag:
            return F.embedding_bag(input, self.table, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
                                   padding_idx=self.padding_idx)
        return F.embedding(input, self.table, self.padding_idx)


class _TokenVectors(nn.Module):
    """The model's embedding layer, applied to each token on its own: [N, T] ids -> [N, T, embed].
    The layer Captum attributes to (its output is replaced along the integration path). A wide model
    (model/wide.py): each position's wide n-gram vectors too, after the word vector."""

    def __init__(self, embedding: nn.Module, wide: WidePart | None = None):
        super().__init__()
        self.embedding = embedding
        self.wide = wide

    def forward(self, ids: Tensor) -> Tensor:
        if isinstance(self.embedding, nn.EmbeddingBag):  # one bag per token: its own vector
            words = self.embedding(ids.reshape(-1, 1)).view(*ids.shape, -1)
        else:
            words = self.embedding(ids)
        if self.wide is None:
            return words
        return torch.cat([words, self.wide.position_vectors(ids).to(words.dtype)], dim=2)


class _PositionModel(nn.Module):
    """f(ids [N, T], lengths [N]) -> class probabilities [N, classes], the model run on its token
    vectors through a per-position table. The original model is not modified (its copy shares the
    weights), so predictions may go on beside it."""

    def __init__(self, model: TextClassifier, multi_label: bool = False):
        super().__init__()
        if isinstance(model, MembersClassifier):  # each member reads its own word table: no one layer to attribute
            raise ValueError("a members model is explained member by member (model.each()); explain() averages them")
        self.multi_label = multi_label  # each label's sigmoid (training/multilabel.py), not the softmax
        # a wide model: its deep part runs on the word vectors as any model does, its wide part on the
        # positions' n-gram vectors (both attributed: each n-gram's share goes to each of its words)
        self.wide = model if isinstance(model, WideClassifier) else None
        model = model.deep if isinstance(model, WideClassifier) else model
        self.flat = model.batch_layout == "flat"
        self.vectors = _TokenVectors(model.embedding, self.wide.wide if self.wide is not None else None)
        self.lookup = _TableEmbedding(model.embedding)
        clone = copy.copy(model)
        clone.__dict__["_modules"] = dict(model._modules)
        clone._modules["embedding"] = self.lookup
        self.__dict__["clone"] = clone  # not a submodule: its weights are the model's
        pad = model.embedding.padding_idx
        self.first = max(PAD_ID, pad if pad is not None else 0) + 1  # table rows kept from the word table
        self.weight = model.embedding.weight

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        vectors = self.vectors(ids)  # [N, T, E] (a wide model: [N, T, E + wide dim])
        wide_vectors = None
        if self.wide is not None:
            vectors, wide_vectors = vectors.split([self.weight.shape[1], self.wide.wide.table.embedding_dim], dim=2)
        N, T, E = vectors.shape
        self.lookup.table = torch.cat([self.weight[: self.first].detach().to(vectors.dtype), vectors.reshape(N * T, E)])
        positions = torch.arange(self.first, self.first + N * T, device=ids.device).view(N, T)
        real = torch.arange(T, device=ids.device)[None, :] < lengths[:, None]
        positions = positions.masked_fill(~real, PAD_ID)
        try:
            if self.flat:
                offsets = torch.zeros_like(lengths)
                offsets[1:] = torch.cumsum(lengths, 0)[:-1]
                logits = self.clone(positions[real], lengths, offsets)
            else:
                logits = self.clone(positions, lengths)
        finally:
            self.lookup.table = None
        if self.wide is not None and wide_vectors is not None:
            logits = join(logits, self.wide.wide.from_position_vectors(wide_vectors, lengths), self.wide.join)
        return logits.float().sigmoid() if self.multi_label else logits.float().softmax(-1)


def _pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(device), torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)


def attribute(model: TextClassifier, rows: Sequence[Sequence[int]], targets: Sequence[int], device: torch.device,
              method: str = "ig", steps: int = DEFAULT_STEPS, multi_label: bool = False
              ) -> tuple[list[list[float]], list[float | None]]:
    """Attributions of each token of each row (token ids, unpadded) to the probability of its target
    class (`multi_label`: its label's sigmoid probability), and the convergence delta of each (None for
    occlusion)."""
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    attr = _captum()
    model.eval()
    f = _PositionModel(model, multi_label)
    out: list[list[float]] = [[] for _ in rows]
    deltas: list[float | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    start = 0
    with torch.enable_grad():
        while start < len(order):  # texts of similar lengths together, rows x longest text bounded
            end = start + 1
            while end < len(order) and (end - start + 1) * len(rows[order[end]]) <= CHUNK_TOKENS:
                end += 1
            chunk = order[start:end]
            start = end
            ids, lengths = _pad([rows[i] for i in chunk], device)
            per_call = max(1, CALL_TOKENS // ids.numel())  # integration steps or occlusions per model call
            target = torch.tensor([targets[i] for i in chunk], device=device)
            if method == "ig":
                scores, delta = _integrate(attr, f, ids, lengths, target, steps, per_call)
                rough = (delta.abs() > DELTA_TOL).nonzero().flatten()
                if len(rough):  # those again, with more steps; the smaller delta is kept
                    more, more_delta = _integrate(attr, f, ids[rough], lengths[rough], target[rough], steps * REFINE,
                                                  per_call)
                    better = more_delta.abs() < delta[rough].abs()
                    scores[rough[better]] = more[better]
                    delta[rough[better]] = more_delta[better]
                for k, i in enumerate(chunk):
                    deltas[i] = float(delta[k])
            else:
                ablation = attr.FeatureAblation(f)
                mask = torch.arange(ids.shape[1], device=device).expand_as(ids)
                scores = ablation.attribute(ids, baselines=PAD_ID, target=target, additional_forward_args=(lengths,),
                                            feature_mask=mask, perturbations_per_eval=min(ids.shape[1], per_call))
            scores = scores.detach().float().cpu()
            for k, i in enumerate(chunk):
                out[i] = scores[k, : len(rows[i])].tolist()
    return out, deltas


def _integrate(attr: Any, f: _PositionModel, ids: Tensor, lengths: Tensor, target: Tensor, steps: int,
               per_call: int) -> tuple[Tensor, Tensor]:
    """Integrated gradients of each token (summed over the embedding) and the convergence delta of each row."""
    lig = attr.LayerIntegratedGradients(f, f.vectors)
    a, delta = lig.attribute(ids, baselines=torch.full_like(ids, PAD_ID), target=target,
                             additional_forward_args=(lengths,), n_steps=steps,
                             internal_batch_size=ids.shape[0] * max(1, min(steps, per_call)),
                             return_convergence_delta=True)
    return a.sum(-1).detach(), delta.detach()


def _words_and_ngrams(words: list[str], n: int, scores: list[float]) -> tuple[list[float], list[tuple[str, float]]]:
    """Per word: its own attribution plus an equal share of each n-gram's it is part of."""
    scores = list(scores) + [0.0] * (len(words) * n - len(scores))  # tokens past the run's budget: none
    per_word = scores[: len(words)]
    ngrams: list[tuple[str, float]] = []
    pos = len(words)
    for k in range(2, n + 1):
        for i in range(len(words) - k + 1):
            s = scores[pos]
            pos += 1
            ngrams.append((" ".join(words[i : i + k]), s))
            for j in range(i, i + k):
                per_word[j] += s / k
    return per_word, ngrams


def _budget(run: Any) -> int | None:
    """The tokens of one text a run reads (train.max_batch_tokens, where the run has that setting), as
    Predictor.probabilities cuts them."""
    return getattr(run.config.train, "max_batch_tokens", None)


def _word_split(run: Any) -> tuple[str, int | None]:
    """How a run splits a text into words: its tokenizer, and how many words it keeps."""
    t, budget = run.tokenizer, _budget(run)
    return t.name, (t.max_len if budget is None else min(t.max_len or budget, budget))


def _explained_models(runs: Sequence[Any]) -> list[tuple[Any, TextClassifier, float]]:
    """(run, model, weight) for each model explained on its own, the weights those of the ensemble's mean:
    each run 1/len(runs), shared equally among a members run's members (model/members.py), as the
    predictor's probabilities average the runs and a members model averages its members."""
    out = []
    for run in runs:
        models = run.model.each() if isinstance(run.model, MembersClassifier) else [run.model]
        out.extend((run, m, 1 / (len(runs) * len(models))) for m in models)
    return out


def explain(predictor: Predictor, texts: Sequence[str] | str, label: str | None = None, method: str = "ig",
            steps: int = DEFAULT_STEPS) -> list[Explanation]:
    """One Explanation per text: each word's attribution to the probability of `label` (default:
    the predicted class). For an ensemble, the mean of its runs' attributions; for a members run, the mean
    of its members'."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    labels = list(predictor.labels)
    if label is not None and label not in labels:
        raise ConfigError(f"unknown label {label!r}; the model's labels are {', '.join(labels)}")
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not texts:
        return []
    _captum()  # a missing Captum is said before any work
    splits = {_word_split(r) for r in predictor.runs}
    if len(splits) > 1:
        raise ConfigError("cannot explain this ensemble: its members split texts into words differently ("
                          + "; ".join(f"tokenizer {n}, max_len {m}" for n, m in sorted(splits, key=str))
                          + "); explain each run on its own")
    name, max_len = next(iter(splits))
    words = [Tokenizer(name, 1, max_len)(t) for t in texts]
    probs = predictor.probabilities(texts)
    predicted = probs.argmax(1).tolist()
    targets = predicted if label is None else [labels.index(label)] * len(texts)
    total = [[0.0] * len(w) for w in words]
    ngram_totals: list[dict[str, float]] = [{} for _ in texts]
    delta_sum = [0.0] * len(texts)
    for run, model, weight in _explained_models(predictor.runs):
        n = run.tokenizer.ngrams
        budget = _budget(run)
        rows = [(run.vocab.encode(add_ngrams(w, n) if n > 1 else w) or [UNK_ID])[:budget] for w in words]
        scores, deltas = attribute(model, rows, targets, predictor.device, method, steps,
                                   getattr(predictor, "multi_label", False))
        for i, w in enumerate(words):
            if not w:  # an empty text: the model read one <unk>, which is no word of it
                continue
            per_word, ngrams = _words_and_ngrams(w, n, scores[i])
            total[i] = [a + weight * b for a, b in zip(total[i], per_word)]
            for g, s in ngrams:
                ngram_totals[i][g] = ngram_totals[i].get(g, 0.0) + weight * s
            delta_sum[i] += weight * (deltas[i] or 0.0)
    out = []
    for i in range(len(texts)):
        out.append(Explanation(
            label=labels[targets[i]], predicted=labels[predicted[i]],
            probabilities={k: round(p, 6) for k, p in zip(labels, probs[i].tolist())},
            tokens=words[i], attributions=total[i],
            delta=delta_sum[i] if method == "ig" else None, method=method,
            ngrams=list(ngram_totals[i].items())))
    return out


__all__ = ["DEFAULT_STEPS", "METHODS", "Explanation", "attribute", "explain"]
