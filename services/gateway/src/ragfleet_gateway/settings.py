"""Gateway settings, read from ``RAGFLEET_GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy
from ragfleet.runtime.settings import ServiceSettings

# Chosen on the questions about docs/ in tests/e2e/docs_questions.json with Qwen2.5-Coder-0.5B
# (docs/evaluation.md, "Answers"): asking for the sources' own words, with the question right
# after the passages, gave the most right answers. It does not ask the model to decline: told
# to, this model declined answerable questions; min_dense_score declines unrelated ones before
# any model is asked. The [n] markers it asks for are checked and completed by
# ragfleet_gateway.prompt.attribute_citations, as this model often leaves them out.
# Ending on the instruction matters to the small default model: given only the sources and the
# question, it often began its answer by copying the first source's label and heading.
DEFAULT_PROMPT_TEMPLATE = """\
Sources:

{sources}

Question: {question}

Answer the question in one sentence of your own, then cite the source number like [1]."""

DEFAULT_SYSTEM_PROMPT = """\
You answer questions using only the numbered sources the user gives you. Answer in one or two \
short sentences, using the words of the sources, and end each sentence with the number of its \
source in square brackets, for example [2]."""


class ModelLink(BaseModel):
    """One link of the fallback chain: a model name, and where it is served when that is not
    the default generator (``generator_address`` / ``generator_application``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the model name sent in GenerateRequest.model")
    address: str = Field(default="", description="gRPC address; empty: generator_address")
    application: str = Field(
        default="", description="Ray Serve application; empty: generator_application"
    )


DEFAULT_PRICE_KEY = "default"
"""The price table's key for the generator's default model (the one link of a gateway without a
``models`` chain)."""


class ModelPrice(BaseModel):
    """What one model's tokens cost, in USD: either per million tokens (an API model's list
    price), or for a self-hosted model an hourly price of what serves it and the throughput it
    was measured at. A self-hosted model's token costs the share of the hour that its replica
    spends on it: a prompt token ``hourly_usd / 3600 / prefill_tokens_per_s``, a completion token
    ``hourly_usd / 3600 / decode_tokens_per_s`` (one request at a time, as the packaged
    llama.cpp replicas run; a replica that batches has a higher throughput to configure)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_usd_per_million: float | None = Field(
        default=None, ge=0, description="API model: USD per million prompt tokens"
    )
    output_usd_per_million: float | None = Field(
        default=None, ge=0, description="API model: USD per million completion tokens"
    )
    hourly_usd: float | None = Field(
        default=None, ge=0, description="self-hosted model: USD per hour of one replica's host"
    )
    prefill_tokens_per_s: float | None = Field(
        default=None, gt=0, description="self-hosted model: measured prompt tokens per second"
    )
    decode_tokens_per_s: float | None = Field(
        default=None, gt=0, description="self-hosted model: measured completion tokens per second"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelPrice:
        api = (self.input_usd_per_million, self.output_usd_per_million)
        hosted = (self.hourly_usd, self.prefill_tokens_per_s, self.decode_tokens_per_s)
        if all(v is not None for v in api) and all(v is None for v in hosted):
            return self
        if all(v is not None for v in hosted) and all(v is None for v in api):
            return self
        raise ValueError(
            "a price is either input_usd_per_million and output_usd_per_million (an API model) "
            "or hourly_usd, prefill_tokens_per_s and decode_tokens_per_s (a self-hosted model)"
        )

    def per_million(self) -> tuple[float, float]:
        """USD per million prompt tokens and per million completion tokens."""
        if self.hourly_usd is None:
            assert self.input_usd_per_million is not None
            assert self.output_usd_per_million is not None
            return self.input_usd_per_million, self.output_usd_per_million
        assert self.prefill_tokens_per_s is not None and self.decode_tokens_per_s is not None
        per_second = self.hourly_usd / 3600 * 1e6
        return per_second / self.prefill_tokens_per_s, per_second / self.decode_tokens_per_s


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

    # --- authentication --------------------------------------------------------------------
    api_keys_file: Path | None = Field(
        default=None,
        description="the API keys file (JSON or YAML; hashes only, re-read when it changes; "
        "docs/security.md); required unless auth_disabled",
    )
    auth_disabled: bool = Field(
        default=False,
        description="serve without API keys: every caller may use every tenant; for local "
        "experiments only, never where others can reach the ports",
    )

    # --- upstreams -----------------------------------------------------------------------
    embedder_address: str = Field(
        default="127.0.0.1:50051",
        description="host:port, or replicas as host:port,host:port (balanced round-robin; a "
        "call that fails UNAVAILABLE is retried on another)",
    )
    retriever_address: str = Field(default="127.0.0.1:50052", description="as embedder_address")
    generator_address: str = Field(
        default="127.0.0.1:50053", description="the Ray Serve gRPC proxy"
    )
    generator_application: str = Field(
        default="generator",
        description="Ray Serve application name, sent as gRPC metadata 'application'",
    )
    models: tuple[ModelLink, ...] = Field(
        default=(),
        description="the fallback chain, in order: model names or {name, address, application} "
        "objects, as JSON; empty: one link, the default generator's default model",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="the price table, as JSON: model name -> price (docs/configuration.md, "
        "Cost); the generator's default model (no models chain) is 'default'; empty, with no "
        "prices_file: answers carry no cost",
    )
    prices_file: Path | None = Field(
        default=None,
        description="a JSON or YAML file holding the price table; its entries join prices "
        "(prices wins for a model in both)",
    )
    # --- routing (ragfleet_gateway.routing; docs/routing.md) -----------------------------------
    routing: Literal["none", "classifier", "signals", "cascade"] = Field(
        default="none",
        description="how each question picks its first model: none (the chain's first), "
        "classifier (router_model_file on the question), signals (retrieval scores), cascade "
        "(the cheap model first; the strong one when its answer fails the check)",
    )
    routing_cheap_model: str = Field(
        default="", description="the cheap model, one of models; required unless routing is none"
    )
    routing_strong_model: str = Field(
        default="", description="the strong model, one of models; required unless routing is none"
    )
    routing_threshold: float | None = Field(
        default=None,
        description="classifier: the strong model when its probability is at least this "
        "(default: the model file's threshold); signals: the strong model when the best "
        "retrieval score is below this (required)",
    )
    router_model_file: Path | None = Field(
        default=None,
        description="the classifier written by `ragfleet train router` (routing classifier)",
    )

    # --- answer records and feedback (ragfleet.flywheel; docs/routing.md) -----------------------
    feedback_store: str = Field(
        default="",
        description="where answers and their feedback are kept: sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB (`ragfleet up` uses a SQLite file in its "
        "home); empty: answers are not recorded and Feedback is refused",
    )
    feedback_spool_dir: Path = Field(
        default=Path("var/feedback/spool"),
        description="answer records wait here (one JSON line each) until the store takes them",
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

    generation_retry_attempts: int = Field(
        default=2,
        ge=1,
        le=10,
        description="tries of one model before the next, on UNAVAILABLE or RESOURCE_EXHAUSTED "
        "before its first token",
    )
    generation_retry_base_s: float = Field(
        default=0.1, gt=0, description="backoff before the first retry; doubles, with jitter"
    )
    generation_retry_max_s: float = Field(default=1.0, gt=0, description="longest backoff")
    breaker_failure_threshold: int = Field(
        default=3, ge=1, description="consecutive failures of a model that open its breaker"
    )
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="how long an open breaker skips its model"
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
    retrieval_budget_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="share of an ask's deadline that retrieval may use (capped by "
        "retrieval_budget_max_s); the rest is generation's",
    )
    retrieval_budget_max_s: float = Field(
        default=5.0, gt=0, description="most seconds retrieval may use within an ask"
    )
    first_token_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="how long one model may take to its first token before the next model "
        "(or the retrieval-only answer) is tried",
    )
    token_stall_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="longest silence between two tokens before the model counts as failed",
    )
    answer_reserve_s: float = Field(
        default=0.25,
        ge=0,
        description="time kept back from generation so a fallback answer still fits the deadline",
    )

    # --- retrieval -----------------------------------------------------------------------
    default_top_k: int = Field(default=5, ge=1)
    max_top_k: int = Field(default=50, ge=1, description="largest top_k a request may ask for")
    embed_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="longest the query embedding may take (at most half the time left); past "
        "it the search is lexical only, marked degraded",
    )
    default_mode: Literal["lexical", "dense", "hybrid"] = Field(
        default="hybrid",
        description="search mode of a request that sets none; the retriever fuses hybrid search",
    )
    rerank: bool = Field(
        default=False,
        description="rescore fused candidates with the embedder's Rerank unless a request says "
        "otherwise; off by default (docs/benchmarks.md, Reranking, says why)",
    )
    rerank_depth: int = Field(
        default=20, ge=1, description="fused candidates rescored when reranking (raised to top_k)"
    )
    max_rerank_depth: int = Field(
        default=100, ge=1, description="largest rerank_depth a request may ask for"
    )
    rerank_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="longest the rerank stage may take; past it the fused order is kept and "
        "the result is marked degraded",
    )
    max_question_chars: int = Field(default=2000, ge=1, description="longest question or query")

    # --- generation ----------------------------------------------------------------------
    max_tokens_limit: int = Field(
        default=2048, ge=1, description="largest max_tokens a request may ask for"
    )
    default_max_tokens: int = Field(
        default=256,
        ge=0,
        description="max_tokens sent when a request leaves it unset (0: the generator's default); "
        "answers are one or two sentences, so this only bounds a runaway generation",
    )
    stop_sequences: tuple[str, ...] = Field(
        default=("\n\n", "\nQuestion:"),
        max_length=4,
        description="generation stops at any of these: an answer is one or two sentences, so a "
        "blank line means the model went on to copy a source or invent the next question; "
        "JSON list",
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
        default=1000, ge=100, description="longest passage text shown to the model per source"
    )
    context_budget_chars: int = Field(
        default=2400,
        ge=100,
        description="passage characters shown to the model in all: sources go in rank order, "
        "the last one shortened, the rest left out (prefill time grows with it)",
    )
    no_answer_text: str = Field(
        default="The documents do not say.",
        description="the answer when nothing relevant was retrieved; an answer that starts "
        "with it counts as the model declining (answered: false, no citations)",
    )
    min_dense_score: float | None = Field(
        default=0.3,
        description="when the dense search's best cosine similarity is below this, nothing "
        "relevant was retrieved: the answer is no_answer_text and no model is asked; calibrated "
        "for all-MiniLM-L6-v2 (docs/evaluation.md); unset: no threshold",
    )

    # --- conversations -------------------------------------------------------------------
    max_history_messages: int = Field(
        default=64, ge=0, description="most earlier messages (history) a request may carry"
    )
    max_history_message_chars: int = Field(
        default=8000, ge=1, description="longest earlier message a request may carry"
    )
    history_budget_chars: int = Field(
        default=2000,
        ge=0,
        description="characters of earlier messages put into the prompt: the newest that fit, "
        "the oldest left out first (the answer says how many; prefill time grows with it)",
    )
    rewrite_with_model: bool = Field(
        default=True,
        description="a follow-up is rewritten into a standalone question for retrieval by the "
        "model that would answer it; off, failing or slower than rewrite_timeout_s: the rule "
        "(the previous question put before a question that refers back)",
    )
    rewrite_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="longest the model may take to rewrite a follow-up before the rule is used",
    )
    rewrite_max_tokens: int = Field(
        default=48, ge=8, le=256, description="tokens the model may write for the rewrite"
    )

    # --- ingestion -----------------------------------------------------------------------
    chunk_strategy: ChunkingStrategy = Field(
        default=ChunkingStrategy.CHARACTERS,
        description="characters, tokens (the embedding model's) or none (whole documents)",
    )
    chunk_size_chars: int = Field(default=1000, ge=100)
    chunk_overlap_chars: int = Field(default=150, ge=0)
    chunk_size_tokens: int = Field(
        default=200, ge=16, description="chunk size with the tokens strategy; MiniLM reads 256"
    )
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    embed_batch_size: int = Field(default=32, ge=1, le=1024)
    upsert_batch_size: int = Field(default=256, ge=1)
    max_ingest_documents: int = Field(default=256, ge=1, description="documents per request")
    max_ingest_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="UTF-8 bytes of document text per request"
    )

    # --- ingestion jobs (a source read by the Ray Data pipeline) ---------------------------
    ingest_ray_address: str = Field(
        default="local",
        description="Ray for ingestion jobs: 'local' starts one in-process on the first job; "
        "else a cluster address (the fleet's head needs RAY_AUTH_MODE=token)",
    )
    ingest_manifest_path: Path = Field(
        default=Path("var/ingest/manifest.sqlite"),
        description="the ingestion manifest (the CLI's default too, run from the same folder)",
    )
    ingest_embedding: Literal["local", "service"] = Field(
        default="service",
        description="'service': the embedder (already loaded) embeds; 'local': a model per "
        "Ray actor",
    )
    ingest_workers: int = Field(default=1, ge=1, le=64, description="embedding actors per job")
    ingest_allowed_roots: list[Path] = Field(
        default_factory=list,
        description="local folders a job may read (JSON list); empty: URLs only",
    )
    ingest_allowed_url_hosts: list[str] = Field(
        default_factory=list,
        description="host names (docs.example.com) or domains (.example.com) a job may fetch "
        "URLs from, redirects included (JSON list); empty: any host at a public address",
    )
    ingest_allow_private_urls: bool = Field(
        default=False,
        description="let jobs fetch URLs at loopback, private, link-local and other non-public "
        "addresses (checked after DNS resolution and on every redirect); off: callers cannot "
        "reach the gateway's own network through it",
    )
    ingest_max_redirects: int = Field(
        default=5, ge=0, le=20, description="redirects a job follows per URL"
    )
    ingest_jobs_kept: int = Field(
        default=100, ge=1, description="finished jobs remembered for GET /v1/ingest/jobs/{id}"
    )

    @field_validator("models", mode="before", json_schema_input_type=list[str | ModelLink])
    @classmethod
    def _names_are_links(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple({"name": v} if isinstance(v, str) else v for v in value)
        return value

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        names = [link.name for link in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models must not repeat a name; got {names}")
        prices = self.price_table()
        if prices:
            unpriced = [n for n in names or [DEFAULT_PRICE_KEY] if n not in prices]
            if unpriced:
                raise ValueError(
                    f"prices: no price for model {', '.join(map(repr, unpriced))}; every model "
                    "of the chain needs one when a price table is configured"
                )
        if self.routing != "none":
            for role, name in (
                ("routing_cheap_model", self.routing_cheap_model),
                ("routing_strong_model", self.routing_strong_model),
            ):
                if name not in names:
                    raise ValueError(
                        f"{role}: {name!r} is not one of models ({', '.join(names) or 'none'}); "
                        f"routing {self.routing} needs both models in the chain"
                    )
            if self.routing_cheap_model == self.routing_strong_model:
                raise ValueError("routing_cheap_model and routing_strong_model must differ")
            if self.routing == "classifier" and self.router_model_file is None:
                raise ValueError("routing classifier needs router_model_file")
            if self.routing == "signals" and self.routing_threshold is None:
                raise ValueError("routing signals needs routing_threshold")
        if self.chunk_overlap_chars >= self.chunk_size_chars:
            raise ValueError("chunk_overlap_chars must be smaller than chunk_size_chars")
        if self.chunk_overlap_tokens >= self.chunk_size_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_size_tokens")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        if self.rerank_depth > self.max_rerank_depth:
            raise ValueError("rerank_depth must not exceed max_rerank_depth")
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

    def price_table(self) -> dict[str, ModelPrice]:
        """``prices_file``'s entries (read now) overlaid with ``prices``. Raises ``ValueError``
        naming the file when it cannot be read or is not a table of prices."""
        table: dict[str, ModelPrice] = {}
        if self.prices_file is not None:
            try:
                data = yaml.safe_load(self.prices_file.read_text(encoding="utf-8")) or {}
                if not isinstance(data, dict):
                    raise ValueError("not a mapping of model name to price")
                table = {str(name): ModelPrice.model_validate(v) for name, v in data.items()}
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ValueError(f"prices_file: {self.prices_file}: {exc}") from exc
        return {**table, **self.prices}

    def user_prompt_template(self) -> str:
        """The template text: the file's content when ``prompt_template_file`` is set."""
        if self.prompt_template_file is not None:
            return self.prompt_template_file.read_text(encoding="utf-8")
        return self.prompt_template

    def chunking(self) -> ChunkingConfig:
        """The chunker's configuration: the size and overlap in the chosen strategy's unit."""
        if self.chunk_strategy is ChunkingStrategy.TOKENS:
            return ChunkingConfig(
                self.chunk_strategy, self.chunk_size_tokens, self.chunk_overlap_tokens
            )
        return ChunkingConfig(self.chunk_strategy, self.chunk_size_chars, self.chunk_overlap_chars)
