import torch

from model.memory import DNCMemory, MemoryState


def _state(batch, slots, width, heads, generator):
    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    read = torch.softmax(torch.randn(batch, heads, slots, generator=generator,
                                     dtype=torch.float64), -1)
    write = torch.softmax(torch.randn(batch, slots, generator=generator, dtype=torch.float64), -1)
    link = rand(batch, slots, slots) / slots * (1 - torch.eye(slots, dtype=torch.float64))
    return MemoryState(memory=torch.randn(batch, slots, width, generator=generator,
                                          dtype=torch.float64),
                       usage=rand(batch, slots) * 0.9, link=link, precedence=rand(batch, slots) / slots,
                       write_weights=write * 0.5, read_weights=read)


def test_gradient_check_through_write_then_read():
    generator = torch.Generator().manual_seed(0)
    module = DNCMemory(input_size=5, slots=4, width=3, read_heads=2).double()
    state = _state(2, 4, 3, 2, generator)
    output = torch.randn(2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    memory = state.memory.clone().requires_grad_(True)

    def run(o, m):
        read, new_state = module.step(o, state._replace(memory=m))
        return read, new_state.memory, new_state.link, new_state.read_weights

    assert torch.autograd.gradcheck(run, (output, memory), eps=1e-6, atol=1e-5)


def test_step_shapes_and_normalisation():
    generator = torch.Generator().manual_seed(1)
    module = DNCMemory(input_size=5, slots=4, width=3, read_heads=2).double()
    read, new_state = module.step(torch.randn(2, 5, dtype=torch.float64),
                                  _state(2, 4, 3, 2, generator))
    assert read.shape == (2, 2, 3)
    assert new_state.memory.shape == (2, 4, 3)
    assert torch.all(new_state.write_weights.sum(-1) <= 1 + 1e-9)
    assert torch.all(new_state.read_weights.sum(-1) <= 1 + 1e-9)
    assert torch.all((new_state.usage >= 0) & (new_state.usage <= 1))
