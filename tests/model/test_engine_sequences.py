"""StepEngine.apply_sequences: several events per user in one call equal repeated apply() calls."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from data.dataset import ItemVocab
from model.codec import StateFormatError, StateVersionError
from model.engine import StepEngine
from model.network import build_model
from tests.model.test_export_engine import NUM_ITEMS, item_counts, tiny_config
from training.checkpoint import save_run
from training.export_run import export_run

VARIANTS = {
    "cmnrec-tsc": ("cmnrec", "tsc"),
    "cmnrec-pec": ("cmnrec", "pec"),
    "srmn": ("srmn", "every"),
    "lstm4rec": ("lstm4rec", "none"),
    "gru4rec": ("gru4rec", "none"),
}
START_POSITIONS = (0, 3, 4, 9, 12, 2)  # T = 5: rows start inside different blocks
LENGTHS = (7, 0, 1, 12, 3, 6)  # different lengths, one row without events


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StepEngine]:
    """{variant: engine} of tiny random models (T=5, M=2)."""
    root = tmp_path_factory.mktemp("sequences")
    vocab = ItemVocab.from_items([f"m{i}" for i in range(1, NUM_ITEMS)])
    out = {}
    for seed, (name, (model, rule)) in enumerate(VARIANTS.items()):
        torch.manual_seed(100 + seed)
        network = build_model(tiny_config(model, rule)).float()
        run_dir = save_run(root / "runs" / name, network, vocab, item_counts()).parent
        out[name] = StepEngine.load(export_run(run_dir, root / "artifacts" / name))
    return out


def random_items(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, NUM_ITEMS, size=length).tolist()


def states_at(engine: StepEngine, positions: tuple[int, ...]) -> list[bytes]:
    """One blob per row, brought to its start position one event at a time."""
    blobs = []
    for row, pos in enumerate(positions):
        blob = engine.initial_state()
        for item in random_items(1000 + row, pos):
            blob = engine.apply([item], [blob]).states[0]
        blobs.append(blob)
    return blobs


def assert_same_state(engine: StepEngine, got: bytes, want: bytes, what: str) -> None:
    got_fields, want_fields = engine.codec.decode(got), engine.codec.decode(want)
    assert got_fields.keys() == want_fields.keys()
    for name in want_fields:
        np.testing.assert_allclose(got_fields[name], want_fields[name], atol=1e-5, rtol=0,
                                   err_msg=f"{what} field {name}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sequences_equal_repeated_apply(variant: str, engines) -> None:
    engine = engines[variant]
    starts = states_at(engine, START_POSITIONS)
    sequences = [random_items(row, length) for row, length in enumerate(LENGTHS)]
    result = engine.apply_sequences(sequences, starts, scores=True)
    assert result.scores is not None and result.scores.shape == (len(starts), NUM_ITEMS)
    for row, (blob, sequence) in enumerate(zip(starts, sequences)):
        flags = []
        scores = engine.scores([blob])[0]
        for item in sequence:  # the reference: one apply() call per event
            step = engine.apply([item], [blob])
            blob, scores = step.states[0], step.scores[0]
            flags.append(bool(step.chunk[0]))
        what = f"{variant} row {row}"
        assert_same_state(engine, result.states[row], blob, what)
        assert int(result.positions[row]) == engine.state_pos(blob) == \
            START_POSITIONS[row] + len(sequence)
        assert engine.state_pos(result.states[row]) == int(result.positions[row])
        assert result.chunk[row].dtype == bool and result.chunk[row].tolist() == flags, what
        np.testing.assert_allclose(result.scores[row], scores, atol=1e-5, rtol=0, err_msg=what)
    if engine.config.has_memory and engine.config.rule != "every":
        every_flag = np.concatenate(result.chunk)
        assert every_flag.any() and not every_flag.all()  # chunk and non-chunk events both ran


@pytest.mark.parametrize("variant", ["cmnrec-tsc", "lstm4rec"])
def test_sequences_equal_apply_per_wave_bit_for_bit(variant: str, engines) -> None:
    """Wave k runs the graphs on exactly the rows apply() would get in wave k: the same bytes."""
    engine = engines[variant]
    blobs = states_at(engine, START_POSITIONS)
    sequences = [random_items(50 + row, length) for row, length in enumerate(LENGTHS)]
    result = engine.apply_sequences(sequences, blobs)
    for k in range(max(LENGTHS)):
        rows = [r for r, sequence in enumerate(sequences) if len(sequence) > k]
        step = engine.apply([sequences[r][k] for r in rows], [blobs[r] for r in rows])
        for j, r in enumerate(rows):
            blobs[r] = step.states[j]
    assert result.states == blobs


@pytest.mark.parametrize("variant", ["cmnrec-tsc", "gru4rec"])
def test_graph_runs_per_call(variant: str, engines) -> None:
    engine = engines[variant]
    starts = states_at(engine, START_POSITIONS)
    sequences = [random_items(7 + row, length) for row, length in enumerate(LENGTHS)]
    before = engine.graph_calls()
    result = engine.apply_sequences(sequences, starts)
    after = engine.graph_calls()
    assert result.scores is None and result.timings["output"] == 0.0
    assert set(result.timings) == {"decode", "controller", "memory", "output", "encode"}
    assert after["controller"] - before["controller"] == max(LENGTHS)  # one run per wave
    assert after["output"] == before["output"]  # no scores asked for: no output layer
    if "memory" in after:
        waves_with_chunks = sum(
            any(len(c) > k and c[k] for c in result.chunk) for k in range(max(LENGTHS)))
        assert waves_with_chunks > 0
        assert after["memory"] - before["memory"] == waves_with_chunks
    with_scores = engine.apply_sequences(sequences, starts, scores=True)
    assert engine.graph_calls()["output"] - after["output"] == 1
    assert with_scores.states == result.states


def test_one_user_and_row_without_events(engines) -> None:
    engine = engines["cmnrec-tsc"]
    blob = engine.initial_state()
    result = engine.apply_sequences([[]], [blob], scores=True)
    assert result.states == [blob] and result.positions.tolist() == [0]
    assert result.chunk[0].shape == (0,)
    np.testing.assert_allclose(result.scores[0], engine.scores([blob])[0], atol=1e-6)
    items = random_items(3, 11)
    single = engine.apply_sequences([items], [blob])
    for item in items:
        blob = engine.apply([item], [blob]).states[0]
    assert single.states == [blob] and single.positions.tolist() == [11]


def test_bad_inputs_are_refused(engines) -> None:
    engine = engines["cmnrec-tsc"]
    blob = engine.initial_state()
    for bad in ([[1, 0]], [[NUM_ITEMS]], [[2], [-1]]):
        with pytest.raises(ValueError, match="items"):
            engine.apply_sequences(bad, [blob] * len(bad))
    with pytest.raises(ValueError, match="items"):
        engine.apply_sequences([[1], [2]], [blob])
    with pytest.raises(ValueError, match="items"):
        engine.apply_sequences([], [])
    with pytest.raises(StateFormatError):
        engine.apply_sequences([[1]], [blob[:-1]])
    other = engines["cmnrec-pec"]
    with pytest.raises(StateVersionError):
        engine.apply_sequences([[1], [2]], [blob, other.initial_state()])
