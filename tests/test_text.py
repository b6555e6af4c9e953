"""Tokenizer (basic_english, n-grams, max_len) and vocabulary (<pad>/<unk>, min_freq, max_vocab, JSON)."""

from __future__ import annotations

import pytest

from rnntext.data.tokenizer import Tokenizer, add_ngrams, basic_english
from rnntext.data.vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab
from rnntext.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # the example from the torchtext documentation
        ("You can now install TorchText using pip!",
         ["you", "can", "now", "install", "torchtext", "using", "pip", "!"]),
        ("Hello, World. (Really?)", ["hello", ",", "world", ".", "(", "really", "?", ")"]),
        # double quotes vanish, apostrophes become their own token
        ('He said "no" and didn\'t', ["he", "said", "no", "and", "didn", "'", "t"]),
        # ; and : are dropped, <br /> is a space, runs of whitespace collapse
        ("a;b:c<br />d \t\n e", ["a", "b", "c", "d", "e"]),
        ("", []),
        ("   ", []),
        # other characters stay inside words, as in torchtext
        ("Wall St. #39;s $5-bn", ["wall", "st", ".", "#39", "s", "$5-bn"]),
    ],
)
def test_basic_english(text: str, tokens: list[str]) -> None:
    assert basic_english(text) == tokens


def test_ngrams_follow_words_like_torchtext() -> None:
    assert add_ngrams(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert add_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert add_ngrams(["a", "b", "c"], 3) == ["a", "b", "c", "a b", "b c", "a b c"]
    assert add_ngrams(["a"], 3) == ["a"]


def test_tokenizer_options() -> None:
    assert Tokenizer()("The END.") == ["the", "end", "."]
    assert Tokenizer("whitespace")("The END.") == ["The", "END."]
    assert Tokenizer(ngrams=2)("x y z") == ["x", "y", "z", "x y", "y z"]
    # max_len cuts the words first, n-grams are built from what is kept
    assert Tokenizer(ngrams=2, max_len=2)("x y z") == ["x", "y", "x y"]
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        Tokenizer("spacy")


def test_vocab_special_ids_and_unknown_words() -> None:
    vocab = Vocab.build([["b", "a", "b"], ["c", "b", "a"]])
    assert PAD_ID == 0 and UNK_ID == 1 and PAD_ID != UNK_ID
    assert vocab.itos[:2] == [PAD, UNK]
    # most frequent first, ties alphabetically
    assert vocab.itos[2:] == ["b", "a", "c"]
    assert vocab.encode(["a", "never-seen", "c"]) == [3, UNK_ID, 4]
    assert "a" in vocab and "zzz" not in vocab
    assert len(vocab) == 5


def test_vocab_min_freq_and_max_vocab() -> None:
    lists = [["x"] * 5 + ["y"] * 3 + ["z"] * 1 + ["w"] * 3]
    assert Vocab.build(lists, min_freq=3).itos == [PAD, UNK, "x", "w", "y"]
    assert Vocab.build(lists, min_freq=4).itos == [PAD, UNK, "x"]
    # max_vocab counts <pad> and <unk>
    capped = Vocab.build(lists, max_size=4)
    assert capped.itos == [PAD, UNK, "x", "w"]
    assert capped.encode(["y", "z"]) == [UNK_ID, UNK_ID]
    assert len(Vocab.build(lists, max_size=100)) == 6


def test_vocab_ignores_special_tokens_in_text() -> None:
    vocab = Vocab.build([["<pad>", "<unk>", "a"]])
    assert vocab.itos == [PAD, UNK, "a"]
    assert vocab.encode(["<pad>"]) == [PAD_ID]


def test_vocab_json_round_trip() -> None:
    vocab = Vocab.build([["héllo", "wörld", "héllo", "a b"]])
    again = Vocab.from_json(vocab.to_json())
    assert again.itos == vocab.itos
    assert again.stoi == vocab.stoi
    with pytest.raises(ValueError):
        Vocab.from_json('["a", "b"]')  # not starting with <pad>, <unk>
    with pytest.raises(ValueError):
        Vocab.from_json('{"a": 1}')
    with pytest.raises(ValueError):
        Vocab.from_json('["<pad>", "<unk>", "a", "a"]')
