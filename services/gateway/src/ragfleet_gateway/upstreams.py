"""The gateway's upstreams: a client (``ragfleet.clients``) per embedder, retriever and
generator, and one per distinct generator of the fallback chain."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from ragfleet.clients import EmbedderClient, GeneratorClient, RetrieverClient
from ragfleet.runtime.channels import insecure_channel
from ragfleet_gateway.settings import GatewaySettings


@dataclass
class Upstreams:
    """The three clients and their channels; ``connect`` creates the channels (no I/O).

    ``generator`` is the default generator; ``model_generators`` maps each model of the
    fallback chain (``settings.models``) to the client of its own generator, one client per
    distinct address and application.
    """

    embedder: EmbedderClient
    retriever: RetrieverClient
    generator: GeneratorClient
    channels: list[grpc.aio.Channel]
    model_generators: dict[str, GeneratorClient] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: GatewaySettings) -> Upstreams:
        attempts = settings.upstream_retry_attempts
        credential = settings.credential()
        channels = [
            insecure_channel(a)
            for a in (
                settings.embedder_address,
                settings.retriever_address,
                settings.generator_address,
            )
        ]
        default = GeneratorClient(
            channels[2],
            settings.generator_address,
            settings.generator_application,
            attempts,
            credential,
        )
        clients = {(settings.generator_address, settings.generator_application): default}
        model_generators: dict[str, GeneratorClient] = {}
        for link in settings.models:
            key = (
                link.address or settings.generator_address,
                link.application or settings.generator_application,
            )
            if key not in clients:
                channels.append(insecure_channel(key[0]))
                clients[key] = GeneratorClient(channels[-1], key[0], key[1], attempts, credential)
            model_generators[link.name] = clients[key]
        return cls(
            embedder=EmbedderClient(channels[0], settings.embedder_address, attempts, credential),
            retriever=RetrieverClient(
                channels[1], settings.retriever_address, attempts, credential
            ),
            generator=default,
            channels=channels,
            model_generators=model_generators,
        )

    async def health(self, timeout_s: float) -> dict[str, str | None]:
        """Per upstream name: None when it is SERVING, otherwise the reason."""
        names = ("embedder", "retriever", "generator")
        results = await asyncio.gather(
            self.embedder.probe(timeout_s),
            self.retriever.probe(timeout_s),
            self.generator.probe(timeout_s),
        )
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))
