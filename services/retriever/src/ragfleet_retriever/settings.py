"""Retriever settings, read from ``RAGFLEET_RETRIEVER_*`` environment variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, FusionMethod
from ragfleet.runtime.settings import ServiceSettings


class BackendKind(StrEnum):
    EMBEDDED = "embedded"
    """tantivy + usearch files under ``data_dir`` (the default; one replica)."""
    OPENSEARCH = "opensearch"
    """An OpenSearch cluster at ``opensearch_url`` (stateless retriever; scales out)."""


class KnnEngine(StrEnum):
    FAISS = "faiss"
    LUCENE = "lucene"


class SpaceType(StrEnum):
    COSINESIMIL = "cosinesimil"
    """Cosine similarity; with engine faiss it needs OpenSearch 2.19 or later."""
    INNERPRODUCT = "innerproduct"
    """Inner product of unit vectors (the backend normalises them), which equals cosine
    similarity; works with faiss from 2.9 and lucene from 2.13."""


class RefreshPolicy(StrEnum):
    WAIT_FOR = "wait_for"
    """An upsert returns once its chunks are searchable."""
    FALSE = "false"
    """An upsert returns once its chunks are durable; they become searchable at the next
    refresh (``index.refresh_interval``). For bulk loads."""


class HybridExecution(StrEnum):
    CLIENT = "client"
    """Lexical and dense searches run separately and are fused by ``ragfleet.fusion``, exactly
    as with the embedded backend."""
    SERVER = "server"
    """One ``hybrid`` query fused by an OpenSearch search pipeline (normalization-processor
    for weighted fusion, score-ranker-processor for RRF on 2.19+) when the request uses the
    default fusion parameters; other requests are fused in our code."""


class RetrieverSettings(ServiceSettings):
    """Configuration of the retriever service and its limits.

    Request limits (each violation is answered INVALID_ARGUMENT naming the field and the limit):
    ``top_k`` 1..``max_top_k`` (0 means ``default_top_k``), ``candidate_k`` 1..``max_candidate_k``
    (0 means ``default_candidate_k``), at most ``max_upsert_chunks`` chunks per Upsert, at most
    ``max_delete_ids`` ids and ``max_keep_ids`` keep_ids per Delete, queries of at most
    ``max_query_chars`` characters.
    """

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_RETRIEVER_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535, description="0 picks a free port")
    backend: BackendKind = BackendKind.EMBEDDED
    data_dir: Path = Field(
        default=Path("var/index"), description="where the embedded backend keeps its files"
    )
    dimension: int = Field(
        default=384,
        ge=1,
        le=8192,
        description="vector dimension of a new index; an existing index keeps its own and "
        "refuses to open when this differs",
    )
    vector_dtype: Literal["f32", "i8"] = Field(
        default="f32",
        description="usearch storage type; i8 keeps SciFact quality at a third of the memory",
    )
    exact_search_max_candidates: int = Field(
        default=4096,
        ge=0,
        description="filtered dense search scans the filter's matches exactly when at most "
        "this many, and over-fetches from the ANN index otherwise",
    )
    opensearch_url: str = Field(
        default="",
        description="http(s)://host:port of the OpenSearch cluster; required with "
        "backend=opensearch",
    )
    opensearch_index: str = Field(
        default="ragfleet-chunks",
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,199}$",
        description="index holding the chunks; created on start-up when missing",
    )
    opensearch_username: str = ""
    opensearch_password: SecretStr = SecretStr("")
    opensearch_verify_certs: bool = Field(
        default=True, description="verify the cluster's TLS certificate (https only)"
    )
    opensearch_ca_certs: Path | None = Field(
        default=None, description="CA bundle to verify the cluster's certificate with"
    )
    opensearch_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="timeout of each request to the cluster (connect and read)",
    )
    opensearch_max_retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="retries of a request that failed to connect or got 502/503/504; a call "
        "takes at most opensearch_timeout_s * (1 + retries)",
    )
    opensearch_engine: KnnEngine = KnnEngine.FAISS
    opensearch_space_type: SpaceType = SpaceType.COSINESIMIL
    opensearch_hnsw_m: int = Field(default=16, ge=2, le=100)
    opensearch_hnsw_ef_construction: int = Field(default=128, ge=2, le=4096)
    opensearch_hnsw_ef_search: int = Field(
        default=100, ge=2, le=4096, description="faiss only; lucene searches with ef = k"
    )
    opensearch_bulk_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=64 * 1024,
        description="largest bulk request; bigger upserts are split (OpenSearch advises 5-15 MB; "
        "http.max_content_length refuses more than 100 MB by default)",
    )
    opensearch_read_from_primary: bool = Field(
        default=False,
        description="search and fetch with preference=_primary_first: read-after-write on "
        "clusters with segment replication (remote-store clusters use it), at the cost of "
        "sending every read to the primaries",
    )
    opensearch_shards: int = Field(default=1, ge=1, le=1024)
    opensearch_replicas: int = Field(default=1, ge=0, le=16)
    opensearch_refresh: RefreshPolicy = RefreshPolicy.WAIT_FOR
    opensearch_hybrid: HybridExecution = HybridExecution.CLIENT

    default_top_k: int = Field(default=10, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    default_candidate_k: int = Field(default=50, ge=1)
    max_candidate_k: int = Field(default=1000, ge=1)
    max_upsert_chunks: int = Field(default=1024, ge=1)
    max_delete_ids: int = Field(default=10_000, ge=1)
    # A replaced source keeps all its new chunk ids: the gateway's largest document (20 MiB of
    # text, 1000-character chunks with 150 overlap) has about 25,000.
    max_keep_ids: int = Field(default=100_000, ge=1)
    max_query_chars: int = Field(default=8192, ge=1)
    default_fusion: FusionMethod = FusionMethod.WEIGHTED
    default_dense_weight: float = Field(default=DEFAULT_DENSE_WEIGHT, ge=0.0, le=1.0)
    default_rrf_k: int = Field(default=DEFAULT_RRF_K, ge=1)

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> RetrieverSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        if self.default_candidate_k > self.max_candidate_k:
            raise ValueError("default_candidate_k must not exceed max_candidate_k")
        if self.backend is BackendKind.OPENSEARCH:
            url = urlsplit(self.opensearch_url)
            try:
                port_ok = url.port is None or url.port > 0
            except ValueError:
                port_ok = False
            if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
                raise ValueError(
                    "opensearch_url must be http(s)://host[:port] with backend=opensearch, "
                    f"got {self.opensearch_url!r}"
                )
            if bool(self.opensearch_username) != bool(self.opensearch_password.get_secret_value()):
                raise ValueError("set both opensearch_username and opensearch_password, or neither")
        return self
