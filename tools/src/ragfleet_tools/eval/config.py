"""Retrieval configurations to evaluate, from a TOML or YAML file or the built-in set.

A file holds a list of tables under ``config`` (TOML ``[[config]]``, YAML ``config:``), each::

    name = "hybrid-weighted"      # unique, shown in reports
    mode = "hybrid"               # lexical | dense | hybrid
    fusion = "weighted"           # rrf | weighted (hybrid only)
    rrf_k = 60                    # rrf rank constant
    dense_weight = 0.3            # weighted fusion: weight of the dense list, in [0, 1]
    candidate_k = 100             # candidates each side returns (chunks when chunked)
    chunking = { strategy = "characters", size = 1000, overlap = 150 }  # or "none": whole docs
    reranker = "none"             # or a ragfleet.rerank spec, e.g. "cross-encoder:var/ce"
    rerank_k = 20                 # how many of the best documents the reranker reorders

Every key but ``name`` is optional; the values above are the defaults, the fleet's own (the
chunking is what ``ragfleet ingest`` and the gateway's ingest use). Unknown keys and bad values
raise ``InvalidInput`` naming ``config[<index>].<key>``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy
from ragfleet.domain import SearchMode
from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, FusionMethod, make_fuser
from ragfleet.runtime.errors import InvalidInput

NO_RERANKER = "none"
MAX_CANDIDATE_K = 1000
MAX_RERANK_K = 1000
WHOLE_DOCUMENTS = ChunkingConfig(ChunkingStrategy.NONE)
FLEET_CHUNKING = ChunkingConfig()
"""How the fleet cuts documents when it ingests them."""


@dataclass(frozen=True)
class RetrievalConfig:
    """One way to retrieve, evaluated as a whole. When chunked, a document's score is that of
    its best chunk. ``rerank_k`` is ignored when ``reranker`` is ``"none"``."""

    name: str
    mode: SearchMode = SearchMode.HYBRID
    fusion: FusionMethod = FusionMethod.WEIGHTED
    rrf_k: int = DEFAULT_RRF_K
    dense_weight: float = DEFAULT_DENSE_WEIGHT
    candidate_k: int = 100
    chunking: ChunkingConfig = field(default=FLEET_CHUNKING)
    reranker: str = NO_RERANKER
    rerank_k: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidInput("name: must be a non-empty string")
        for key, enum in (("mode", SearchMode), ("fusion", FusionMethod)):
            value = getattr(self, key)
            try:
                object.__setattr__(self, key, enum(value))
            except ValueError:
                known = ", ".join(m.value for m in enum)
                raise InvalidInput(
                    f"{key}: unknown value {value!r}; expected one of {known}"
                ) from None
        # The fusion component validates its own parameters, with the same messages as the fleet.
        make_fuser(FusionMethod.RRF, rrf_k=self.rrf_k)
        make_fuser(FusionMethod.WEIGHTED, dense_weight=self.dense_weight)
        for key, limit in (("candidate_k", MAX_CANDIDATE_K), ("rerank_k", MAX_RERANK_K)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise InvalidInput(f"{key}: must be an integer in [1, {limit}], got {value!r}")
        if not isinstance(self.reranker, str) or not self.reranker.strip():
            raise InvalidInput(f'reranker: must be "{NO_RERANKER}" or a reranker spec')

    @property
    def description(self) -> str:
        """The settings that matter for this mode, e.g. ``hybrid weighted w=0.4 k=100``."""
        parts = [self.mode.value]
        if self.mode is SearchMode.HYBRID:
            parts.append(
                f"rrf k={self.rrf_k}"
                if self.fusion is FusionMethod.RRF
                else f"weighted w={self.dense_weight:g}"
            )
        parts.append(f"depth {self.candidate_k}")
        if self.reranker != NO_RERANKER:
            parts.append(f"rerank {self.reranker} top {self.rerank_k}")
        return " ".join(parts)


DEFAULT_CONFIGS: tuple[RetrievalConfig, ...] = (
    RetrievalConfig("bm25", mode=SearchMode.LEXICAL),
    RetrievalConfig("dense", mode=SearchMode.DENSE),
    RetrievalConfig("hybrid-rrf", fusion=FusionMethod.RRF),
    RetrievalConfig("hybrid-weighted", fusion=FusionMethod.WEIGHTED),
)
"""The built-in set: the fleet's defaults (weighted fusion, its chunking) next to each single
side."""

_KEYS = {f.name for f in fields(RetrievalConfig)}


def _chunking(value: Any) -> ChunkingConfig:
    if value == ChunkingStrategy.NONE.value:
        return WHOLE_DOCUMENTS
    if not isinstance(value, Mapping):
        raise InvalidInput('chunking: must be "none" or a table with strategy, size, overlap')
    unknown = set(value) - {"strategy", "size", "overlap"}
    if unknown:
        raise InvalidInput(f"chunking: unknown keys {sorted(unknown)}")
    return ChunkingConfig(**value)


def parse_configs(data: Any) -> list[RetrievalConfig]:
    """Configurations from parsed TOML/YAML (``{"config": [ {...}, ... ]}``)."""
    entries = data.get("config") if isinstance(data, Mapping) else None
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise InvalidInput("config: the file must hold a non-empty list of [[config]] tables")
    configs: list[RetrievalConfig] = []
    for index, entry in enumerate(entries):
        where = f"config[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"{where}: must be a table")
        unknown = set(entry) - _KEYS
        if unknown:
            raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        values = dict(entry)
        try:
            if "chunking" in values:
                values["chunking"] = _chunking(values["chunking"])
            configs.append(RetrievalConfig(**values))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}.{exc.message}") from None
        except TypeError:
            raise InvalidInput(f"{where}.name: required") from None
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"config: names must be unique; repeated: {', '.join(duplicates)}")
    return configs


def load_configs(path: Path | None) -> list[RetrievalConfig]:
    """The configurations in ``path`` (``.toml``, ``.yaml`` or ``.yml``), or the built-in set
    when ``path`` is ``None``."""
    if path is None:
        return list(DEFAULT_CONFIGS)
    if not path.is_file():
        raise InvalidInput(f"config: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config: cannot parse {path}: {exc}") from None
    elif suffix in {".yaml", ".yml"}:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"config: cannot parse {path}: {exc}") from None
    else:
        raise InvalidInput(f"config: {path} must end in .toml, .yaml or .yml")
    return parse_configs(data)
