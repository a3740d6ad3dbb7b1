import pytest

from model.schedule import chunk_mask, chunk_times, is_chunk_event


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("pec", (5, 10, 15, 20)), ("tsc", (8, 14, 18, 20)), ("exc", (17, 18, 19, 20))],
)
def test_paper_figure_3(rule, expected):
    assert chunk_times(20, 4, rule) == expected


@pytest.mark.parametrize("rule", ["pec", "tsc", "exc"])
@pytest.mark.parametrize(
    ("block_len", "slots"),
    [(t, m) for t in (5, 20, 50, 100) for m in (1, 2, 4, 6, 9, 12) if m <= t],
)
def test_every_block_has_m_increasing_chunk_times_ending_at_t(rule, block_len, slots):
    times = chunk_times(block_len, slots, rule)
    assert len(times) == slots
    assert list(times) == sorted(set(times))
    assert times[0] >= 1 and times[-1] == block_len


def test_tsc_chunks_grow_towards_the_start():
    times = chunk_times(50, 4, "tsc")  # g = 100 // 20 = 5: lengths from the end 5, 10, 15, rest 20
    assert times == (20, 35, 45, 50)


def test_tsc_falls_back_to_pec_when_g_is_zero():
    assert chunk_times(50, 12, "tsc") == chunk_times(50, 12, "pec")


def test_every_and_none():
    assert chunk_times(6, 2, "every") == (1, 2, 3, 4, 5, 6)
    assert chunk_times(6, 2, "none") == ()


def test_more_slots_than_positions_is_rejected():
    with pytest.raises(ValueError, match="slots"):
        chunk_times(3, 4, "pec")


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="rule"):
        chunk_times(20, 4, "weekly")


def test_schedule_repeats_every_block():
    mask = chunk_mask(20, 4, "tsc")
    assert len(mask) == 20 and sum(mask) == 4
    flagged = [pos for pos in range(60) if is_chunk_event(pos, mask)]
    # pos counts events absorbed before the event, so block position q = pos % T + 1
    assert flagged == [q - 1 + 20 * b for b in range(3) for q in (8, 14, 18, 20)]
