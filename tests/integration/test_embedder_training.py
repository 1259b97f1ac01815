"""Fine-tuning the all-MiniLM-L6-v2 embedder on CPU, on a few toy triplets: the saved folder loads
by path the way the embedder service loads it (``RAGFLEET_EMBEDDER_MODEL_PATH``) and embeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragfleet_embedder.model import SentenceTransformerEmbedder
from ragfleet_tools.training.embedder import EmbedderTrainingConfig, Triplet, train_embedder

pytestmark = pytest.mark.integration

TRIPLETS = [
    Triplet("aspirin and heart attacks", "Aspirin lowered infarction rates.", "Cats sleep."),
    Triplet("vitamin d in winter", "Vitamin D levels fall in winter.", "Rust forms on iron."),
    Triplet("sea tides", "Tides follow the moon.", "Paris is a large city."),
]


def test_a_fine_tuned_embedder_is_saved_and_loads_by_path(tmp_path: Path) -> None:
    out = tmp_path / "embedder"
    report = train_embedder(
        TRIPLETS, out, config=EmbedderTrainingConfig(epochs=1, batch_size=2, max_length=32)
    )
    assert (report.triplets, report.steps) == (3, 2)
    assert report.final_loss > 0
    model = SentenceTransformerEmbedder.load(path=out, name="fine-tuned", device="cpu")
    vectors = model.encode(["aspirin", "tides"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
