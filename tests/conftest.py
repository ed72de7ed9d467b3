"""Shared tiny fixtures: synthetic stacks and folders built in tmp_path."""
from __future__ import annotations

import shutil
import subprocess
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder trained for one epoch on synthetic stacks (a tiny same-padding net)."""
    from biounet.config import RunConfig
    from biounet.tasks import apply_overrides
    from biounet.train import train

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(1)
    pairs = [synthetic_pair(rng) for _ in range(3)]
    tifffile.imwrite(root / "vol.tif", np.stack([p[0] for p in pairs]), photometric="minisblack")
    tifffile.imwrite(root / "lab.tif", np.stack([np.where(p[1] > 0, 0, 255).astype(np.uint8) for p in pairs]),
                     photometric="minisblack")
    cfg = apply_overrides(RunConfig(), [
        f"data.images={root / 'vol.tif'}", f"data.labels={root / 'lab.tif'}", "task=membrane",
        "data.val_indices=[2]", "data.patch_size=32", "data.patches_per_epoch=8", "model.base_features=4",
        "model.depth=2", "train.epochs=1",
    ])
    train(cfg, root / "run", progress=False)
    return root / "run"


PORT_CLASH = ("address already in use", "eaddrinuse", "the server socket has failed to listen")


def run_torchrun(cmd: list[str], out_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a torchrun command; once more, from an empty ``out_dir``, if its rendezvous lost a port race.

    ``torchrun --standalone`` picks a free local port and binds it a moment later; another test run on
    the machine can take it in between. That, and only that, is retried: any other failure is returned.
    """
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 and any(s in out.stderr.lower() for s in PORT_CLASH):
        shutil.rmtree(out_dir, ignore_errors=True)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out
