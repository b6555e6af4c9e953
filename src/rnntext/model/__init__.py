"""Models: the recurrent classifier and the EmbeddingBag baseline."""

from .recurrent import BagClassifier, RecurrentClassifier, build_model, uses_flat_batches

__all__ = ["BagClassifier", "RecurrentClassifier", "build_model", "uses_flat_batches"]
