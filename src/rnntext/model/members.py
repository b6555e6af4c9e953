"""Members (`--members K`): K models of one configuration trained side by side in one run, predicting together.

An ensemble of independently initialised networks is the surest way to more accuracy on small data: each
member fits the few examples its own way, and their average errs less than any one of them. `--ensemble N`
trains N whole runs one after another; members do it inside one run, so the run directory, resume,
calibration, evaluate, predict, explain, the server and ONNX export see one model.

- Training: the members read the same batches, each from its own random start and with its own dropout
  masks, and each is trained on its own loss: forward returns [B, K, C] logits in training mode, the
  trainer back-propagates the sum of the members' losses and clips each member's gradient on its own
  (clip_groups), so each member takes the steps it would take alone (tests/test_members.py). Training
  the average's loss instead makes members lean on each other (Jeffares et al. 2023, "Joint training of
  deep ensembles fails due to learner collusion").
- Prediction: the mean of the members' logits, [B, C] (its softmax is the normalised geometric mean of
  the members' class probabilities); an exported graph averages the members' logits the same way
  (inference/export.py).

Member 0 is built from the random draws a single model would take, so `--members 1` is the plain model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import TextClassifier


class MembersClassifier(TextClassifier):
    """K models (`members`) of one family and size; the word table of member 0 stands for the model's."""

    def __init__(self, members: list[TextClassifier]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"members need at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.num_classes = first.num_classes
        self.batch_layout = first.batch_layout  # type: ignore[misc]
        self.name = first.name  # type: ignore[misc]

    @property  # type: ignore[override]
    def embedding(self) -> nn.Embedding | nn.EmbeddingBag:  # type: ignore[override]
        return self.members[0].embedding  # type: ignore[return-value]

    def each(self) -> list[TextClassifier]:
        return list(self.members)  # type: ignore[arg-type]

    def tables(self) -> list[nn.Module]:
        return [t for m in self.each() for t in m.tables()]

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        logits = [m(tokens, lengths, offsets) for m in self.each()]
        if self.training:  # each member's own logits: the trainer trains each on its own loss
            return torch.stack(logits, dim=1)
        return combine(logits)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        return [q for m in self.each() for q in m.clip_groups()]

    def packs_on(self, device: torch.device) -> bool:
        return self.members[0].packs_on(device)  # type: ignore[operator]

    def prediction_batch(self, device: torch.device) -> int:
        return self.members[0].prediction_batch(device)  # type: ignore[operator]

    def load_embeddings(self, weight: Tensor, freeze: bool) -> None:
        for m in self.each():
            m.load_embeddings(weight, freeze)

    def encoder_state(self) -> dict[str, Tensor]:
        return self.members[0].encoder_state()  # type: ignore[operator]

    def load_encoder(self, state: dict[str, Tensor]) -> None:
        """Every member starts from the pretrained encoder (their output layers differ)."""
        for m in self.each():
            m.load_encoder(state)


def combine(logits: list[Tensor]) -> Tensor:
    """The members' joint logits: the mean of theirs."""
    return torch.stack(logits, dim=0).mean(0)
