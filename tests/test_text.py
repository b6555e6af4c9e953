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


def test_unseen_words_read_as_the_most_frequent_word_of_their_stem() -> None:
    counts = [["success"] * 3 + ["successful"] * 2 + ["happy", "run", "disappoint", "good"]]
    unk = Vocab.build(counts)
    stem = unk.with_unseen("stem")
    ids = stem.stoi
    assert unk.unseen == "unk" and stem.unseen == "stem" and stem.itos == unk.itos
    # "successfully" and "successes" share their stem with "success" and "successful": the more frequent wins
    assert stem.encode(["successfully", "successes", "disappointing", "runs"]) == [
        ids["success"], ids["success"], ids["disappoint"], ids["run"]]
    # no word of that stem; shorter than 4 characters; an n-gram (--ngrams): <unk>, as without
    assert stem.encode(["unhappy", "ran", "goods good"]) == [UNK_ID, UNK_ID, UNK_ID]
    # words of the vocabulary, <pad> and <unk> read as themselves
    assert stem.encode(["good", "<pad>", "<unk>"]) == [ids["good"], PAD_ID, UNK_ID]
    assert [stem.lookup(t) for t in ["successfully", "good", "zzzz"]] == [ids["success"], ids["good"], UNK_ID]
    fresh = Vocab(unk.itos, "stem").ready()  # the stems made before the first unseen word, as a server does
    assert fresh._stems is not None and fresh.encode(["successfully"]) == [ids["success"]]
    assert Vocab(unk.itos).ready()._stems is None  # "unk" never needs them
    # "unk": every unseen word is <unk>
    assert unk.encode(["successfully", "disappointing", "good"]) == [UNK_ID, UNK_ID, ids["good"]]
    assert Vocab.from_json(unk.to_json(), "stem").encode(["runs"]) == [ids["run"]]
    with pytest.raises(ValueError, match="unseen words"):
        Vocab(unk.itos, "lemma")
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(stem)), copy.deepcopy(stem)):  # a Predictor's vocabulary can be copied
        assert again.unseen == "stem" and again.encode(["successfully", "runs"]) == [ids["success"], ids["run"]]


def test_unseen_words_in_training_take_their_stems_word(tmp_path) -> None:
    """A word seen fewer than --min-freq times in training is read the way prediction reads it."""
    from rnntext.config import DataConfig
    from rnntext.data.dataset import prepare

    rows = ["label,text"] + [f"{i % 2},the movie was great" for i in range(6)] + ["1,greatly moving"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    read = {}
    for unseen in ("unk", "stem"):
        cfg = DataConfig(train=str(tmp_path / "train.csv"), valid_split=0.0, unseen_words=unseen)
        p = prepare(cfg, progress=False)
        read[unseen] = p.train.tokens[int(p.train.offsets[-2]): int(p.train.offsets[-1])].tolist()
        great = p.vocab.stoi["great"]
    assert read["unk"] == [UNK_ID, UNK_ID] and read["stem"] == [great, UNK_ID]  # "moving": no word of its stem


def test_a_run_saved_before_unseen_words_reads_them_as_unk(trained_run, tmp_path) -> None:
    import json
    import shutil

    from rnntext.inference.predictor import Predictor

    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    cfg = json.loads((old / "config.json").read_text())
    assert cfg["data"]["unseen_words"] == "stem"  # today's default, saved with the run
    del cfg["data"]["unseen_words"]
    (old / "config.json").write_text(json.dumps(cfg))
    now, then = Predictor.load(trained_run, "cpu"), Predictor.load(old, "cpu")
    assert now.run.vocab.unseen == "stem" and then.run.vocab.unseen == "unk"
    seen, unseen = "oil prices rose", "oilers' pricings rose"
    assert now.probabilities([seen]).tolist() == then.probabilities([seen]).tolist()
    assert now.probabilities([unseen]).tolist() != then.probabilities([unseen]).tolist()
