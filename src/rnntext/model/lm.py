"""A language model on a recurrent classifier's own embedding and encoder (Dai & Le 2015,
"Semi-supervised Sequence Learning"; ULMFiT): what `rnntext pretrain` trains.

The encoder is a RecurrentClassifier's (its `fc` unused), run exactly as the classifier runs it: each
text from a fresh state, padding masked, the backward direction reading each text reversed within its
length. The forward direction predicts the next word from its state, the backward direction the
previous word from its own: the two directions of a bidirectional encoder are a forward and a backward
language model (as ELMo's), and their weights carry over to the classifier unchanged.

A bidirectional encoder of several layers cannot be pretrained so: its second layer reads both
directions of the first, so each direction would see the word it is to predict.

The output layer is tied to the embedding by default (Press & Wolf 2017; Inan et al. 2017): fewer
weights, and the embedding learns from both ends. Where the hidden size differs from the embedding
size, a linear projection maps one onto the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .recurrent import RecurrentClassifier

STACKED_BIDIRECTIONAL = ("a bidirectional encoder of several layers cannot be pretrained as a language model: its "
                         "second layer reads both directions of the first, so each direction would see the word it "
                         "predicts (pretrain with --num-layers 1 or --no-bidirectional)")


class RecurrentLM(nn.Module):
    def __init__(self, encoder: RecurrentClassifier, tie_weights: bool = True):
        super().__init__()
        if encoder.directions == 2 and len(encoder.layers) > 1:
            raise ValueError(STACKED_BIDIRECTIONAL)
        self.encoder = encoder
        self.tie_weights = tie_weights
        vocab, embed = encoder.embedding.weight.shape
        hidden, dirs = encoder.hidden_dim, encoder.directions
        if tie_weights:
            # the classifier's N(0, 1) embedding as output weights gives logits of ~sqrt(embed) at the start (a
            # perplexity far above the vocabulary's size, which the first epochs spend undoing): small vectors,
            # as AWD-LSTM's and ULMFiT's U(-0.1, 0.1)
            with torch.no_grad():
                encoder.embedding.weight.normal_(0.0, 0.1)
                if encoder.embedding.padding_idx is not None:
                    encoder.embedding.weight[encoder.embedding.padding_idx].zero_()
            self.proj = nn.ModuleList(nn.Linear(hidden, embed) if hidden != embed else nn.Identity()
                                      for _ in range(dirs))
            self.bias = nn.Parameter(torch.zeros(dirs, vocab))
        else:
            self.out = nn.ModuleList(nn.Linear(hidden, vocab) for _ in range(dirs))

    @classmethod
    def from_config(cls, cfg: ModelConfig, tie_weights: bool = True) -> RecurrentLM:
        return cls(RecurrentClassifier.from_config(cfg), tie_weights)

    def logits(self, direction: int, h: Tensor, words: Tensor | None = None) -> Tensor:
        """Next-word logits [N, vocab] of direction `direction`'s states h [N, hidden]; with `words` (ids),
        the logits of those words only [N, len(words)]."""
        if self.tie_weights:
            weight, bias = self.encoder.embedding.weight, self.bias[direction]
            h = self.proj[direction](h)
        else:
            weight, bias = self.out[direction].weight, self.out[direction].bias
        if words is not None:
            weight, bias = weight[words], bias[words]
        return F.linear(h, weight, bias)

    def forward(self, tokens: Tensor, lengths: Tensor, samples: int = 0) -> tuple[Tensor, int]:
        """(summed negative log-likelihood of every predicted word, their number) over a padded batch
        [B, T]: words 2..len of each text by the forward direction, words len-1..1 by the backward one.

        `samples` > 0 (training): a sampled softmax, over the batch's own target words and `samples` words
        drawn uniformly (torch's generator) instead of the whole vocabulary: the output layer's cost no longer
        grows with the vocabulary. Its loss is not the full softmax's; held-out perplexity is always measured
        with the full one (samples=0)."""
        enc = self.encoder
        outs = enc.directions_out(tokens, lengths)
        T = tokens.shape[1]
        # step t predicts the word at t + 1 of its own reading order, for the steps before a text's last word
        mask = torch.arange(T - 1, device=tokens.device)[None, :] < (lengths.to(tokens.device) - 1)[:, None]
        targets = [read[:, 1:][mask] for read in enc.reading(tokens, lengths)]
        words = None
        vocab = enc.embedding.weight.shape[0]
        if samples and samples < vocab:
            drawn = torch.randint(2, vocab, (samples,), device=tokens.device)
            words = torch.unique(torch.cat([*targets, drawn]))  # sorted
            targets = [torch.searchsorted(words, t) for t in targets]
        total, count = tokens.new_zeros((), dtype=torch.float32), 0
        for d, (out, target) in enumerate(zip(outs, targets)):
            h = enc.dropout(out[:, :-1][mask])
            total = total + F.cross_entropy(self.logits(d, h, words), target, reduction="sum")
            count += target.numel()
        return total, count
