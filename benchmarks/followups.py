"""What rewriting follow-up questions gains for retrieval: hit rate@5 on follow-ups built from an
answer set (ClapNQ's derived mini corpus by default), searched as asked, rewritten by the rule,
and (``--model-rewrite``) rewritten by the model, beside the original standalone questions.

Follow-ups are built by rule from answerable questions whose text names the title of their
gold passage (the topic, without a trailing "(disambiguation)"): the conversation opens with
"What is <topic>?" and the reply "Here is what the documents say about <topic>.", and the
follow-up is the real question with the topic replaced by a pronoun ("it"; "its" for
"<topic>'s"; an article before the topic dropped). A hit is the gold passage among the first 5
retrieved. Retrieval is the gateway's own ``retrieve`` and the rewrites its own ``ask`` (stopped
before generation) on the fleet's components (``LocalFleet``), on the index that ``ragfleet eval
answers`` keeps for the set (built here when absent). Not a timed test: it prints a table.

    .venv/bin/python benchmarks/followups.py --limit 40 --model-rewrite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ragfleet.domain import ChatMessage
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.logging import configure_logging
from ragfleet_gateway.domain import AskRequest, RetrievalRequest, RewriteEvent
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.eval.answers import AnswerSet, ingest
from ragfleet_tools.eval.cli import DEFAULT_CACHE
from ragfleet_tools.eval.local_fleet import LocalFleet

DEFAULT_DATASET = Path("../shared/datasets/clapnq/derived")
TOP_K = 5
_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)\s*$")


@dataclass(frozen=True)
class Followup:
    original: str
    followup: str
    history: tuple[ChatMessage, ...]
    gold: frozenset[str]


def make_followup(question: str, topic: str) -> str | None:
    """``question`` with ``topic`` replaced by a pronoun; None when it does not name it."""
    pattern = re.compile(rf"\b(?:(?:the|a|an)\s+)?{re.escape(topic)}\b(\s*'s)?", re.IGNORECASE)
    if not topic or not pattern.search(question):
        return None
    return pattern.sub(lambda m: "its" if m.group(1) else "it", question, count=1)


def followups(data: AnswerSet, limit: int | None) -> list[Followup]:
    pairs = []
    for q in data.questions:
        if not (q.answerable and q.gold):
            continue
        topic = _DISAMBIGUATION.sub("", data.corpus[min(q.gold)].title).strip()
        followup = make_followup(q.text, topic)
        if followup is None:
            continue
        history = (
            ChatMessage("user", f"What is {topic}?"),
            ChatMessage("assistant", f"Here is what the documents say about {topic}."),
        )
        pairs.append(Followup(q.text, followup, history, q.gold))
    return pairs[:limit]


async def hit(pipeline: RagPipeline, query: str, gold: frozenset[str]) -> bool:
    found = await pipeline.retrieve(query, RetrievalRequest(top_k=TOP_K), Deadline.after(60))
    return any(h.chunk.source in gold for h in found.hits)


async def rewritten(pipeline: RagPipeline, pair: Followup) -> tuple[str, str]:
    """The query the gateway's ask searches for this follow-up, and how it was made."""
    events = pipeline.ask(AskRequest(pair.followup, history=pair.history), Deadline.after(120))
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, RewriteEvent):
                return event.rewrite.query, event.rewrite.method.value
    raise RuntimeError("an ask with a history sends its rewrite first")


async def measure(
    data: AnswerSet, pairs: Sequence[Followup], cache_dir: Path, model: bool
) -> dict[str, float]:
    folder = cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
    async with LocalFleet.open(folder / "index", generate=model) as fleet:
        if (await fleet.retriever.stats()).sources < len(data.corpus):
            await ingest(fleet.pipeline, data, print)
        rule = fleet.pipeline_for(GatewaySettings(rewrite_with_model=False))
        llm = fleet.pipeline_for(GatewaySettings(rewrite_timeout_s=60))
        hits = {"original question": 0, "follow-up, no rewrite": 0, "follow-up, rule rewrite": 0}
        model_hits, model_used, seconds = 0, 0, []
        for pair in pairs:
            hits["original question"] += await hit(rule, pair.original, pair.gold)
            hits["follow-up, no rewrite"] += await hit(rule, pair.followup, pair.gold)
            query, _ = await rewritten(rule, pair)
            hits["follow-up, rule rewrite"] += await hit(rule, query, pair.gold)
            if model:
                start = time.perf_counter()
                query, method = await rewritten(llm, pair)
                seconds.append(time.perf_counter() - start)
                model_used += method == "model"
                model_hits += await hit(rule, query, pair.gold)
    rates = {name: count / len(pairs) for name, count in hits.items()}
    if model:
        rates["follow-up, model rewrite"] = model_hits / len(pairs)
        print(
            f"model rewrites: {model_used}/{len(pairs)} by the model (the rest by the rule); "
            f"median {statistics.median(seconds):.1f} s per rewrite, search included"
        )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None, help="follow-ups measured (first N)")
    parser.add_argument("--model-rewrite", action="store_true", help="also rewrite by the model")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    if not (args.dataset / "corpus.jsonl").is_file():
        print(f"skipped: no answer set at {args.dataset} (corpus.jsonl, queries.jsonl, qrels/)")
        sys.exit(0)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    configure_logging("WARNING", fmt="console")
    data = AnswerSet.load(args.dataset, args.split)
    pairs = followups(data, args.limit)
    print(f"{len(pairs)} follow-ups from {data.name}, e.g. {pairs[0].followup!r}")
    rates = asyncio.run(measure(data, pairs, args.cache_dir, args.model_rewrite))
    print(f"\n| searched for | hit rate@{TOP_K} |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
