"""The repetition guard that cuts a looping generation."""

from __future__ import annotations

import pytest

from ragfleet_generator.repetition import RepetitionGuard

pytestmark = pytest.mark.unit

MARKERS = "The embedder uses all-MiniLM-L6-v2 " + " ".join(f"[{i}]" for i in range(1, 200))


def cut_at(text: str, step: int = 3) -> int | None:
    """Where the guard stops a stream of ``text`` fed ``step`` characters at a time."""
    guard = RepetitionGuard()
    for i in range(0, len(text), step):
        if guard.feed(text[i : i + step]):
            return i + step
    return None


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        (MARKERS, 100),  # counting citation markers: digits compare as one symbol
        ("The index is rebuilt. " * 20, 3 * 22 + 3),  # a sentence, cut at its third copy
        ("-" * 500, 51),  # a rule of dashes, cut after min_chars
    ],
)
def test_loops_are_cut_early(text: str, limit: int) -> None:
    at = cut_at(text)
    assert at is not None and at <= limit


@pytest.mark.parametrize(
    "text",
    [
        "The gateway listens on 50050 [1]. The REST bridge on 8080 [2]. The index uses tantivy "
        "and usearch [3], fused with RRF k=60 [1][2].",
        "Ports: 1, 2, 3, 4, 5, 6, 7, 8.",
        "A service drains: calls in flight finish during the grace period, then it stops.",
    ],
)
def test_ordinary_answers_run_to_the_end(text: str) -> None:
    assert cut_at(text) is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_repeats"):
        RepetitionGuard(min_repeats=1)
