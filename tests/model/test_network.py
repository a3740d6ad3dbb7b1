"""The step-by-step and the full-sequence forward are the same computation (DESIGN.md section 2)."""
import pytest
import torch

from model.config import ModelConfig
from model.network import build_model

VARIANTS = [
    ("cmnrec", "pec"), ("cmnrec", "tsc"), ("cmnrec", "exc"),
    ("srmn", "every"), ("lstm4rec", "none"), ("gru4rec", "none"), ("lrurec", "none"),
]


def _model(model, rule, seed=0, **overrides):
    torch.manual_seed(seed)
    options = dict(num_items=40, model=model, rule=rule if model == "cmnrec" else "tsc",
                   embed_dim=8, hidden_dim=12, mem_width=6, read_heads=2, attn_dim=5,
                   block_len=10, slots=3)
    options.update(overrides)
    return build_model(ModelConfig(**options)).double().eval()


NORMED = dict(input_norm=True, head="ffn")  # LayerNorm on the embedding, the ffn output head


@pytest.mark.parametrize(("model", "rule", "extra"), [*((m, r, {}) for m, r in VARIANTS),
                                                      ("cmnrec", "tsc", NORMED),
                                                      ("srmn", "every", NORMED),
                                                      ("gru4rec", "none", NORMED)])
def test_step_by_step_equals_full_sequence_over_several_blocks(model, rule, extra):
    net = _model(model, rule, **extra)
    items = torch.randint(1, 40, (3, 37), generator=torch.Generator().manual_seed(1))
    full_logits, full_state = net(items, net.initial_state(3))
    state, step_logits = net.initial_state(3), []
    for t in range(items.shape[1]):
        logits, state = net.step(items[:, t], state)
        step_logits.append(logits)
    assert (full_logits - torch.stack(step_logits, 1)).abs().max().item() < 1e-9
    for name, a, b in zip(state._fields, full_state, state):
        assert (a.double() - b.double()).abs().max().item() < 1e-9, name
    assert torch.equal(state.pos, torch.full((3,), 37))


@pytest.mark.parametrize(("model", "rule"), VARIANTS)
def test_forward_in_pieces_equals_one_pass(model, rule):
    net = _model(model, rule)
    items = torch.randint(1, 40, (2, 25), generator=torch.Generator().manual_seed(2))
    whole, whole_state = net(items, net.initial_state(2))
    first, state = net(items[:, :7], net.initial_state(2))
    second, state = net(items[:, 7:], state)
    assert (torch.cat([first, second], 1) - whole).abs().max().item() < 1e-9
    assert torch.equal(state.pos, whole_state.pos)


def test_users_at_different_block_positions_step_together():
    net = _model("cmnrec", "tsc")
    items = torch.randint(1, 40, (2, 30), generator=torch.Generator().manual_seed(3))
    # user 0 is 4 events ahead, so the two rows hit chunk times at different steps
    _, ahead = net(items[:1, :4], net.initial_state(1))
    fresh = net.initial_state(1)
    mixed = type(ahead)(*[torch.cat([a, b]) for a, b in zip(ahead, fresh)])
    alone0, alone1 = ahead, fresh
    for t in range(20):
        logits, mixed = net.step(torch.stack([items[0, 4 + t], items[1, t]]), mixed)
        l0, alone0 = net.step(items[0, 4 + t].view(1), alone0)
        l1, alone1 = net.step(items[1, t].view(1), alone1)
        assert (logits - torch.cat([l0, l1])).abs().max().item() < 1e-9


def test_memory_changes_only_at_chunk_times():
    net = _model("cmnrec", "pec", block_len=10, slots=2)  # chunk times q = 5, 10
    state = net.initial_state(1)
    items = torch.randint(1, 40, (20,), generator=torch.Generator().manual_seed(4))
    for t in range(20):
        before = state
        _, state = net.step(items[t].view(1), state)
        changed = not torch.equal(before.memory, state.memory)
        assert changed == ((t % 10) + 1 in (5, 10)), t
        if not changed:
            assert torch.equal(before.read, state.read)
            assert torch.equal(state.h, state.out)


def test_running_attention_summary_equals_attention_over_the_raw_buffer():
    net = _model("cmnrec", "pec", block_len=10, slots=2)  # chunk time at q = 5
    items = torch.randint(1, 40, (2, 15), generator=torch.Generator().manual_seed(5))
    state = net.initial_state(2)
    _, state = net(items[:, :5], state)  # the first chunk: memory now holds something
    buffer = []
    read_during_chunk = state.read.flatten(1)
    for t in range(5, 10):  # the second chunk ends at q = 10
        _, state = net.step(items[:, t], state)
        buffer.append(state.out)
    expected = net.attention.attend(torch.stack(buffer, 1), read_during_chunk)
    assert (state.h - expected).abs().max().item() < 1e-12
    # the buffer is emptied at the chunk time
    assert torch.equal(state.attn_sum, torch.zeros_like(state.attn_sum))
    assert torch.equal(state.attn_norm, torch.zeros_like(state.attn_norm))


def test_running_summary_fold_equals_softmax_for_any_scores():
    net = _model("cmnrec", "tsc")
    generator = torch.Generator().manual_seed(6)
    outputs = torch.randn(3, 7, 12, generator=generator, dtype=torch.float64)
    read = torch.randn(3, 12, generator=generator, dtype=torch.float64)
    context = net.attention.context(read)
    m = torch.full((3,), -1e30, dtype=torch.float64)
    s = torch.zeros(3, dtype=torch.float64)
    n = torch.zeros(3, 12, dtype=torch.float64)
    for j in range(7):
        score = net.attention.score(outputs[:, j], context)
        m, s, n = net.attention.fold(m, s, n, score, outputs[:, j])
    expected = net.attention.attend(outputs, read)
    assert (net.attention.readout(s, n) - expected).abs().max().item() < 1e-12


def test_padding_item_has_a_zero_embedding():
    net = _model("cmnrec", "tsc")
    assert torch.all(net.embedding.weight[0] == 0)


def test_ffn_head_is_layernorm_then_a_residual_feed_forward():
    net = _model("cmnrec", "tsc", **NORMED)
    features = torch.randn(4, 12 + 2 * 6, dtype=torch.float64)
    u = torch.nn.functional.layer_norm(net.combine(features), (8,), net.head_norm.weight,
                                       net.head_norm.bias)
    inner = torch.nn.functional.gelu(u @ net.head_in.weight.T + net.head_in.bias)
    expected = torch.nn.functional.layer_norm(u + inner @ net.head_out.weight.T + net.head_out.bias,
                                              (8,), net.head_out_norm.weight, net.head_out_norm.bias)
    assert (net.project(features) - expected).abs().max().item() < 1e-12
    # a linear head is the combine layer alone, and the embedding is normalised only when asked
    plain = _model("cmnrec", "tsc")
    assert (plain.project(features) - plain.combine(features)).abs().max().item() < 1e-12
    items = torch.tensor([[3, 5, 7]])
    assert (net.embed(items) - net.input_norm(net.embedding(items))).abs().max().item() < 1e-12
    assert torch.equal(plain.embed(items), plain.embedding(items))
    assert torch.allclose(net.embed(items).mean(-1), torch.zeros(1, 3, dtype=torch.float64),
                          atol=1e-9)


def test_a_tied_ffn_head_starts_with_small_logits():
    # its output is LayerNorm'd, so N(0, 1) embeddings gave logits of std ~sqrt(k) and stalled
    # training (ML-1M, k=128: masked validation NDCG@10 0.018 after one epoch against 0.130 untied)
    net = _model("cmnrec", "tsc", embed_dim=32, tied=True, **NORMED)
    weights = net.embedding.weight.detach()
    assert float(weights[1:].std()) < 0.05 and not weights[0].any()
    with torch.no_grad():
        logits, _ = net(torch.randint(1, 40, (4, 6)), net.initial_state(4))
    assert float(logits.std()) < 1.0
    untied = _model("cmnrec", "tsc", embed_dim=32, **NORMED)
    assert float(untied.embedding.weight.detach()[1:].std()) > 0.5  # the others keep torch's N(0, 1)


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="rule"):
        ModelConfig(num_items=10, model="cmnrec", rule="every")
    with pytest.raises(ValueError, match="slots"):
        ModelConfig(num_items=10, block_len=3, slots=4)
    with pytest.raises(ValueError, match="model"):
        ModelConfig(num_items=10, model="transformer")
    assert ModelConfig(num_items=10, model="srmn", rule="tsc").rule == "every"
    with pytest.raises(ValueError, match="head: expected one of"):
        ModelConfig(num_items=10, head="mlp")
    for model in ("lrurec", "sasrec", "pop"):  # they have their own normalisation and output
        with pytest.raises(ValueError, match="input_norm: only"):
            ModelConfig(num_items=10, model=model, input_norm=True)
        with pytest.raises(ValueError, match="head: only"):
            ModelConfig(num_items=10, model=model, head="ffn")
