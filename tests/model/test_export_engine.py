"""Export + onnxruntime engine parity with the PyTorch model, batching, chunk-only memory, ranking."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from data.dataset import ItemVocab
from model.codec import StateFormatError, StateVersionError
from model.config import ModelConfig
from model.engine import StepEngine
from model.manifest import ArtifactError, Manifest
from model.network import build_model
from model.schedule import chunk_mask, is_chunk_event
from model.state import NEG_INF
from training.checkpoint import save_run
from training.export_run import export_run

NUM_ITEMS = 30
EVENTS = 17  # over three blocks of T = 5
VARIANTS = {
    "cmnrec-pec": ("cmnrec", "pec"),
    "cmnrec-tsc": ("cmnrec", "tsc"),
    "cmnrec-exc": ("cmnrec", "exc"),
    "srmn": ("srmn", "every"),
    "lstm4rec": ("lstm4rec", "none"),
    "gru4rec": ("gru4rec", "none"),
    "lrurec": ("lrurec", "none"),
    "cmnrec-tsc-tied": ("cmnrec", "tsc"),  # output layer tied to the item embeddings
    "gru4rec-tied": ("gru4rec", "none"),
    "cmnrec-tsc-ffn": ("cmnrec", "tsc"),  # LayerNorm on the embedding, the ffn output head
    "gru4rec-ffn": ("gru4rec", "none"),
}
MEMORY_VARIANTS = ("cmnrec-pec", "cmnrec-tsc", "cmnrec-exc", "srmn")


def tiny_config(model: str, rule: str, tied: bool = False, normed: bool = False) -> ModelConfig:
    return ModelConfig(num_items=NUM_ITEMS, model=model, rule=rule, embed_dim=8, hidden_dim=12,
                       mem_width=6, read_heads=2, attn_dim=5, block_len=5, slots=2, tied=tied,
                       input_norm=normed, head="ffn" if normed else "linear")


def item_counts() -> np.ndarray:
    counts = np.array([0] + [(7 * i) % 11 for i in range(1, NUM_ITEMS)], dtype=np.int64)
    return counts


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{variant: (run dir, artifact dir)} of tiny random models."""
    root = tmp_path_factory.mktemp("export")
    vocab = ItemVocab.from_items([f"m{i}" for i in range(1, NUM_ITEMS)],
                                 titles={"m1": "First movie"})
    out = {}
    for seed, (name, (model, rule)) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed)
        network = build_model(tiny_config(model, rule, tied=name.endswith("-tied"),
                                          normed=name.endswith("-ffn"))).float()
        run_dir = save_run(root / "runs" / name, network, vocab, item_counts(),
                           {"seed": seed}).parent
        out[name] = (run_dir, export_run(run_dir, root / "artifacts" / name))
    return out


def torch_model(run_dir: Path) -> torch.nn.Module:
    from training.checkpoint import load_run

    return load_run(run_dir).model.float()  # the float32 reference the graphs must match


def events(seed: int, length: int = EVENTS) -> list[int]:
    return np.random.default_rng(seed).integers(1, NUM_ITEMS, size=length).tolist()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_torch_step_and_forward(variant: str, exported) -> None:
    run_dir, artifact = exported[variant]
    model = torch_model(run_dir)
    engine = StepEngine.load(artifact)
    items = events(11)
    with torch.no_grad():
        full_logits, _ = model(torch.tensor([items]), model.initial_state(1))
        state = model.initial_state(1)
        blob = engine.initial_state()
        np.testing.assert_array_equal(engine.codec.decode(blob)["pos"], 0)
        for t, item in enumerate(items):
            logits, state = model.step(torch.tensor([item]), state)
            result = engine.apply([item], [blob])
            blob = result.states[0]
            np.testing.assert_allclose(result.scores[0], logits[0].numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(result.scores[0], full_logits[0, t].numpy(), atol=1e-4,
                                       rtol=0)
            decoded = engine.codec.decode(blob)
            for name, value in state._asdict().items():
                np.testing.assert_allclose(decoded[name], value[0].numpy(), atol=1e-5, rtol=0,
                                           err_msg=f"{variant} event {t} field {name}")
            assert result.positions.tolist() == [t + 1] == [engine.state_pos(blob)]
            config = engine.config
            mask = chunk_mask(config.block_len, config.slots, config.rule)
            assert bool(result.chunk[0]) == is_chunk_event(t, mask)
            np.testing.assert_allclose(engine.scores([blob])[0], result.scores[0], atol=1e-6)


@pytest.mark.parametrize("variant", ["cmnrec-tsc", "srmn", "lstm4rec", "lrurec"])
def test_batch_of_users_equals_one_by_one(variant: str, exported) -> None:
    engine = StepEngine.load(exported[variant][1])
    histories = [events(seed, length) for seed, length in enumerate((0, 1, 3, 4, 6, 9))]
    blobs = []
    for history in histories:  # bring each user to its own position, one event at a time
        blob = engine.initial_state()
        for item in history:
            blob = engine.apply([item], [blob]).states[0]
        blobs.append(blob)
    next_items = events(99, len(histories))
    batch = engine.apply(next_items, blobs)
    if engine.config.has_memory and engine.config.rule != "every":
        assert batch.chunk.any() and not batch.chunk.all()  # both kinds of row in one call
    for row, (item, blob) in enumerate(zip(next_items, blobs)):
        single = engine.apply([item], [blob])
        np.testing.assert_allclose(batch.scores[row], single.scores[0], atol=1e-6, rtol=0)
        assert batch.chunk[row] == single.chunk[0]
        assert batch.positions[row] == single.positions[0] == len(histories[row]) + 1
        got, want = engine.codec.decode(batch.states[row]), engine.codec.decode(single.states[0])
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=0)
    np.testing.assert_allclose(engine.scores(batch.states), batch.scores, atol=1e-6)


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_memory_graph_runs_only_at_chunk_times(variant: str, exported) -> None:
    engine = StepEngine.load(exported[variant][1])
    config = engine.config
    mask = chunk_mask(config.block_len, config.slots, config.rule)
    blob = engine.initial_state()
    for t, item in enumerate(events(5)):
        before = engine.graph_calls()
        result = engine.apply([item], [blob])
        blob = result.states[0]
        after = engine.graph_calls()
        chunk = is_chunk_event(t, mask)
        assert after["memory"] - before["memory"] == int(chunk)
        assert after["controller"] - before["controller"] == 1
        assert after["output"] - before["output"] == 1
        assert (result.timings["memory"] > 0.0) == chunk  # 0.0 exactly when it did not run
    assert set(result.timings) == {"decode", "controller", "memory", "output", "encode"}
    # a batch with some chunk rows still runs the memory graph once, for those rows only
    if config.rule != "every":
        blobs = [engine.initial_state(), blob]
        positions = [0, EVENTS]
        flags = [is_chunk_event(p, mask) for p in positions]
        before = engine.graph_calls()["memory"]
        engine.apply([1, 2], blobs)
        assert engine.graph_calls()["memory"] - before == int(any(flags))


def test_recurrent_artifacts_have_no_memory_graph(exported) -> None:
    for variant in ("lstm4rec", "gru4rec", "lrurec"):
        engine = StepEngine.load(exported[variant][1])
        assert "memory" not in engine.graph_calls()
        result = engine.apply([3], [engine.initial_state()])
        assert result.timings["memory"] == 0.0 and not result.chunk.any()


def test_manifest_content(exported) -> None:
    artifact = exported["cmnrec-tsc"][1]
    manifest = Manifest.load(artifact)
    data = json.loads((artifact / "manifest.json").read_text())
    assert data["model_version"] == manifest.model_version and len(manifest.model_version) == 16
    assert manifest.config == tiny_config("cmnrec", "tsc")
    assert manifest.chunk_mask == chunk_mask(5, 2, "tsc") and manifest.chunk_times[-1] == 5
    names = [f.name for f in manifest.state_fields]
    assert names == list(build_model(manifest.config).initial_state(1)._fields)
    assert {f.name: f.initial for f in manifest.state_fields}["attn_max"] == np.float32(NEG_INF)
    assert manifest.vocab.decode(1) == "m1" and manifest.vocab.title("m1") == "First movie"
    counts = item_counts()
    np.testing.assert_allclose(manifest.popularity_scores[1:], np.log1p(counts[1:]))
    ranking = manifest.popularity_ranking
    assert sorted(ranking) == list(range(1, NUM_ITEMS))
    assert all((counts[a], -a) > (counts[b], -b) for a, b in zip(ranking, ranking[1:]))
    for name in ("controller", "memory", "output"):
        assert (artifact / manifest.graphs[name].file).is_file()
    assert manifest.graphs["controller"].inputs[0] == "items"
    assert manifest.graphs["output"].outputs == ["scores"]
    assert all(o.startswith("next_") for o in manifest.graphs["memory"].outputs)


def test_lrurec_manifest_declares_the_complex_state_as_float_pairs(exported) -> None:
    manifest = Manifest.load(exported["lrurec"][1])
    assert set(manifest.graphs) == {"controller", "output"}  # no memory graph
    assert manifest.graphs["controller"].inputs == ["items", "h_re", "h_im", "pos"]
    assert manifest.graphs["controller"].outputs == ["next_h_re", "next_h_im", "next_out",
                                                     "next_pos"]
    assert manifest.graphs["output"].inputs == ["out"]
    layers, N, k = manifest.config.layers, manifest.config.hidden_dim, manifest.config.embed_dim
    fields = {f.name: f for f in manifest.state_fields}
    assert list(fields) == ["h_re", "h_im", "out", "pos"]
    assert fields["h_re"].shape == fields["h_im"].shape == (layers, N)
    assert fields["h_re"].dtype == "float32" and fields["pos"].dtype == "int64"
    assert all(f.initial == 0.0 for f in fields.values())
    assert manifest.state_payload_bytes == 2 * layers * N * 4 + k * 4 + 8
    assert not any(manifest.chunk_mask)


def test_reexport_is_atomic_and_reproducible(exported, tmp_path: Path) -> None:
    run_dir, artifact = exported["cmnrec-pec"]
    first = Manifest.load(artifact).model_version
    again = export_run(run_dir, tmp_path / "again")
    assert Manifest.load(again).model_version == first  # content hash, not time or path
    export_run(run_dir, again)  # replacing an existing artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp dirs left behind
    other = Manifest.load(exported["cmnrec-exc"][1]).model_version
    assert other != first


def test_state_of_another_model_version_is_refused(exported) -> None:
    pec = StepEngine.load(exported["cmnrec-pec"][1])
    tsc = StepEngine.load(exported["cmnrec-tsc"][1])
    blob = pec.apply([4], [pec.initial_state()]).states[0]
    assert tsc.state_version(blob) == pec.version != tsc.version
    assert tsc.state_pos(blob) == 1
    with pytest.raises(StateVersionError):
        tsc.apply([4], [blob])
    with pytest.raises(StateVersionError):
        tsc.scores([blob])
    with pytest.raises(StateFormatError):
        pec.apply([4], [blob[:-1]])


def test_bad_items_are_refused(exported) -> None:
    engine = StepEngine.load(exported["cmnrec-tsc"][1])
    blob = engine.initial_state()
    for bad in ([0], [NUM_ITEMS], [-1]):
        with pytest.raises(ValueError, match="items"):
            engine.apply(bad, [blob])
    with pytest.raises(ValueError, match="items"):
        engine.apply([1, 2], [blob])
    with pytest.raises(ValueError, match="items"):
        engine.apply([], [])


def test_top_n_ranking_rules(exported) -> None:
    engine = StepEngine.load(exported["lstm4rec"][1])
    scores = np.array([[9.0, 1.0, 3.0, 3.0, 2.0, 3.0],
                       [9.0, 5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    top = engine.top_n(scores, 3)
    assert top[0] == [(2, 3.0), (3, 3.0), (5, 3.0)]  # ties by lower id; padding 0 never
    assert top[1] == [(1, 5.0), (2, 4.0), (3, 3.0)]
    assert engine.top_n(scores, 2)[0] == [(2, 3.0), (3, 3.0)]
    excluded = engine.top_n(scores, 10, exclude=[[2, 5, 0, 77], []])
    assert [i for i, _ in excluded[0]] == [3, 4, 1]
    assert [i for i, _ in excluded[1]] == [1, 2, 3, 4, 5]
    assert engine.top_n(scores, 0) == [[], []]
    assert engine.top_n(scores[0], 1) == [[(2, 3.0)]]
    with pytest.raises(ValueError, match="n"):
        engine.top_n(scores, -1)
    popular = engine.top_n(engine.popularity_scores(), NUM_ITEMS)[0]
    assert [i for i, _ in popular] == engine.manifest.popularity_ranking
    big = np.random.default_rng(0).standard_normal((3, 500)).astype(np.float32)
    for row, got in zip(big, engine.top_n(big, 20)):
        order = sorted(range(1, 500), key=lambda i: (-row[i], i))[:20]
        assert [i for i, _ in got] == order


def test_export_refuses_popularity_model(tmp_path: Path) -> None:
    config = ModelConfig(num_items=NUM_ITEMS, model="pop")
    model = build_model(config)
    vocab = ItemVocab.from_items([f"m{i}" for i in range(1, NUM_ITEMS)])
    run_dir = save_run(tmp_path / "pop", model, vocab, item_counts()).parent
    with pytest.raises(ValueError, match="popularity"):
        export_run(run_dir, tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_export_refuses_sasrec_with_a_reason(tmp_path: Path) -> None:
    config = ModelConfig(num_items=NUM_ITEMS, model="sasrec", embed_dim=8, hidden_dim=12, max_len=6)
    vocab = ItemVocab.from_items([f"m{i}" for i in range(1, NUM_ITEMS)])
    run_dir = save_run(tmp_path / "sasrec", build_model(config), vocab, item_counts()).parent
    with pytest.raises(ValueError, match="sasrec is stateless .* no fixed-size state"):
        export_run(run_dir, tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_broken_artifacts_give_clear_errors(exported, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a directory"):
        StepEngine.load(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="manifest.json"):
        StepEngine.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        Manifest.load(tmp_path)
    source = exported["gru4rec"][1]
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in source.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    Manifest.load(copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["vocab"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="vocab"):
        Manifest.load(copy)
    (copy / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    graph = copy / "output.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="hash"):
        Manifest.load(copy)
    graph.unlink()
    with pytest.raises(ArtifactError, match="output.onnx"):
        Manifest.load(copy)


def test_export_command(exported, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "nope"), "--out",
                                 str(tmp_path / "a")])
    assert result.exit_code != 0 and "--run" in result.output
    run_dir = exported["srmn"][0]
    result = runner.invoke(app, ["export", "--run", str(run_dir), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    version = Manifest.load(tmp_path / "a").model_version
    assert version in result.output and "memory.onnx" in result.output


def test_engine_imports_without_torch(exported) -> None:
    artifact = exported["cmnrec-tsc"][1]
    script = textwrap.dedent(f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, BlockTorch())
        import model.engine, model.codec, model.manifest
        engine = model.engine.StepEngine.load({str(artifact)!r})
        result = engine.apply([3], [engine.initial_state()])
        assert result.scores.shape == (1, {NUM_ITEMS})
        assert "torch" not in sys.modules
        print("ok")
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
