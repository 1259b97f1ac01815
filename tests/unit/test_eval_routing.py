"""Routing metrics (PGR, CPT, APGR) and policy points on hand-made outcomes with known values."""

from __future__ import annotations

import numpy as np
import pytest

from ragfleet_tools.eval.routing import (
    Outcomes,
    Point,
    Summary,
    apgr,
    cheapest_keeping,
    cpt,
    paired_intervals,
    pgr,
    random_summaries,
    summarize,
    threshold_points,
)

pytestmark = pytest.mark.unit

# Four questions. The strong model gains 1.0 on q0, 0.5 on q1, nothing on q2 and q3:
# q_cheap = 0.25, q_strong = 0.625, a gap of 0.375.
OUTCOMES = Outcomes(
    ids=["q0", "q1", "q2", "q3"],
    quality_cheap=np.array([0.0, 0.5, 0.5, 0.0]),
    quality_strong=np.array([1.0, 1.0, 0.5, 0.0]),
    cost_cheap=np.array([1.0, 1.0, 1.0, 1.0]),
    cost_strong=np.array([4.0, 4.0, 4.0, 4.0]),
)


def summary(share: float, gain: float) -> Summary:
    return Summary(f"{share}", share, 0.0, 0.0, gain, 0.0)


def test_pgr() -> None:
    assert pgr(0.25, 0.25, 0.625) == 0.0
    assert pgr(0.625, 0.25, 0.625) == 1.0
    assert pgr(0.5, 0.25, 0.625) == pytest.approx(2 / 3)
    assert np.isnan(pgr(0.5, 0.5, 0.5))


def test_a_perfect_ranking() -> None:
    # Scores rank q0 > q1 > q2 > q3: the points call the strong model for 0..4 questions.
    points = threshold_points(OUTCOMES, np.array([0.9, 0.8, 0.3, 0.1]))
    summaries = [summarize(p, OUTCOMES) for p in points]
    assert [s.strong_share for s in summaries] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # PGR: 0, 1/0.375 * 0.25 = 2/3, 1, 1, 1.
    assert [s.pgr for s in summaries] == pytest.approx([0, 2 / 3, 1, 1, 1])
    assert summaries[1].cost_share == pytest.approx((4 + 1 + 1 + 1) / 4 / 4)
    # CPT(50%): on the segment (0, 0)-(0.25, 2/3), PGR 0.5 at share 0.25 * 0.75.
    assert cpt(summaries, 0.5) == pytest.approx(0.1875)
    # CPT(80%): between (0.25, 2/3) and (0.5, 1): 0.25 + 0.25 * (0.8 - 2/3) / (1/3).
    assert cpt(summaries, 0.8) == pytest.approx(0.35)
    # Area: 0.25 * (0 + 2/3) / 2 + 0.25 * (2/3 + 1) / 2 + 0.5 * 1.
    assert apgr(summaries) == pytest.approx(1 / 12 + 5 / 24 + 0.5)
    best = cheapest_keeping(summaries, 0.625, keep=0.95)
    assert best is not None and best.strong_share == 0.5


def test_random_router_is_the_diagonal() -> None:
    summaries = random_summaries(OUTCOMES, [i / 10 for i in range(11)])
    assert [s.pgr for s in summaries] == pytest.approx([i / 10 for i in range(11)])
    assert apgr(summaries) == pytest.approx(0.5)
    assert cpt(summaries, 0.5) == pytest.approx(0.5)
    assert cpt(summaries, 0.8) == pytest.approx(0.8)


def test_curve_helpers_add_the_ends_and_keep_the_best_at_a_share() -> None:
    assert apgr([]) == pytest.approx(0.5)
    assert apgr([summary(0.5, 0.2), summary(0.5, 0.6)]) == pytest.approx(
        0.5 * 0.6 / 2 + 0.5 * 1.6 / 2
    )
    assert np.isnan(cpt([summary(0.5, 0.2)], 1.5))


def test_cascade_pays_for_both_answers() -> None:
    escalated = Point("check", np.array([True, False, False, False]), cascade=True)
    s = summarize(escalated, OUTCOMES)
    assert s.quality == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert s.cost == pytest.approx((1 + 4 + 1 + 1 + 1) / 4)
    assert s.cost_share == pytest.approx(2.0 / 4.0)
    assert s.pgr == pytest.approx(2 / 3)


def test_paired_intervals_contain_the_point() -> None:
    point = Point("q0", np.array([True, False, False, False]))
    intervals = paired_intervals(point, OUTCOMES)
    assert intervals["quality"].value == pytest.approx(0.5)
    assert intervals["quality - strong only"].value == pytest.approx(-0.125)
    for i in intervals.values():
        assert i.low <= i.value + 1e-12 and i.value <= i.high + 1e-12
