"""Retriever settings, read from ``RAGFLEET_RETRIEVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, FusionMethod
from ragfleet.runtime.settings import ServiceSettings


class RetrieverSettings(ServiceSettings):
    """Configuration of the retriever service and its limits.

    Request limits (each violation is answered INVALID_ARGUMENT naming the field and the limit):
    ``top_k`` 1..``max_top_k`` (0 means ``default_top_k``), ``candidate_k`` 1..``max_candidate_k``
    (0 means ``default_candidate_k``), at most ``max_upsert_chunks`` chunks per Upsert, at most
    ``max_delete_ids`` ids per Delete, queries of at most ``max_query_chars`` characters.
    """

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_RETRIEVER_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535, description="0 picks a free port")
    backend: Literal["embedded"] = "embedded"
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
    default_top_k: int = Field(default=10, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    default_candidate_k: int = Field(default=50, ge=1)
    max_candidate_k: int = Field(default=1000, ge=1)
    max_upsert_chunks: int = Field(default=1024, ge=1)
    max_delete_ids: int = Field(default=10_000, ge=1)
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
        return self
