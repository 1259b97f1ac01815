"""Embedder core: request validation, prefixes, readiness, settings and model-file checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragfleet.domain import InputType
from ragfleet.runtime.errors import InvalidInput, ModelLoadError, Unavailable
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.fakes import FakeEmbeddingModel
from ragfleet_embedder.model import INSTALL_HINT, verify_model_files
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.unit

LIMITS = {"max_batch_texts": 4, "max_text_chars": 20, "max_batch_wait_ms": 0.0}


async def loaded(model: FakeEmbeddingModel, **overrides: object) -> Embedder:
    embedder = Embedder(EmbedderSettings(**{**LIMITS, **overrides}), lambda: model)  # type: ignore[arg-type]
    await embedder.load()
    return embedder


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts must hold at least one text"),
        (["a"] * 5, r"texts holds 5 texts; the limit is 4 \(max_batch_texts\)"),
        (["fine", ""], r"texts\[1\] is empty or whitespace only"),
        (["fine", "ok", " \n\t "], r"texts\[2\] is empty or whitespace only"),
        (["x" * 21], r"texts\[0\] has 21 characters; the limit is 20 \(max_text_chars\)"),
    ],
)
async def test_bad_input_is_rejected_naming_field_and_limit(texts: list[str], message: str) -> None:
    model = FakeEmbeddingModel()
    embedder = await loaded(model)
    try:
        with pytest.raises(InvalidInput, match=message):
            await embedder.embed(texts, InputType.PASSAGE)
    finally:
        await embedder.close()
    assert model.calls == []


async def test_texts_at_the_limits_are_accepted() -> None:
    model = FakeEmbeddingModel()
    embedder = await loaded(model)
    try:
        result = await embedder.embed(["x" * 20] * 4, InputType.PASSAGE)
    finally:
        await embedder.close()
    assert result.vectors.shape == (4, model.dimension)
    assert result.vectors.dtype == np.float32
    assert (result.model, result.dimension) == ("fake-embedder", model.dimension)


@pytest.mark.parametrize(
    ("input_type", "sent"),
    [(InputType.QUERY, "query: what is it"), (InputType.PASSAGE, "passage: what is it")],
)
async def test_prefixes_mark_queries_and_passages(input_type: InputType, sent: str) -> None:
    model = FakeEmbeddingModel()
    embedder = await loaded(model, query_prefix="query: ", passage_prefix="passage: ")
    try:
        await embedder.embed(["what is it"], input_type)
    finally:
        await embedder.close()
    assert model.calls == [[sent]]


async def test_nothing_is_served_before_the_model_is_loaded() -> None:
    embedder = Embedder(EmbedderSettings(), FakeEmbeddingModel)
    with pytest.raises(Unavailable, match="still loading"):
        await embedder.embed(["hello"], InputType.QUERY)
    with pytest.raises(Unavailable):
        embedder.model_info()


async def test_model_info_reports_model_and_limits() -> None:
    embedder = await loaded(FakeEmbeddingModel(dimension=16))
    try:
        info = embedder.model_info()
    finally:
        await embedder.close()
    assert (info.name, info.dimension, info.max_sequence_length) == ("fake-embedder", 16, 128)
    assert (info.max_batch_texts, info.max_text_chars) == (4, 20)


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGFLEET_EMBEDDER_BATCH_SIZE", "16")
    monkeypatch.setenv("RAGFLEET_EMBEDDER_QUERY_PREFIX", "query: ")
    monkeypatch.setenv("RAGFLEET_EMBEDDER_MODEL_PATH", "/models/e5")
    settings = EmbedderSettings()
    assert (settings.batch_size, settings.query_prefix) == (16, "query: ")
    assert settings.model_path == Path("/models/e5")
    assert (settings.port, settings.host, settings.device) == (50051, "127.0.0.1", "cpu")


def complete_model_folder(root: Path) -> Path:
    for name in ("modules.json", "config.json", "tokenizer_config.json"):
        (root / name).write_text("{}")
    (root / "model.safetensors").write_bytes(b"weights")
    return root


def test_a_complete_model_folder_passes(tmp_path: Path) -> None:
    verify_model_files(complete_model_folder(tmp_path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "config.json").unlink(), "lacks config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "lacks model.safetensors or"),
        (lambda p: (p / "model.safetensors").write_bytes(b""), "are empty"),
    ],
)
def test_an_incomplete_model_folder_says_what_to_install(
    tmp_path: Path, damage: object, message: str
) -> None:
    folder = complete_model_folder(tmp_path)
    damage(folder)  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=message) as caught:
        verify_model_files(folder)
    assert INSTALL_HINT in caught.value.message


def test_a_missing_model_folder_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as caught:
        verify_model_files(tmp_path / "nowhere")
    assert INSTALL_HINT in caught.value.message
