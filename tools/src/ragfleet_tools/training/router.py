"""``ragfleet train router``: the question router's logistic regression, its hyper-parameters
and threshold chosen by stratified cross-validation on the training data alone.

Data: JSONL rows ``{"question": str, "target": 0 | 1}``, target 1 when the cheap (open) model's
answer was good enough and 0 when the question needed the strong model (llm-applications'
routing files, and the ``router.jsonl`` the flywheel export writes). The model predicts class 0
(``RouterModel.p_strong``); the threshold maximises weighted F1 over both classes subject to a
minimum recall of class 0 (the questions that need the strong model), on out-of-fold
predictions. scikit-learn fits; the result is exported to ``ragfleet.router_model.RouterModel``,
which scores with numpy alone in the gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix, hstack, spmatrix
from scipy.stats import rankdata
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ragfleet.router_model import (
    Analyzer,
    FeatureBlock,
    QuestionBlock,
    RouterModel,
    TfidfBlock,
    question_features,
)
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.answers import resamples

STRONG, CHEAP = 0, 1
"""The targets: 0 needed the strong model, 1 the cheap model's answer was good enough."""

FOLDS = 5


@dataclass(frozen=True)
class RoutingExample:
    question: str
    target: int


def read_routing_data(paths: Sequence[Path]) -> list[RoutingExample]:
    """Every ``{question, target}`` row of the JSONL files. Raises ``InvalidInput`` naming the
    file (and line) when one is missing, empty, not JSON, or has a row without a non-empty
    string ``question`` and a ``target`` of 0 or 1."""
    examples: list[RoutingExample] = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidInput(f"routing data {path}: cannot be read: {exc}") from None
        before = len(examples)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"routing data {path} line {number}: not JSON: {exc}") from None
            question = row.get("question") if isinstance(row, dict) else None
            target = row.get("target") if isinstance(row, dict) else None
            if not isinstance(question, str) or not question.strip():
                raise InvalidInput(
                    f'routing data {path} line {number}: no non-empty string "question"'
                )
            if isinstance(target, bool) or target not in (0, 1):
                raise InvalidInput(
                    f'routing data {path} line {number}: "target" must be 0 (needs the strong '
                    f"model) or 1 (the cheap model will do), not {target!r}"
                )
            examples.append(RoutingExample(question, int(target)))
        if len(examples) == before:
            raise InvalidInput(f"routing data {path}: no rows")
    return examples


def _require_both_classes(examples: Sequence[RoutingExample], what: str) -> None:
    targets = {e.target for e in examples}
    if targets != {STRONG, CHEAP}:
        raise InvalidInput(
            f"{what}: every row has target {targets.pop()}; a router needs examples of both "
            "classes (0: needs the strong model, 1: the cheap model will do)"
        )


# --- features and candidates -------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One hyper-parameter setting: word n-grams, optional character n-grams (``char_wb``),
    the question features or not, and the inverse regularisation strength ``C``."""

    words: tuple[int, int] = (1, 2)
    chars: tuple[int, int] | None = None
    question: bool = False
    c: float = 4.0
    balanced: bool = False

    @property
    def name(self) -> str:
        parts = [f"words {self.words[0]}-{self.words[1]}"]
        if self.chars:
            parts.append(f"chars {self.chars[0]}-{self.chars[1]}")
        if self.question:
            parts.append("question features")
        parts.append(f"C {self.c:g}")
        if self.balanced:
            parts.append("balanced")
        return ", ".join(parts)


DEFAULT_GRID = tuple(
    Candidate(words=(1, 2), chars=chars, question=question, c=c)
    for chars in (None, (2, 4))
    for question in (False, True)
    for c in (1.0, 4.0, 16.0)
)
"""Searched by ``train_router``: chosen from a wider exploration on llm-applications' train file
(unigrams alone and 1-3 grams, class weights, other character ranges were never better in
cross-validation)."""


class Featurizer:
    """The feature matrix of a ``Candidate``, fitted on training questions: scikit-learn's
    vectorisers for the text, ``question_features`` standardised for the rest."""

    def __init__(self, candidate: Candidate) -> None:
        self.candidate = candidate
        self.vectorizers: list[tuple[Analyzer, TfidfVectorizer]] = [
            ("word", TfidfVectorizer(ngram_range=candidate.words, sublinear_tf=True))
        ]
        if candidate.chars:
            self.vectorizers.append(
                (
                    "char_wb",
                    TfidfVectorizer(
                        analyzer="char_wb", ngram_range=candidate.chars, sublinear_tf=True
                    ),
                )
            )
        self.mean: NDArray[np.float64] = np.zeros(0)
        self.scale: NDArray[np.float64] = np.ones(0)

    def fit_transform(self, questions: Sequence[str]) -> csr_matrix:
        parts: list[spmatrix] = [v.fit_transform(questions) for _, v in self.vectorizers]
        if self.candidate.question:
            values = np.array([question_features(q) for q in questions])
            self.mean = values.mean(axis=0)
            # A constant feature (all questions alike) gets scale 1 rather than a division by 0.
            self.scale = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
            parts.append(csr_matrix((values - self.mean) / self.scale))
        return hstack(parts).tocsr()

    def transform(self, questions: Sequence[str]) -> csr_matrix:
        parts: list[spmatrix] = [v.transform(questions) for _, v in self.vectorizers]
        if self.candidate.question:
            values = np.array([question_features(q) for q in questions])
            parts.append(csr_matrix((values - self.mean) / self.scale))
        return hstack(parts).tocsr()

    def export(self, classifier: LogisticRegression) -> tuple[list[FeatureBlock], float]:
        """The fitted classifier as ``RouterModel`` blocks and intercept, signs flipped so that
        the log-odds are those of class 0 (needs the strong model)."""
        weights = -classifier.coef_[0]
        blocks: list[FeatureBlock] = []
        start = 0
        for analyzer, vectorizer in self.vectorizers:
            vocabulary: dict[str, int] = vectorizer.vocabulary_
            idf = vectorizer.idf_
            terms = {
                term: (float(idf[i]), float(weights[start + i])) for term, i in vocabulary.items()
            }
            ngram_range = (int(vectorizer.ngram_range[0]), int(vectorizer.ngram_range[1]))
            blocks.append(TfidfBlock(analyzer, ngram_range, True, terms))
            start += len(vocabulary)
        if self.candidate.question:
            blocks.append(
                QuestionBlock(
                    [float(v) for v in self.mean],
                    [float(v) for v in self.scale],
                    [float(v) for v in weights[start:]],
                )
            )
        return blocks, float(-classifier.intercept_[0])


def fit_classifier(
    candidate: Candidate, questions: Sequence[str], targets: NDArray[np.int64]
) -> tuple[Featurizer, LogisticRegression]:
    featurizer = Featurizer(candidate)
    matrix = featurizer.fit_transform(questions)
    classifier = LogisticRegression(
        C=candidate.c,
        class_weight="balanced" if candidate.balanced else None,
        max_iter=5000,
    )
    classifier.fit(matrix, targets)
    return featurizer, classifier


# --- thresholds and metrics --------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    weighted_f1: float
    strong_recall: float
    """Recall of class 0 at the threshold; below the minimum when no threshold reached it
    (the threshold then maximises that recall)."""


def choose_threshold(
    targets: NDArray[np.int64], p_strong: NDArray[np.float64], min_strong_recall: float
) -> ThresholdChoice:
    """The threshold on ``p_strong`` (strong when ``p_strong >= threshold``) with the best
    weighted F1 among those whose class-0 recall is at least ``min_strong_recall``. Every
    distinct probability is a candidate, scored in one pass over the sorted values."""
    order = np.argsort(-p_strong, kind="stable")
    sorted_p, strong = p_strong[order], targets[order] == STRONG
    # Candidate k routes the first k+1 sorted questions to the strong model; only the last
    # of a run of equal probabilities is a threshold one can set.
    last = np.r_[sorted_p[1:] != sorted_p[:-1], True]
    tp0 = np.cumsum(strong)[last]
    fp0 = np.cumsum(~strong)[last]
    n0, n1 = int(strong.sum()), int((~strong).sum())
    fn0 = n0 - tp0
    tp1 = n1 - fp0
    f1_strong = 2 * tp0 / np.maximum(2 * tp0 + fp0 + fn0, 1)
    f1_cheap = 2 * tp1 / np.maximum(2 * tp1 + fn0 + fp0, 1)
    weighted = (n0 * f1_strong + n1 * f1_cheap) / (n0 + n1)
    recall = tp0 / max(n0, 1)
    thresholds = sorted_p[last]
    allowed = recall >= min_strong_recall
    if not allowed.any():
        best = int(np.argmax(recall))
    else:
        best = int(np.argmax(np.where(allowed, weighted, -1.0)))
    return ThresholdChoice(float(thresholds[best]), float(weighted[best]), float(recall[best]))


def _counts(
    targets: NDArray[np.int64], predicted: NDArray[np.int64]
) -> dict[str, NDArray[np.float64]]:
    """Confusion counts along the last axis (rows of resamples, or one row)."""
    strong_t, strong_p = targets == STRONG, predicted == STRONG
    return {
        "tp0": (strong_t & strong_p).sum(axis=-1).astype(np.float64),
        "fp0": (~strong_t & strong_p).sum(axis=-1).astype(np.float64),
        "fn0": (strong_t & ~strong_p).sum(axis=-1).astype(np.float64),
        "tp1": (~strong_t & ~strong_p).sum(axis=-1).astype(np.float64),
    }


def _metrics_from_counts(c: dict[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
    tp0, fp0, fn0, tp1 = c["tp0"], c["fp0"], c["fn0"], c["tp1"]
    fp1, fn1 = fn0, fp0
    n0, n1 = tp0 + fn0, tp1 + fn1
    n = n0 + n1

    def ratio(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
        # scikit-learn's zero_division=0: an empty denominator scores 0.
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    p0, p1 = ratio(tp0, tp0 + fp0), ratio(tp1, tp1 + fp1)
    r0, r1 = ratio(tp0, n0), ratio(tp1, n1)
    f0, f1 = ratio(2 * tp0, 2 * tp0 + fp0 + fn0), ratio(2 * tp1, 2 * tp1 + fp1 + fn1)
    return {
        "weighted F1": (n0 * f0 + n1 * f1) / n,
        "weighted precision": (n0 * p0 + n1 * p1) / n,
        "weighted recall": (n0 * r0 + n1 * r1) / n,
        "accuracy": (tp0 + tp1) / n,
        "recall 0 (strong)": r0,
        "precision 0 (strong)": p0,
        "recall 1 (cheap)": r1,
        "precision 1 (cheap)": p1,
        "strong share": (tp0 + fp0) / n,
    }


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


def classification_metrics(
    targets: NDArray[np.int64], predicted: NDArray[np.int64], seed: int = 0
) -> dict[str, Estimate]:
    """Weighted precision, recall and F1, accuracy, per-class precision and recall, and the
    share routed to the strong model, each with a 95% percentile bootstrap interval over
    questions (``ragfleet eval answers``' resamples)."""
    point = _metrics_from_counts(_counts(targets, predicted))
    rows = resamples(targets.size, seed)
    resampled = _metrics_from_counts(_counts(targets[rows], predicted[rows]))
    return {
        name: Estimate(
            float(point[name]),
            float(np.percentile(resampled[name], 2.5)),
            float(np.percentile(resampled[name], 97.5)),
        )
        for name in point
    }


# --- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateScore:
    candidate: Candidate
    choice: ThresholdChoice
    auc: float


@dataclass(frozen=True)
class TrainingReport:
    chosen: CandidateScore
    scores: list[CandidateScore]
    cv_metrics: dict[str, Estimate]
    """The chosen candidate's out-of-fold metrics at its threshold."""
    examples: int
    strong_share: float
    seconds: float


def auc(targets: NDArray[np.int64], p_strong: NDArray[np.float64]) -> float:
    """The probability that a random strong question scores above a random cheap one (ties
    count half): the ranking quality, independent of the threshold."""
    ranks = rankdata(p_strong)
    strong = targets == STRONG
    n0, n1 = int(strong.sum()), int((~strong).sum())
    return float((ranks[strong].sum() - n0 * (n0 + 1) / 2) / (n0 * n1))


def out_of_fold(
    candidate: Candidate,
    questions: Sequence[str],
    targets: NDArray[np.int64],
    folds: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]],
) -> NDArray[np.float64]:
    """Each question's ``p_strong`` from the model fitted on the other folds."""
    p = np.zeros(len(questions))
    for train, held in folds:
        featurizer, classifier = fit_classifier(
            candidate, [questions[i] for i in train], targets[train]
        )
        held_matrix = featurizer.transform([questions[i] for i in held])
        p[held] = classifier.predict_proba(held_matrix)[:, list(classifier.classes_).index(STRONG)]
    return p


def train_router(
    examples: Sequence[RoutingExample],
    min_strong_recall: float = 0.6,
    grid: Sequence[Candidate] = DEFAULT_GRID,
    seed: int = 13,
    sources: Sequence[str] = (),
) -> tuple[RouterModel, TrainingReport]:
    """The candidate and threshold with the best out-of-fold weighted F1 at class-0 recall of
    at least ``min_strong_recall`` (stratified ``FOLDS``-fold; the best recall when none
    reaches it), refitted on every example. Raises ``InvalidInput`` when the examples hold one
    class only or too few of one for the folds."""
    if not 0.0 <= min_strong_recall <= 1.0:
        raise InvalidInput(f"min_strong_recall must be in [0, 1], not {min_strong_recall}")
    if not grid:
        raise InvalidInput("train_router: the hyper-parameter grid is empty")
    _require_both_classes(examples, "routing data")
    questions = [e.question for e in examples]
    targets = np.array([e.target for e in examples], dtype=np.int64)
    smallest = int(min((targets == STRONG).sum(), (targets == CHEAP).sum()))
    if smallest < FOLDS:
        raise InvalidInput(
            f"routing data: {smallest} example(s) of the rarer class; {FOLDS}-fold "
            f"cross-validation needs at least {FOLDS}"
        )
    started = time.perf_counter()
    splitter = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(targets)), targets))
    scores, predictions = [], []
    for candidate in grid:
        p = out_of_fold(candidate, questions, targets, folds)
        choice = choose_threshold(targets, p, min_strong_recall)
        scores.append(CandidateScore(candidate, choice, auc(targets, p)))
        predictions.append(p)

    def rank(i: int) -> tuple[bool, float, float]:
        s = scores[i]
        reached = s.choice.strong_recall >= min_strong_recall
        return (reached, s.choice.weighted_f1 if reached else s.choice.strong_recall, s.auc)

    best = max(range(len(scores)), key=rank)
    chosen = scores[best]
    predicted = np.where(predictions[best] >= chosen.choice.threshold, STRONG, CHEAP)
    cv_metrics = classification_metrics(targets, predicted, seed)
    featurizer, classifier = fit_classifier(chosen.candidate, questions, targets)
    blocks, intercept = featurizer.export(classifier)
    report = TrainingReport(
        chosen=chosen,
        scores=scores,
        cv_metrics=cv_metrics,
        examples=len(examples),
        strong_share=float((targets == STRONG).mean()),
        seconds=time.perf_counter() - started,
    )
    metadata: dict[str, Any] = {
        "trained_on": list(sources),
        "examples": len(examples),
        "strong_share": report.strong_share,
        "hyperparameters": asdict(chosen.candidate),
        "min_strong_recall": min_strong_recall,
        "cv": {
            "folds": FOLDS,
            "seed": seed,
            "auc": chosen.auc,
            **{name: asdict(m) for name, m in cv_metrics.items()},
        },
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return RouterModel(blocks, intercept, chosen.choice.threshold, metadata), report


def evaluate_router(
    model: RouterModel, examples: Sequence[RoutingExample], seed: int = 0
) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """The model's metrics on held-out examples at its threshold, and those of the always-cheap
    baseline (every question to the cheap model), each with bootstrap intervals. Raises
    ``InvalidInput`` when the examples hold one class only."""
    _require_both_classes(examples, "test data")
    targets = np.array([e.target for e in examples], dtype=np.int64)
    p = np.array([model.p_strong(e.question) for e in examples])
    predicted = np.where(p >= model.threshold, STRONG, CHEAP)
    baseline = np.full_like(targets, CHEAP)
    return (
        classification_metrics(targets, predicted, seed),
        classification_metrics(targets, baseline, seed),
    )


def markdown_report(
    report: TrainingReport,
    model: RouterModel,
    test: tuple[dict[str, Estimate], dict[str, Estimate]] | None = None,
    header: str = "# Question router",
) -> str:
    """The cross-validation table of every candidate, the chosen one's out-of-fold metrics and,
    with ``test``, the held-out metrics beside the always-cheap baseline."""
    lines = [
        header,
        "",
        f"{report.examples} training examples, {report.strong_share:.1%} needing the strong model "
        f"(class 0); stratified {FOLDS}-fold cross-validation, threshold chosen for the best "
        f"weighted F1 at class-0 recall >= {model.metadata.get('min_strong_recall')}.",
        "",
        "| candidate | CV weighted F1 | CV recall 0 | threshold | CV AUC |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(report.scores, key=lambda s: -s.choice.weighted_f1):
        mark = " **(chosen)**" if s is report.chosen else ""
        lines.append(
            f"| {s.candidate.name}{mark} | {s.choice.weighted_f1:.3f} | "
            f"{s.choice.strong_recall:.3f} | {s.choice.threshold:.3f} | {s.auc:.3f} |"
        )
    lines += ["", "| out-of-fold (chosen) | value | 95% CI |", "|---|---|---|"]
    lines += [
        f"| {name} | {m.value:.3f} | {m.low:.3f} to {m.high:.3f} |"
        for name, m in report.cv_metrics.items()
    ]
    if test is not None:
        routed, cheap = test
        lines += [
            "",
            "| test | router | 95% CI | always cheap | 95% CI |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {m.value:.3f} | {m.low:.3f} to {m.high:.3f} | {cheap[name].value:.3f} "
            f"| {cheap[name].low:.3f} to {cheap[name].high:.3f} |"
            for name, m in routed.items()
        ]
    return "\n".join(lines) + "\n"
