"""The serving step engine: an export artifact run with onnxruntime. numpy + onnxruntime, no torch.

apply() takes one event for each of B different users with their state blobs and returns the new
blobs and the next-item scores. Per call, each graph runs once on the whole batch: the controller
for every row, the memory only for the rows whose event falls on a chunk time (so a non-chunk event
costs one controller step and the output layer), and the output layer for every row.

apply_sequences() takes several events per user: the states are decoded once, wave k steps the
k-th event of every row that has one (the same controller and memory runs as apply() on those
rows), the states are encoded once at the end, and the output layer runs only when scores are
asked for (once, after each row's last event).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
import onnxruntime as ort

from data.dataset import ItemVocab
from model import ranking
from model.codec import (
    StateCodec,
    StateError,
    StateFormatError,
    StateVersionError,
    read_header,
)
from model.config import ModelConfig
from model.manifest import GraphSpec, Manifest

STAGES = ("decode", "controller", "memory", "output", "encode")

__all__ = ["STAGES", "Engine", "SequenceResult", "StateError", "StateFormatError", "StateVersionError",
           "StepEngine", "StepResult"]


@dataclass
class StepResult:
    """What one apply() produced, row by row in the order of the inputs."""

    states: list[bytes]  # [B] new state blobs
    scores: np.ndarray  # [B, I] float32 next-item logits (index 0 is padding: never recommend it)
    chunk: np.ndarray  # [B] bool: the event fell on a chunk time (memory written and read)
    positions: np.ndarray  # [B] int64: events absorbed after this event
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)


@dataclass
class SequenceResult:
    """What one apply_sequences() produced, row by row in the order of the inputs."""

    states: list[bytes]  # [B] state blobs after each row's last event
    positions: np.ndarray  # [B] int64: events absorbed after each row's last event
    chunk: list[np.ndarray]  # [B] arrays [L_b] bool: event j of row b fell on a chunk time
    scores: np.ndarray | None  # [B, I] float32 logits after each row's last event, or None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)


class Engine(Protocol):
    """What the serving side needs of an engine (StepEngine is the one implementation): the
    state store (service/state/store.py) is typed against this, not against onnxruntime."""

    version: str
    vocab: ItemVocab
    codec: StateCodec

    def initial_state(self) -> bytes: ...

    def state_pos(self, blob: bytes) -> int: ...

    def apply(self, items: Sequence[int], states: Sequence[bytes], *,
              verified: bool = False) -> StepResult: ...

    def apply_sequences(self, items: Sequence[Sequence[int]], states: Sequence[bytes], *,
                        scores: bool = False, verified: bool = False) -> SequenceResult: ...

    def scores(self, states: Sequence[bytes]) -> np.ndarray: ...

    def popularity_scores(self) -> np.ndarray: ...

    def top_n(self, scores: np.ndarray, n: int,
              exclude: Sequence[Iterable[int]] | None = None) -> list[list[tuple[int, float]]]: ...


class _Graph:
    """One onnxruntime session with its input names and the state fields its outputs update."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = list(spec.outputs)
        self.output_fields = spec.output_fields
        self.calls = 0  # onnxruntime runs so far
        if sorted(self.inputs) != sorted(spec.inputs):
            raise ValueError(f"graph {spec.file}: inputs {self.inputs} differ from the manifest's"
                             f" {spec.inputs}")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        return self.session.run(self.outputs, feeds)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads would otherwise spin and steal the cores the service and Redis need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class StepEngine:
    """The exported model's step, batched over users, with the state as bytes."""

    manifest: Manifest
    codec: StateCodec
    version: str
    config: ModelConfig
    vocab: ItemVocab

    def __init__(self, manifest: Manifest, sessions: dict[str, ort.InferenceSession]) -> None:
        self.manifest = manifest
        self.config = manifest.config
        self.vocab = manifest.vocab
        self.version = manifest.model_version
        self.codec = StateCodec([f.layout() for f in manifest.state_fields], self.version)
        self.sessions = sessions  # onnxruntime sessions by graph name
        self._graphs = {name: _Graph(s, manifest.graphs[name]) for name, s in sessions.items()}
        self._mask = np.asarray(manifest.chunk_mask, dtype=bool)
        self._popularity = np.asarray(manifest.popularity_scores, dtype=np.float32)
        self._popularity.flags.writeable = False
        initial = {f.name: np.full((1, *f.shape), f.initial, dtype=f.dtype)
                   for f in manifest.state_fields}
        self._initial = self.codec.encode_batch(initial)[0]

    @classmethod
    def load(cls, artifact_dir: str | Path, *, threads: int = 1) -> "StepEngine":
        """Open an artifact (manifest verified against its content hash) with CPU sessions."""
        if threads < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        artifact_dir = Path(artifact_dir)
        manifest = Manifest.load(artifact_dir)
        options = session_options(threads)
        sessions = {
            name: ort.InferenceSession(str(artifact_dir / spec.file), sess_options=options,
                                       providers=["CPUExecutionProvider"])
            for name, spec in manifest.graphs.items()
        }
        return cls(manifest, sessions)

    def graph_calls(self) -> dict[str, int]:
        """How many times each graph has run since load (one run serves a whole batch)."""
        return {name: graph.calls for name, graph in self._graphs.items()}

    @property
    def num_items(self) -> int:
        """Catalogue size I including the padding id 0."""
        return self.config.num_items

    # -- states ----------------------------------------------------------------------------------
    def initial_state(self) -> bytes:
        """The blob of a user with no events (pos 0)."""
        return self._initial

    def state_pos(self, blob: bytes) -> int:
        """Events absorbed by a blob, from its header (works for any model version)."""
        return read_header(blob).pos

    def state_version(self, blob: bytes) -> str:
        """The model version that made a blob, from its header."""
        return read_header(blob).model_version

    def chunk_flags(self, positions: np.ndarray) -> np.ndarray:
        """[B] bool: whether the next event of a state with `positions` events is a chunk time."""
        return self._mask[np.asarray(positions) % len(self._mask)]

    # -- the step --------------------------------------------------------------------------------
    def apply(self, items: Sequence[int], states: Sequence[bytes], *,
              verified: bool = False) -> StepResult:
        """One event per row (rows are different users). items: [B] internal ids in 1..I-1.

        Raises StateVersionError for a blob of another model version, StateFormatError for a
        corrupt one, ValueError for a bad item id or mismatched lengths. verified: the caller has
        checked the blobs (codec.check) or made them here: their crc32 is not computed again.
        """
        timings = dict.fromkeys(STAGES, 0.0)  # a stage that does not run takes exactly 0.0 s
        tic = time.perf_counter()
        items = self._check_items(items, len(states))
        arrays = self.codec.decode_batch(states, verified=verified)
        timings["decode"] += time.perf_counter() - tic
        chunk = self._step(arrays, items, timings)
        scores = self._timed_output(arrays, timings)
        blobs = self._timed_encode(arrays, timings)
        return StepResult(blobs, scores, chunk, arrays["pos"].copy(), timings)

    def apply_sequences(self, items: Sequence[Sequence[int]], states: Sequence[bytes], *,
                        scores: bool = False, verified: bool = False) -> SequenceResult:
        """Several events per row (rows are different users), in order. items: [B] lists of
        internal ids in 1..I-1, of any lengths L_b >= 0.

        The same maths, batch by batch, as calling apply() once per wave k on the rows that have a
        k-th event, but each state is decoded and encoded once and the output layer runs only when
        `scores` is asked for. A row without events keeps its state (and gets its scores). Same
        errors and `verified` as apply().
        """
        timings = dict.fromkeys(STAGES, 0.0)
        tic = time.perf_counter()
        if len(items) != len(states):
            raise ValueError(f"items: expected {len(states)} sequences (one per state), got"
                             f" {len(items)}")
        if not states:
            raise ValueError("items: empty batch")
        lengths = np.fromiter((len(row) for row in items), dtype=np.int64, count=len(items))
        flat = self._check_items([i for row in items for i in row], int(lengths.sum()),
                                 allow_empty=True)
        arrays = self.codec.decode_batch(states, verified=verified)
        # waves[k, b]: the k-th event of row b (0 where row b has fewer events)
        waves = np.zeros((int(lengths.max(initial=0)), len(items)), dtype=np.int64)
        waves.T[np.arange(waves.shape[0]) < lengths[:, None]] = flat
        # flags[b, k]: event k of row b falls on a chunk time (from the row's start position)
        flags = self.chunk_flags(arrays["pos"][:, None] + np.arange(waves.shape[0]))
        timings["decode"] += time.perf_counter() - tic
        first = 0
        # Between two consecutive row lengths the same rows are active: gather them once, step
        # them wave after wave, and put them back once.
        for end in np.unique(lengths[lengths > 0]).tolist():
            active = np.flatnonzero(lengths >= end)
            if active.size == len(items):
                rows, segment = arrays, waves[first:end]
            else:
                rows = {name: value[active] for name, value in arrays.items()}
                segment = waves[first:end, active]
            for wave in segment:
                self._step(rows, wave, timings)
            first = end
            if rows is arrays:
                continue
            tic = time.perf_counter()
            for name, value in rows.items():
                target = arrays[name]
                if not target.flags.writeable:
                    target = arrays[name] = target.copy()
                target[active] = value
            timings["decode"] += time.perf_counter() - tic  # moving rows counts as state handling
        logits = self._timed_output(arrays, timings) if scores else None
        blobs = self._timed_encode(arrays, timings)
        chunk = [flags[row, :length] for row, length in enumerate(lengths.tolist())]
        return SequenceResult(blobs, arrays["pos"].copy(), chunk, logits, timings)

    def _step(self, arrays: dict[str, np.ndarray], items: np.ndarray,
              timings: dict[str, float]) -> np.ndarray:
        """One event per row, in place in `arrays`: the controller for every row, then the memory
        for the chunk rows. Returns [B] bool chunk flags (from each row's pos before the event)."""
        clock = time.perf_counter
        t0 = clock()
        chunk = self._mask[arrays["pos"] % len(self._mask)]
        graph = self._graphs["controller"]
        feeds = {name: arrays[name] for name in graph.inputs if name != "items"}
        feeds["items"] = items
        for name, value in zip(graph.output_fields, graph.run(feeds)):
            arrays[name] = value
        t1 = clock()
        timings["controller"] += t1 - t0
        if "memory" in self._graphs and np.count_nonzero(chunk):
            self._memory(arrays, chunk)
            timings["memory"] += clock() - t1
        return chunk

    def _memory(self, arrays: dict[str, np.ndarray], chunk: np.ndarray) -> None:
        """Write-then-read for the chunk rows, in place in `arrays`."""
        graph = self._graphs["memory"]
        if chunk.all():
            outputs = graph.run({name: arrays[name] for name in graph.inputs})
            for name, value in zip(graph.output_fields, outputs):
                arrays[name] = value
            return
        rows = np.flatnonzero(chunk)
        outputs = graph.run({n: arrays[n][rows] for n in graph.inputs})
        for name, value in zip(graph.output_fields, outputs):
            target = arrays[name]
            if not target.flags.writeable:
                target = arrays[name] = target.copy()
            target[rows] = value

    def _output(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        graph = self._graphs["output"]
        return graph.run({name: arrays[name] for name in graph.inputs})[0]

    def _timed_output(self, arrays: dict[str, np.ndarray], timings: dict[str, float]) -> np.ndarray:
        tic = time.perf_counter()
        scores = self._output(arrays)
        timings["output"] += time.perf_counter() - tic
        return scores

    def _timed_encode(self, arrays: dict[str, np.ndarray], timings: dict[str, float]) -> list[bytes]:
        tic = time.perf_counter()
        blobs = self.codec.encode_batch(arrays)
        timings["encode"] += time.perf_counter() - tic
        return blobs

    def scores(self, states: Sequence[bytes]) -> np.ndarray:
        """[B, I] next-item logits from stored states, without changing them."""
        return self._output(self.codec.decode_batch(states))

    def popularity_scores(self) -> np.ndarray:
        """[I] cold-start scores: log1p of the training count (read-only)."""
        return self._popularity

    # -- ranking ---------------------------------------------------------------------------------
    def top_n(self, scores: np.ndarray, n: int,
              exclude: Sequence[Iterable[int]] | None = None) -> list[list[tuple[int, float]]]:
        """model.ranking.top_n: per row the n best (internal id, score), ties by lower id."""
        return ranking.top_n(scores, n, exclude)

    # -- checks ----------------------------------------------------------------------------------
    def _check_items(self, items: Sequence[int], batch: int, *,
                     allow_empty: bool = False) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64 if len(items) == 0 else None)
        if items.ndim != 1 or items.shape[0] != batch:
            raise ValueError(f"items: expected {batch} ids (one per state), got shape {items.shape}")
        if batch == 0 and not allow_empty:
            raise ValueError("items: empty batch")
        if not np.issubdtype(items.dtype, np.integer):
            raise ValueError(f"items: internal ids must be integers, got {items.dtype}")
        items = items.astype(np.int64, copy=False)
        bad = (items < 1) | (items >= self.config.num_items)
        if bad.any():
            raise ValueError(f"items: id {int(items[bad][0])} outside 1..{self.config.num_items - 1}")
        return items
