"""Routing between a cheap and a strong model, measured offline: every question answered by
both models once (``ragfleet eval answers`` caches), then each policy's quality and cost follow
from which answer it would have kept, with no further model call.

Two kinds of policy:
- a router picks one model per question before answering (``threshold_points``: the strong
  model when a per-question score is at least a threshold; ``random_points``: a share chosen at
  random, as an exact expectation);
- a cascade always asks the cheap model and asks the strong one as well when a check of the
  cheap answer fails (``cascade_point``): the strong answer is kept, and both are paid for.

Metrics as RouteLLM (arXiv 2406.18665) defines them over the share of strong-model calls:
PGR = (q - q_cheap) / (q_strong - q_cheap); CPT(x) = the smallest call share reaching PGR x;
APGR = the mean PGR over call shares in [0, 1], i.e. the area under the PGR curve. Between two
thresholds a policy can mix them at random, so the curve is piecewise linear between its
points, from (0, 0) (all cheap) to (1, 1) (all strong); CPT interpolates on it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ragfleet_tools.eval.answers import resamples


@dataclass(frozen=True)
class Outcomes:
    """Per question (the same order in every array): each model's quality in [0, 1] and cost
    in USD."""

    ids: Sequence[str]
    quality_cheap: NDArray[np.float64]
    quality_strong: NDArray[np.float64]
    cost_cheap: NDArray[np.float64]
    cost_strong: NDArray[np.float64]

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Point:
    """One setting of a policy: which questions the strong model answers (``strong``), and
    whether the cheap model was asked first for those too (a cascade)."""

    label: str
    strong: NDArray[np.bool_]
    cascade: bool = False

    def quality(self, o: Outcomes) -> NDArray[np.float64]:
        """Per-question quality of the answers kept."""
        return np.where(self.strong, o.quality_strong, o.quality_cheap)

    def cost(self, o: Outcomes) -> NDArray[np.float64]:
        """Per-question cost: a cascade pays for the cheap answer of every question."""
        if self.cascade:
            return o.cost_cheap + np.where(self.strong, o.cost_strong, 0.0)
        return np.where(self.strong, o.cost_strong, o.cost_cheap)


@dataclass(frozen=True)
class Summary:
    """A point's means: strong-call share, quality, cost per question, PGR, and cost as a share
    of answering everything with the strong model."""

    label: str
    strong_share: float
    quality: float
    cost: float
    pgr: float
    cost_share: float


def pgr(quality: float, quality_cheap: float, quality_strong: float) -> float:
    """Performance gap recovered; NaN when the two models score the same (no gap)."""
    gap = quality_strong - quality_cheap
    return (quality - quality_cheap) / gap if gap else float("nan")


def summarize(point: Point, o: Outcomes) -> Summary:
    q_cheap, q_strong = float(o.quality_cheap.mean()), float(o.quality_strong.mean())
    quality, cost = float(point.quality(o).mean()), float(point.cost(o).mean())
    strong_cost = float(o.cost_strong.mean())
    return Summary(
        point.label,
        float(point.strong.mean()),
        quality,
        cost,
        pgr(quality, q_cheap, q_strong),
        cost / strong_cost if strong_cost else float("nan"),
    )


def threshold_points(
    o: Outcomes,
    score: NDArray[np.float64],
    describe: Callable[[float], str] = lambda t: f"score >= {t:.3g}",
    cascade: bool = False,
) -> list[Point]:
    """The strong model for every question whose ``score`` is at least t, for every distinct
    score t (``describe(t)`` labels it), after "all cheap": from all cheap to all strong."""
    points = [Point("all cheap", np.zeros(o.size, dtype=bool), cascade)]
    for t in np.unique(score)[::-1]:
        points.append(Point(describe(float(t)), score >= t, cascade))
    return points


def random_summaries(o: Outcomes, shares: Sequence[float]) -> list[Summary]:
    """A router that sends each question to the strong model with probability s: its exact
    expected quality and cost (linear in s), so PGR = s."""
    q_cheap, q_strong = float(o.quality_cheap.mean()), float(o.quality_strong.mean())
    c_cheap, c_strong = float(o.cost_cheap.mean()), float(o.cost_strong.mean())
    summaries = []
    for s in shares:
        quality = (1 - s) * q_cheap + s * q_strong
        cost = (1 - s) * c_cheap + s * c_strong
        summaries.append(
            Summary(
                f"random {s:.0%}",
                s,
                quality,
                cost,
                pgr(quality, q_cheap, q_strong),
                cost / c_strong if c_strong else float("nan"),
            )
        )
    return summaries


def _curve(summaries: Sequence[Summary]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(call share, PGR) sorted by share, with (0, 0) and (1, 1) added; at one share the best
    PGR (several settings can call the strong model equally often)."""
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for s in summaries:
        if not np.isnan(s.pgr):
            best[s.strong_share] = max(best.get(s.strong_share, -np.inf), s.pgr)
    shares = np.array(sorted(best))
    return shares, np.array([best[s] for s in shares])


def apgr(summaries: Sequence[Summary]) -> float:
    """The area under the piecewise-linear PGR curve over call shares 0 to 1 (0.5 for a
    random router)."""
    shares, gains = _curve(summaries)
    return float(np.sum((shares[1:] - shares[:-1]) * (gains[1:] + gains[:-1]) / 2))


def cpt(summaries: Sequence[Summary], target: float) -> float:
    """The smallest strong-call share at which the piecewise-linear PGR curve reaches
    ``target`` (a fraction: 0.5 for CPT(50%))."""
    shares, gains = _curve(summaries)
    if gains[0] >= target:
        return float(shares[0])
    for i in range(1, len(shares)):
        if gains[i] >= target:
            # Mix the two neighbouring settings so that PGR is exactly the target.
            low, high = gains[i - 1], gains[i]
            fraction = (target - low) / (high - low) if high > low else 1.0
            return float(shares[i - 1] + fraction * (shares[i] - shares[i - 1]))
    return float("nan")


def cheapest_keeping(
    summaries: Sequence[Summary], quality_strong: float, keep: float = 0.95
) -> Summary | None:
    """The cheapest setting whose quality is at least ``keep`` of the strong model's alone
    (None if none is)."""
    kept = [s for s in summaries if s.quality >= keep * quality_strong]
    return min(kept, key=lambda s: (s.cost, s.strong_share)) if kept else None


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def paired_intervals(point: Point, o: Outcomes, seed: int = 0) -> dict[str, Interval]:
    """95% bootstrap intervals for a point, resampling questions and keeping each question's
    pair of answers together: its quality, the quality difference from the strong model alone,
    its cost as a share of the strong model's, and its PGR."""
    rows = resamples(o.size, seed)
    quality, cost = point.quality(o), point.cost(o)
    q = quality[rows].mean(1)
    q_cheap, q_strong = o.quality_cheap[rows].mean(1), o.quality_strong[rows].mean(1)
    strong_cost = o.cost_strong[rows].mean(1)
    gap = q_strong - q_cheap
    nan = np.full_like(q, np.nan)
    samples = {
        "quality": q,
        "quality - strong only": q - q_strong,
        "cost share": np.divide(
            cost[rows].mean(1), strong_cost, out=nan.copy(), where=strong_cost > 0
        ),
        # A resample where the two models score alike has no gap to recover.
        "PGR": np.divide(q - q_cheap, gap, out=nan.copy(), where=gap != 0),
    }
    point_values = {
        "quality": float(quality.mean()),
        "quality - strong only": float(quality.mean() - o.quality_strong.mean()),
        "cost share": summarize(point, o).cost_share,
        "PGR": summarize(point, o).pgr,
    }
    return {
        name: Interval(
            point_values[name],
            float(np.nanpercentile(values, 2.5)),
            float(np.nanpercentile(values, 97.5)),
        )
        for name, values in samples.items()
    }
