"""Quality against cost of routed answering, offline from ``ragfleet eval answers`` caches.

Every question was answered once by the cheap model and once by the strong one (two cached runs
on the same answer set, default gateway settings, a price table so answers carry their cost).
Each policy decides per question which answer it would have kept, so its quality and cost
follow with no model call; each is swept over its threshold:

- random: the strong model for a share of questions chosen at random (exact expectation);
- classifier: ``RouterModel.p_strong`` (``ragfleet train router``) at least the threshold;
- signals: the retrieval scores of the shown passages (those of the cheap run: retrieval does
  not depend on the model): the strong model when the top score is low, or the margin between
  the first two is small;
- cascade: the cheap model answers; when ``escalation_reason`` finds its answer wanting
  (declined, cut short, no citation, degenerate, fewer than N words) the strong model answers
  and both are paid for. Swept over N; also a variant that keeps the cheap model's declines.

Quality per question: answerable, the answer's RougeL F1 against the reference (0 when it
declined); unanswerable, 1 when it declined and 0 otherwise. Metrics (RouteLLM): PGR, CPT(50%),
CPT(80%), APGR over the strong-call share (``ragfleet_tools.eval.routing``), and the cheapest
setting keeping 95% of the strong model's quality, with paired bootstrap intervals.

    .venv/bin/python benchmarks/routing.py --dataset ../shared/datasets/clapnq/derived \\
        --router-model var/router/llm-applications.json --report var/routing/report.md
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ragfleet.router_model import MIN_ANSWER_WORDS, RouterModel, escalation_reason
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.pricing import TokenPrice
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.eval.answers import (
    AnswerSet,
    Question,
    Result,
    ResultCache,
    bootstrap,
    config_key,
    score,
)
from ragfleet_tools.eval.cli import DEFAULT_CACHE
from ragfleet_tools.eval.routing import (
    Outcomes,
    Point,
    Summary,
    apgr,
    cheapest_keeping,
    cpt,
    paired_intervals,
    random_summaries,
    summarize,
    threshold_points,
)

CHEAP = "qwen2.5-coder-0.5b-instruct"
STRONG = "qwen2.5-coder-1.5b-instruct"
PRICES = Path("services/gateway/prices.local.yaml")
MIN_WORDS_SWEEP = (0, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30, 40, 50, 70, 100, 10_000)
KEEP = 0.95


def find_cache(folder: Path, model: str, fingerprint: str) -> Path:
    """The cache ``ragfleet eval answers`` keeps for ``model`` under the default gateway
    settings."""
    keyed = folder / f"{config_key(GatewaySettings(), model, fingerprint)}.jsonl"
    if not keyed.is_file():
        raise InvalidInput(
            f"no cache of {model} in {folder} (expected {keyed.name}); run "
            f"RAGFLEET_GENERATOR_MODELS='[\"{model}\"]' ragfleet eval answers ... or pass the "
            "file with --cheap-cache/--strong-cache"
        )
    return keyed


def quality(
    questions: Sequence[Question], results: Mapping[str, Result]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per question (in order): RougeL F1 vs the reference for an answerable question, 0 when
    the answer declined; for an unanswerable one 1 when it declined. And which were answerable."""
    _, per = score(questions, results)
    values = []
    for q in questions:
        if q.answerable:
            refused = per["answerable refused"][q.id] > 0
            values.append(0.0 if refused else per["RougeL F1 vs reference"][q.id])
        else:
            values.append(per["unanswerable declined"][q.id])
    return np.array(values), np.array([q.answerable for q in questions])


def costs(
    results: Sequence[Result], model: str, price: TokenPrice | None, notes: list[str]
) -> NDArray[np.float64]:
    """Each answer priced from its tokens at ``model``'s price in the table (``--prices``), the
    same linear price the gateway applies. The cached ``cost_usd`` is only a cross-check (noted
    when it differs: answers cached before the gateway priced a chain-less generator's model by
    the name it reported carry the table's "default" price).
    Without a price for ``model``, the cached costs, which must then all be there."""
    cached = [r.cost_usd for r in results]
    if price is None:
        if any(c is None for c in cached):
            raise InvalidInput(
                f"{model}: answers without cost_usd and no price for it in the table (--prices)"
            )
        notes.append(f"{model}: no price in the table; the cached cost_usd used")
        return np.array(cached, dtype=np.float64)
    priced = np.array([price.cost(r.prompt_tokens, r.completion_tokens) for r in results])
    known = np.array([c if c is not None else np.nan for c in cached], dtype=np.float64)
    if np.isnan(known).any():
        notes.append(f"{model}: {int(np.isnan(known).sum())} answers cached without a cost")
    elif not np.allclose(known, priced, rtol=0.01):
        notes.append(
            f"{model}: priced from tokens at {priced.mean():.6f} USD per question; the cached "
            f"cost_usd says {known.mean():.6f} (priced under another table entry, see costs())"
        )
    return priced


@dataclass(frozen=True)
class Policy:
    name: str
    points: list[Point]
    note: str = ""


def cascade_points(cheap: Sequence[Result], keep_declines: bool) -> list[Point]:
    points = []
    for n in MIN_WORDS_SWEEP:
        reasons = [
            escalation_reason(r.answer, r.answered, len(r.cited), r.finish_reason, min_words=n)
            for r in cheap
        ]
        strong = np.array(
            [why is not None and not (keep_declines and why == "declined") for why in reasons]
        )
        points.append(Point(f"min words {n}", strong, cascade=True))
    return points


def policies(
    questions: Sequence[Question],
    cheap: Sequence[Result],
    outcomes: Outcomes,
    router: RouterModel | None,
) -> list[Policy]:
    found = [
        Policy("cascade", cascade_points(cheap, keep_declines=False)),
        Policy("cascade, declines kept", cascade_points(cheap, keep_declines=True)),
    ]
    if router is not None:
        p = np.array([router.p_strong(q.text) for q in questions])
        found.append(
            Policy(
                "classifier",
                threshold_points(outcomes, p, lambda t: f"p_strong >= {t:.3g}"),
                "trained on llm-applications' questions about Ray: off-domain here",
            )
        )
    if all(len(r.scores) >= 2 for r in cheap):
        top = np.array([r.scores[0] for r in cheap])
        margin = np.array([r.scores[0] - r.scores[1] for r in cheap])
        why = (
            "the shown passages' fused scores as cached (normalised per query, the top one "
            "often 1.0), not the best dense cosine the gateway's signals routing reads"
        )
        found.append(
            Policy(
                "signals: low top score",
                threshold_points(outcomes, -top, lambda t: f"top score <= {-t:.3g}"),
                why,
            )
        )
        found.append(
            Policy(
                "signals: small margin",
                threshold_points(outcomes, -margin, lambda t: f"margin <= {-t:.3g}"),
                why,
            )
        )
    return found


def interval_rows(
    label: str, point: Point, outcomes: Outcomes, answerable: NDArray[np.bool_], seed: int
) -> list[str]:
    """A chosen point's paired intervals, and its quality on each kind of question."""
    rows = []
    for name, i in paired_intervals(point, outcomes, seed).items():
        rows.append(f"| {label} | {name} | {i.value:.3f} | {i.low:.3f} to {i.high:.3f} |")
    quality = point.quality(outcomes)
    for kind, mask in (
        ("answerable (RougeL)", answerable),
        ("unanswerable (declined)", ~answerable),
    ):
        if mask.any():
            value, low, high = bootstrap(list(quality[mask]), seed)
            rows.append(f"| {label} | quality, {kind} | {value:.3f} | {low:.3f} to {high:.3f} |")
    return rows


def report(
    data_name: str,
    caches: tuple[Path, Path],
    questions: Sequence[Question],
    cheap: Sequence[Result],
    outcomes: Outcomes,
    answerable: NDArray[np.bool_],
    found: Sequence[Policy],
    notes: Sequence[str],
    models: tuple[str, str],
    seed: int,
    command: str,
) -> tuple[str, dict[str, list[Summary]]]:
    """The Markdown report, and every policy's settings summarised (random's included)."""
    q_strong = float(outcomes.quality_strong.mean())
    lines = [
        f"# Routing between {models[0]} and {models[1]}",
        "",
        f"{data_name}: {len(questions)} questions answered by both models "
        f"({int(answerable.sum())} answerable, {int((~answerable).sum())} unanswerable); caches "
        f"`{caches[0].name}` (cheap) and `{caches[1].name}` (strong).",
        "",
        "Quality per question: answerable, RougeL F1 of the answer against the reference (0 "
        "when it declined); unanswerable, 1 when it declined, else 0. Cost: the answers' "
        "`cost_usd` from the gateway's price table (a cascade pays for both answers of an "
        "escalated question). PGR/CPT/APGR as RouteLLM defines them over the share of "
        "strong-model calls; the curve is linear between settings (mixing them at random), "
        "from (0, 0) to (1, 1).",
        "",
        f"Reproduce: `{command}`",
        "",
        "| model alone | quality | answerable (RougeL) | unanswerable (declined) "
        "| USD per question |",
        "|---|---|---|---|---|",
    ]
    for name, q, c in (
        ("cheap " + models[0], outcomes.quality_cheap, outcomes.cost_cheap),
        ("strong " + models[1], outcomes.quality_strong, outcomes.cost_strong),
    ):
        lines.append(
            f"| {name} | {q.mean():.3f} | {q[answerable].mean():.3f} | "
            f"{q[~answerable].mean() if (~answerable).any() else float('nan'):.3f} | "
            f"{c.mean():.6f} |"
        )
    gap, low, high = bootstrap(list(outcomes.quality_strong - outcomes.quality_cheap), seed)
    lines += [
        "",
        f"Strong minus cheap quality (paired over questions): {gap:+.3f}, 95% CI {low:+.3f} to "
        f"{high:+.3f}. PGR divides by this gap: where its interval reaches 0, PGR's intervals "
        "are wide.",
    ]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    reasons = Counter(
        escalation_reason(r.answer, r.answered, len(r.cited), r.finish_reason) or "kept"
        for r in cheap
    )
    lines += [
        "",
        f"Cascade check on the cheap answers (min words {MIN_ANSWER_WORDS}): "
        + ", ".join(f"{k} {v}" for k, v in reasons.most_common()),
        "",
        f"| policy | APGR | CPT(50%) | CPT(80%) | cheapest keeping {KEEP:.0%} of strong quality "
        "| its strong calls | its cost share |",
        "|---|---|---|---|---|---|---|",
    ]
    curves: dict[str, list[Summary]] = {}
    shares = [i / 20 for i in range(21)]
    rand = random_summaries(outcomes, shares)
    curves["random"] = rand
    chosen: list[tuple[str, Point]] = []
    for policy in found:
        curves[policy.name] = [summarize(p, outcomes) for p in policy.points]
    for name, summaries in curves.items():
        best = cheapest_keeping(summaries, q_strong, KEEP)
        lines.append(
            f"| {name} | {apgr(summaries):.3f} | {cpt(summaries, 0.5):.1%} | "
            f"{cpt(summaries, 0.8):.1%} | "
            + (
                f"{best.label} | {best.strong_share:.1%} | {best.cost_share:.1%} |"
                if best
                else "none | | |"
            )
        )
        swept = next((p for p in found if p.name == name), None)
        if best is not None and swept is not None:
            chosen.append((name, next(p for p in swept.points if p.label == best.label)))
    lines += [f"- {p.name}: {p.note}" for p in found if p.note]
    default = next(p for p in found[0].points if p.label == f"min words {MIN_ANSWER_WORDS}")
    chosen.append((f"cascade (default check, min words {MIN_ANSWER_WORDS})", default))
    lines += [
        "",
        "Paired bootstrap 95% intervals (questions resampled, each keeping both answers):",
        "",
        "| setting | metric | value | 95% CI |",
        "|---|---|---|---|",
    ]
    for label, point in chosen:
        lines += interval_rows(f"{label}: {point.label}", point, outcomes, answerable, seed)
    lines += ["", "## Every setting", ""]
    for name, summaries in curves.items():
        if name == "random":
            continue
        lines += [
            f"### {name}",
            "",
            "| setting | strong calls | quality | PGR | USD per question | cost share |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s.label} | {s.strong_share:.1%} | {s.quality:.3f} | {s.pgr:.2f} | "
            f"{s.cost:.6f} | {s.cost_share:.1%} |"
            for s in summaries
        ]
        lines.append("")
    return "\n".join(lines) + "\n", curves


def plot(
    curves: Mapping[str, Sequence[Summary]], outcomes: Outcomes, path: Path, title: str
) -> None:
    """Quality against USD per question, one line per policy, the two models alone marked and
    95% of the strong model's quality drawn dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = iter("osDx^v<>")
    for name, summaries in curves.items():
        # In sweep order (the strong-call share grows), so the line follows the threshold.
        axes.plot(
            [s.cost for s in summaries],
            [s.quality for s in summaries],
            "--" if name == "random" else "-",
            marker="" if name == "random" else next(markers),
            markersize=3.5,
            alpha=0.8,
            label=name,
        )
    for name, q, c, marker in (
        ("cheap alone", outcomes.quality_cheap, outcomes.cost_cheap, "s"),
        ("strong alone", outcomes.quality_strong, outcomes.cost_strong, "^"),
    ):
        axes.plot(c.mean(), q.mean(), marker, color="black", markersize=9, label=name)
    axes.axhline(KEEP * outcomes.quality_strong.mean(), color="grey", lw=0.8, ls=":")
    axes.set_xlabel("USD per question")
    axes.set_ylabel("quality (RougeL answerable / declined unanswerable)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--cheap-model", default=CHEAP)
    parser.add_argument("--strong-model", default=STRONG)
    parser.add_argument("--cheap-cache", type=Path, help="the cheap model's cache file")
    parser.add_argument("--strong-cache", type=Path, help="the strong model's cache file")
    parser.add_argument("--router-model", type=Path, help="a `ragfleet train router` model")
    parser.add_argument("--prices", type=Path, default=PRICES, help="the models' price table")
    parser.add_argument("--report", type=Path, default=Path("var/routing/report.md"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = (args.cheap_model, args.strong_model)

    data = AnswerSet.load(args.dataset, args.split)
    folder = args.cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
    notes: list[str] = []
    paths = (
        args.cheap_cache or find_cache(folder, models[0], data.fingerprint),
        args.strong_cache or find_cache(folder, models[1], data.fingerprint),
    )
    cheap_rows, strong_rows = (ResultCache(p).results for p in paths)
    questions = [q for q in data.questions if q.id in cheap_rows and q.id in strong_rows]
    if not questions:
        raise SystemExit(f"the caches {paths[0]} and {paths[1]} share no question")
    cheap = [cheap_rows[q.id] for q in questions]
    strong = [strong_rows[q.id] for q in questions]
    table = GatewaySettings(prices_file=args.prices).price_table()
    q_cheap, answerable = quality(questions, cheap_rows)
    q_strong, _ = quality(questions, strong_rows)

    def price(model: str) -> TokenPrice | None:
        return TokenPrice.of(table[model]) if model in table else None

    outcomes = Outcomes(
        [q.id for q in questions],
        q_cheap,
        q_strong,
        costs(cheap, models[0], price(models[0]), notes),
        costs(strong, models[1], price(models[1]), notes),
    )
    router = RouterModel.load(args.router_model) if args.router_model else None
    if router is None:
        notes.append("no --router-model: the classifier policy is left out")
    if not all(len(r.scores) >= 2 for r in cheap):
        notes.append("the cheap cache has no retrieval scores: the signal policies are left out")
    found = policies(questions, cheap, outcomes, router)
    command = " ".join(
        [".venv/bin/python benchmarks/routing.py", f"--dataset {args.dataset}"]
        + [f"--cheap-cache {paths[0]}", f"--strong-cache {paths[1]}"]
        + ([f"--router-model {args.router_model}"] if args.router_model else [])
        + [f"--report {args.report}"]
    )
    text, curves = report(
        data.name,
        paths,
        questions,
        cheap,
        outcomes,
        answerable,
        found,
        notes,
        models,
        args.seed,
        command,
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text, encoding="utf-8")
    chart = args.report.with_suffix(".png")
    plot(curves, outcomes, chart, f"Routing {models[0]} -> {models[1]}")
    print(text.split("\n## Every setting")[0], end="")
    print(f"\nreport: {args.report} and {chart}")


if __name__ == "__main__":
    main()
