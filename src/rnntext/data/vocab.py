"""Vocabulary: distinct <pad> (0) and <unk> (1) ids, min frequency, size cap, and what a word missing from
it becomes (`unseen`, the setting data.unseen_words):

- "unk": <unk>;
- "stem": the vocabulary's most frequent word with the same English stem (the Snowball stemmer, the
  `snowballstemmer` package): "successfully" reads as "successful", "disappointing" as "disappoint"; <unk>
  where no word of the vocabulary has its stem, and for words of fewer than 4 characters and n-grams. On
  a few thousand short texts most words are rare: 63% of CR's and 42% of MPQA's held-out rows hold a
  word missing from the vocabulary, and the model was 10-14 points less accurate on those rows
  (docs/guides/own-data.md). Training reads the same way (a word seen fewer than --min-freq times takes
  its stem's word too), so the model learns from what prediction will give it."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
UNSEEN = ("unk", "stem")  # config.py's UNSEEN_WORDS (a test keeps them equal)
MIN_STEMMED = 4  # shorter words are mostly names, numbers and typos: their stems say little
# unseen words whose ids are remembered, at most (then forgotten all at once): a server or a streamed predict
# sees arbitrary ones, and memory must not grow with the rows (tests/test_formats.py); a stem takes ~17 µs
_CACHE_MAX = 4096


class Vocab:
    def __init__(self, itos: list[str], unseen: str = "unk"):
        if itos[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        if unseen not in UNSEEN:
            raise ValueError(f"unseen words: expected one of {', '.join(UNSEEN)}, got {unseen!r}")
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}
        if len(self.stoi) != len(itos):
            raise ValueError("a vocabulary has duplicate tokens")
        self.unseen = unseen
        self._stems: dict[str, int] | None = None  # stem -> id, made on first need
        self._seen: dict[str, int] = {}  # unseen word -> its id
        self._stem: Callable[[str], str] | None = None
        self._lock = threading.Lock()  # a Snowball stemmer keeps its state between calls

    def __getstate__(self) -> dict[str, object]:  # pickle and deepcopy: the words and the rule, not the lock
        return {"itos": self.itos, "unseen": self.unseen}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["itos"], state["unseen"])  # type: ignore[misc]

    def with_unseen(self, unseen: str) -> Vocab:
        """This vocabulary, reading unseen words the `unseen` way."""
        return self if unseen == self.unseen else Vocab(self.itos, unseen)

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        return cls.from_counts(counts, min_freq, max_size)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """The vocabulary of words counted `counts` times (build(); the token store counts them on disk)."""
        # Most frequent first; ties alphabetically so the vocabulary is reproducible.
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - 2)]
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: list[str]) -> list[int]:
        get = self.stoi.get
        if self.unseen == "unk":
            return [get(t, UNK_ID) for t in tokens]
        back = self.backoff
        return [i if (i := get(t)) is not None else back(t) for t in tokens]

    def lookup(self, token: str) -> int:
        """The id of one token (an unseen one as `unseen` says)."""
        i = self.stoi.get(token)
        return i if i is not None else self.backoff(token)

    def backoff(self, token: str) -> int:
        """The id an unseen `token` takes: <unk>, or with "stem" its stem's word."""
        if self.unseen == "unk" or len(token) < MIN_STEMMED or " " in token:
            return UNK_ID
        i = self._seen.get(token)
        if i is None:
            with self._lock:
                stems = self._stems if self._stems is not None else self._make_stems()
                assert self._stem is not None
                i = stems.get(self._stem(token), UNK_ID)
            if len(self._seen) >= _CACHE_MAX:
                self._seen.clear()
            self._seen[token] = i
        return i

    def ready(self) -> Vocab:
        """Make the stems of the vocabulary now (with "stem"), not at the first unseen word: about 20 µs a
        word, 0.5 s for AG News's 30k, which a server's first request would otherwise wait for."""
        if self.unseen == "stem" and self._stems is None:
            with self._lock:
                if self._stems is None:
                    self._make_stems()
        return self

    def _make_stems(self) -> dict[str, int]:
        import snowballstemmer  # here: `import rnntext` stays light, and "unk" never needs it

        self._stem = snowballstemmer.stemmer("english").stemWord
        stems: dict[str, int] = {}
        for i, w in enumerate(self.itos[2:], start=2):  # most frequent first: a stem keeps its most frequent word
            if " " not in w:
                stems.setdefault(self._stem(w), i)
        self._stems = stems
        return stems

    def to_json(self) -> str:
        return json.dumps(self.itos, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, unseen: str = "unk") -> Vocab:
        itos = json.loads(text)
        if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
            raise ValueError("vocab.json must be a list of strings")
        return cls(itos, unseen)
