"""LangChain's standard unit suites: construction, standard parameters, configuration from the
environment. No network: the classes make no call until they are used."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from langchain_ragfleet import ChatRagfleet, RagfleetEmbeddings

pytestmark = pytest.mark.unit


class TestRagfleetEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[RagfleetEmbeddings]:
        return RagfleetEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"address": "127.0.0.1:1"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "RAGFLEET_EMBEDDER_ADDRESS": "embedder.internal:50051",
                "RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL": "fleet-credential",
            },
            {},
            {
                "address": "embedder.internal:50051",
                "service_credential": "fleet-credential",
            },
        )


class TestChatRagfleetUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRagfleet]:
        return ChatRagfleet

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"address": "127.0.0.1:1"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "RAGFLEET_GATEWAY_ADDRESS": "gateway.internal:50050",
                "RAGFLEET_API_KEY": "rfk_0123456789ab_secret",
            },
            {},
            {"address": "gateway.internal:50050", "api_key": "rfk_0123456789ab_secret"},
        )

    # Features the gateway's Ask does not offer.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False
