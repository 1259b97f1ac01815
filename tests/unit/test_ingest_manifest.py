"""The manifest: what is recorded, pending ids, forgetting; it survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.ingest.manifest import Manifest

pytestmark = pytest.mark.unit


def test_record_replaces_and_clears_pending(tmp_path: Path) -> None:
    path = tmp_path / "m" / "manifest.sqlite"
    with Manifest(path) as manifest:
        manifest.add_pending("t", [("a", "1"), ("a", "2"), ("b", "9")])
        assert manifest.pending("t", "a") == {"1", "2"}
        manifest.record("t", "a", "coll", "h1", ["1", "2"])
        assert manifest.pending("t", "a") == set()
        assert manifest.pending("t", "b") == {"9"}
    with Manifest(path) as manifest:
        entry = manifest.entries("t")["a"]
        assert (entry.collection, entry.content_hash, entry.chunk_ids) == ("coll", "h1", ("1", "2"))
        assert manifest.entries("other") == {}
        manifest.record("t", "a", "coll", "h2", ["3"])
        assert manifest.entries("t")["a"].chunk_ids == ("3",)
        manifest.forget("t", "a")
        manifest.forget("t", "b")
        assert manifest.entries("t") == {} and manifest.pending("t", "b") == set()


def test_clear_forgets_one_tenant(tmp_path: Path) -> None:
    with Manifest(tmp_path / "manifest.sqlite") as manifest:
        manifest.record("t", "a", "c", "h", ["1"])
        manifest.record("u", "a", "c", "h", ["2"])
        manifest.clear("t")
        assert manifest.entries("t") == {} and set(manifest.entries("u")) == {"a"}
