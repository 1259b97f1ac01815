"""An LLM judge for ``ragfleet eval answers --judge-url``: any OpenAI-compatible chat endpoint
(OpenAI's official client), scoring each answered, answerable question on two 1-5 scales with a
fixed rubric:

- faithfulness: are the answer's claims supported by the passages it cites?
- correctness: does it say what the reference answer says?

The judge must reply with one JSON object and nothing else; a reply that is not exactly that
(after an optional Markdown code fence) is *unparseable*: it is kept with its raw text, counted
and reported, never dropped or guessed at. Judgments are cached per question, configuration and
judge (model and rubric), one JSON line each, like the answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import openai

from ragfleet.runtime.errors import InvalidInput, Unavailable

SCALES = ("faithfulness", "correctness")

RUBRIC = """You grade one answer of a question-answering system. Reply with a JSON object and \
nothing else: {"faithfulness": F, "correctness": C}, where F and C are integers from 1 to 5.

faithfulness: are the answer's claims supported by the SOURCES it cites?
5 every claim is stated in the sources; 4 all but a minor detail is; 3 about half of the \
claims are; 2 most claims are not in the sources; 1 none is, or no source is given.

correctness: does the answer say what the REFERENCE answer says?
5 the same facts, nothing wrong; 4 the main fact, a detail missing or extra; 3 part of the \
main fact; 2 related but mostly wrong or missing; 1 wrong, off-topic or a refusal."""

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def judge_prompt(question: str, reference: str, sources: str, answer: str) -> str:
    return (
        f"QUESTION:\n{question}\n\nREFERENCE:\n{reference}\n\n"
        f"SOURCES:\n{sources.strip() or '(none cited)'}\n\nANSWER:\n{answer}\n\n"
        'Reply with {"faithfulness": F, "correctness": C} only.'
    )


def parse_verdict(text: str) -> dict[str, int] | None:
    """The two scores in ``text``, or None unless ``text`` is one JSON object with exactly the
    keys ``faithfulness`` and ``correctness``, each an integer from 1 to 5 (a Markdown code
    fence around it is allowed)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or set(value) != set(SCALES):
        return None
    scores = {name: value[name] for name in SCALES}
    if any(
        isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5 for s in scores.values()
    ):
        return None
    return scores


@dataclass(frozen=True)
class Judgment:
    """One question's verdict; ``scores`` is None when the reply did not parse (``raw`` keeps
    it)."""

    id: str
    scores: dict[str, int] | None
    raw: str


class Judge:
    """One OpenAI-compatible endpoint and model, asked greedily for each verdict."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0
    ) -> None:
        if not model:
            raise InvalidInput("--judge-model: required with --judge-url")
        self.base_url = base_url
        self.model = model
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=1
        )

    @property
    def key(self) -> str:
        """What a verdict depends on besides the answer: the judge's model and the rubric."""
        blob = json.dumps({"model": self.model, "rubric": RUBRIC})
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    async def judge(
        self, qid: str, question: str, reference: str, sources: str, answer: str
    ) -> Judgment:
        """Raises ``Unavailable`` naming the endpoint when it cannot be reached or refuses the
        request (an unknown model, a wrong key)."""
        try:
            reply = await self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": RUBRIC},
                    {"role": "user", "content": judge_prompt(question, reference, sources, answer)},
                ],
                temperature=0.0,
                max_tokens=64,
            )
        except openai.APIStatusError as exc:
            raise Unavailable(
                f"judge {self.base_url} (model {self.model}) answered {exc.status_code}: "
                f"{exc.message}"
            ) from None
        except openai.APIError as exc:
            raise Unavailable(f"judge {self.base_url} is unreachable: {exc}") from None
        text = reply.choices[0].message.content if reply.choices else None
        return Judgment(qid, parse_verdict(text or ""), text or "")

    async def close(self) -> None:
        await self._client.close()
