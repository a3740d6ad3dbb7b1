import pytest
import torch

from model import addressing


@pytest.fixture(autouse=True)
def _float64_by_default():
    """These hand cases are written with plain literals; compute them in float64, then restore."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_allocation_goes_to_the_free_slot():
    usage = torch.tensor([[0.9, 0.8, 0.0, 0.7]])
    allocation = addressing.allocation_weights(usage)
    assert allocation.argmax().item() == 2
    assert allocation[0, 2].item() > 0.999


def test_allocation_matches_hand_computed_values():
    usage = torch.tensor([[0.5, 0.2, 0.9]])
    # sorted by usage: slot 1 (0.2), slot 0 (0.5), slot 2 (0.9)
    expected = torch.tensor([[0.5 * 0.2, 0.8, 0.1 * 0.2 * 0.5]])
    assert torch.allclose(addressing.allocation_weights(usage), expected, atol=1e-5)


def test_allocation_breaks_ties_by_lower_index():
    allocation = addressing.allocation_weights(torch.zeros(1, 4))
    assert allocation[0, 0].item() > 0.999
    assert allocation[0, 1:].abs().max().item() < 1e-5


def test_full_write_to_allocated_slot():
    memory = torch.ones(1, 4, 3)
    usage = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    allocation = addressing.allocation_weights(usage)
    content = torch.full((1, 4), 0.25)
    weights = addressing.write_weighting(allocation, content, torch.ones(1, 1), torch.ones(1, 1))
    add = torch.tensor([[7.0, 8.0, 9.0]])
    new_memory = addressing.erase_and_add(memory, weights, torch.ones(1, 3), add)
    assert torch.allclose(new_memory[0, 2], add[0], atol=1e-4)
    assert torch.allclose(new_memory[0, [0, 1, 3]], torch.ones(3, 3), atol=1e-4)


def test_usage_update_hand_case():
    usage = torch.tensor([[0.5, 0.0]])
    write = torch.tensor([[0.5, 1.0]])
    free = torch.tensor([[1.0]])
    read = torch.tensor([[[0.0, 0.5]]])
    # u + w - u*w = [0.75, 1.0]; retention = 1 - f*w^r = [1, 0.5]
    expected = torch.tensor([[0.75, 0.5]])
    assert torch.allclose(addressing.usage_update(usage, write, free, read), expected)


def test_cosine_weights_focus_on_the_matching_row():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    weights = addressing.cosine_weights(memory, torch.tensor([[[0.0, 2.0]]]), torch.tensor([[50.0]]))
    assert weights.argmax().item() == 1
    assert torch.allclose(weights.sum(-1), torch.ones(1, 1))


def test_link_matrix_has_zero_diagonal_and_rows_summing_to_at_most_one():
    torch.manual_seed(0)
    batch, slots = 5, 6
    link = torch.zeros(batch, slots, slots)
    precedence = torch.zeros(batch, slots)
    for _ in range(20):
        write = torch.softmax(torch.randn(batch, slots) * 3, -1) * torch.rand(batch, 1)
        link = addressing.link_update(link, precedence, write)
        precedence = addressing.precedence_update(precedence, write)
        assert torch.all(torch.diagonal(link, dim1=1, dim2=2) == 0)
        assert torch.all(link >= -1e-12) and torch.all(link <= 1 + 1e-12)
        assert torch.all(link.sum(-1) <= 1 + 1e-9)
        assert torch.all(link.sum(-2) <= 1 + 1e-9)
        assert torch.all(precedence.sum(-1) <= 1 + 1e-9)


def test_link_records_write_order_and_forward_read_follows_it():
    slots = 3
    link = torch.zeros(1, slots, slots)
    precedence = torch.zeros(1, slots)
    for slot in (0, 1, 2):  # write slot 0, then 1, then 2
        write = torch.nn.functional.one_hot(torch.tensor([slot]), slots).double()
        link = addressing.link_update(link, precedence, write)
        precedence = addressing.precedence_update(precedence, write)
    read_at_slot_0 = torch.tensor([[[1.0, 0.0, 0.0]]])
    forward = addressing.directional_weights(link, read_at_slot_0, forward=True)
    assert forward.argmax().item() == 1  # slot 1 was written right after slot 0
    read_at_slot_2 = torch.tensor([[[0.0, 0.0, 1.0]]])
    backward = addressing.directional_weights(link, read_at_slot_2, forward=False)
    assert backward.argmax().item() == 1  # slot 1 was written right before slot 2
