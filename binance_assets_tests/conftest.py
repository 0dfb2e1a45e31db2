from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from binance_assets_tests.vision_server import VisionServer


@pytest.fixture
def vision_root(tmp_path: Path) -> Path:
    """An empty directory laid out like the Vision bucket (``data/spot/...``)."""
    root = tmp_path / "mirror"
    root.mkdir()
    return root


@pytest.fixture
def vision_server(vision_root: Path) -> Iterator[VisionServer]:
    with VisionServer(vision_root) as server:
        yield server


REAL = Path(__file__).parent / "real"
"""Real Binance Vision files (copied from shared/vision/real; see real/PROVENANCE.md)."""
