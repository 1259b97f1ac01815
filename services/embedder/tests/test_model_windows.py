"""Long texts embedded in windows, on the real packaged MiniLM model."""

from __future__ import annotations

import numpy as np
import pytest

from ragfleet_embedder.model import SentenceTransformerEmbedder
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.integration

FILLER = " ".join(
    f"The committee met on day {i} to review the quarterly budget." for i in range(22)
)
TAIL = " ".join(
    [
        "Penguins dive for krill beneath the Antarctic sea ice.",
        "Emperor penguins hunt krill and fish in the cold southern ocean.",
        "Krill swarms under the ice feed the penguin colonies through the winter.",
    ]
    * 3
)


@pytest.fixture(scope="module")
def models() -> tuple[SentenceTransformerEmbedder, SentenceTransformerEmbedder]:
    windowed = SentenceTransformerEmbedder.from_settings(EmbedderSettings(long_text_windows=True))
    truncating = SentenceTransformerEmbedder(
        windowed._model,
        windowed.name,
        batch_size=64,
        normalize=True,
    )
    return truncating, windowed


def test_text_past_the_model_limit_is_seen_only_with_windows(
    models: tuple[SentenceTransformerEmbedder, SentenceTransformerEmbedder],
) -> None:
    truncating, windowed = models
    long_text = f"{FILLER} {TAIL}"
    assert len(windowed._split([long_text])[0]) == 2
    query = truncating.encode(["where do penguins find krill"])[0]
    unseen = float(truncating.encode([long_text])[0] @ query)
    seen = float(windowed.encode([long_text])[0] @ query)
    filler_only = float(windowed.encode([FILLER])[0] @ query)
    assert seen > unseen + 0.05
    assert seen > filler_only + 0.05


def test_short_texts_embed_as_without_windows_and_rows_keep_their_order(
    models: tuple[SentenceTransformerEmbedder, SentenceTransformerEmbedder],
) -> None:
    truncating, windowed = models
    texts = ["a short passage about krill", f"{FILLER} {TAIL}", "budget review"]
    plain = truncating.encode(texts)
    pooled = windowed.encode(texts)
    assert pooled.shape == (3, truncating.dimension)
    np.testing.assert_allclose(pooled[[0, 2]], plain[[0, 2]], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(pooled[1], plain[1], atol=1e-3)
