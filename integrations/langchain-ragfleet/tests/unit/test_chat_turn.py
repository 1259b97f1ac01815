"""How ChatRagfleet reads the gateway's Ask events: stop sequences cut across token boundaries,
the final answer's tail, metadata and usage, and which messages it accepts."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from langchain_ragfleet.chat_models import AskTurn, StopScanner, conversation_of
from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("deltas", "stop", "expected"),
    [
        (["hello ", "world"], [], "hello world"),
        (["hello y", "o", "u there"], ["you"], "hello "),
        (["hello y", "e", "s"], ["you"], "hello yes"),
        (["a\n", "\nb"], ["\n\n"], "a"),
        (["ab", "cd"], ["bc", "d"], "a"),
        (["stop"], ["stop"], ""),
    ],
)
def test_stop_scanner_cuts_before_the_first_stop(
    deltas: list[str], stop: list[str], expected: str
) -> None:
    scanner = StopScanner(stop)
    assert "".join(scanner.feed(d) for d in deltas) + scanner.flush() == expected


def _events(*tokens: str, text: str) -> list[gateway_pb2.AskEvent]:
    hit = common_pb2.ScoredChunk(chunk=common_pb2.Chunk(id="c1", text="p", source="a.md"))
    return [
        gateway_pb2.AskEvent(
            sources=gateway_pb2.Sources(sources=[gateway_pb2.Source(number=1, hit=hit)])
        ),
        *(gateway_pb2.AskEvent(token=t) for t in tokens),
        gateway_pb2.AskEvent(
            answer=gateway_pb2.Answer(
                text=text,
                model="m",
                answered=True,
                citations=[gateway_pb2.Citation(number=1, chunk_id="c1", source="a.md")],
                usage=common_pb2.Usage(prompt_tokens=30, completion_tokens=4),
                answer_id="a" * 32,
                route=gateway_pb2.Route(policy="cascade", model="m", reason="the cheap model"),
            )
        ),
    ]


def test_the_tail_adds_the_citation_the_gateway_completed() -> None:
    turn = AskTurn([])
    streamed = "".join(turn.feed(e) for e in _events("It ", "drains.", text="It drains. [1]"))
    assert streamed + turn.tail() == turn.text() == "It drains. [1]"
    meta = turn.metadata("")
    assert meta["model_name"] == "m" and meta["answered"]
    assert meta["citations"][0]["source"] == meta["sources"][0]["source"] == "a.md"
    # What the gateway's Feedback needs, and what the router did.
    assert meta["answer_id"] == "a" * 32
    assert meta["route"] == {
        "policy": "cascade",
        "model": "m",
        "reason": "the cheap model",
        "escalated": False,
    }
    assert turn.usage() == {"input_tokens": 30, "output_tokens": 4, "total_tokens": 34}


def test_a_stop_cuts_the_streamed_and_the_whole_answer_alike() -> None:
    turn = AskTurn(["drains"])
    streamed = "".join(turn.feed(e) for e in _events("It ", "drains.", text="It drains. [1]"))
    assert streamed + turn.tail() == turn.text() == "It "


def test_an_answer_that_was_not_streamed_comes_whole_in_the_tail() -> None:
    turn = AskTurn([])
    for event in _events(text="The documents do not say."):
        turn.feed(event)
    assert turn.tail() == "The documents do not say."


def test_an_ask_without_an_answer_is_an_error() -> None:
    turn = AskTurn([])
    turn.feed(gateway_pb2.AskEvent(token="half"))
    with pytest.raises(Exception, match="without an answer"):
        turn.text()


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([HumanMessage("q"), AIMessage("a")], "human, ai"),
        ([SystemMessage("be brief"), AIMessage("a")], "system, ai"),
        ([SystemMessage("be brief")], "system"),
        ([], "none"),
    ],
)
def test_the_last_message_must_be_a_human_question(messages: list[BaseMessage], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        conversation_of(messages)


def test_earlier_turns_become_history_and_system_messages_are_left_out() -> None:
    question, history = conversation_of(
        [
            SystemMessage("be brief"),
            HumanMessage("What is the grace period?"),
            AIMessage("Ten seconds [1]."),
            HumanMessage("  And how do I change it?  ", name="user"),
        ]
    )
    assert question == "And how do I change it?"
    assert [(m.role, m.content) for m in history] == [
        ("user", "What is the grace period?"),
        ("assistant", "Ten seconds [1]."),
    ]
    with pytest.raises(ValueError, match="empty"):
        conversation_of([HumanMessage("   ")])
