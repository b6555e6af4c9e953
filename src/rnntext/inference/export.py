"""`rnntext export RUN --format onnx [--int8] --out DIR`: a trained run as an ONNX model that
onnxruntime runs without torch (rnntext.inference.onnx_predictor), with everything needed to read
texts beside it:

    DIR/model.onnx    inputs tokens [B, T] int64 (<pad> = 0 past each length) and lengths [B] int64,
                      output probabilities [B, classes] float32; B and T are dynamic
    DIR/vocab.json    the run's vocabulary, DIR/labels.json its class names
    DIR/export.json   tokenizer settings (name, ngrams, max_len), the token budget, the model's settings

Every family exports in the padded layout: the bag model's mean of word vectors is written as a masked
mean over a padded batch (the same numbers as nn.EmbeddingBag). The exporter is torch.export's
(`dynamo=True`): the TorchScript one freezes the sequence length of the reversal within each length
into the graph and gives wrong probabilities for other lengths. `--int8` quantises the weights of the
exported model with onnxruntime's dynamic quantisation (int8 weights, activations quantised per batch).

A members run (`--members K`, model/members.py) exports as one graph: each member's own graph (the one it
would export alone, ending in its logits), its names prefixed m0_, m1_, ..., all reading the same tokens
and lengths; the output is the softmax of the mean of their logits, as the model's eval forward. The
predictor, calibration and --int8 read it as any other export."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError, RnnTextError
from ..io import atomic_write_json
from ..model.bag import BagClassifier
from ..model.base import TextClassifier
from ..model.cnn import CNNClassifier
from ..model.members import MembersClassifier
from ..model.recurrent import RecurrentClassifier
from ..model.wide import HASH_PRIME, WideClassifier, join, ngram_count
from ..training.rundir import LABELS, VOCAB, Run, load_run
from .ensemble import member_dirs

FORMAT = 2  # export.json's format (2: tokenizer.unseen_words; 1 read unseen words as <unk>)
MODEL, SETTINGS = "model.onnx", "export.json"
OPSET = 18
FORMATS = ("onnx",)
OUTPUTS = ("probabilities", "logits")  # what a model's graph ends in: "logits" are its forward's (for members)


class PaddedProbabilities(nn.Module):
    """`model` as tokens [B, T], lengths [B] -> class probabilities [B, classes], for export (`output`
    "logits": the logits the model's forward gives instead). A wide model (model/wide.py): its deep part
    so, joined with the wide part's scores."""

    def __init__(self, model: TextClassifier, output: str = "probabilities"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}")
        self.logits = output == "logits"
        self.wide = model if isinstance(model, WideClassifier) else None
        model = model.deep if isinstance(model, WideClassifier) else model
        self.model = model
        self.bag = isinstance(model, BagClassifier)
        self.widest = max(model.widths) if isinstance(model, CNNClassifier) else 0

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        logits = self.deep_logits(tokens, lengths)
        if self.wide is not None:
            # the wide part's mean of n-gram vectors as a gather and a sum (nn.EmbeddingBag does not export)
            w = self.wide.wide
            ids = w.ids(tokens, lengths)
            total = nn.functional.embedding(ids, w.table.weight).sum(1)
            features = total / ngram_count(lengths, w.ngrams)[:, None].to(total.dtype)
            logits = join(logits, w.fc(features), self.wide.join)
        return logits if self.logits else logits.softmax(1)

    def deep_logits(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        if self.bag:
            # nn.EmbeddingBag(mode="mean", padding_idx=0): the mean over the tokens that are not <pad>
            m = self.model
            pad = m.embedding.padding_idx
            steps = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
            keep = (steps < lengths[:, None]) & (tokens != pad)
            vectors = nn.functional.embedding(tokens, m.embedding.weight) * keep.unsqueeze(2)
            count = keep.sum(1, keepdim=True).clamp(min=1).to(vectors.dtype)
            logits = m.fc(vectors.sum(1) / count)
        else:
            if self.widest:
                # the CNN pads a batch narrower than its widest filter; padding always (past every text's
                # length, where no window that is read starts) keeps the graph free of that branch
                tokens = nn.functional.pad(tokens, (0, self.widest - 1), value=self.model.padding_idx)
            logits = self.model(tokens, lengths)
        return logits


def exportable(model: TextClassifier, output: str = "probabilities") -> PaddedProbabilities:
    """A copy of `model` in eval mode, wrapped for torch.onnx.export (the bag and CNN families)."""
    deep = model.deep if isinstance(model, WideClassifier) else model
    if not isinstance(deep, (BagClassifier, CNNClassifier)):
        raise ConfigError(f"model {type(model).__name__} cannot be exported to ONNX: rnntext knows how to export "
                          "the rnn, lstm, gru, bag and cnn families")
    return PaddedProbabilities(copy.deepcopy(model).eval().float(), output)


def export_model(model: TextClassifier, path: str | Path) -> None:
    """`model` as ONNX at `path` (one file, dynamic batch and sequence length)."""
    import onnx

    onnx.save(model_graph(model), str(path))


def model_graph(model: TextClassifier, output: str = "probabilities") -> Any:
    """`model` as an ONNX model (inputs tokens, lengths; the one output named `output`, see OUTPUTS)."""
    if isinstance(model, MembersClassifier):
        if output != "probabilities":
            raise ValueError("a members graph ends in the members' joint probabilities")
        return members_graph(model)
    if isinstance(model, RecurrentClassifier) or (isinstance(model, WideClassifier)
                                                  and isinstance(model.deep, RecurrentClassifier)):
        return recurrent_graph(model, output)
    return torch_graph(model, output)


def members_graph(model: MembersClassifier) -> Any:
    """One graph for a members model (model/members.py): each member's graph, ending in its logits, with
    its names prefixed m{k}_ (onnx.compose.add_prefix_graph) and the inputs shared; then the mean of the
    members' logits and its softmax, as MembersClassifier.forward in eval mode. Averaging logits rather
    than log(probabilities) keeps a member's float32 probability that underflows to 0 from zeroing the
    joint one."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.compose import add_prefix_graph

    nodes: list = []
    init: list = []
    infos: list = []
    logits: list[str] = []
    opsets: dict[str, int] = {"": OPSET}
    for k, member in enumerate(model.each()):
        one = model_graph(member, "logits")
        for o in one.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        g = add_prefix_graph(one.graph, f"m{k}_", rename_inputs=False)
        if [i.name for i in g.input] != ["tokens", "lengths"] or len(g.output) != 1:
            raise RnnTextError(f"cannot export member {k} of this {type(model).__name__}: its graph has inputs "
                               f"{[i.name for i in g.input]} and {len(g.output)} outputs")
        nodes += g.node
        init += g.initializer
        infos += g.value_info
        logits.append(g.output[0].name)
    nodes.append(helper.make_node("Mean", logits, ["logits"], name="members_mean"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="members_softmax", axis=1))
    graph = helper.make_graph(
        nodes, "rnntext", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "steps"]),
                           helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", model.num_classes])], init,
        value_info=infos)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                            producer_name="rnntext")
    out.ir_version = min(out.ir_version, 10)
    onnx.checker.check_model(out)
    return out


def torch_graph(model: TextClassifier, output: str = "probabilities") -> Any:
    """The bag and CNN families (and their wide models) through torch.onnx's dynamo exporter."""
    import onnx

    wrapper = exportable(model, output)
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0]]) % max(
        model.embedding.weight.shape[0], 1)
    lengths = torch.tensor([7, 3, 1])
    batch, steps = torch.export.Dim("batch", min=1), torch.export.Dim("steps", min=1)
    shapes = {"tokens": {0: batch, 1: steps}, "lengths": {0: batch}}
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, (tokens, lengths), dynamo=True, dynamic_shapes=shapes,
                                        input_names=["tokens", "lengths"], output_names=[output],
                                        opset_version=OPSET, verbose=False)
    except Exception as e:  # the exporter raises many kinds; say which model could not be exported, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RnnTextError(f"cannot export this {type(model).__name__} to ONNX: {first[:300]}") from None
    finally:
        logger.setLevel(level)
    with tempfile.TemporaryDirectory() as tmp:
        program.save(str(Path(tmp) / MODEL), external_data=False)
        proto = onnx.load(str(Path(tmp) / MODEL))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    if dims != [["batch", "steps"], ["batch"]]:
        raise RnnTextError(f"cannot export this {type(model).__name__} to ONNX with a dynamic batch and length: "
                           f"the exporter fixed the inputs' shapes at {dims}")
    return proto


# torch's gate order -> ONNX's: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c); RNN: one gate
GATES = {"gru": [1, 0, 2], "lstm": [0, 3, 1, 2], "rnn": [0]}
ONNX_OP = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}


def recurrent_graph(model: RecurrentClassifier | WideClassifier, output: str = "probabilities") -> Any:
    """The recurrent classifier as an ONNX graph written op by op. torch.onnx's exporters cannot do it
    (torch 2.13): the TorchScript one gives wrong probabilities, the dynamo one fixes the sequence length of
    every layer after the first at the example's and exports nn.RNN only with a fixed length. ONNX's
    recurrent ops take each text's length (sequence_lens) and read the backward direction reversed within
    it, which is what the model does: one GRU / LSTM / RNN op per layer, both directions in it. `output`
    (OUTPUTS): the graph ends in the class probabilities or in the logits the model's forward gives."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    wide = model if isinstance(model, WideClassifier) else None
    m = model.deep if isinstance(model, WideClassifier) else model
    assert isinstance(m, RecurrentClassifier)
    H, D = m.hidden_dim, m.directions
    init: list = []
    nodes: list = []

    def const(name: str, value: Any) -> str:
        init.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str] | str, **attrs: Any) -> str:
        outs = [outputs] if isinstance(outputs, str) else outputs
        nodes.append(helper.make_node(op, inputs, outs, name=f"n{len(nodes)}_{op}", **attrs))
        return outs[0]

    def weights(t: Tensor) -> Any:
        return t.detach().float().cpu().numpy()

    gates = GATES[m.cell]

    def reorder(w: Any) -> Any:  # [gates * H, ...] in torch's order -> ONNX's
        return np.concatenate([w[g * H:(g + 1) * H] for g in gates], axis=0)

    const("embedding", weights(m.embedding.weight))
    x = node("Gather", ["embedding", "tokens"], "embedded")  # [B, T, E]
    x = node("Transpose", [x], "x0", perm=[1, 0, 2])  # [T, B, E]
    seq = node("Cast", ["lengths"], "seq_lens", to=TensorProto.INT32)
    last_h = None
    for i, directions in enumerate(m.layers):
        W, R, B = [], [], []
        for mod in directions:
            W.append(reorder(weights(mod.weight_ih_l0)))
            R.append(reorder(weights(mod.weight_hh_l0)))
            B.append(np.concatenate([reorder(weights(mod.bias_ih_l0)), reorder(weights(mod.bias_hh_l0))]))
        ins = [x, const(f"W{i}", np.stack(W)), const(f"R{i}", np.stack(R)), const(f"B{i}", np.stack(B)), seq]
        attrs: dict[str, Any] = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if m.cell == "gru":
            attrs["linear_before_reset"] = 1
        if m.cell == "rnn":
            attrs["activations"] = ["Tanh"] * D
        outs = [f"Y{i}", f"Yh{i}"] + ([f"Yc{i}"] if m.cell == "lstm" else [])
        node(ONNX_OP[m.cell], ins, outs, **attrs)  # Y [T, D, B, H] in text order; Y_h [D, B, H]: each read whole
        last_h = f"Yh{i}"
        y = node("Transpose", [f"Y{i}"], f"Yt{i}", perm=[0, 2, 1, 3])  # [T, B, D, H]
        x = node("Reshape", [y, const(f"shape{i}", np.array([0, 0, D * H], dtype=np.int64))], f"x{i + 1}")
    # x: [T, B, D * H], the directions side by side (the model's text order)
    if m.pooling == "last":
        feats = node("Transpose", [last_h], "last_t", perm=[1, 0, 2])  # [B, D, H]
        feats = node("Reshape", [feats, const("flat", np.array([0, D * H], dtype=np.int64))], "features")
    else:
        steps = node("Shape", [x], "shape_x", start=0, end=1)
        steps = node("Squeeze", [steps, const("axis0", np.array([0], dtype=np.int64))], "T")
        rng = node("Range", [const("zero", np.array(0, dtype=np.int64)), steps,
                             const("one", np.array(1, dtype=np.int64))], "range")
        rng = node("Unsqueeze", [rng, const("axis1", np.array([1], dtype=np.int64))], "range_t")  # [T, 1]
        mask = node("Less", [rng, "lengths"], "mask")  # [T, B]
        mask = node("Unsqueeze", [mask, const("axis2", np.array([2], dtype=np.int64))], "mask3")  # [T, B, 1]
        parts = []
        if m.pooling in ("mean", "meanmax"):
            zero = const("zero_f", np.array(0.0, dtype=np.float32))
            kept = node("Where", [mask, x, zero], "kept")
            total = node("ReduceSum", [kept, "axis0"], "total", keepdims=0)  # [B, D * H]
            denom = node("Cast", ["lengths"], "len_f", to=TensorProto.FLOAT)
            denom = node("Unsqueeze", [denom, "axis1"], "len_f2")
            parts.append(node("Div", [total, denom], "mean"))
        if m.pooling in ("max", "meanmax"):
            low = const("minus_inf", np.array(-np.inf, dtype=np.float32))
            masked = node("Where", [mask, x, low], "masked")
            parts.append(node("ReduceMax", [masked, "axis0"], "max", keepdims=0))
        feats = parts[0] if len(parts) == 1 else node("Concat", parts, "features", axis=1)
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}")
    logits = node("Gemm", [feats, const("fc_w", weights(m.fc.weight)), const("fc_b", weights(m.fc.bias))],
                  "logits" if wide is None else "deep_logits", transB=1)
    if wide is None:
        if output == "probabilities":
            node("Softmax", [logits], "probabilities", axis=1)
    else:
        wide_graph(wide, logits, node, const, output)
    graph = helper.make_graph(
        nodes, "rnntext", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "steps"]),
                           helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", m.num_classes])], init)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnntext")
    out.ir_version = min(out.ir_version, 10)
    onnx.checker.check_model(out)
    return out


def wide_graph(model: WideClassifier, deep_logits: str, node: Callable[..., str], const: Callable[[str, Any], str],
               output: str = "probabilities") -> None:
    """The wide part's nodes (model/wide.py, op by op: the same integer hash, then a gather and a sum),
    joined with `deep_logits` into `output`: "probabilities", or "logits" as wide.join gives them."""
    import numpy as np
    from onnx import TensorProto

    w = model.wide
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    t_vec = node("Shape", ["tokens"], "w_T", start=1, end=2)  # [1]: T
    t = node("Squeeze", [t_vec, const("w_axis0", i64([0]))], "w_t")
    steps = node("Range", [const("w_zero", i64(0)), t, const("w_one", i64(1))], "w_steps")
    steps = node("Unsqueeze", [steps, "w_axis0"], "w_steps2")  # [1, T]
    lens = node("Unsqueeze", ["lengths", const("w_axis1", i64([1]))], "w_lens")  # [B, 1]
    zero = "w_zero"
    ids = [node("Where", [node("Less", [steps, lens], "w_valid1"), "tokens", zero], "w_ids1")]
    padded = node("Pad", ["tokens", const("w_pads", i64([0, 0, 0, max(w.ngrams - 1, 0)]))], "w_padded")
    buckets, prime = const("w_buckets", i64(w.buckets)), const("w_prime", i64(HASH_PRIME))
    h = None
    for n in range(2, w.ngrams + 1):
        end = node("Add", [t_vec, const(f"w_shift{n}", i64([n - 1]))], f"w_end{n}")
        nxt = node("Slice", [padded, f"w_shift{n}", end, "w_axis1"], f"w_next{n}")
        if h is None:
            h = node("Mod", [node("Add", ["tokens", const("w_seed", i64(2 * HASH_PRIME))], "w_seeded"), buckets],
                     "w_h1")
        h = node("Mul", [h, prime], f"w_mul{n}")
        h = node("Add", [node("Add", [h, nxt], f"w_add{n}"), const(f"w_n{n}", i64(n))], f"w_addn{n}")
        h = node("Mod", [h, buckets], f"w_h{n}")
        row = node("Add", [h, const(f"w_vocab{n}", i64(w.vocab_size))], f"w_row{n}")
        valid = node("Less", [steps, node("Sub", [lens, f"w_shift{n}"], f"w_left{n}")], f"w_valid{n}")
        ids.append(node("Where", [valid, row, zero], f"w_ids{n}"))
    all_ids = ids[0] if len(ids) == 1 else node("Concat", ids, "w_ids", axis=1)
    table = const("w_table", w.table.weight.detach().float().cpu().numpy())
    total = node("ReduceSum", [node("Gather", [table, all_ids], "w_vectors"), "w_axis1"], "w_total", keepdims=0)
    counts = [node("Max", [node("Sub", ["lengths", const(f"w_less{n}", i64(n - 1))], f"w_len{n}"), zero],
                   f"w_ngrams{n}") for n in range(1, w.ngrams + 1)]
    count = counts[0]
    for n, more in enumerate(counts[1:], start=2):  # (Sum takes no integers)
        count = node("Add", [count, more], f"w_upto{n}")
    count = node("Cast", [node("Max", [count, "w_one"], "w_count_min1")], "w_countf", to=TensorProto.FLOAT)
    features = node("Div", [total, node("Unsqueeze", [count, "w_axis1"], "w_count2")], "w_features")
    wide_logits = node("Gemm", [features, const("w_fc_w", w.fc.weight.detach().float().cpu().numpy()),
                                const("w_fc_b", w.fc.bias.detach().float().cpu().numpy())], "w_logits", transB=1)
    if model.join == "sum":
        joined = node("Add", [deep_logits, wide_logits], "logits")
        if output == "probabilities":
            node("Softmax", [joined], "probabilities", axis=1)
    elif output == "probabilities":  # the mean of the two parts' probabilities
        both = node("Add", [node("Softmax", [deep_logits], "p_deep", axis=1),
                            node("Softmax", [wide_logits], "p_wide", axis=1)], "p_both")
        node("Mul", [both, const("w_half", np.array(0.5, dtype=np.float32))], "probabilities")
    else:  # the mixture's log-probabilities as wide.join: logaddexp of the parts' log-softmax, less log 2
        a = node("LogSoftmax", [deep_logits], "lp_deep", axis=1)
        b = node("LogSoftmax", [wide_logits], "lp_wide", axis=1)
        top = node("Max", [a, b], "lp_max")
        total = node("Add", [node("Exp", [node("Sub", [a, top], "lp_a")], "e_a"),
                             node("Exp", [node("Sub", [b, top], "lp_b")], "e_b")], "e_sum")
        node("Sub", [node("Add", [top, node("Log", [total], "log_sum")], "lp_both"),
                     const("w_log2", np.array(np.log(2.0), dtype=np.float32))], "logits")


class _quiet:
    """torch.onnx.export(dynamo=True) prints its progress on stdout: silence it (fd level)."""

    def __enter__(self) -> None:
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        os.close(self._null)


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """onnxruntime's dynamic quantisation of `src`: int8 weights (MatMul, Gemm, Gather, the recurrent ops
    it knows), activations quantised per batch."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ConfigError("--int8 needs onnxruntime: pip install 'rnntext[onnx]'") from None
    import onnx

    # The quantiser's shape inference fixes the dynamic sequence length at the example's: quantise a copy
    # without the exporter's shape annotations, then name the dynamic dimensions again.
    model = onnx.load(str(src))
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    del model.graph.value_info[:]
    plain = Path(dst).with_suffix(".plain.onnx")
    onnx.save(model, str(plain))
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            quantize_dynamic(str(plain), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        plain.unlink(missing_ok=True)
    model = onnx.load(str(dst))
    for i in model.graph.input:
        for d, name in zip(i.type.tensor_type.shape.dim, dims.get(i.name, [])):
            if name:
                d.dim_param = name
    del model.graph.value_info[:]
    onnx.save(model, str(dst))


def settings(run: Run, int8: bool) -> dict:
    """export.json: what the runtime needs to read texts as the run did."""
    d, m = run.config.data, run.config.model
    return {
        "format": FORMAT, "rnntext": __version__, "opset": OPSET, "int8": int8,
        "tokenizer": {"name": d.tokenizer, "ngrams": d.ngrams, "max_len": d.max_len, "unseen_words": d.unseen_words},
        "data": asdict(d),  # what `evaluate --backend onnx` reads by default: the run's test set and columns
        "max_batch_tokens": run.config.train.max_batch_tokens,
        "batch_layout": "padded", "model": asdict(m),
        "inputs": {"tokens": "int64 [batch, steps], <pad> = 0 past each length", "lengths": "int64 [batch]"},
        "outputs": {"probabilities": "float32 [batch, classes], in the order of labels.json"},
        # the run's calibration (training/calibration.py): the runtime takes softmax(log(probabilities) / T)
        "temperature": run.temperature,
    }


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx", int8: bool = False,
               log: Callable[[str], None] = print) -> Path:
    """Export the run in `run_dir` to the directory `out` (new or empty); returns the model's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if member_dirs(run_dir) is not None:
        raise ConfigError(f"{run_dir} is an ensemble: export each member run directory (member-K) on its own")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} must be a new or empty directory")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ConfigError("export --format onnx needs onnx and onnxscript: pip install 'rnntext[onnx]'") from None
    run = load_run(run_dir, "cpu")
    if run.config.data.multi_label:  # the ONNX predictor reads one softmax: sets of labels need the torch backend
        raise ConfigError(f"{run_dir} is a multi-label run: export does not support those yet; predict, evaluate "
                          "and serve it with the torch backend")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fp32 = Path(tmp) / MODEL
        export_model(run.model, fp32)
        if int8:
            quantize_int8(fp32, out / MODEL)
        else:
            os.replace(fp32, out / MODEL)
    for name in (VOCAB, LABELS):
        shutil.copyfile(Path(run_dir) / name, out / name)
    atomic_write_json(out / SETTINGS, settings(run, int8))
    size = (out / MODEL).stat().st_size
    name = run.config.model.model
    if isinstance(run.model, MembersClassifier):
        name += f" x {len(run.model.each())} members"
    log(f"exported {name} ({'int8' if int8 else 'fp32'}, {size / 2**20:.1f} MiB) to {out / MODEL}")
    return out / MODEL


__all__ = ["FORMATS", "MODEL", "OUTPUTS", "SETTINGS", "PaddedProbabilities", "export_model", "export_run",
           "members_graph", "model_graph", "quantize_int8"]
