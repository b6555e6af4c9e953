"""Tokenisation: `basic_english` as in the classic torchtext tutorial (lowercase, punctuation
split off), plus optional n-grams appended after the words."""

from __future__ import annotations

from collections.abc import Callable


def basic_english(text: str) -> list[str]:
    """torchtext's basic_english: lowercase; drop double quotes and <br />; put spaces around
    ' . , ( ) ! ?; ; and : become spaces; split on whitespace. Its twelve regular expressions, in
    their order, as literal replacements (faster than the regexes, benchmarks/predict.py; tests compare the two)."""
    text = text.lower().replace('"', "").replace("'", " '  ").replace(".", " . ").replace("<br />", " ")
    for c in ",()!?":
        if c in text:
            text = text.replace(c, f" {c} ")
    return text.replace(";", " ").replace(":", " ").split()


def whitespace(text: str) -> list[str]:
    return text.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "basic_english": basic_english,
    "whitespace": whitespace,
}


def add_ngrams(tokens: list[str], n: int) -> list[str]:
    """Words followed by all 2..n-grams (joined by a space), as torchtext's ngrams_iterator."""
    out = list(tokens)
    for k in range(2, n + 1):
        out.extend(" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
    return out


class Tokenizer:
    def __init__(self, name: str = "basic_english", ngrams: int = 1, max_len: int | None = None):
        if name not in TOKENIZERS:
            from ..errors import ConfigError

            raise ConfigError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
        self.name = name
        self.ngrams = ngrams
        self.max_len = max_len
        self._split = TOKENIZERS[name]

    def __call__(self, text: str) -> list[str]:
        tokens = self._split(text)
        if self.max_len is not None:
            tokens = tokens[: self.max_len]
        if self.ngrams > 1:
            tokens = add_ngrams(tokens, self.ngrams)
        return tokens
