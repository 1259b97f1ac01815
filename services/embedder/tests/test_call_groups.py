"""How texts of different lengths are cut into model calls."""

from __future__ import annotations

import pytest

from ragfleet_embedder.model import CALL_COST_TOKENS, call_groups

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("lengths", "max_size"),
    [([], 4), ([7], 4), ([30] * 10, 4), ([5, 80, 6, 7, 120, 9, 11], 3), (list(range(100)), 64)],
)
def test_every_text_is_in_exactly_one_call_of_at_most_max_size(
    lengths: list[int], max_size: int
) -> None:
    groups = call_groups(lengths, max_size)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(1 <= len(group) <= max_size for group in groups)


def test_texts_of_one_length_share_calls() -> None:
    assert call_groups([20] * 8, 64) == [list(range(8))]


def test_a_long_text_does_not_pad_short_ones() -> None:
    lengths = [12, 14, 11, 200, 13, 12, 15, 14]
    groups = call_groups(lengths, 64)
    assert groups[-1] == [3]
    assert sorted(groups[0]) == [0, 1, 2, 4, 5, 6, 7]


def test_a_small_difference_is_not_worth_another_call() -> None:
    short, long = 20, 20 + CALL_COST_TOKENS // 4
    assert len(call_groups([short, short, long, long], 64)) == 1


def test_calls_hold_neighbouring_lengths_shortest_first() -> None:
    lengths = [300, 10, 150, 11, 151, 301]
    groups = call_groups(lengths, 2)
    assert groups == [[1, 3], [2, 4], [0, 5]]
