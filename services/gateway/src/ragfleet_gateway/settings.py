"""Gateway settings, read from ``RAGFLEET_GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.runtime.settings import ServiceSettings

# Small models follow an example better than a rule: the system prompt shows one cited answer.
# Measured on the bundled docs with Qwen2.5-Coder-0.5B, the example turned answers made only of
# citation markers ("[1] [2]") into cited sentences.
DEFAULT_PROMPT_TEMPLATE = """\
Sources:
{sources}

Question: {question}
Answer:"""

DEFAULT_SYSTEM_PROMPT = """\
You answer questions using only the numbered sources the user gives you. Write the answer in one \
to three complete sentences and put the number of the source you used in square brackets at the \
end of each sentence. If the sources do not contain the answer, reply: The documents do not say.

Example:
Sources:
[1] The office opens at 9 am.
[2] Parking is free on Sundays.
Question: When does the office open?
Answer: The office opens at 9 am [1]."""


class GatewaySettings(ServiceSettings):
    """Everything the gateway is configured with.

    ``RAGFLEET_GATEWAY_PORT`` (gRPC, default 50050) and ``RAGFLEET_GATEWAY_REST_PORT`` (REST,
    default 8080) both bind ``RAGFLEET_GATEWAY_HOST``. Request limits are enforced by
    ``ragfleet_gateway.validation`` and reported as INVALID_ARGUMENT / HTTP 400 naming the field
    and the limit.
    """

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_GATEWAY_", extra="ignore", frozen=True)

    port: int = Field(default=50050, ge=0, le=65535, description="gRPC port; 0 picks a free port")
    rest_port: int = Field(
        default=8080, ge=0, le=65535, description="REST port; 0 picks a free port"
    )

    # --- upstreams -----------------------------------------------------------------------
    embedder_address: str = "127.0.0.1:50051"
    retriever_address: str = "127.0.0.1:50052"
    generator_address: str = Field(
        default="127.0.0.1:50053", description="the Ray Serve gRPC proxy"
    )
    generator_application: str = Field(
        default="generator",
        description="Ray Serve application name, sent as gRPC metadata 'application'",
    )
    upstream_retry_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="attempts of an idempotent unary call that fails with UNAVAILABLE",
    )
    health_timeout_s: float = Field(
        default=2.0, gt=0, description="timeout of each upstream probe behind GET /healthz"
    )

    # --- deadlines -----------------------------------------------------------------------
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="deadline of a request; a shorter client gRPC deadline takes precedence",
    )
    ingest_timeout_s: float = Field(
        default=600.0, gt=0, description="deadline of an ingest request (same rule)"
    )
    first_token_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="how long the generator may take to its first token before the answer "
        "falls back to retrieval only",
    )
    answer_reserve_s: float = Field(
        default=0.25,
        ge=0,
        description="time kept back from generation so a fallback answer still fits the deadline",
    )

    # --- retrieval -----------------------------------------------------------------------
    default_top_k: int = Field(default=5, ge=1)
    max_top_k: int = Field(default=50, ge=1, description="largest top_k a request may ask for")
    candidate_k: int = Field(
        default=50, ge=1, description="hits fetched from each of the lexical and dense lists"
    )
    default_mode: Literal["lexical", "dense", "hybrid"] = "hybrid"
    default_fusion: Literal["rrf", "weighted"] = Field(
        default="weighted", description="min-max weighted fusion measured best on SciFact"
    )
    default_dense_weight: float = Field(default=0.5, ge=0, le=1)
    default_rrf_k: int = Field(default=60, ge=1)
    max_question_chars: int = Field(default=2000, ge=1, description="longest question or query")

    # --- generation ----------------------------------------------------------------------
    max_tokens_limit: int = Field(
        default=2048, ge=1, description="largest max_tokens a request may ask for (0 = default)"
    )
    default_max_tokens: int = Field(
        default=0, ge=0, description="max_tokens sent when a request leaves it 0 (0 = generator's)"
    )
    prompt_template: str = Field(
        default=DEFAULT_PROMPT_TEMPLATE,
        description="user prompt with {sources} and {question} placeholders",
    )
    prompt_template_file: Path | None = Field(
        default=None, description="a file holding the user prompt template; wins over the string"
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    default_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="temperature when a request sets none"
    )
    source_max_chars: int = Field(
        default=1500, ge=100, description="longest passage text shown to the model per source"
    )
    no_answer_text: str = Field(
        default="The documents do not say.", description="the answer when nothing was retrieved"
    )

    # --- ingestion -----------------------------------------------------------------------
    chunk_size_chars: int = Field(default=1000, ge=100)
    chunk_overlap_chars: int = Field(default=150, ge=0)
    embed_batch_size: int = Field(default=32, ge=1, le=1024)
    upsert_batch_size: int = Field(default=256, ge=1)
    max_ingest_documents: int = Field(default=256, ge=1, description="documents per request")
    max_ingest_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="UTF-8 bytes of document text per request"
    )

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if self.chunk_overlap_chars >= self.chunk_size_chars:
            raise ValueError("chunk_overlap_chars must be smaller than chunk_size_chars")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        template = self.user_prompt_template()
        try:
            template.format(sources="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"the prompt template may only use the {{sources}} and {{question}} "
                f"placeholders (double other braces): {exc!r}"
            ) from exc
        for placeholder in ("{sources}", "{question}"):
            if placeholder not in template:
                raise ValueError(f"the prompt template lacks the {placeholder} placeholder")
        return self

    def user_prompt_template(self) -> str:
        """The template text: the file's content when ``prompt_template_file`` is set."""
        if self.prompt_template_file is not None:
            return self.prompt_template_file.read_text(encoding="utf-8")
        return self.prompt_template
