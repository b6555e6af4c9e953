"""Hypothesis strategies for the adversarial tests: tampered files and abusive inputs.

Each section belongs to one area; keep yours in its own section."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from hypothesis import strategies as st

# =====================================================================================================
# Files and run directories: tampered config.json, checkpoint manifests, ensemble.json
# (tests/test_files_hardening.py). A strategy here draws an *edit*: apply it to a good file's parsed
# JSON with `tamper(obj, edit)`; the loader must then load fine or raise a one-line RnnTextError that
# names the file, never another exception.
# =====================================================================================================

# JSON values a tamperer would try: wrong types, out-of-range and non-finite numbers, huge and empty values
HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, -5, 1, 2, 3, 99, 10**6, 10**9, 2**63, -(2**63) - 1, 10**30]),
    st.sampled_from([0.0, -0.0, 1.5, 2.5, 128.0, 1e6, 1e400, -1e400, math.nan]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x", "no", "nan", "1e9", "../x", "\u2028", "a" * 300]),
    st.text(max_size=20),
)
HOSTILE_VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["", "x", "$tensor", "$tuple", "$dict", "lr", "params",
                                                             "epoch", "state"]), inner, max_size=3)),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a parsed JSON value, the root excluded."""
    out: list[tuple] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):  # the first few items of a long list are as good as all
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def edits(original: Any, extra_keys: tuple[str, ...] = ("unknown", "format_version", "$tensor")) -> st.SearchStrategy:
    """An edit of `original` (parsed JSON): ("set", path, value), ("delete", path), ("add", path, key,
    value) or ("root", value); a list of 1-3 edits."""
    paths = _paths(original)
    one = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(paths), HOSTILE_VALUES),
        st.tuples(st.just("delete"), st.sampled_from(paths)),
        st.tuples(st.just("add"), st.sampled_from([(), *[p for p in paths]]), st.sampled_from(extra_keys),
                  HOSTILE_VALUES),
        st.tuples(st.just("root"), HOSTILE_VALUES),
    ) if paths else st.tuples(st.just("root"), HOSTILE_VALUES)
    return st.lists(one, min_size=1, max_size=3)


def tamper(original: Any, edit_list: list[tuple]) -> Any:
    """`original` with the edits applied (a copy); an edit whose path no longer exists is skipped."""
    obj = copy.deepcopy(original)
    for edit in edit_list:
        kind = edit[0]
        if kind == "root":
            obj = copy.deepcopy(edit[1])
            continue
        path = edit[1]
        parent = obj
        try:
            for key in path[:-1] if kind != "add" else path:
                parent = parent[key]
        except (KeyError, IndexError, TypeError):
            continue
        last = path[-1] if path and kind != "add" else None
        try:
            if kind == "set":
                parent[last] = copy.deepcopy(edit[2])
            elif kind == "delete":
                del parent[last]
            elif kind == "add" and isinstance(parent, dict):
                parent[edit[2]] = copy.deepcopy(edit[3])
        except (KeyError, IndexError, TypeError):
            continue
    return obj


def dump(obj: Any) -> str:
    """JSON as a tamperer writes it: NaN / Infinity literals included."""
    return json.dumps(obj, allow_nan=True)


# the hand-picked tamperings of issue 16 (defect 5), as (path, value): config.json ...
CONFIG_CASES = [
    (("model", "embed_dim"), 128.0), (("model", "hidden_dim"), 1e400), (("model", "num_layers"), math.nan),
    (("model", "padding_idx"), 1e9), (("model", "padding_idx"), 10**9), (("model", "padding_idx"), "x"),
    (("data", "label_names"), []), (("data", "label_names"), {}), (("model", "embed_dim"), 10**9),
    (("model", "hidden_dim"), 10**9), (("model", "vocab_size"), 10**9), (("model", "num_classes"), 10**9),
    (("data", "ngrams"), 1.5), (("data", "max_len"), 2.5), (("model", "bidirectional"), "no"),
    (("unknown_key",), 1), (("model", "vocab_size"), 0), (("model", "num_classes"), 0),
]
# ... checkpoint manifests ...
MANIFEST_CASES = [
    (("running",), {}), (("progress", "step"), -5), (("progress", "epoch"), 99), (("history",), [1, 2]),
    (("schedule",), {}), (("progress", "step"), 1e6), (("progress", "step"), 10**6),
    (("progress", "global_step"), 3), (("running", "seen"), -1), (("running", "correct"), 10**9),
    (("best", "epoch"), 5), (("best", "has_state"), "yes"), (("finished",), "no"), (("seq",), -1),
    (("progress", "processes"), 0), (("schedule", "total_steps"), 10**6), (("schedule", "last_epoch"), 0),
    (("tensors", "bytes"), 10**12), (("data",), []), (("optimizer",), {"$dict": [[[1], 2]]}),
]
# ... and ensemble.json
ENSEMBLE_CASES = [
    (("format",), "x"), (("format",), None), (("format",), 0), (("format",), 2), (("members",), []),
    (("members",), ["../escape", "member-1"]), (("members",), ["/etc", "member-1"]),
    (("members",), [f"member-{k}" for k in range(2000)]), (("members",), ["member-0", "member-0"]),
    (("members",), "member-0"), (("members",), [1, 2]),
]

# =====================================================================================================
# (end of the files and run directories section)
# =====================================================================================================

# =====================================================================================================
# Server payloads: bodies for POST /predict (tests/test_server_hardening.py). `payloads()` draws bytes
# a client could send: well-formed requests, JSON of any shape, JSON with NaN / Infinity, lone
# surrogates, deep nesting and huge numbers, and bytes that are not UTF-8 or not JSON. The server must
# answer each with 200, or a 4xx / 503 whose body is JSON, never 500.
# =====================================================================================================

SERVER_STRINGS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\u2028", "\ud800", "\udfff", "\ufeff", "a" * 500, "<script>", "NaN"]),
)
SERVER_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), SERVER_STRINGS,
)
SERVER_JSON = st.recursive(
    SERVER_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(st.sampled_from(["texts", "text", "\ud800", ""]), SERVER_STRINGS),
                                            inner, max_size=4)),
    max_leaves=12,
)


def _json_bytes(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN / Infinity literals, lone surrogates as \\u escapes."""
    return json.dumps(value, allow_nan=True).encode("ascii")


@st.composite
def _raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["deep", "digits", "utf8", "truncated", "bytes", "literal"]))
    if kind == "deep":
        n = draw(st.integers(min_value=100, max_value=5000))
        return b'{"texts": ' + b"[" * n + b"]" * n + b"}"
    if kind == "digits":
        return b'{"texts": [' + b"9" * draw(st.integers(min_value=300, max_value=6000)) + b"]}"
    if kind == "utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))  # not UTF-8
        return b'{"texts": ["' + bad + b'"]}'
    if kind == "truncated":
        whole = _json_bytes({"texts": draw(st.lists(SERVER_STRINGS, min_size=1, max_size=3))})
        return whole[:draw(st.integers(min_value=0, max_value=len(whole) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"null", b'"texts"', b"[]", b"{}",
                                 b'{"texts": [NaN]}', b'{"texts": "\\ud800"}', b'{"texts": ["a", {"\\ud800": 1}]}',
                                 b'{"texts": ["a"], "\\ud800": 1}', b'{"texts": ["a"], "texts": [1]}']))


def payloads() -> st.SearchStrategy[bytes]:
    """A POST /predict body: a valid request, a request-shaped body with hostile values, JSON of any
    shape, or raw bytes that are not (valid) JSON."""
    return st.one_of(
        st.lists(st.text(max_size=40), min_size=1, max_size=4).map(lambda t: _json_bytes({"texts": t})),
        st.dictionaries(st.sampled_from(["texts", "text", "extra"]), SERVER_JSON, max_size=3).map(_json_bytes),
        SERVER_JSON.map(_json_bytes),
        _raw_bodies(),
    )

# =====================================================================================================
# (end of the server payloads section)
# =====================================================================================================
