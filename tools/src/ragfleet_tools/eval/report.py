"""The evaluation reports: retrieval's Markdown table and PNG bar chart of its three measures,
and the chart of the answer metrics with their confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ragfleet_tools.eval.metrics import HEADERS
from ragfleet_tools.eval.retrieval import Evaluation

if TYPE_CHECKING:
    from ragfleet_tools.eval.answers import Metric


def markdown_table(evaluation: Evaluation) -> str:
    """One row per configuration, metrics to three decimals, in evaluation order."""
    lines = [
        "| configuration | retrieval | chunking | nDCG@10 | Recall@100 | MRR@10 |",
        "|---|---|---|---|---|---|",
    ]
    for result in evaluation.results:
        m = result.metrics
        lines.append(
            f"| {result.config.name} | {result.config.description} | "
            f"{result.config.chunking.label} | {m.ndcg_at_10:.3f} | {m.recall_at_100:.3f} | "
            f"{m.mrr_at_10:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(evaluation: Evaluation, path: Path, command: str = "") -> Path:
    """Writes the Markdown report to ``path`` and the chart beside it (same name, ``.png``);
    returns the chart's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart = path.with_suffix(".png")
    write_chart(evaluation, chart)
    queries = evaluation.results[0].metrics.queries if evaluation.results else 0
    header = (
        f"# Retrieval quality: {evaluation.dataset} ({evaluation.split}, {queries} queries)\n\n"
        f"Embedding model: {evaluation.model}.\n\n"
    )
    if command:
        header += f"```\n{command}\n```\n\n"
    path.write_text(f"{header}{markdown_table(evaluation)}\n![chart]({chart.name})\n")
    return chart


def write_chart(evaluation: Evaluation, path: Path) -> None:
    """A grouped horizontal bar chart: one group per configuration, one bar per measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.config.name for r in evaluation.results]
    height = 0.8 / len(HEADERS)
    figure, axes = plt.subplots(figsize=(8, 1.4 + 0.6 * len(names) * len(HEADERS) / 2))
    for offset, (key, label) in enumerate(HEADERS.items()):
        values = [float(getattr(r.metrics, key)) for r in evaluation.results]
        positions = [i + offset * height for i in range(len(names))]
        bars = axes.barh(positions, values, height=height, label=label)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    axes.set_yticks([i + height * (len(HEADERS) - 1) / 2 for i in range(len(names))], names)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.08)
    axes.set_title(f"{evaluation.dataset} {evaluation.split}: {evaluation.model}", fontsize=10)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(HEADERS), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_answers_chart(
    configurations: Sequence[tuple[str, Sequence[Metric]]], path: Path, title: str
) -> None:
    """One panel per answer metric, one bar per configuration (in order) with its 95% interval
    as error bars; metrics no configuration measured are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in configurations]
    measured = [
        metric.name
        for metric in configurations[0][1]
        if any(m.n for _, ms in configurations for m in ms if m.name == metric.name)
    ]
    columns = 3
    rows = -(-len(measured) // columns)
    figure, panels = plt.subplots(
        rows, columns, figsize=(12, 0.6 + rows * (0.9 + 0.35 * len(names))), squeeze=False
    )
    for panel, metric_name in zip(panels.flat, measured, strict=False):
        values: list[float] = []
        errors: list[list[float]] = [[], []]
        for _, metrics in configurations:
            m = next(m for m in metrics if m.name == metric_name)
            measured_here = m.n > 0 and m.value == m.value  # NaN when nothing was measured
            values.append(m.value if measured_here else 0.0)
            errors[0].append(m.value - m.low if measured_here else 0.0)
            errors[1].append(m.high - m.value if measured_here else 0.0)
        bars = panel.barh(range(len(names)), values, xerr=errors, capsize=3, color="tab:blue")
        panel.bar_label(bars, fmt="%.2f", fontsize=7, padding=4)
        panel.set_yticks(range(len(names)), names, fontsize=7)
        panel.invert_yaxis()
        panel.set_xlim(0, 5.4 if "(1-5)" in metric_name else 1.08)
        panel.set_title(metric_name, fontsize=9)
    for panel in list(panels.flat)[len(measured) :]:
        panel.set_visible(False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
