"""Export a trained model to an artifact directory: ONNX graphs of the step + manifest.json.

The step is cut into three graphs so that a non-chunk event never touches the memory and each
stage can be timed on its own (B is a dynamic batch axis in all three):

    controller.onnx  items [B], h, c, read, attn_max, attn_norm, attn_sum, pos
                     -> next_h, next_c, next_out, next_attn_max, next_attn_norm, next_attn_sum,
                        next_pos                      (CmnRec.controller_step: steps 2-3 and 6)
    memory.onnx      out, attn_max, attn_norm, attn_sum, memory, usage, link, precedence,
                     write_weights, read_weights
                     -> next_h (= a), next_read, next_memory, ..., next_attn_* (reset)
                                                      (CmnRec.memory_step: step 4, chunk rows only)
    output.onnx      out, read -> scores [B, I]       (the output layer, step 5)

LSTM4Rec / GRU4Rec have no memory graph: controller (items, h[, c], pos) and output (h).
LRURec has none either: controller (items, h_re, h_im, pos -> next_h_re, next_h_im, next_out,
next_pos: one recurrence step of every layer, complex state as real/imaginary pairs) and output
(out -> scores, tied to the item embeddings).
The wrappers below call the model's own methods, so the graphs compute exactly what training does.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from data.dataset import ItemVocab
from model.codec import CODEC_VERSION, layout_fields
from model.config import ModelConfig
from model.lru import LRURec
from model.manifest import (
    NEXT_PREFIX,
    GraphSpec,
    Manifest,
    StateFieldSpec,
    content_hash,
    graph_bytes,
)
from model.network import CmnRec, RNNRec, SequentialRecommender
from model.schedule import chunk_mask, chunk_times
from model.state import state_fields

OPSET = 17
EXAMPLE_BATCH = 3  # batch size of the tracing inputs; the exported graphs take any B >= 1

_MEMORY_INPUTS = ["out", "attn_max", "attn_norm", "attn_sum", "memory", "usage", "link",
                  "precedence", "write_weights", "read_weights"]
_MEMORY_OUTPUTS = ["h", "read", "memory", "usage", "link", "precedence", "write_weights",
                   "read_weights", "attn_max", "attn_norm", "attn_sum"]


class StateGraph(nn.Module):
    """One model method as a graph: named state fields in, named state fields (or scores) out.

    The state passed to `method` holds the graph's inputs; the fields the method does not read are
    None. method(model, items, state) when takes_items, else method(model, state); it returns a
    state (outputs are then the listed fields) or a tensor (the single output).
    """

    def __init__(self, model: SequentialRecommender, method: Callable[..., Any],
                 inputs: list[str], outputs: list[str], takes_items: bool) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.inputs, self.outputs, self.takes_items = inputs, outputs, takes_items
        self.state_cls = type(model.initial_state(1))

    def forward(self, *tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
        args: list[Any] = []
        if self.takes_items:
            args.append(tensors[0])
            tensors = tensors[1:]
        fields = dict.fromkeys(self.state_cls._fields)
        fields.update(zip(self.inputs, tensors))
        result = self.method(self.model, *args, self.state_cls(**fields))
        if isinstance(result, Tensor):
            return result
        return tuple(getattr(result, name) for name in self.outputs)


def _embedded(model: SequentialRecommender, items: Tensor) -> Tensor:
    """v = E[x] exactly as SequentialRecommender.step computes it (dropout is off in eval mode)."""
    return model.embed(items)


def _controller_step(model: SequentialRecommender, items: Tensor, state: Any) -> Any:
    if isinstance(model, CmnRec):
        return model.controller_step(_embedded(model, items), state)
    return model.advance(_embedded(model, items), state, False)


def _memory_step(model: CmnRec, state: Any) -> Any:
    return model.memory_step(state)


def _scores(model: SequentialRecommender, state: Any) -> Tensor:
    return model.scores(state)


def step_graphs(model: SequentialRecommender) -> dict[str, StateGraph]:
    """The wrappers to export for a model: controller and output, plus memory for CmnRec/SRMN."""
    if isinstance(model, CmnRec):
        controller_in = ["h", "c", "read", "attn_max", "attn_norm", "attn_sum", "pos"]
        controller_out = ["h", "c", "out", "attn_max", "attn_norm", "attn_sum", "pos"]
        return {
            "controller": StateGraph(model, _controller_step, controller_in, controller_out, True),
            "memory": StateGraph(model, _memory_step, _MEMORY_INPUTS, _MEMORY_OUTPUTS, False),
            "output": StateGraph(model, _scores, ["out", "read"], ["scores"], False),
        }
    if isinstance(model, RNNRec):
        fields = list(type(model.initial_state(1))._fields)
        return {
            "controller": StateGraph(model, _controller_step, fields, fields, True),
            "output": StateGraph(model, _scores, ["h"], ["scores"], False),
        }
    if isinstance(model, LRURec):
        fields = list(type(model.initial_state(1))._fields)
        return {
            "controller": StateGraph(model, _controller_step, [f for f in fields if f != "out"],
                                     fields, True),
            "output": StateGraph(model, _scores, ["out"], ["scores"], False),
        }
    raise ValueError(f"export: model {model.config.model!r} has no step graph to export"
                     " (the popularity recommender is served from the manifest's popularity list)")


def _example_state(model: SequentialRecommender, batch: int) -> Any:
    """A state with non-trivial values for tracing (the values do not shape the graph)."""
    generator = torch.Generator().manual_seed(0)
    fields = {}
    for name, value in model.initial_state(batch)._asdict().items():
        if value.dtype == torch.long:
            fields[name] = torch.arange(batch, dtype=torch.long)
        else:
            fields[name] = torch.rand(value.shape, generator=generator, dtype=value.dtype)
    return type(model.initial_state(1))(**fields)


def export_graph(graph: StateGraph, path: Path, batch: int = EXAMPLE_BATCH) -> GraphSpec:
    """Write one graph with a dynamic batch axis on every input and output."""
    state = _example_state(graph.model, batch)
    args = [getattr(state, name) for name in graph.inputs]
    input_names = list(graph.inputs)
    if graph.takes_items:
        args.insert(0, torch.arange(1, batch + 1, dtype=torch.long) % graph.model.config.num_items)
        input_names.insert(0, "items")
    output_names = [o if o == "scores" else NEXT_PREFIX + o for o in graph.outputs]
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    # The TorchScript-based exporter (dynamo=False) traces these small graphs in milliseconds and
    # writes the same bytes for the same weights (the model version is their hash); it warns that
    # it is no longer the default, which is not news to anyone running `cmnrec export`.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, tuple(args), str(path), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    import onnx  # the train extra ships it; only needed here, to check and read back the graph

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    kept = [i.name for i in proto.graph.input]
    return GraphSpec(path.name, kept, [o.name for o in proto.graph.output])


def _state_layout(model: SequentialRecommender) -> tuple[list[StateFieldSpec], int]:
    layouts, payload = layout_fields(state_fields(model.config, "float32"))
    initial = model.initial_state(1)._asdict()
    specs = []
    for f in layouts:
        values = initial[f.name].flatten()
        if values.numel() and not bool((values == values[0]).all()):
            raise ValueError(f"export: initial state field {f.name!r} is not a constant fill")
        fill = float(values[0]) if values.numel() else 0.0
        specs.append(StateFieldSpec(f.name, f.shape, f.dtype, f.offset, f.nbytes, fill))
    return specs, payload


def _popularity(counts: np.ndarray) -> tuple[list[float], list[int]]:
    """log1p counts as cold-start scores and the ids ranked by count (ties: lower id first)."""
    counts = np.asarray(counts, dtype=np.int64)
    scores = np.log1p(counts.astype(np.float64))
    scores[0] = 0.0
    ids = np.arange(1, len(counts))
    ranking = ids[np.lexsort((ids, -counts[1:]))]
    return [float(s) for s in scores], [int(i) for i in ranking]


def export_model(model: SequentialRecommender, config: ModelConfig, vocab: ItemVocab,
                 item_counts: np.ndarray, out_dir: str | Path,
                 source: dict[str, Any] | None = None) -> Path:
    """Export `model` to the artifact directory out_dir (replaced if it exists).

    item_counts: [I] training interactions per internal item id (popularity for cold start);
    source: where the model came from (run name, training settings), stored in the manifest.
    Written to a temporary sibling directory first and renamed into place, so a reader never sees
    a half-written artifact. Returns out_dir.
    """
    out_dir = Path(out_dir)
    if config.model == "pop":
        raise ValueError("export: the popularity model has no network to export; serve a neural"
                         " model (its artifact carries the popularity list for cold start)")
    if config.is_window_model:
        raise ValueError(f"export: {config.model} is stateless (self-attention over the last "
                         f"max_len={config.max_len} events, recomputed at every event) and has no "
                         "fixed-size state for the stateful engine; export cmnrec, srmn, gru4rec or "
                         "lstm4rec")
    model = model.float().eval()
    graphs = step_graphs(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        specs = {name: export_graph(graph, tmp / f"{name}.onnx") for name, graph in graphs.items()}
        fields, payload = _state_layout(model)
        popularity_scores, ranking = _popularity(item_counts)
        source = json.loads(json.dumps({**(source or {}), "torch": torch.__version__},
                                       default=str))
        manifest = Manifest(
            model_version="", config=config,
            chunk_times=chunk_times(config.block_len, config.slots, config.rule),
            chunk_mask=chunk_mask(config.block_len, config.slots, config.rule),
            state_fields=fields, state_payload_bytes=payload, codec_version=CODEC_VERSION,
            vocab=vocab, item_counts=[int(c) for c in item_counts],
            popularity_scores=popularity_scores, popularity_ranking=ranking, graphs=specs,
            opset=OPSET, source=source,
        )
        # Hash the manifest as it will read back from JSON, so load() recomputes the same value.
        canonical = Manifest.from_dict({**manifest.to_dict(), "model_version": ""})
        version = content_hash(canonical.to_dict(with_version=False), graph_bytes(tmp, specs))
        Manifest.from_dict({**canonical.to_dict(), "model_version": version}).save(tmp)
        Manifest.load(tmp)  # the artifact must read back and verify before it replaces anything
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished artifact into place; an old one is moved aside first, then deleted."""
    os.chmod(new, 0o755)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)
