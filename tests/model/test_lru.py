"""LRURec: the parallel scan and the recurrent step are the same computation, block by block."""
from __future__ import annotations

import math

import pytest
import torch

from model.config import ModelConfig
from model.lru import R_MAX, R_MIN, LRUBlock, LRURec, linear_scan
from model.network import build_model
from model.state import LRUState, state_fields


def _model(seed: int = 0, **overrides) -> LRURec:
    torch.manual_seed(seed)
    options = dict(num_items=40, model="lrurec", embed_dim=8, hidden_dim=12, layers=3,
                   block_len=10, dropout=0.1)
    options.update(overrides)
    net = build_model(ModelConfig(**options)).double().eval()
    assert isinstance(net, LRURec)
    with torch.no_grad():  # weights of the size a trained model has, not the 0.02 of the init
        for block in net.blocks:
            for linear in (block.in_proj, block.out_proj, block.ffn_in, block.ffn_out):
                linear.weight.normal_(0.0, 0.5)
                linear.bias.normal_(0.0, 0.5)
    return net


def _naive(a: complex, inputs: torch.Tensor) -> torch.Tensor:
    """h_t = a h_{t-1} + b_t one t at a time, on complex128. inputs: [B, L, N] complex."""
    h = torch.zeros_like(inputs[:, 0])
    out = []
    for t in range(inputs.shape[1]):
        h = a * h + inputs[:, t]
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33])
def test_linear_scan_equals_the_recurrence_for_any_length(length):
    generator = torch.Generator().manual_seed(length)
    modulus = torch.rand(5, generator=generator, dtype=torch.float64) * 0.3 + 0.69
    phase = torch.rand(5, generator=generator, dtype=torch.float64) * 2 * math.pi
    a = torch.polar(modulus, phase)
    b = torch.randn(2, length, 5, generator=generator, dtype=torch.complex128)
    re, im = linear_scan(a.real, a.imag, b.real, b.imag)
    expected = _naive(a, b)
    assert (torch.complex(re, im) - expected).abs().max().item() < 1e-12


def test_linear_scan_gradients_are_right():
    generator = torch.Generator().manual_seed(0)
    args = [torch.rand(3, generator=generator, dtype=torch.float64).requires_grad_()
            for _ in range(2)]
    args += [torch.randn(2, 6, 3, generator=generator, dtype=torch.float64).requires_grad_()
             for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *x: linear_scan(*x), args)


def test_parallel_forward_equals_step_by_step_over_several_blocks():
    net = _model()
    items = torch.randint(1, 40, (3, 47), generator=torch.Generator().manual_seed(1))
    # as the trainer does: one scan per block of T = 10 events, each from the carried state
    state, blocks = net.initial_state(3), []
    for start in range(0, items.shape[1], net.config.block_len):
        logits, state = net(items[:, start: start + net.config.block_len], state)
        blocks.append(logits)
    scanned = torch.cat(blocks, 1)
    stepped, step_state = [], net.initial_state(3)
    for t in range(items.shape[1]):
        logits, step_state = net.step(items[:, t], step_state)
        stepped.append(logits)
    assert (scanned - torch.stack(stepped, 1)).abs().max().item() < 1e-9
    for name, a, b in zip(state._fields, state, step_state):
        assert (a.double() - b.double()).abs().max().item() < 1e-9, name
    assert state.h_re.abs().max().item() > 0.1  # a state that has something in it
    whole_logits, whole_state = net(items, net.initial_state(3))  # one scan over all 47
    assert (whole_logits - scanned).abs().max().item() < 1e-9
    assert (whole_state.h_im - state.h_im).abs().max().item() < 1e-9


def test_state_after_each_block_equals_the_step_state():
    net = _model(seed=3, layers=1)
    items = torch.randint(1, 40, (2, 30), generator=torch.Generator().manual_seed(2))
    state, step_state = net.initial_state(2), net.initial_state(2)
    for start in range(0, 30, 10):
        _, state = net(items[:, start: start + 10], state)
        for t in range(start, start + 10):
            _, step_state = net.step(items[:, t], step_state)
        for name, a, b in zip(state._fields, state, step_state):
            assert (a.double() - b.double()).abs().max().item() < 1e-9, (start, name)
    assert torch.equal(state.pos, torch.full((2,), 30))


def test_padding_after_the_last_event_changes_nothing_before_it():
    net = _model()
    items = torch.randint(1, 40, (1, 12), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([items, torch.zeros(1, 5, dtype=torch.long)], 1)
    short, _ = net(items, net.initial_state(1))
    long, _ = net(padded, net.initial_state(1))
    assert (long[:, :12] - short).abs().max().item() < 1e-12


def test_eigenvalues_stay_inside_the_unit_circle_and_start_on_the_ring():
    torch.manual_seed(0)
    block = LRUBlock(embed_dim=4, state_dim=500, dropout=0.0).double()
    re, im = block.eigenvalues()
    modulus = torch.sqrt(re ** 2 + im ** 2)
    assert R_MIN - 1e-9 <= modulus.min().item() and modulus.max().item() <= R_MAX + 1e-9
    gamma = torch.exp(block.gamma_log)
    assert torch.allclose(gamma, torch.sqrt(1 - modulus ** 2))  # input normalisation
    with torch.no_grad():  # any nu_log, however trained, keeps |lambda| < 1
        block.nu_log.copy_(torch.linspace(-30, 5, 500, dtype=torch.float64))
    re, im = block.eigenvalues()
    assert (re ** 2 + im ** 2).max().item() < 1.0


def test_the_state_layout_and_the_tied_scores():
    net = _model(layers=2)
    config = net.config
    fields = state_fields(config)
    assert [f.name for f in fields] == list(LRUState._fields)
    assert {f.name: f.shape for f in fields} == {"h_re": (2, 12), "h_im": (2, 12), "out": (8,),
                                                "pos": ()}
    state = net.initial_state(2)
    for spec, value in zip(fields, state):
        assert tuple(value.shape[1:]) == spec.shape
    assert not hasattr(net, "decode")  # no separate output matrix: scores use E
    logits, state = net.step(torch.tensor([3, 5]), state)
    expected = state.out @ net.embedding.weight.T + net.bias
    assert (logits - expected).abs().max().item() < 1e-12
    assert torch.all(net.embedding.weight[0] == 0)


def test_config_forces_no_chunk_rule_and_checks_layers():
    assert ModelConfig(num_items=10, model="lrurec", rule="tsc").rule == "none"
    with pytest.raises(ValueError, match="layers"):
        ModelConfig(num_items=10, model="lrurec", layers=0)
