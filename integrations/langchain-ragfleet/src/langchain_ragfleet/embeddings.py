"""``RagfleetEmbeddings``: the embedder's Embed RPC as LangChain embeddings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from langchain_ragfleet._connection import Connection
from ragfleet.clients import EmbedderClient
from ragfleet.domain import InputType
from ragfleet.runtime.channels import Deadline

EMBEDDER_ADDRESS_ENV = "RAGFLEET_EMBEDDER_ADDRESS"
DEFAULT_EMBEDDER_ADDRESS = "127.0.0.1:50051"
SERVICE_CREDENTIAL_ENV = "RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL"
SERVICE_CREDENTIAL_FILE_ENV = "RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL_FILE"


def embedder_address() -> str:
    """``RAGFLEET_EMBEDDER_ADDRESS``, else the embedder's default gRPC address."""
    return os.environ.get(EMBEDDER_ADDRESS_ENV, DEFAULT_EMBEDDER_ADDRESS)


def embedder_credential() -> SecretStr | None:
    """The service credential the embedder itself is configured with: the content of the file
    ``RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL_FILE`` names (stripped), else
    ``RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL``, else None."""
    if path := os.environ.get(SERVICE_CREDENTIAL_FILE_ENV):
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    value = os.environ.get(SERVICE_CREDENTIAL_ENV)
    return SecretStr(value) if value else None


class RagfleetEmbeddings(BaseModel, Embeddings):
    """Vectors from the ragfleet embedder (the model the index was built with, so a query
    embedded here is comparable with the indexed passages).

    ``embed_query`` embeds as a search query, ``embed_documents`` as passages (the embedder
    reads the two input types differently for asymmetric models). Documents go in requests of
    at most ``batch_size`` texts (the embedder's ``max_batch_texts`` is 256 by default). Once
    the fleet has a service credential the embedder answers only calls that carry it:
    ``service_credential`` (default: the embedder's own variables, below) is sent with every
    call.

        embeddings = RagfleetEmbeddings(address="127.0.0.1:50051")
        vector = embeddings.embed_query("How does the gateway shut down?")
    """

    model_config = ConfigDict(extra="forbid")

    address: str = Field(default_factory=embedder_address)
    service_credential: SecretStr | None = Field(
        default_factory=embedder_credential,
        description="the fleet's service credential; default: RAGFLEET_EMBEDDER_SERVICE_"
        "CREDENTIAL_FILE's content or RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL",
    )
    batch_size: int = Field(default=64, ge=1)
    timeout: float = Field(default=30.0, gt=0, description="seconds one call may take")

    _connection: Connection[EmbedderClient] = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        address = self.address
        credential = (
            None if self.service_credential is None else self.service_credential.get_secret_value()
        )
        self._connection = Connection(
            lambda: EmbedderClient.connect(address, credential=credential)
        )

    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        return [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]

    async def _embed(
        self, client: EmbedderClient, texts: Sequence[str], kind: InputType, deadline: Deadline
    ) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors += [list(v) for v in await client.embed(batch, kind, deadline)]
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        deadline = Deadline.after(self.timeout)
        return self._connection.run(
            lambda client: self._embed(client, texts, InputType.PASSAGE, deadline)
        )

    def embed_query(self, text: str) -> list[float]:
        deadline = Deadline.after(self.timeout)
        return self._connection.run(
            lambda client: self._embed(client, [text], InputType.QUERY, deadline)
        )[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        client = self._connection.client()
        return await self._embed(client, texts, InputType.PASSAGE, Deadline.after(self.timeout))

    async def aembed_query(self, text: str) -> list[float]:
        client = self._connection.client()
        vectors = await self._embed(client, [text], InputType.QUERY, Deadline.after(self.timeout))
        return vectors[0]
