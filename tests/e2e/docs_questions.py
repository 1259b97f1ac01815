"""Questions about ``docs/`` with the facts a correct answer states, and questions the docs
cannot answer (the fleet must decline them). Used by the end-to-end test and by
``benchmarks/fleet.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_FILE = Path(__file__).with_name("docs_questions.json")


@dataclass(frozen=True)
class DocsQuestion:
    """``facts``: each inner list is one fact, stated by any of its phrasings (compared in lower
    case). Unanswerable questions have none and must be declined."""

    question: str
    facts: tuple[tuple[str, ...], ...] = ()
    answerable: bool = True

    def problems(self, text: str, answered: bool, cited_passages: list[str]) -> list[str]:
        """What is wrong with an answer (empty when it is right). ``cited_passages`` are the
        texts of the passages its citations point at: each fact must be in the answer and in
        one of them, so a citation counts only when it supports the answer."""
        if not self.answerable:
            return [] if not answered and not cited_passages else ["answered; should decline"]
        found: list[str] = [] if answered else ["declined"]
        if text.lstrip().startswith("["):
            found.append("copies a source instead of answering")
        answer = text.lower()
        cited = " ".join(cited_passages).lower()
        for fact in self.facts:
            if not any(p in answer for p in fact):
                found.append(f"answer lacks {' / '.join(fact)}")
            elif not any(p in cited for p in fact):
                found.append(f"no cited passage says {' / '.join(fact)}")
        return found


def load() -> list[DocsQuestion]:
    return [
        DocsQuestion(
            question=row["question"],
            facts=tuple(tuple(f) for f in row.get("facts", ())),
            answerable=row.get("answerable", True),
        )
        for row in json.loads(_FILE.read_text(encoding="utf-8"))
    ]
