"""Authentication and tenancy through every door of a real gateway in front of a real retriever
(its on-disk index) and the fake embedder and generator: two tenants' keys, the same source
ingested by both, and no door lets one tenant read, replace or delete the other's chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.wiring import build_gateway

from .conftest import FakeFleet, start_retriever

pytestmark = pytest.mark.integration

SOURCE = "docs/shared.md"
TEXT = {
    "alpha": "The alpha launch code is kept in vault seven.",
    "bravo": "The bravo launch code is kept in the cellar.",
}


@dataclass
class Door:
    rest: httpx.AsyncClient
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    openai: openai.AsyncOpenAI


@dataclass
class Fleet:
    doors: dict[str, Door]
    keys: dict[str, str]
    keys_file: Path
    rest_url: str
    grpc_address: str


@pytest.fixture(scope="module")
async def fleet(
    fake_fleet: FakeFleet, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    root = tmp_path_factory.mktemp("tenancy")
    retriever = start_retriever(root / "index")
    retriever_address, _ = await anext(retriever)

    keys_file = root / "keys.json"
    keys: dict[str, str] = {}
    for name, tenant, roles in (
        ("alpha", "alpha", {Role.QUERY, Role.INGEST}),
        ("bravo", "bravo", {Role.QUERY, Role.INGEST}),
        ("reader", "alpha", {Role.QUERY}),
        ("admin", "ops", {Role.ADMIN}),
    ):
        keys[name], entry = new_key(tenant, frozenset(roles))
        add_key(keys_file, entry)
    settings = GatewaySettings(
        port=0,
        rest_port=0,
        grace_period_s=0,
        embedder_address=fake_fleet.addresses["embedder"],
        retriever_address=retriever_address,
        generator_address=fake_fleet.addresses["generator"],
        api_keys_file=keys_file,
        ingest_allowed_roots=[root],
    )
    gateway = build_gateway(settings)
    await gateway.start()
    rest_url = f"http://127.0.0.1:{gateway.rest.port}"
    grpc_address = f"127.0.0.1:{gateway.grpc.port}"
    channels = {name: insecure_channel(grpc_address, key) for name, key in keys.items()}
    doors = {
        name: Door(
            httpx.AsyncClient(
                base_url=rest_url, timeout=10, headers={"Authorization": f"Bearer {key}"}
            ),
            gateway_pb2_grpc.GatewayServiceStub(channels[name]),
            openai.AsyncOpenAI(base_url=f"{rest_url}/v1", api_key=key, max_retries=0),
        )
        for name, key in keys.items()
    }
    for tenant in ("alpha", "bravo"):
        await doors[tenant].stub.Ingest(
            gateway_pb2.IngestRequest(
                documents=[gateway_pb2.Document(source=SOURCE, text=TEXT[tenant])]
            )
        )
    yield Fleet(doors, keys, keys_file, rest_url, grpc_address)
    for door in doors.values():
        await door.rest.aclose()
    for channel in channels.values():
        await channel.close()
    await gateway.stop()
    await anext(retriever, None)


def _texts(hits: list[dict[str, object]]) -> set[str]:
    return {str(h["chunk"]["text"]) for h in hits}  # type: ignore[index]


async def _grpc_texts(door: Door, tenant: str = "") -> set[str]:
    options = gateway_pb2.RetrievalOptions(top_k=10, filter=common_pb2.Filter(tenant=tenant))
    reply = await door.stub.Retrieve(
        gateway_pb2.RetrieveRequest(query="launch code", retrieval=options)
    )
    return {h.chunk.text for h in reply.hits}


async def test_grpc_retrieve_and_ask_see_only_the_keys_tenant(fleet: Fleet) -> None:
    alpha = fleet.doors["alpha"]
    assert await _grpc_texts(alpha) == {TEXT["alpha"]}
    assert await _grpc_texts(alpha, "alpha") == {TEXT["alpha"]}
    assert await _grpc_texts(fleet.doors["bravo"]) == {TEXT["bravo"]}
    events = [
        e
        async for e in alpha.stub.Ask(gateway_pb2.AskRequest(question="Where is the launch code?"))
    ]
    sources = [s.hit.chunk for e in events if e.HasField("sources") for s in e.sources.sources]
    assert sources and {c.text for c in sources} == {TEXT["alpha"]}
    assert {c.tenant for c in sources} == {"alpha"}


@pytest.mark.parametrize("rpc", ["Retrieve", "Ask", "Ingest"])
async def test_grpc_naming_another_tenant_is_permission_denied(fleet: Fleet, rpc: str) -> None:
    stub = fleet.doors["alpha"].stub
    other = gateway_pb2.RetrievalOptions(filter=common_pb2.Filter(tenant="bravo"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if rpc == "Retrieve":
            await stub.Retrieve(gateway_pb2.RetrieveRequest(query="code", retrieval=other))
        elif rpc == "Ask":
            _ = [e async for e in stub.Ask(gateway_pb2.AskRequest(question="q", retrieval=other))]
        else:
            doc = gateway_pb2.Document(source=SOURCE, text="overwritten by alpha")
            await stub.Ingest(gateway_pb2.IngestRequest(documents=[doc], tenant="bravo"))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _grpc_texts(fleet.doors["bravo"]) == {TEXT["bravo"]}


async def test_a_job_for_another_tenant_is_refused_before_it_starts(fleet: Fleet) -> None:
    stub = fleet.doors["alpha"].stub
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ingest(gateway_pb2.IngestRequest(source="https://example.org", tenant="bravo"))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await fleet.doors["alpha"].rest.post(
        "/v1/ingest/jobs", json={"source": "https://example.org", "tenant": "bravo"}
    )
    assert reply.status_code == 403, reply.text


async def test_reingesting_a_source_replaces_only_the_callers_chunks(fleet: Fleet) -> None:
    """Re-ingest deletes the source's old chunks first: only in the caller's tenant."""
    alpha, bravo = fleet.doors["alpha"], fleet.doors["bravo"]
    replaced = "The alpha launch code moved to vault nine."
    reply = await alpha.rest.post(
        "/v1/ingest", json={"documents": [{"source": SOURCE, "text": replaced}]}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["replaced"] == 1
    assert await _grpc_texts(alpha) == {replaced}
    assert await _grpc_texts(bravo) == {TEXT["bravo"]}
    reply = await alpha.rest.post(
        "/v1/ingest", json={"documents": [{"source": SOURCE, "text": TEXT["alpha"]}]}
    )
    assert reply.status_code == 200, reply.text
    assert await _grpc_texts(alpha) == {TEXT["alpha"]}


async def test_rest_doors_keep_tenants_apart(fleet: Fleet) -> None:
    alpha = fleet.doors["alpha"]
    body = {"query": "launch code", "retrieval": {"top_k": 10}}
    reply = await alpha.rest.post("/v1/retrieve", json=body)
    assert reply.status_code == 200, reply.text
    assert _texts(reply.json()["hits"]) == {TEXT["alpha"]}
    reply = await alpha.rest.post("/v1/ask", json={"question": "Where is the launch code?"})
    assert reply.status_code == 200, reply.text
    assert {s["hit"]["chunk"]["text"] for s in reply.json()["sources"]} == {TEXT["alpha"]}
    for path, payload in (
        ("/v1/retrieve", {"query": "code", "retrieval": {"tenant": "bravo"}}),
        ("/v1/ask", {"question": "code?", "retrieval": {"tenant": "bravo"}}),
        ("/v1/ingest", {"tenant": "bravo", "documents": [{"source": SOURCE, "text": "x"}]}),
    ):
        reply = await alpha.rest.post(path, json=payload)
        assert reply.status_code == 403, (path, reply.text)
        assert reply.json()["error"]["code"] == "PERMISSION_DENIED"
    assert await _grpc_texts(fleet.doors["bravo"]) == {TEXT["bravo"]}


async def test_the_openai_route_sees_only_the_keys_tenant(fleet: Fleet) -> None:
    client = fleet.doors["bravo"].openai
    completion = await client.chat.completions.create(
        model="ragfleet", messages=[{"role": "user", "content": "Where is the launch code?"}]
    )
    sources = completion.model_extra["sources"]  # type: ignore[index]
    assert sources and {s["hit"]["chunk"]["text"] for s in sources} == {TEXT["bravo"]}
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(
            model="ragfleet",
            messages=[{"role": "user", "content": "Where is the launch code?"}],
            extra_body={"retrieval": {"tenant": "alpha"}},
        )
    assert [m.id for m in (await client.models.list()).data] == ["ragfleet"]


async def test_an_admin_may_name_any_tenant(fleet: Fleet) -> None:
    admin = fleet.doors["admin"]
    assert await _grpc_texts(admin, "bravo") == {TEXT["bravo"]}
    assert await _grpc_texts(admin) == set()  # its own tenant, ops, holds nothing


async def test_a_query_key_cannot_ingest(fleet: Fleet) -> None:
    reader = fleet.doors["reader"]
    assert await _grpc_texts(reader) == {TEXT["alpha"]}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await reader.stub.Ingest(
            gateway_pb2.IngestRequest(documents=[gateway_pb2.Document(source="a", text="b")])
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for path in ("/v1/ingest", "/v1/ingest/jobs"):
        reply = await reader.rest.post(path, json={"documents": [], "source": "x"})
        assert reply.status_code == 403, (path, reply.text)


@pytest.mark.parametrize("token", [None, "rfk_000000000000_not-a-key", "garbage"])
async def test_no_door_opens_without_a_valid_key(fleet: Fleet, token: str | None) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=fleet.rest_url, headers=headers) as rest:
        for method, path in (
            ("POST", "/v1/ask"),
            ("POST", "/v1/retrieve"),
            ("POST", "/v1/ingest"),
            ("POST", "/v1/ingest/jobs"),
            ("GET", "/v1/ingest/jobs/some-id"),
        ):
            reply = await rest.request(method, path, json={})
            assert reply.status_code == 401, (path, reply.text)
            assert reply.json()["error"]["code"] == "UNAUTHENTICATED"
            assert reply.headers["www-authenticate"] == "Bearer"
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            reply = await rest.request(method, path, json={})
            assert reply.status_code == 401, (path, reply.text)
            assert reply.json()["error"]["code"] == "invalid_api_key"
        assert (await rest.get("/healthz")).status_code == 200
    async with insecure_channel(fleet.grpc_address, token) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Retrieve(gateway_pb2.RetrieveRequest(query="code"))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_every_rest_route_but_health_and_the_documents_needs_a_key(fleet: Fleet) -> None:
    """A route added later without the key check fails here."""
    async with httpx.AsyncClient(base_url=fleet.rest_url) as rest:
        openapi = (await rest.get("/openapi.json")).json()
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            secured = operation.get("security") == [{"ApiKey": []}]
            assert secured == (path != "/healthz"), (method, path)


async def test_keys_are_added_and_revoked_without_a_restart(fleet: Fleet) -> None:
    key, entry = new_key("charlie", frozenset({Role.QUERY}))
    add_key(fleet.keys_file, entry)
    async with httpx.AsyncClient(
        base_url=fleet.rest_url, headers={"Authorization": f"Bearer {key}"}
    ) as rest:
        reply = await rest.post("/v1/retrieve", json={"query": "launch code"})
        assert reply.status_code == 200 and reply.json()["hits"] == []
        data = json.loads(fleet.keys_file.read_text())
        data["keys"] = [k for k in data["keys"] if k["id"] != entry.id]
        fleet.keys_file.write_text(json.dumps(data))
        reply = await rest.post("/v1/retrieve", json={"query": "launch code"})
        assert reply.status_code == 401
