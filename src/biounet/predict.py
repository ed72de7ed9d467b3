"""Prediction, layered: arrays -> tensors (:class:`Segmenter`) -> files (:func:`predict_files`).

A :class:`Segmenter` is a loaded model folder: the network, the config that
built it and the tuned post-processing. ``predict`` returns probabilities at the
image's own size; ``segment`` turns them into a mask or instance labels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import PostConfig, RunConfig
from .data.dataset import match_channels, normalize
from .io import InputError
from .models.unet import UNet, build_model

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"


def shipped_models() -> dict[str, Path]:
    """Name -> folder of every model shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    models = shipped_models()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    raise InputError(
        f"{name_or_path}: not a model folder (no config.json) nor a shipped model "
        f"(shipped: {', '.join(models) or 'none'})"
    )


@dataclass
class Segmenter:
    """A model ready to predict: network + config + post-processing thresholds."""

    module: UNet
    config: RunConfig
    post: PostConfig
    name: str = ""
    tile: int = 0  # 0 = whole image; >0 = overlap-tile with this tile size
    tta: bool = False
    batch_size: int = 1

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> "Segmenter":
        self.module.to(device)
        return self

    def prepare(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Raw (H, W[, C]) image -> normalized float32 (C, H, W) as in training."""
        img = normalize(image, self.config.data.normalize)
        img = match_channels(img, self.config.model.in_channels, name)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def predict(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Probabilities at the image's size: (H, W) for binary heads, (K, H, W) for softmax."""
        x = self.prepare(image, name)
        probs = self.predict_prepared(x)
        return probs[0] if probs.shape[0] == 1 else probs

    def predict_prepared(self, x: np.ndarray) -> np.ndarray:
        """Normalized (C, H, W) -> (K, H, W) float32 probabilities."""
        self.module.eval()
        if self.tile or self.tta:
            from .tiling import TileConfig, predict_tiled

            cfg = TileConfig(tile=self.tile or max(x.shape[1:]), overlap=None, batch_size=self.batch_size, tta=self.tta)
            return predict_tiled(self._predict_fn, x, self.module.margin, cfg, valid_size=self.module.valid_input_size)
        return self._predict_whole(x)

    @torch.inference_mode()
    def _predict_fn(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.module(batch.to(self.device))
        return _activate(logits).float().cpu()

    @torch.inference_mode()
    def _predict_whole(self, x: np.ndarray) -> np.ndarray:
        """Whole-image inference for any size: mirror-pad to a valid size, crop back."""
        h, w = x.shape[1:]
        m = self.module.margin
        need_h = self.module.valid_input_size(h + 2 * m)
        need_w = self.module.valid_input_size(w + 2 * m)
        # For valid nets the output is centred: pad m + extra on each side, crop back.
        top, left = m, m
        bottom, right = need_h - h - m, need_w - w - m
        t = torch.from_numpy(x)[None]
        if top or bottom or left or right:
            t = _mirror_pad(t, top, bottom, left, right)
        probs = self._predict_fn(t)[0]
        return probs[:, :h, :w].numpy()

    def segment(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Mask (uint8, 255 = foreground) or instance labels (uint16), per ``post.mode``."""
        from .postprocess import segment

        probs = self.predict_prepared(self.prepare(image, name))
        return segment(probs, self.post)


def _compact(seg: np.ndarray) -> np.ndarray:
    """Instance labels as uint16 (uint32 past 65535 objects); masks stay uint8."""
    if seg.dtype == np.uint8:
        return seg
    return seg.astype(np.uint16 if seg.max(initial=0) < 2**16 else np.uint32)


def _activate(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _mirror_pad(t: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the pad exceeds the image (repeated mirroring)."""
    arr = t.numpy()
    arr = np.pad(arr, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="symmetric")
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_model(name_or_path: str | Path, device: str = "cpu") -> Segmenter:
    """Load a shipped model by name or a run/model folder; no flags needed."""
    folder = resolve_model(name_or_path)
    cfg = checkpoint.load_config_json(folder)
    module = build_model(cfg.model)
    checkpoint.load_weights(folder / "model.safetensors", module)
    module.eval()
    post = checkpoint.load_post(folder, cfg.post)
    return Segmenter(module=module, config=cfg, post=post, name=folder.name).to(device)


def with_options(seg: Segmenter, **kw) -> Segmenter:
    return replace(seg, **kw)


# ---- files ---------------------------------------------------------------------
@dataclass(frozen=True)
class OutputOptions:
    """What ``predict`` writes for each input."""

    probabilities: bool = False  # float32 probabilities instead of masks/labels
    overlays: bool = False  # <stem>_overlay.png beside each output


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files stay; folders expand to their images (DSB ``<id>/images/<id>.png`` too)."""
    from .io import IMAGE_SUFFIXES, list_images

    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            dsb = sorted(p.glob("*/images/*.png"))
            files.extend(dsb if dsb else list_images(p))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError("no input images given")
    return files


def predict_file(seg: Segmenter, path: Path, out_dir: Path, opts: OutputOptions) -> list[Path]:
    """Predict one image or TIFF stack; writes ``<stem>.tif`` (+ overlay); returns written paths."""
    from .io import read_stack, write_image
    from .overlay import overlay

    stack = read_stack(path)
    results = []
    for page in range(stack.shape[0]):
        probs = seg.predict_prepared(seg.prepare(stack[page], str(path)))
        if opts.probabilities:
            results.append(probs[0] if probs.shape[0] == 1 else probs)
        else:
            from .postprocess import segment

            results.append(_compact(segment(probs, seg.post)))
    out = np.stack(results) if len(results) > 1 else results[0]
    written = [write_image(out_dir / f"{path.stem}.tif", out)]
    if opts.overlays:
        first = results[0]
        if opts.probabilities:
            first = (first if first.ndim == 2 else 1 - first[0]) > seg.post.threshold
        written.append(write_image(out_dir / f"{path.stem}_overlay.png", overlay(stack[0], first)))
    return written
