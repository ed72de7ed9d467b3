"""Prediction, layered: arrays -> tensors (:class:`Segmenter`) -> files (:func:`predict_file`).

A :class:`Segmenter` is a loaded model folder: the network, the config that
built it and the tuned post-processing. ``predict`` returns probabilities at the
image's own size; ``segment`` turns them into a mask or instance labels.

Images up to ``AUTO_TILE_PIXELS`` go through the network whole; larger ones
(or any image when ``tile``/``tta`` is set) go through the overlap-tile engine
of :mod:`biounet.tiling`, which reads the image lazily and writes into any
array, so memory is bounded by the tile. :func:`predict_file` streams images
larger than ``STREAM_PIXELS`` through memory-mapped files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .config import PostConfig, RunConfig
from .data.dataset import apply_norm, match_channels, norm_params
from .io import InputError
from .models.unet import UNet, build_model

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
AUTO_TILE_PIXELS = 2048 * 2048  # larger images are tiled even without --tile
DEFAULT_TILE = 512
STREAM_PIXELS = 8192 * 8192  # larger images stream through memory-mapped files


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


class NormalizedView:
    """A raw (H, W[, C]) image seen as normalized float32 (C, H, W), computed per window.

    The tiling engine slices it tile by tile, so a memory-mapped image is never
    converted (or even read) whole.
    """

    def __init__(self, raw: Any, offset: float, scale: float | np.ndarray, channels: int, name: str) -> None:
        self.raw, self.offset, self.scale, self.channels, self.name = raw, offset, scale, channels, name
        self.shape = (channels, raw.shape[0], raw.shape[1])
        self.ndim = 3
        # fail now, naming the file, rather than at the first tile: a 1-pixel probe of the channel rule
        match_channels(np.zeros((1, 1, 1 if raw.ndim == 2 else raw.shape[2]), np.float32), channels, name)

    def __getitem__(self, key: tuple) -> np.ndarray:
        _, rows, cols = key
        window = apply_norm(np.asarray(self.raw[rows, cols]), self.offset, self.scale)
        return match_channels(window, self.channels, self.name).transpose(2, 0, 1)


@dataclass
class Segmenter:
    """A model ready to predict: network + config + post-processing thresholds."""

    module: UNet
    config: RunConfig
    post: PostConfig
    name: str = ""
    tile: int = 0  # 0 = automatic: whole image up to AUTO_TILE_PIXELS, else DEFAULT_TILE
    overlap: int | None = None  # None = the network's measured receptive field
    tta: bool = False
    batch_size: int = 4
    progress: bool = False
    scale: float = 1.0  # resize factor applied before the network (see with_diameter)
    train_diameter: float = 0.0  # median object diameter (px) of the validation truth, if recorded
    _fitted: dict = field(default_factory=dict, repr=False)

    def with_diameter(self, diameter: float) -> "Segmenter":
        """Rescale inputs so objects of ``diameter`` px look like the training objects.

        Probabilities are resized back, so outputs stay at the image's own size.
        """
        if diameter <= 0:
            raise InputError(f"--diameter must be positive, got {diameter}")
        if not self.train_diameter:
            raise InputError(f"model {self.name}: records no training object diameter; --diameter needs one")
        self.scale = self.train_diameter / diameter
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> "Segmenter":
        self.module.to(device)
        return self

    def view(self, image: Any, name: str = "image") -> NormalizedView:
        """Lazy normalized (C, H, W) view of a raw image, normalized as in training."""
        offset, scale = norm_params(image, self.config.data.normalize)
        return NormalizedView(image, offset, scale, self.config.model.in_channels, name)

    def prepare(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Raw (H, W[, C]) image -> normalized float32 (C, H, W) in memory."""
        view = self.view(image, name)
        return np.ascontiguousarray(view[:, slice(None), slice(None)])

    def predict(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Probabilities at the image's size: (H, W) for binary heads, (K, H, W) for softmax."""
        probs = self.predict_prepared(self.view(image, name))
        return probs[0] if probs.shape[0] == 1 else probs

    def uses_tiles(self, hw: tuple[int, int]) -> bool:
        return bool(self.tile or self.tta or hw[0] * hw[1] > AUTO_TILE_PIXELS)

    def predict_prepared(self, x: Any, out: Any = None) -> Any:
        """Normalized (C, H, W) (array or lazy view) -> (K, H, W) float32 probabilities.

        ``out`` (tiled path only) may be a memmap or zarr array to stream into.
        """
        self.module.eval()
        if self.scale != 1.0:
            return self._predict_rescaled(np.asarray(x[:, slice(None), slice(None)]))
        if self.uses_tiles(x.shape[1:]):
            from .tiling import predict_tiled

            cfg, geometry = self._tiling()
            return predict_tiled(self._predict_fn, x, cfg, geometry, out=out, progress=self.progress)
        return self._predict_whole(np.asarray(x[:, slice(None), slice(None)]))

    def _predict_rescaled(self, x: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        h, w = x.shape[1:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        small = resize(x, (x.shape[0], *size), order=1, anti_aliasing=self.scale < 1, preserve_range=True)
        scale, self.scale = self.scale, 1.0
        try:
            probs = self.predict_prepared(small.astype(np.float32))
        finally:
            self.scale = scale
        return resize(probs, (probs.shape[0], h, w), order=1, preserve_range=True).astype(np.float32)

    def _tiling(self):
        """Tile config fitted to the network once (the receptive field is measured once)."""
        from .tiling import TileConfig, fit_to_model

        key = (self.tile, self.overlap, self.tta, self.batch_size)
        if key not in self._fitted:
            cfg = TileConfig(tile=self.tile or DEFAULT_TILE, overlap=self.overlap,
                             batch_size=self.batch_size, tta=self.tta)
            self._fitted[key] = fit_to_model(self.module, cfg)
        return self._fitted[key]

    @torch.inference_mode()
    def _predict_fn(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.module(batch.to(self.device))
        return _activate(logits).float().cpu()

    @torch.inference_mode()
    def _predict_whole(self, x: np.ndarray) -> np.ndarray:
        """Whole-image inference for any size: mirror-pad to a valid size, crop back."""
        h, w = x.shape[1:]
        m = self.module.margin
        # a valid net's output is centred: pad m on the top/left, m + extra on the bottom/right
        bottom = self.module.valid_input_size(h + 2 * m) - h - m
        right = self.module.valid_input_size(w + 2 * m) - w - m
        if m or bottom or right:  # the same mirroring as the tiling engine, so both agree
            from .tiling import mirror_index

            rows = mirror_index(np.arange(-m, h + bottom), h)
            cols = mirror_index(np.arange(-m, w + right), w)
            x = x[:, rows[:, None], cols[None, :]]
        probs = self._predict_fn(torch.from_numpy(np.ascontiguousarray(x))[None])[0]
        return probs[:, :h, :w].numpy()

    def segment(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Mask (uint8, 255 = foreground) or instance labels (int32), per ``post.mode``."""
        from .postprocess import segment

        return segment(self.predict_prepared(self.view(image, name)), self.post)


def _compact(seg: np.ndarray) -> np.ndarray:
    """Instance labels as uint16 (uint32 past 65535 objects); masks stay uint8."""
    if seg.dtype == np.uint8:
        return seg
    return seg.astype(np.uint16 if seg.max(initial=0) < 2**16 else np.uint32)


def _activate(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def load_model(name_or_path: str | Path, device: str = "cpu") -> Segmenter:
    """Load a shipped model by name or a run/model folder; no flags needed."""
    folder = resolve_model(name_or_path)
    cfg = checkpoint.load_config_json(folder)
    module = build_model(cfg.model)
    checkpoint.load_weights(folder / "model.safetensors", module)
    module.eval()
    post = checkpoint.load_post(folder, cfg.post)
    metrics = checkpoint.read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    return Segmenter(module=module, config=cfg, post=post, name=folder.name,
                     train_diameter=float(metrics.get("object_diameter", 0.0))).to(device)


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


def _result(seg: Segmenter, probs: np.ndarray, opts: OutputOptions) -> np.ndarray:
    if opts.probabilities:
        return probs[0] if probs.shape[0] == 1 else probs
    from .postprocess import segment

    return _compact(segment(probs, seg.post))


def predict_file(seg: Segmenter, path: Path, out_dir: Path, opts: OutputOptions) -> list[Path]:
    """Predict one image or TIFF stack; writes ``<stem>.tif`` (+ overlay); returns written paths."""
    from .io import open_lazy, read_stack, write_image

    out_dir = Path(out_dir)
    lazy = open_lazy(path)
    if lazy is not None and lazy.shape[0] * lazy.shape[1] > STREAM_PIXELS:
        return [predict_large(seg, lazy, out_dir / f"{path.stem}.tif", opts, str(path))]
    stack = read_stack(path)
    results = [_result(seg, seg.predict_prepared(seg.view(page, str(path))), opts) for page in stack]
    written = [write_image(out_dir / f"{path.stem}.tif", np.stack(results) if len(results) > 1 else results[0])]
    if opts.overlays:
        from .overlay import overlay

        first = results[0]
        if opts.probabilities:
            fg = first if first.ndim == 2 else 1 - first[0]
            first = fg > seg.post.threshold
        written.append(write_image(out_dir / f"{path.stem}_overlay.png", overlay(stack[0], first)))
    return written


def predict_large(seg: Segmenter, raw: Any, dest: Path, opts: OutputOptions, name: str) -> Path:
    """Stream one huge 2D image: tiles -> memory-mapped probabilities -> block-wise mask/labels -> TIFF.

    Peak memory is a few tiles plus one block, whatever the image size; the
    intermediate ``.npy`` files live beside ``dest`` and are removed at the end.
    """
    import tempfile

    from .io import write_image
    from .postprocess import segment
    from .tiling import label_blockwise, open_output

    k = seg.config.model.out_channels
    h, w = raw.shape[:2]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".biounet-") as tmp:
        probs = open_output((k, h, w), np.float32, Path(tmp) / "probs.npy")
        seg.predict_prepared(seg.view(raw, name), out=probs)
        if opts.probabilities:
            return write_image(dest, probs[0] if k == 1 else probs)
        block = 2048
        if seg.post.mode == "instances":
            labels = open_output((h, w), np.int32, Path(tmp) / "labels.npy")
            label_blockwise(probs, lambda p: segment(p, seg.post), block, halo=128, out=labels)
            return write_image(dest, labels)  # int32: object counts of whole slides exceed uint16
        mask = open_output((h, w), np.uint8, Path(tmp) / "mask.npy")
        for y in range(0, h, block):
            mask[y : y + block] = segment(np.asarray(probs[:, y : y + block]), seg.post)
        return write_image(dest, mask)
