"""The per-event step compiles (torch.compile, inductor on the CPU, no graph break) and the
compiled model computes what the eager one does."""
from __future__ import annotations

import time

import pytest
import torch

from model.config import ModelConfig
from model.network import build_model
from training.device import compile_steps, eager_steps, uncompile


def test_compiled_steps_equal_eager() -> None:
    """A block of T=4 events with M=2 chunk times: 4 compiled controller steps, 2 compiled memory
    steps, on a state with memory in it; logits and every state field match eager."""
    torch._dynamo.reset()
    config = ModelConfig(num_items=30, rule="pec", embed_dim=8, hidden_dim=8, mem_width=8,
                         attn_dim=4, block_len=4, slots=2)
    torch.manual_seed(0)
    eager = build_model(config).eval()
    compiled = build_model(config).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_steps(compiled, "default")
    items = torch.randint(1, 30, (3, 8))  # two blocks: the second starts from written memory
    began = time.perf_counter()
    with torch.no_grad():
        expected, expected_state = eager(items, eager.initial_state(3), first_pos=0)
        got, got_state = compiled(items, compiled.initial_state(3), first_pos=0)
    print(f"compile + run: {time.perf_counter() - began:.1f} s")
    assert expected_state.memory.abs().sum() > 0  # the memory was written
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(expected_state._fields, got_state, expected_state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_mode_checks() -> None:
    model = build_model(ModelConfig(num_items=10, embed_dim=4, hidden_dim=4, mem_width=4,
                                    attn_dim=4, block_len=4, slots=2))
    assert compile_steps(model, "off") is model and "controller_step" not in vars(model)
    with pytest.raises(ValueError, match="^compile: expected one of"):
        compile_steps(model, "max")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^compile: reduce-overhead .* CUDA"):
            compile_steps(model, "reduce-overhead")


def test_evaluation_and_the_returned_model_use_the_eager_steps() -> None:
    """The trainer evaluates inside eager_steps and returns uncompile(model): no compiled step
    outlives training (torch.compile wraps lazily, so nothing compiles here)."""
    model = build_model(ModelConfig(num_items=10, embed_dim=4, hidden_dim=4, mem_width=4,
                                    attn_dim=4, block_len=4, slots=2))
    compile_steps(model, "default")
    compiled = vars(model)["controller_step"]
    with eager_steps(model):
        assert "controller_step" not in vars(model) and "memory_step" not in vars(model)
    assert vars(model)["controller_step"] is compiled
    uncompile(model)
    assert not {"controller_step", "memory_step", "advance"} & set(vars(model))
