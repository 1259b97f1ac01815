"""schemathesis over every operation of the gateway's OpenAPI document, against the real REST
bridge (uvicorn on port 0) in front of the fuzz fleet: valid and invalid bodies, parameters and
headers never get a 5xx, answers conform to the document, and the fleet stays SERVING. Random
``Authorization`` headers get 401, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from .conftest import Fleet, examples, openapi_document
from .strategies import HOSTILE_TEXTS

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 15.0
FUZZ = settings(
    max_examples=examples(50),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)


@schema.parametrize()
@FUZZ
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any], fleet: Fleet) -> None:
    response = case.call(
        base_url=fleet.rest_url,
        headers={"Authorization": f"Bearer {fleet.key}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    conformance = [checks.status_code_conformance, checks.content_type_conformance]
    # The document gives the Server-Sent Events of POST /v1/ask as one string, where
    # schemathesis validates each event: JSON answers are checked against their schemas.
    content_type = response.headers.get("content-type") or [""]
    if not content_type[0].startswith("text/event-stream"):
        conformance.append(checks.response_schema_conformance)
    case.validate_response(response, checks=[checks.not_a_server_error, *conformance])


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.rest_url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


_PROTECTED = (
    ("POST", "/v1/ask", {"question": "What happens on SIGTERM?"}),
    ("POST", "/v1/retrieve", {"query": "shutdown"}),
    ("POST", "/v1/feedback", {"answer_id": "a" * 32, "rating": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/ingest", {"documents": [{"source": "a.md", "text": "a"}]}),
    ("POST", "/v1/ingest/jobs", {"source": "https://example.com/"}),
    ("GET", "/v1/ingest/jobs/0123", None),
)
_ROUTES = [pytest.param(m, p, b, id=f"{m} {p}") for m, p, b in _PROTECTED]
# Header values must be Latin-1 without line breaks or surrounding blanks; the rest goes.
_HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


@pytest.mark.parametrize(("method", "path", "body"), _ROUTES)
@settings(FUZZ, max_examples=examples(25))
@given(
    authorization=st.one_of(
        _HEADER_TEXT,
        st.builds(lambda t: f"Bearer {t}", _HEADER_TEXT),
        st.builds(
            lambda t: f"Bearer rfk_{t}",
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
        ),
        st.sampled_from([h for h in HOSTILE_TEXTS if h.isascii() and h.isprintable()]),
    ).map(str.strip)
)
def test_a_bad_authorization_header_is_401(
    client: httpx.Client, method: str, path: str, body: object, authorization: str
) -> None:
    response = client.request(
        method, path, json=body, headers=[(b"Authorization", authorization.encode("latin-1"))]
    )
    assert response.status_code == 401, response.text


# Text that broke these routes before (issue 15), as JSON: lone surrogates (which no Python
# string sent by schemathesis holds), NUL, and the blanks tantivy's query parser choked on.
_TROUBLEMAKERS = (
    r"\ud800",
    r"a\udfffb",
    r"\u0000",
    r"x\u00a0y",
    r"\u000b",
    r"\u2028",
    r"\u3000",
    r"title:(x OR",
)


def _text_fields(body: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(body, dict):
        return [p for k, v in body.items() for p in _text_fields(v, (*path, k))]
    if isinstance(body, list):
        return [p for i, v in enumerate(body) for p in _text_fields(v, (*path, i))]
    return [path] if isinstance(body, str) else []


def _with_raw(body: Any, path: tuple[str | int, ...], raw: str) -> str:
    """``body`` as JSON with the string at ``path`` replaced by ``raw`` (JSON escapes kept)."""
    marker = "\x01MARK\x01"
    copy = json.loads(json.dumps(body))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = marker
    return json.dumps(copy).replace(json.dumps(marker)[1:-1], raw)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        pytest.param(m, p, b, f, id=f"{m} {p} {'.'.join(map(str, f))}")
        for m, p, b in _PROTECTED
        if b is not None
        for f in _text_fields(b)
    ],
)
def test_known_troublemakers_in_any_text_field_get_no_5xx(
    client: httpx.Client,
    fleet: Fleet,
    method: str,
    path: str,
    body: object,
    field: tuple[str | int, ...],
) -> None:
    for raw in _TROUBLEMAKERS:
        response = client.request(
            method,
            path,
            content=_with_raw(body, field, raw),
            headers={"Authorization": f"Bearer {fleet.key}", "Content-Type": "application/json"},
        )
        assert response.status_code < 500, (raw, response.text)


def test_a_query_key_cannot_ingest(fleet: Fleet, client: httpx.Client) -> None:
    response = client.post(
        "/v1/ingest",
        json={"documents": [{"source": "a.md", "text": "a"}]},
        headers={"Authorization": f"Bearer {fleet.query_key}"},
    )
    assert response.status_code == 403, response.text


def test_the_fleet_is_still_serving(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "SERVING"
