"""Pretrained word vectors: every file format, coverage, errors, frozen vs tuned training,
reloading without the vector file, and `rnntext vectors`."""

from __future__ import annotations

import gzip
import json
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rnntext
from rnntext import train
from rnntext.cli import main
from rnntext.config import DataConfig
from rnntext.data import prepare
from rnntext.data.tokenizer import basic_english
from rnntext.data.vectors import (
    GLOVE,
    WORD2VEC,
    WORD2VEC_BINARY,
    coverage,
    embedding_matrix,
    extend_vocab,
    inspect_vectors,
    load_vectors,
)
from rnntext.data.vocab import Vocab
from rnntext.errors import ConfigError, DataError

DIM = 6
RNG = np.random.default_rng(0)
WORDS = ["the", "cat", "sat", "on", "mat", "Dog", "paris", "é"]
VECS = {w: RNG.normal(0, 0.5, DIM).astype(np.float32) for w in WORDS}


def _line(word: str, vec: np.ndarray, trailing: str = "") -> str:
    return word + " " + " ".join(f"{x:.9g}" for x in vec) + trailing + "\n"


def write_glove(path: Path, items: dict[str, np.ndarray] = VECS) -> Path:
    text = "".join(_line(w, v) for w, v in items.items())
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_w2v_text(path: Path, items: dict[str, np.ndarray] = VECS, trailing: str = "") -> Path:
    dim = len(next(iter(items.values())))
    path.write_text(f"{len(items)} {dim}\n" + "".join(_line(w, v, trailing) for w, v in items.items()),
                    encoding="utf-8")
    return path


def write_w2v_binary(path: Path, items: dict[str, np.ndarray] = VECS, newline: bool = True) -> Path:
    dim = len(next(iter(items.values())))
    out = bytearray(f"{len(items)} {dim}\n".encode())
    for w, v in items.items():
        out += w.encode("utf-8") + b" " + struct.pack(f"<{dim}f", *v) + (b"\n" if newline else b"")
    data = bytes(out)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_zip(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, src in members.items():
            z.write(src, name)
    return path


# --- formats -------------------------------------------------------------------------------


def _make(kind: str, tmp: Path) -> tuple[Path, str]:
    if kind == "glove":
        return write_glove(tmp / "g.txt"), GLOVE
    if kind == "glove-gz":
        return write_glove(tmp / "g.txt.gz"), GLOVE
    if kind == "glove-zip":
        return write_zip(tmp / "g.zip", {"glove.6d.txt": write_glove(tmp / "inner.txt")}), GLOVE
    if kind == "glove-zip-member":
        write_zip(tmp / "g.zip", {"a.txt": write_glove(tmp / "inner.txt"), "readme.md": tmp / "inner.txt"})
        return tmp / "g.zip" / "a.txt", GLOVE
    if kind == "word2vec-text":
        return write_w2v_text(tmp / "w.txt"), WORD2VEC
    if kind == "fasttext-vec":  # fastText writes a space before each newline
        return write_w2v_text(tmp / "f.vec", trailing=" "), WORD2VEC
    if kind == "crlf":
        return write_w2v_text(tmp / "f.vec", trailing="\r"), WORD2VEC
    if kind == "word2vec-bin":
        return write_w2v_binary(tmp / "w.bin"), WORD2VEC_BINARY
    if kind == "word2vec-bin-no-newline":
        return write_w2v_binary(tmp / "w.bin", newline=False), WORD2VEC_BINARY
    if kind == "word2vec-bin-gz":
        return write_w2v_binary(tmp / "w.bin.gz"), WORD2VEC_BINARY
    raise AssertionError(kind)


KINDS = ["glove", "glove-gz", "glove-zip", "glove-zip-member", "word2vec-text", "fasttext-vec", "crlf",
         "word2vec-bin", "word2vec-bin-no-newline", "word2vec-bin-gz"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_the_vectors_of_the_vocabulary(tmp_path: Path, kind: str) -> None:
    path, fmt = _make(kind, tmp_path)
    info = inspect_vectors(path)
    assert (info.format, info.dim) == (fmt, DIM)
    words = ["<pad>", "<unk>", "cat", "é", "mat", "missing", "the"]
    lk = load_vectors(path, words, lowercase=False)
    assert lk.found.tolist() == [False, False, True, True, True, False, True]
    assert lk.scanned == len(VECS)
    for i, w in enumerate(words):
        if lk.found[i]:
            np.testing.assert_allclose(lk.matrix[i], VECS[w], rtol=1e-6)
        else:
            assert not lk.matrix[i].any()


def test_short_text_lines_are_not_taken_for_binary(tmp_path: Path) -> None:
    path = tmp_path / "tiny.vec"
    path.write_text("3 2\na 1 2\nb 3 4\nc 5 6\n")
    lk = load_vectors(path, ["<pad>", "<unk>", "c", "a"])
    assert lk.info.format == WORD2VEC
    assert lk.matrix[2:].tolist() == [[5.0, 6.0], [1.0, 2.0]]


def test_coverage_is_exact_on_a_tiny_example(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "g.txt")
    vocab = Vocab(["<pad>", "<unk>", "the", "cat", "dog", "mat", "zebra"])
    # training tokens: the x3, cat x2, dog x1, mat x2, zebra x1, <unk> x2 -> 12 tokens
    ids = np.array([2, 2, 2, 3, 3, 4, 5, 5, 6, 1, 1])
    ids = np.append(ids, 2)  # one more "the"
    lk = load_vectors(path, vocab.itos)  # "dog" only through the lowercase fallback ("Dog")
    cov = coverage(lk, ids)
    assert (cov["vocab_words"], cov["vocab_found"], cov["exact"], cov["lowercase"]) == (5, 4, 3, 1)
    assert cov["vocab_coverage"] == pytest.approx(4 / 5)
    the, cat, dog, mat = 4, 2, 1, 2
    assert (cov["train_tokens"], cov["train_tokens_found"]) == (12, the + cat + dog + mat)
    assert cov["token_coverage"] == pytest.approx(9 / 12)
    np.testing.assert_array_equal(lk.matrix[4], VECS["Dog"])

    cov = coverage(load_vectors(path, vocab.itos, lowercase=False), ids)
    assert (cov["vocab_found"], cov["lowercase"], cov["train_tokens_found"]) == (3, 0, 8)


def test_lowercase_fallback_prefers_an_exact_match_then_the_first_in_the_file(tmp_path: Path) -> None:
    a, b, c = (np.full(3, x, dtype=np.float32) for x in (1.0, 2.0, 3.0))
    path = write_glove(tmp_path / "g.txt", {"Apple": a, "APPLE": b, "apple": c, "paris": a})
    lk = load_vectors(path, ["<pad>", "<unk>", "apple", "aPPle", "Paris"])
    np.testing.assert_array_equal(lk.matrix[2], c)  # exact beats the earlier "Apple"
    np.testing.assert_array_equal(lk.matrix[3], a)  # first case variant in file order
    np.testing.assert_array_equal(lk.matrix[4], a)  # a cased vocabulary finds a lowercase file's word
    assert (lk.exact, lk.lowercase) == (1, 2)


def test_words_containing_spaces_as_in_glove_840b(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text(_line("the", VECS["the"]) + _line(". . .", VECS["cat"]) + _line("on", VECS["on"]))
    lk = load_vectors(path, ["<pad>", "<unk>", ". . .", "on"])
    assert lk.found.tolist() == [False, False, True, True]
    np.testing.assert_allclose(lk.matrix[2], VECS["cat"], rtol=1e-6)


def test_embedding_matrix_pads_with_zero_and_draws_missing_words_at_the_vectors_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    items = {f"w{i}": rng.normal(0, 2.0, 20).astype(np.float32) for i in range(300)}
    path = write_glove(tmp_path / "g.txt", items)
    words = ["<pad>", "<unk>", *items, *(f"new{i}" for i in range(300))]
    lk = load_vectors(path, words)
    m = embedding_matrix(lk, seed=0)
    assert not m[0].any()
    np.testing.assert_allclose(m[2:302], lk.matrix[2:302])
    assert np.std(m[302:]) == pytest.approx(np.std(lk.matrix[2:302]), rel=0.1)
    assert np.std(m[302:]) > 1.5  # the file's scale (std 2), not a fixed small init
    np.testing.assert_array_equal(m, embedding_matrix(lk, seed=0))  # reproducible


# --- errors ----------------------------------------------------------------------------------


def test_not_a_vector_file(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\nhello world,1\n")
    with pytest.raises(DataError, match=r"data\.csv:1: not a word-vector file"):
        load_vectors(csv, ["hello"])
    png = tmp_path / "img.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"img\.png:1: not a word-vector file"):
        inspect_vectors(png)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.txt: empty file"):
        load_vectors(empty, ["x"])
    with pytest.raises(DataError, match="no such file"):
        load_vectors(tmp_path / "nope.txt", ["x"])


def test_mixed_dimensions_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text(_line("the", VECS["the"]) + _line("cat", VECS["cat"]) + "sat 0.1 0.2 0.3\n"
                    + _line("on", VECS["on"]))
    with pytest.raises(DataError, match=rf"g\.txt:3: mixed dimensions: this line has 3 numbers, .* have {DIM}"):
        load_vectors(path, ["the"])  # "sat" is not even wanted: every line is checked
    w2v = tmp_path / "w.vec"
    w2v.write_text(f"2 {DIM}\n" + _line("the", VECS["the"]) + "cat " + " ".join(["0.5"] * (DIM + 2)) + "\n")
    with pytest.raises(DataError, match=r"w\.vec:3: mixed dimensions"):
        load_vectors(w2v, ["the"])


def test_truncated_files_name_file_and_line(tmp_path: Path) -> None:
    full = "".join(_line(w, v) for w, v in VECS.items())
    glove = tmp_path / "g.txt"
    glove.write_text(full[: len(full) - 20])  # cut inside the last line
    with pytest.raises(DataError, match=rf"g\.txt:{len(VECS)}: truncated file: the last line has"):
        load_vectors(glove, ["the"])
    w2v = tmp_path / "w.vec"
    w2v.write_text(f"{len(VECS) + 5} {DIM}\n" + full)
    with pytest.raises(DataError, match=rf"w\.vec:{len(VECS) + 1}: the header \(line 1\) announces "
                                        rf"{len(VECS) + 5} vectors, the file ends after {len(VECS)}"):
        load_vectors(w2v, ["the"])
    binary = write_w2v_binary(tmp_path / "w.bin")
    binary.write_bytes(binary.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"w\.bin: truncated file: it ends inside record {len(VECS)} of the "
                                        rf"{len(VECS)}"):
        load_vectors(binary, ["the"])
    gz = tmp_path / "g.txt.gz"
    gz.write_bytes(gzip.compress(full.encode())[:-30])
    with pytest.raises(DataError, match=r"g\.txt\.gz: corrupt or truncated compressed file"):
        load_vectors(gz, ["the"])


def test_a_zip_with_several_files_asks_for_a_member(tmp_path: Path) -> None:
    inner = write_glove(tmp_path / "inner.txt")
    z = write_zip(tmp_path / "glove.6B.zip", {"glove.6B.50d.txt": inner, "glove.6B.100d.txt": inner})
    with pytest.raises(DataError, match=r"holds 2 files .* name one as .*glove\.6B\.zip/MEMBER"):
        load_vectors(z, ["the"])
    with pytest.raises(DataError, match="no member 'x.txt'"):
        load_vectors(z / "x.txt", ["the"])
    assert load_vectors(z / "glove.6B.50d.txt", ["the"]).found.all()


# --- vocabulary from the vectors ----------------------------------------------------------------


def test_extend_vocab_adds_the_files_first_words_in_order_with_caps(tmp_path: Path) -> None:
    items = {w: VECS["the"] for w in ["the", "Paris", "U.S.", "zebra", "paris", "yak", "gnu"]}
    path = write_glove(tmp_path / "g.txt", items)
    base = Vocab(["<pad>", "<unk>", "the", "cat"])
    v = extend_vocab(base, path, top=6, split=basic_english)
    # "Paris" enters as the token the tokenizer makes of it; "U.S." would be split: left out
    assert v.itos == ["<pad>", "<unk>", "the", "cat", "paris", "zebra", "yak"]
    assert extend_vocab(base, path, top=100, max_size=6, split=basic_english).itos[4:] == ["paris", "zebra"]
    assert extend_vocab(base, path, top=2).itos[4:] == ["Paris"]  # without a tokenizer: as in the file


# --- training ------------------------------------------------------------------------------------

POS = ["good", "great", "fine", "happy", "nice"]
NEG = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "movie", "was", "really", "a", "day", "and"]


def _texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + rng.sample(POS if label else NEG, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), "pos" if label else "neg"))
    return rows


@pytest.fixture
def small_task(tmp_path: Path, write_data) -> tuple[Path, Path, Path]:
    train_csv = write_data("train.csv", ["text", "label"], _texts(300, 0))
    test_csv = write_data("test.csv", ["text", "label"], _texts(60, 1))
    rng = np.random.default_rng(3)
    # 12-d vectors for most words, one cased ("Happy"), plus words the training data lacks
    items = {w: rng.normal(0, 0.3, 12).astype(np.float32) for w in [*FILLER, *POS[:3], "Happy", *NEG[:4], "superb"]}
    vec = write_w2v_text(tmp_path / "v.vec", items, trailing=" ")
    return train_csv, test_csv, vec


def _cfg(tiny_config, train_csv: Path, test_csv: Path, **kw):
    cfg = tiny_config(data__train=str(train_csv), data__test=str(test_csv), train__epochs=1, train__batch_size=16,
                      **kw)
    return cfg


@pytest.mark.parametrize("model", ["gru", "bag"])
@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_embeddings_stay_fixed_and_tuned_ones_move(small_task, tiny_config, tmp_path: Path,
                                                          freeze: bool, model: str) -> None:
    train_csv, test_csv, vec = small_task
    cfg = _cfg(tiny_config, train_csv, test_csv, data__embeddings=str(vec), model__freeze_embeddings=freeze,
               model__model=model)
    assert cfg.model.embed_dim == 32
    out = tmp_path / "run"
    result = train(cfg, str(out), progress=False, log=lambda s: None)
    assert result.config.model.embed_dim == 12  # from the file
    vocab = result.prepared.vocab
    lk = load_vectors(vec, vocab.itos)
    expected = torch.from_numpy(embedding_matrix(lk, seed=cfg.train.seed))
    weight = result.model.embedding.weight.detach().cpu()
    found = torch.from_numpy(lk.found)
    if freeze:
        torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    else:
        changed = (weight[found] - expected[found]).abs().amax(1) > 1e-6
        assert changed.float().mean() > 0.9
    assert not weight[0].any()  # <pad>
    m = json.loads((out / "metrics.json").read_text())["embeddings"]
    assert m["dim"] == 12 and m["exact"] == len(FILLER) + 3 + 4 and m["lowercase"] == 1  # "happy" <- "Happy"

    # The run reloads without the vector file: the vectors live in model.safetensors.
    vec.unlink()
    predictor = rnntext.load(out)
    torch.testing.assert_close(predictor.run.model.embedding.weight.detach().cpu(), weight)
    assert predictor.predict(["great happy movie"])[0].label in ("pos", "neg")


def test_vocab_from_embeddings_reaches_words_the_training_data_lacks(small_task, tiny_config) -> None:
    train_csv, test_csv, vec = small_task
    cfg = _cfg(tiny_config, train_csv, test_csv, data__embeddings=str(vec), data__vocab_from_embeddings=True)
    p = prepare(cfg.data)
    assert "superb" in p.vocab and p.vocab.itos[-1] == "superb"
    plain = prepare(DataConfig(train=str(train_csv), test=str(test_csv)))
    assert "superb" not in plain.vocab and len(p.vocab) == len(plain.vocab) + 1
    cfg.data.vocab_from_embeddings_max = 3  # only the file's first 3 words: all in the training vocabulary
    assert len(prepare(cfg.data).vocab) == len(plain.vocab)


def test_option_errors(tiny_config, small_task) -> None:
    train_csv, test_csv, _ = small_task
    with pytest.raises(ConfigError, match="data.vocab_from_embeddings needs data.embeddings"):
        DataConfig(vocab_from_embeddings=True).validate()
    cfg = _cfg(tiny_config, train_csv, test_csv, model__freeze_embeddings=True)
    with pytest.raises(ConfigError, match="model.freeze_embeddings needs data.embeddings"):
        train(cfg, None, progress=False, log=lambda s: None)
    unrelated = write_glove(train_csv.parent / "other.txt", {"zzz": VECS["the"], "yyy": VECS["cat"]})
    with pytest.raises(DataError, match=r"other\.txt: none of the \d+ vocabulary words has a vector"):
        train(_cfg(tiny_config, train_csv, test_csv, data__embeddings=str(unrelated)), None, progress=False,
              log=lambda s: None)
    bad = train_csv.parent / "words.txt"
    bad.write_text("the movie was good\n")
    cfg = _cfg(tiny_config, train_csv, test_csv, data__embeddings=str(bad))
    with pytest.raises(DataError, match="not a word-vector file"):
        train(cfg, None, progress=False, log=lambda s: None)


def test_cli_options_reach_the_config() -> None:
    from rnntext.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--train", "t.csv", "--embeddings", "v.vec", "--freeze-embeddings",
                                      "--vocab-from-embeddings", "--vocab-from-embeddings-max", "7",
                                      "--no-embeddings-lowercase"])
    cfg = config_from_args(args)
    assert (cfg.data.embeddings, cfg.data.vocab_from_embeddings, cfg.data.vocab_from_embeddings_max,
            cfg.data.embeddings_lowercase, cfg.model.freeze_embeddings) == (str(Path("v.vec").resolve()), True, 7,
                                                                             False, True)
    assert cfg.data.train == str(Path("t.csv").resolve())  # config.json records absolute paths
    cfg = config_from_args(build_parser().parse_args(["train", "--train", "t.csv"]))
    assert (cfg.data.embeddings, cfg.data.embeddings_lowercase, cfg.model.freeze_embeddings) == (None, True, False)


# --- rnntext vectors ----------------------------------------------------------------------------


def test_rnntext_vectors_trains_a_file_that_train_reads(tmp_path: Path, write_data, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    rows = _texts(400, 5)
    corpus.write_text("".join(f"The {t}, REALLY!\n" for t, _ in rows))
    table = write_data("more.jsonl", ["body", "x"], [("good movie.", 1), ("sad day", 2)])
    out = tmp_path / "v.vec"
    rc = main(["vectors", "--train", str(corpus), str(table), "--text-column", "body", "--out", str(out),
               "--dim", "16", "--epochs", "2", "--min-count", "1", "--threads", "1"])
    assert rc == 0
    info = inspect_vectors(out)
    assert (info.format, info.dim) == (WORD2VEC, 16)
    lines = out.read_text(encoding="utf-8").splitlines()
    words = [line.split(" ", 1)[0] for line in lines[1:]]
    assert int(lines[0].split()[0]) == len(words)
    # basic_english tokens (lowercase, punctuation split off), most frequent first
    assert words[0] in ("the", "!", ",") and "really" in words and "," in words and "REALLY!" not in words
    lk = load_vectors(out, ["<pad>", "<unk>", *POS, *NEG])
    assert lk.found[2:].all()

    rc = main(["train", "--train", str(write_data("t.csv", ["text", "label"], rows)), "--embeddings", str(out),
               "--freeze-embeddings", "--epochs", "1", "--hidden-dim", "8", "--threads", "1", "-q",
               "--out", str(tmp_path / "run")])
    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["embed_dim"] == 16 and cfg["model"]["freeze_embeddings"] is True
    assert cfg["data"]["embeddings"] == str(out)


def test_rnntext_vectors_reports_bad_input(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    assert main(["vectors", "--train", str(empty), "--out", str(tmp_path / "v.vec"), "--threads", "1"]) == 2
    assert "no text to train vectors on" in capsys.readouterr().err
    assert main(["vectors", "--out", str(tmp_path / "v.vec")]) == 2
    assert not (tmp_path / "v.vec").exists()


@pytest.mark.parametrize("binary", [True, False])
def test_files_written_by_gensim_read_the_same(tmp_path: Path, binary: bool) -> None:
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=DIM)
    kv.add_vectors(WORDS, np.stack([VECS[w] for w in WORDS]))
    path = tmp_path / ("g.bin" if binary else "g.txt")
    kv.save_word2vec_format(str(path), binary=binary)
    lk = load_vectors(path, ["<pad>", "<unk>", *WORDS], lowercase=False)
    assert lk.info.format == (WORD2VEC_BINARY if binary else WORD2VEC)
    np.testing.assert_allclose(lk.matrix[2:], np.stack([VECS[w] for w in WORDS]), rtol=1e-5)
    # and gensim reads what `rnntext vectors` writes
    from rnntext.data.train_vectors import write_vec

    write_vec(tmp_path / "ours.vec", WORDS, np.stack([VECS[w] for w in WORDS]))
    back = KeyedVectors.load_word2vec_format(str(tmp_path / "ours.vec"))
    np.testing.assert_allclose(back["paris"], VECS["paris"], rtol=1e-5)
