"""The question router's model, and the cascade's check of a cheap answer.

``RouterModel`` scores a question with a linear model over features the gateway computes in
microseconds, with no model call and no query vector: TF-IDF word and character n-grams (an
exact reimplementation of scikit-learn's ``TfidfVectorizer.transform``, so a model trained with
scikit-learn scores the same here without importing it) and a few question features (length,
code-like tokens). ``ragfleet train router`` writes it as JSON; the gateway's ``classifier``
routing loads it.

``escalation_reason`` is the cascade's check: the gateway's ``cascade`` routing and the routing
benchmark call the same function, so what the benchmark measures is what the gateway does.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragfleet.runtime.errors import InvalidInput

ROUTER_FORMAT = "ragfleet-router"
ROUTER_VERSION = 1

Analyzer = Literal["word", "char_wb"]

# scikit-learn's default token_pattern: words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_CODE = re.compile(r"`|\w+\.\w+\(|\b\w+_\w+\b|\(\)|\w+\.\w+\.\w+|[{}\[\]=<>]")
_HOW_WHY = re.compile(r"\b(how|why|explain|difference|compare|best|should)\b")

QUESTION_FEATURES = ("log words", "has code", "has question mark", "how or why")
"""The names of ``question_features``' values, in order."""


def question_features(question: str) -> list[float]:
    """Simple features of a question, in ``QUESTION_FEATURES`` order: the log of its word count,
    whether it holds code-like tokens (backticks, ``a.b(``, ``snake_case``, brackets), whether
    it has a question mark, and whether it asks how or why (open questions need the strong
    model more often)."""
    return [
        math.log1p(len(question.split())),
        float(bool(_CODE.search(question))),
        float("?" in question),
        float(bool(_HOW_WHY.search(question.lower()))),
    ]


def ngrams(text: str, analyzer: Analyzer, ngram_range: tuple[int, int]) -> list[str]:
    """The n-grams ``TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range)`` counts in
    ``text`` (lowercased, default token pattern, word n-grams joined by a space; ``char_wb``:
    character n-grams inside each whitespace-separated word padded with a space)."""
    low, high = ngram_range
    text = text.lower()
    grams: list[str] = []
    if analyzer == "word":
        tokens = _TOKEN.findall(text)
        for n in range(low, min(high, len(tokens)) + 1):
            grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return grams
    for word in text.split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                # scikit-learn counts a word shorter than n once, as itself, then stops.
                grams.append(padded)
                break
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


@dataclass(frozen=True)
class TfidfBlock:
    """One TF-IDF vectoriser's vocabulary with each term's idf and the model's weight for it;
    the block's contribution to the log-odds is ``weights · l2normalise(tf * idf)``."""

    analyzer: Analyzer
    ngram_range: tuple[int, int]
    sublinear_tf: bool
    terms: Mapping[str, tuple[float, float]]
    """term -> (idf, weight)."""

    def score(self, text: str) -> float:
        values, weights = [], []
        # Counting every n-gram (in C) and looking each distinct one up once is faster than
        # testing every occurrence.
        for term, count in Counter(ngrams(text, self.analyzer, self.ngram_range)).items():
            known = self.terms.get(term)
            if known is None:
                continue
            idf, weight = known
            tf = 1.0 + math.log(count) if self.sublinear_tf else float(count)
            values.append(tf * idf)
            weights.append(weight)
        if not values:
            return 0.0
        vector = np.asarray(values)
        norm = float(np.sqrt(vector @ vector))
        return float(vector @ np.asarray(weights)) / norm if norm else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "tfidf",
            "analyzer": self.analyzer,
            "ngram_range": list(self.ngram_range),
            "sublinear_tf": self.sublinear_tf,
            "terms": {t: [idf, w] for t, (idf, w) in self.terms.items()},
        }


@dataclass(frozen=True)
class QuestionBlock:
    """``question_features``, standardised with the training data's mean and scale."""

    mean: Sequence[float]
    scale: Sequence[float]
    weights: Sequence[float]

    def score(self, text: str) -> float:
        values = (np.asarray(question_features(text)) - self.mean) / np.asarray(self.scale)
        return float(values @ np.asarray(self.weights))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "question",
            "names": list(QUESTION_FEATURES),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
        }


FeatureBlock = TfidfBlock | QuestionBlock


@dataclass(frozen=True)
class RouterModel:
    """A logistic regression over feature blocks: ``p_strong`` is the probability that a
    question needs the strong model, ``threshold`` the one chosen at training (route to the
    strong model when ``p_strong >= threshold``), ``metadata`` what it was trained on and its
    cross-validated metrics."""

    blocks: Sequence[FeatureBlock]
    intercept: float
    threshold: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def log_odds(self, question: str) -> float:
        return self.intercept + sum(block.score(question) for block in self.blocks)

    def p_strong(self, question: str) -> float:
        z = self.log_odds(question)
        # The two branches avoid overflow in exp for large |z|.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ROUTER_FORMAT,
            "version": ROUTER_VERSION,
            "threshold": self.threshold,
            "intercept": self.intercept,
            "blocks": [block.to_json() for block in self.blocks],
            "metadata": dict(self.metadata),
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RouterModel:
        """Raises ``InvalidInput`` naming the file and what is wrong with it when it is missing,
        not JSON, of another format or version, or malformed."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"router model {path}: cannot be read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"router model {path}: not JSON: {exc}") from None
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, source: str = "<json>") -> RouterModel:
        if not isinstance(data, dict) or data.get("format") != ROUTER_FORMAT:
            raise InvalidInput(f'router model {source}: not a "{ROUTER_FORMAT}" file')
        if data.get("version") != ROUTER_VERSION:
            raise InvalidInput(
                f"router model {source}: version {data.get('version')!r}, this gateway reads "
                f"version {ROUTER_VERSION} (retrain with `ragfleet train router`)"
            )
        try:
            blocks = [_block(b) for b in data["blocks"]]
            threshold, intercept = float(data["threshold"]), float(data["intercept"])
            metadata = data.get("metadata") or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"router model {source}: malformed: {exc!r}") from None
        if not 0.0 <= threshold <= 1.0 or not isinstance(metadata, dict):
            raise InvalidInput(
                f"router model {source}: malformed: threshold must be in [0, 1] and metadata an "
                "object"
            )
        return cls(blocks, intercept, threshold, metadata)


def _block(data: dict[str, Any]) -> FeatureBlock:
    if data["kind"] == "tfidf":
        if data["analyzer"] not in ("word", "char_wb"):
            raise ValueError(f"unknown analyzer {data['analyzer']!r}")
        low, high = (int(n) for n in data["ngram_range"])
        terms = {str(t): (float(v[0]), float(v[1])) for t, v in data["terms"].items()}
        return TfidfBlock(data["analyzer"], (low, high), bool(data["sublinear_tf"]), terms)
    if data["kind"] == "question":
        if list(data["names"]) != list(QUESTION_FEATURES):
            raise ValueError(f"question features {data['names']} are not {QUESTION_FEATURES}")
        mean, scale, weights = ([float(v) for v in data[k]] for k in ("mean", "scale", "weights"))
        if not len(mean) == len(scale) == len(weights) == len(QUESTION_FEATURES):
            raise ValueError("question features: mean, scale and weights differ in length")
        return QuestionBlock(mean, scale, weights)
    raise ValueError(f"unknown feature block kind {data['kind']!r}")


# --- the cascade's check -----------------------------------------------------------------------
MIN_ANSWER_WORDS = 3
"""An answer of fewer words (citation markers aside) is escalated: ClapNQ-style answers are
sentences, and a one- or two-word answer from the small model is usually a fragment."""

_CITATION_MARK = re.compile(r"\[\d+\]")
_WORD = re.compile(r"\w+")


def escalation_reason(
    answer_text: str,
    answered: bool,
    cited_count: int,
    finish_reason: str,
    min_words: int = MIN_ANSWER_WORDS,
) -> str | None:
    """Why a cheap model's answer should be discarded and the strong model asked instead, or
    None to keep it. In order: it declined; generation was cut (``finish_reason`` "length") or
    stopped looping ("repetition"); it cites no passage (a grounded answer cites); it is
    degenerate (mostly the same few words repeated); it has fewer than ``min_words`` words."""
    if not answered:
        return "declined"
    if finish_reason in ("length", "repetition"):
        return f"finish_reason {finish_reason}"
    if cited_count == 0:
        return "no citation"
    words = _WORD.findall(_CITATION_MARK.sub(" ", answer_text).lower())
    if len(words) >= 12:
        trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        # Fluent text repeats few trigrams; a looping answer repeats most of them.
        if len(set(trigrams)) < 0.5 * len(trigrams):
            return "degenerate"
    if len(words) < min_words:
        return "too short"
    return None
