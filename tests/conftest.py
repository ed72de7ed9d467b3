"""Shared tiny fixtures: synthetic stacks and folders built in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_pair(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with bright discs and its instance labels."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    for k in range(1, 5):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    image = (labels > 0) * 150 + rng.normal(40, 10, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture
def stack_files(tmp_path: Path) -> tuple[Path, Path]:
    """ISBI-like stacks: images + labels where 0 marks the class to predict (membrane)."""
    rng = np.random.default_rng(0)
    pairs = [synthetic_pair(rng) for _ in range(4)]
    img = np.stack([p[0] for p in pairs])
    lab = np.stack([np.where(p[1] > 0, 0, 255).astype(np.uint8) for p in pairs])
    tifffile.imwrite(tmp_path / "vol.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    return tmp_path / "vol.tif", tmp_path / "lab.tif"


def require_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path
