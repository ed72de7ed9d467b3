"""Prediction, layered: arrays -> tensors (:class:`Segmenter`) -> files (:func:`predict_file`).

A :class:`Segmenter` is a loaded model folder: the network, the config that
built it, the tuned post-processing and fixed :class:`PredictOptions`; it is
immutable (``with_options`` returns a new one sharing the network).
``predict`` returns probabilities at the image's own size; ``segment`` turns
them into a mask or instance labels through the run's task.

Images up to ``AUTO_TILE_PIXELS`` (``AUTO_TILE_PIXELS_ONNX`` on ONNX Runtime) go through the network whole (test-time
augmentation too: each flip/rotation of the whole image); larger ones, or any
image when ``tile`` is set, go through the overlap-tile engine of
:mod:`biounet.tiling`, which reads the image lazily and writes into any array,
so memory is bounded by the tile. :func:`predict_file` streams images larger
than ``STREAM_PIXELS`` through memory-mapped files and labels them block by
block (:func:`biounet.postprocess.blockwise_layout` sizes the blocks).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np
import torch

from . import checkpoint
from .config import PostConfig, RunConfig
from .io import InputError
from .models.unet import Ensemble, UNet
from .normalize import NormalizedView
from .size import SizeEstimate

log = logging.getLogger(__name__)

# larger images are tiled even without --tile: on the 2-core CPU, one whole pass of the shipped nuclei net was as
# fast or faster up to this size and tiles of 512 were faster at 2048² (benchmarks/speed.py --tile-sweep)
AUTO_TILE_PIXELS = 1448 * 1448
# ONNX Runtime ran a whole 2048² image faster than tiles of 512, where torch ran it slower
# (benchmarks/speed.py, rows "ONNX Runtime, whole image" and "..., auto tiles", same run)
AUTO_TILE_PIXELS_ONNX = 2048 * 2048
DEFAULT_TILE = 512
STREAM_PIXELS = 8192 * 8192  # larger images stream through memory-mapped files
OVERLAY_MAX_SIDE = 4096  # overlays of streamed images are drawn at most this large


@dataclass(frozen=True)
class PredictOptions:
    """How a :class:`Segmenter` runs the network; fixed once built.

    ``tile`` 0 = whole image up to ``AUTO_TILE_PIXELS`` (``AUTO_TILE_PIXELS_ONNX`` on ONNX Runtime),
    ``DEFAULT_TILE`` beyond;
    ``overlap`` None = a third of the network's receptive field
    (:func:`biounet.tiling.fit_tiles`); ``batch_size`` 0 = one tile per pass on
    the CPU (about 0.25 Mpx per pass ran fastest here), four on a GPU; ``tta`` averages the 8
    flips/rotations (whole image or per tile, independent of tiling);
    ``diameter`` (px) rescales images so objects that size look like the
    training objects (outputs stay at the image's size); ``"auto"`` (the default) estimates it per
    image for models that record a training object size and output instances (:mod:`biounet.size`),
    None keeps every image at its own scale. ``fast`` runs a
    copy of the network with batch norm folded into the convolutions, in
    channels-last layout (same probabilities within 1e-4, tested); ``backend``
    ``onnxruntime`` runs the network exported to ONNX in ONNX Runtime (an
    optional extra), ``auto`` picks it when it is installed; ``compile`` wraps
    the torch network in ``torch.compile`` (slow first call).
    """

    tile: int = 0
    overlap: int | None = None
    tta: bool = False
    batch_size: int = 0
    diameter: float | Literal["auto"] | None = "auto"
    progress: bool = False
    fast: bool = True
    backend: Literal["torch", "onnxruntime", "auto"] = "torch"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.tile < 0:
            raise InputError(f"--tile must be >= 0 (0 = automatic), got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"--overlap must be >= 0, got {self.overlap}")
        if self.batch_size < 0:
            raise InputError(f"--batch-size must be >= 0 (0 = automatic), got {self.batch_size}")
        if self.diameter is not None and self.diameter != "auto" and not (
                isinstance(self.diameter, (int, float)) and self.diameter > 0):
            raise InputError(f"--diameter must be a positive number of pixels, auto or none; got {self.diameter!r}")
        if self.backend not in ("torch", "onnxruntime", "auto"):
            raise InputError(f"--backend must be torch, onnxruntime or auto, got {self.backend!r}")


class Pass(NamedTuple):
    """One image through the network: (K, H, W) probabilities, the size estimate they were made at (None
    without ``--diameter auto``), and the labels when the size probe already segmented them (else None)."""

    probs: Any
    size: SizeEstimate | None
    labels: np.ndarray | None


@dataclass(frozen=True)
class Segmenter:
    """A model ready to predict: network + config + post-processing thresholds + options."""

    module: UNet | Ensemble  # an ensemble has the same interface (margin, geometry, valid_input_size)
    config: RunConfig
    post: PostConfig
    name: str = ""
    train_diameter: float = 0.0  # median object diameter (px) of the validation truth, if recorded
    options: PredictOptions = field(default_factory=PredictOptions)

    def __post_init__(self) -> None:
        from .size import MAX_SCALE

        d = self.fixed_diameter
        if d is not None and self.train_diameter and not 1 / MAX_SCALE <= self.train_diameter / d <= MAX_SCALE:
            raise InputError(f"--diameter {d:g}: more than {MAX_SCALE:g}x from the model's training size "
                             f"({self.train_diameter:.1f} px); resize the images yourself, or fine-tune")
        if self.fixed_diameter is not None and not self.train_diameter:
            raise InputError(f"model {self.name}: records no training object diameter; --diameter needs one")

    def with_options(self, **changes: Any) -> "Segmenter":
        """A Segmenter with some :class:`PredictOptions` changed, sharing this one's network."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))

    def with_post(self, **changes: Any) -> "Segmenter":
        """A Segmenter with some post-processing settings changed (e.g. ``mode="instances"``)."""
        return dataclasses.replace(self, post=dataclasses.replace(self.post, **changes))

    @property
    def fixed_diameter(self) -> float | None:
        """``options.diameter`` when it is a number of pixels, else None."""
        d = self.options.diameter
        return None if d is None or d == "auto" else float(d)

    @property
    def auto_size(self) -> bool:
        """Whether each image's object size is estimated (``diameter="auto"`` on an instance model that
        records its training object size)."""
        return self.options.diameter == "auto" and self.train_diameter > 0 and self.post.instances

    @property
    def scale(self) -> float:
        """Resize factor applied before the network for a fixed ``options.diameter`` (else 1)."""
        d = self.fixed_diameter
        return self.train_diameter / d if d else 1.0

    @property
    def object_diameter(self) -> float:
        """Expected object size in the input images (px), 0 if unknown."""
        return self.fixed_diameter or self.train_diameter

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> "Segmenter":
        self.module.to(device)
        return self

    def view(self, image: Any, name: str = "image", channel: int | None = None) -> NormalizedView:
        """Lazy normalized (C, H, W) view of a raw (H, W[, C]) image, normalized as in training;
        ``channel`` segments that channel of a multi-channel image (e.g. 1 of an (H, W, 2) DAPI + GFP)."""
        return NormalizedView(image, self.config.data.normalize, self.config.model.in_channels, name, channel=channel)

    def prepare(self, image: np.ndarray, name: str = "image", channel: int | None = None) -> np.ndarray:
        """Raw (H, W[, C]) image -> normalized float32 (C, H, W) in memory: what the network is fed."""
        return np.asarray(self.view(image, name, channel))

    def predict(self, image: np.ndarray, name: str = "image", channel: int | None = None) -> np.ndarray:
        """Probabilities at the image's size: (H, W) for binary heads, (K, H, W) for softmax."""
        probs = self.predict_prepared(self.view(image, name, channel))
        return probs[0] if probs.shape[0] == 1 else probs

    def segment(self, image: np.ndarray, name: str = "image", channel: int | None = None) -> np.ndarray:
        """Mask (uint8, 255 = foreground) or instance labels (int32), per the task and ``post``."""
        return self.segment_sized(image, name, channel)[0]

    def segment_stack(self, stack: Any, name: str = "stack", channel: int | None = None) -> np.ndarray:
        """(Z, H, W[, C]) pages -> (Z, H, W) masks or labels, page by page, as ``predict`` does a TIFF stack
        (one size estimate for the whole stack: see :meth:`passes`)."""
        return np.stack([self.labels_of(p) for p in self.passes(_pages(stack, name), name, channel)])

    def predict_stack(self, stack: Any, name: str = "stack", channel: int | None = None) -> np.ndarray:
        """(Z, H, W[, C]) pages -> (Z, H, W) or (Z, K, H, W) probabilities, page by page."""
        probs = [p.probs for p in self.passes(_pages(stack, name), name, channel)]
        return np.stack([p[0] if p.shape[0] == 1 else p for p in probs])

    def segment_sized(self, image: np.ndarray, name: str = "image",
                      channel: int | None = None) -> tuple[np.ndarray, SizeEstimate | None]:
        """:meth:`segment` and the object size it estimated (None unless :attr:`auto_size`)."""
        done = self.sized_pass(self.view(image, name, channel))
        return self.labels_of(done), done.size

    def labels_of(self, done: "Pass") -> np.ndarray:
        """The mask or labels of a pass: those the size probe already segmented at native size, else
        segmented now, with the post-processing of the scale the pass ran at (:meth:`post_at`)."""
        scale = done.size.scale if done.size is not None else self.scale
        return done.labels if done.labels is not None and scale == 1.0 else self.segment_probs(done.probs, scale)

    def passes(self, pages: Any, name: str = "stack", channel: int | None = None) -> Iterator["Pass"]:
        """One :class:`Pass` per page of a stack, in page order, with one size estimate for all of them
        (made on the middle page, so that one goes first): the pages of a z-stack or a time series are
        resized alike."""
        views = [self.view(page, f"{name}[{i}]" if len(pages) > 1 else name, channel) for i, page in enumerate(pages)]
        if len(views) < 2 or not self.auto_size:
            yield from (self.sized_pass(v) for v in views)
            return
        mid = len(views) // 2
        middle = self.sized_pass(views[mid])
        yield from (middle if i == mid else self.sized_pass(v, middle.size) for i, v in enumerate(views))

    def segment_probs(self, probs: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Labels (or a mask) from probabilities on the image's grid, of a pass the network ran at ``scale``."""
        from .tasks import get_task

        return get_task(self.config).segment(probs, self.post_at(scale))

    def post_at(self, scale: float) -> PostConfig:
        """The post-processing for a pass run on the image resized by ``scale``, segmented back on the
        image's grid: ``min_size`` was tuned in the network's pixels, so on the image's grid it is divided
        by ``scale`` squared (x3 enlarged: objects of 20 px as the network saw them are 2 px here)."""
        if scale == 1.0:
            return self.post
        return dataclasses.replace(self.post, min_size=max(1, round(self.post.min_size / scale**2)))

    @property
    def uses_onnxruntime(self) -> bool:
        o = self.options
        return o.backend == "onnxruntime" or (o.backend == "auto" and onnxruntime_available())

    def uses_tiles(self, hw: tuple[int, int]) -> bool:
        whole_up_to = AUTO_TILE_PIXELS_ONNX if self.uses_onnxruntime else AUTO_TILE_PIXELS
        return bool(self.options.tile or hw[0] * hw[1] > whole_up_to)

    def predict_prepared(self, x: Any, out: Any = None) -> Any:
        """Normalized (C, H, W) (array or lazy view) -> (K, H, W) float32 probabilities.

        ``out`` may be a memmap or zarr array: the tiled path streams into it; the whole-image and
        rescaled (``diameter``) paths compute in memory and copy their result into it, so a caller
        that reads ``out`` always gets the probabilities.
        """
        return self.predict_sized(x, out)[0]

    def predict_sized(self, x: Any, out: Any = None) -> tuple[Any, SizeEstimate | None]:
        """:meth:`predict_prepared` and, with :attr:`auto_size`, the size estimate it rescaled by."""
        done = self.sized_pass(x, out=out)
        return done.probs, done.size

    def sized_pass(self, x: Any, size: SizeEstimate | None = None, out: Any = None) -> "Pass":
        """The network's pass over a normalized (C, H, W) image: with :attr:`auto_size`, at the scale of
        ``size`` (given: one estimate for a stack) or of the image's own estimate, whose probe may already
        be the pass (then its labels come too); else at the fixed ``--diameter``'s scale, or native."""
        self.module.eval()
        probe = None
        if self.auto_size and size is None:
            from .size import estimate

            size, probe = estimate(x, self.train_diameter, self._predict_at, self.segment_probs)
            log.info("%s: estimated object diameter %.1f px (training %.1f px), resized x%.2f",
                     getattr(x, "name", "image"), size.diameter, self.train_diameter, size.scale)
        if probe is not None:
            probs, labels = probe.probs, probe.labels
        else:
            probs, labels = self._predict_at(x, size.scale if self.auto_size else self.scale, out), None
        if out is not None and probs is not out:
            out[...] = probs
            probs = out
        return Pass(probs, size if self.auto_size else None, labels)

    def _predict_at(self, x: Any, scale: float, out: Any = None) -> Any:
        """(K, H, W) probabilities at ``x``'s size, the network run on ``x`` resized by ``scale``."""
        return self._predict_native(x, out) if scale == 1.0 else self._predict_rescaled(np.asarray(x), scale)

    def _predict_native(self, x: Any, out: Any = None) -> Any:
        if self.uses_tiles(x.shape[1:]):
            from .tiling import predict_tiled

            return predict_tiled(self._predict_fn, x, self._tiling(tuple(x.shape[1:])), self.module.geometry,
                                 out=out, progress=self.options.progress or None)  # None: by tile count
        return self._predict_whole(np.asarray(x))

    def _predict_rescaled(self, x: np.ndarray, scale: float) -> np.ndarray:
        from skimage.transform import resize

        h, w = x.shape[1:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = resize(x, (x.shape[0], *size), order=1, anti_aliasing=scale < 1, preserve_range=True)
        probs = self._predict_native(small.astype(np.float32))
        return resize(probs, (probs.shape[0], h, w), order=1, preserve_range=True).astype(np.float32)

    def _tiling(self, shape: tuple[int, int]):
        from .tiling import TileConfig, fit_tiles

        o = self.options
        batch = o.batch_size or (1 if self.device.type == "cpu" else 4)
        cfg = TileConfig(tile=o.tile or DEFAULT_TILE, overlap=o.overlap, batch_size=batch, tta=o.tta)
        return fit_tiles(cfg, self.module.geometry, shape)

    @cached_property
    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What runs a batch (B, C, H, W) -> logits: the module, its fast copy, or an ONNX Runtime session.

        Built on first use and kept (a Segmenter's network never changes);
        ``with_options`` makes a new Segmenter, which builds its own.
        """
        o = self.options
        if self.uses_onnxruntime:
            return OnnxRunner(self.module)
        if not o.fast:
            return self.module
        from .models.unet import inference_copy

        net = inference_copy(self.module, channels_last=True)
        return torch.compile(net) if o.compile else net

    @torch.inference_mode()
    def _predict_fn(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device)
        if self.options.fast and isinstance(self.network, torch.nn.Module):  # not for ONNX Runtime's input
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.network(x)
        return _activate(logits).float().cpu()

    @torch.inference_mode()
    def _predict_whole(self, x: np.ndarray) -> np.ndarray:
        """Whole-image inference for any size: mirror-pad to a valid size, crop back."""
        from .tiling import mirror_index, predict_batch

        h, w = x.shape[1:]
        m = self.module.margin
        # a valid net's output is centred: pad m on the top/left, m + extra on the bottom/right
        bottom = self.module.valid_input_size(h + 2 * m) - h - m
        right = self.module.valid_input_size(w + 2 * m) - w - m
        if m or bottom or right:  # the same mirroring as the tiling engine, so both agree
            rows = mirror_index(np.arange(-m, h + bottom), h)
            cols = mirror_index(np.arange(-m, w + right), w)
            x = x[:, rows[:, None], cols[None, :]]
        probs = predict_batch(self._predict_fn, torch.from_numpy(np.ascontiguousarray(x))[None], self.options.tta)[0]
        return probs[:, :h, :w]


def _pages(stack: Any, name: str) -> Any:
    """``stack`` if it is (Z, H, W) or (Z, H, W, C); a single image is refused with the method to use."""
    shape = tuple(getattr(stack, "shape", ()))
    if len(shape) not in (3, 4) or (len(shape) == 3 and shape[2] <= 4):
        raise InputError(f"{name}: shape {shape} is not a stack of (H, W) or (H, W, C) pages; "
                         "for one image use segment / predict")
    return stack


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxRunner:
    """A U-Net exported to ONNX and run by ONNX Runtime on the CPU; called like the module.

    The exported graph takes sides that are multiples of the network's
    down-sampling (``biounet.graph_export.to_onnx``); other sizes are padded here with
    ``UNet.forward``'s own :func:`~biounet.models.unet.pad_to_multiple` and
    cropped back, so both backends see the same pixels.
    """

    def __init__(self, module: UNet | Ensemble) -> None:
        if not onnxruntime_available():
            raise InputError("--backend onnxruntime needs ONNX Runtime: pip install 'biounet[onnx]'")
        import onnxruntime as ort

        from .graph_export import to_onnx

        self.align = module.cfg.pool_size**module.cfg.depth if module.cfg.padding == "same" else 1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(to_onnx(module), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .models.unet import center_crop, pad_to_multiple

        padded = pad_to_multiple(x, self.align)
        y = self.session.run(None, {self.input: np.ascontiguousarray(padded.detach().cpu().float().numpy())})[0]
        y = torch.from_numpy(y)
        return center_crop(y, *x.shape[-2:]) if padded is not x else y  # valid nets come back smaller: no crop


def _compact(seg: np.ndarray) -> np.ndarray:
    """Instance labels as uint16 (uint32 past 65535 objects); masks stay uint8."""
    if seg.dtype == np.uint8:
        return seg
    return seg.astype(np.uint16 if seg.max(initial=0) < 2**16 else np.uint32)


def _activate(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def parse_diameter(text: str | float | None) -> float | Literal["auto"] | None:
    """``--diameter``'s value: ``auto``, ``none`` (None) or a positive number of pixels."""
    if text is None or isinstance(text, (int, float)):
        return text
    word = text.strip().lower()
    if word in ("auto", "none"):
        return "auto" if word == "auto" else None
    try:
        value = float(word)
    except ValueError:
        raise InputError(f"--diameter must be a number of pixels, auto or none; got {text!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise InputError(f"--diameter must be a positive number of pixels, auto or none; got {text!r}")
    return value


def check_device(device: str) -> str:
    """``device`` if this torch can run on it; else a one-line error saying why (not torch's traceback)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: this torch ({torch.__version__}) has no Apple GPU (MPS); use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device}: not supported by biounet (auto, cpu, cuda, cuda:1, mps)")
    return device


def load_model(name_or_path: str | Path, device: str = "cpu", options: PredictOptions | None = None) -> Segmenter:
    """Load a shipped model by name or a run/model folder; no flags needed."""
    folder = checkpoint.resolve_model(name_or_path)
    cfg, module = checkpoint.load_module(folder)
    post = checkpoint.load_post(folder, cfg.post)
    diameter = float(checkpoint.read_metrics(folder).get("object_diameter", 0.0))
    return Segmenter(module=module, config=cfg, post=post, name=folder.name, train_diameter=diameter,
                     options=options or PredictOptions()).to(device)


# ---- files ---------------------------------------------------------------------
@dataclass(frozen=True)
class OutputOptions:
    """What ``predict`` writes for each input."""

    probabilities: bool = False  # float32 probabilities instead of masks/labels
    overlays: bool = False  # <stem>_overlay.png beside each output
    measure: bool = False  # <stem>.csv: one row per object (instance labels only; see biounet.measure)
    pixel_size: float | None = None  # micrometres per pixel: the table also in micrometres
    outlines: str | None = None  # "imagej" (<stem>_rois.zip) or "geojson" (<stem>.geojson); see biounet.outlines


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files stay; folders expand to their images (DSB ``<id>/images/<id>.png`` too, and ``images/`` of a
    folder holding no image itself, as ``train --data`` takes it); a pattern that no
    shell expanded (``"imgs/*.png"`` quoted, or on Windows) expands to the images it matches."""
    import glob

    from .formats import BIOIO_SUFFIXES, is_big_input, is_zarr, require_bioio
    from .io import IMAGE_SUFFIXES, image_files, list_images

    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists() and any(c in str(raw) for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            images = [m for m in matched if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES or is_big_input(m)]
            if not images:
                raise InputError(f"{raw}: the pattern matches no image file")
            files.extend(images)
        elif is_zarr(p):  # an OME-Zarr store is one image, though a folder
            files.append(p)
        elif p.is_dir():
            # OME-Zarr stores and CZI/ND2/LIF files in it too
            big = sorted(m for m in p.iterdir() if not m.name.startswith(".") and is_big_input(m))
            dsb = sorted(p.glob("*/images/*.png"))
            inner = p / "images"  # a training-style folder: my_set/images beside my_set/masks
            where = inner if inner.is_dir() and not image_files(p) else p
            files.extend(dsb or (image_files(where) if big else list_images(where)))
            files.extend(big)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES + BIOIO_SUFFIXES:
                unzip = "; unzip it and point at the folder" if p.suffix.lower() == ".zip" else ""
                raise InputError(f"{p}: not an image file (expected {', '.join(IMAGE_SUFFIXES + BIOIO_SUFFIXES)}, "
                                 f"or an OME-Zarr folder){unzip}")
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError("no input images given")
    for f in files:  # before any model runs: the install that reading them needs, in one line
        if f.suffix.lower() in BIOIO_SUFFIXES:
            require_bioio(f)
    return files


def output_path(path: Path, out_dir: Path) -> Path:
    """Where ``predict`` writes the result for input ``path``."""
    return Path(out_dir) / f"{Path(path).stem}.tif"


def check_outputs(files: list[Path], out_dir: Path, overwrite: bool = False, skip_existing: bool = False) -> list[Path]:
    """The inputs to predict, after checking their outputs can be written; one-line errors otherwise.

    Runs before any model does: two inputs with one output name, an output that is
    one of the inputs (even with ``overwrite``), an ``out_dir`` that is a file or not
    writable, and outputs that exist (unless ``overwrite``, or ``skip_existing``
    which drops those inputs) are refused.
    """
    import os

    out_dir = Path(out_dir)
    seen: dict[Path, Path] = {}
    for f in files:
        dest = output_path(f, out_dir)
        if dest in seen:
            raise InputError(f"{f}: would write {dest.name} like {seen[dest]}; predict them into separate --out folders")
        seen[dest] = f
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out is an existing file; give a folder")
    inputs = {f.resolve() for f in files}
    clash = next((f for f in seen if f.resolve() in inputs), None)
    if clash is not None:  # --overwrite must never destroy what is being segmented
        raise InputError(f"{clash}: the output would replace this input image; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: output folder is not writable")
    existing = [f for f in files if output_path(f, out_dir).exists()]
    if existing and skip_existing:
        return [f for f in files if f not in set(existing)]
    if existing and not overwrite:
        raise InputError(f"{output_path(existing[0], out_dir)}: exists ({len(existing)} output(s) in all); "
                         "use --overwrite to replace or --skip-existing to resume")
    return list(files)


def _result(seg: Segmenter, done: Pass, opts: OutputOptions) -> np.ndarray:
    if opts.probabilities:
        return done.probs[0] if done.probs.shape[0] == 1 else done.probs
    return _compact(seg.labels_of(done))


def _overlay_mask(seg: Segmenter, result: np.ndarray, opts: OutputOptions) -> np.ndarray:
    """What an overlay outlines: the output itself, or the thresholded probabilities."""
    if not opts.probabilities:
        return result
    from .postprocess import foreground_prob

    return foreground_prob(result) > seg.post.threshold


def _kind(seg: Segmenter, opts: OutputOptions) -> str:
    """What an output file holds, recorded in its metadata (see :func:`biounet.io.output_kind`)."""
    return "probabilities" if opts.probabilities else "labels" if seg.post.instances else "mask"


def predict_file(seg: Segmenter, path: Path, out_dir: Path, opts: OutputOptions,
                 channel: int | None = None, pick: Any = None, out_format: str = "tif", workers: Any = 0) -> list[Path]:
    """Predict one image, TIFF stack, OME-Zarr store or CZI/ND2/LIF file; writes ``<stem>.tif`` (+ overlay);
    returns written paths (the result first).

    ``channel`` reads one channel of a multi-channel file (see :func:`biounet.io.read_stack`); ``pick``
    (:class:`biounet.formats.PlanePick`) the scene, resolution level, time point and z-plane of a file
    that has several. Planes larger than ``STREAM_PIXELS`` are streamed (:func:`predict_large`): memory
    maps, OME-Zarr, and big compressed or tiled TIFFs are read region by region (:mod:`biounet.formats`).
    ``out_format`` ``ome-zarr`` (or an ``out_dir`` ending in ``.zarr``) writes OME-Zarr instead of a TIFF:
    the labels of an OME-Zarr input go into its own store as ``labels/<model>`` (:mod:`biounet.ngff`);
    tables, outlines and overlays still go to ``out_dir`` (the folder of an ``.zarr`` ``out_dir``).
    ``workers`` > 0 predicts the (one) image block by block, with that many processes
    (:mod:`biounet.parallel`; 1: in this one), whatever its size; a scheduler address or
    :class:`biounet.parallel.Scheduler` sends the blocks to that running cluster.
    """
    from .big import side_folder, write_zarr, zarr_output
    from .formats import describe, open_source
    from .io import open_lazy, pick_channel, read_stack, write_image

    to_zarr = out_format == "ome-zarr" or Path(out_dir).suffix.lower() == ".zarr"
    zarr_dir, out_dir = Path(out_dir), side_folder(Path(out_dir))
    where = (path, channel, pick)  # how --workers' processes open the image again
    source = open_source(path, channel, pick, big_pixels=STREAM_PIXELS)  # None: a file read_stack reads
    if source is not None:
        log.info("reading %s", describe(source))
        with source:
            plane = source.plane
            if workers or plane.shape[0] * plane.shape[1] > STREAM_PIXELS:  # region by region, where it lives
                zout = zarr_output(seg, path, zarr_dir, opts.probabilities, _kind(seg, opts), source) if to_zarr else None
                return predict_large(seg, plane, output_path(path, out_dir), opts, str(path), zarr_out=zout,
                                     workers=workers, where=where)
            stack = np.asarray(plane)[None]  # small enough: in memory, as the same plane from a TIFF would be
    else:
        lazy = open_lazy(path)
        if lazy is not None and (workers or lazy.shape[0] * lazy.shape[1] > STREAM_PIXELS):
            lazy = pick_channel(lazy, channel, str(path))  # a strided view: still read tile by tile
            zout = zarr_output(seg, path, zarr_dir, opts.probabilities, _kind(seg, opts)) if to_zarr else None
            return predict_large(seg, lazy, output_path(path, out_dir), opts, str(path), zarr_out=zout,
                                 workers=workers, where=where)
        stack = read_stack(path, channel)
        if workers:
            if len(stack) != 1:
                raise InputError(f"{path}: --workers segments one 2D image per file; this is a stack of "
                                 f"{len(stack)} pages")
            zout = zarr_output(seg, path, zarr_dir, opts.probabilities, _kind(seg, opts)) if to_zarr else None
            return predict_large(seg, stack[0], output_path(path, out_dir), opts, str(path), zarr_out=zout,
                                 workers=workers, where=where)
    sized = list(seg.passes(stack, str(path)))  # one size estimate for all pages of a stack
    results = [_result(seg, done, opts) for done in sized]
    result = np.stack(results) if len(results) > 1 else results[0]
    if to_zarr:
        zout = zarr_output(seg, path, zarr_dir, opts.probabilities, _kind(seg, opts), source)
        written = [write_zarr(zout, result, opts.probabilities, pages=len(results))]
    else:
        written = [write_image(output_path(path, out_dir), result, kind=_kind(seg, opts))]
    if opts.measure:
        from .measure import object_table, with_size, write_table

        tables = [with_size(object_table(res, page, opts.pixel_size), done.size)
                  for page, res, done in zip(stack, results, sized)]
        written.append(write_table(out_dir / f"{path.stem}.csv", tables, pages=len(tables) > 1))
    if opts.outlines:
        from .outlines import write_outlines

        written.append(write_outlines(out_dir, path.stem, opts.outlines, results))
    if opts.overlays:  # one picture per page: a PNG for an image, an RGB TIFF stack for a stack
        from .overlay import overlay

        pages = [overlay(page, _overlay_mask(seg, res, opts), title=seg.name) for page, res in zip(stack, results)]
        name = f"{path.stem}_overlay.png" if len(pages) == 1 else f"{path.stem}_overlay.tif"
        written.append(write_image(out_dir / name, pages[0] if len(pages) == 1 else np.stack(pages)))
    return written


def predict_large(seg: Segmenter, raw: Any, dest: Path, opts: OutputOptions, name: str,
                  zarr_out: Any = None, workers: Any = 0, where: tuple | None = None) -> list[Path]:
    """Stream one huge 2D image: tiles -> memory-mapped probabilities -> block-wise mask/labels -> TIFF.

    Peak memory is a few tiles plus one block, whatever the image size; the
    intermediate ``.npy`` files live beside ``dest`` and are removed at the end.
    Block and halo of the instance labelling follow the expected object size
    (:func:`biounet.postprocess.blockwise_layout`). An overlay, if asked for, is
    drawn on a strided view at most ``OVERLAY_MAX_SIDE`` pixels across. ``raw`` is
    anything sliced region by region: a memory map, a :class:`biounet.formats.Plane`.
    ``zarr_out`` (a :class:`biounet.ngff.ZarrOutput`) receives the result instead of the TIFF
    ``dest``, block by block (probabilities straight from the tiles), and appears under its final
    name only once complete; ``dest`` still names the table, outlines and overlay beside it. The
    table of a result or image that is not in memory (or a memory map) is measured block by block.
    ``workers`` > 0 predicts block by block instead (:mod:`biounet.parallel`: each block's window with
    its own context; 1: in this process, more: on a local dask.distributed cluster whose workers reopen
    the image from ``where``, the ``(path, channel, pick)`` it was opened with).
    """
    import contextlib
    import tempfile

    from .io import open_array, write_image
    from .postprocess import blockwise_layout, label_blockwise

    k = seg.config.model.out_channels
    h, w = raw.shape[:2]
    if not workers and (seg.auto_size or seg.scale != 1.0):
        # a resize (asked for, or perhaps by the size estimate) of an image this size is done block by block:
        # resizing it whole would hold it, up to 16x enlarged, in memory
        workers = 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".biounet-") as tmp, (
            zarr_out if zarr_out is not None else contextlib.nullcontext()):
        if workers:
            from .parallel import make_plan, run_blocks

            mode = "probabilities" if opts.probabilities else seg.post.mode
            shape, dtype = ((k, h, w), np.float32) if opts.probabilities else \
                ((h, w), np.int32 if seg.post.instances else np.uint8)
            path, channel, pick = where or (name, None, None)
            plan, size = make_plan(seg, raw, path, channel, pick, mode, name)
            result = zarr_out.create(shape, dtype, "cyx" if len(shape) == 3 else "") if zarr_out is not None else \
                open_array(shape, dtype, Path(tmp) / "result.npy")
            run_blocks(seg, plan, raw, result, workers, progress=seg.options.progress)
            if opts.probabilities and k == 1 and zarr_out is None:
                result = result[0]
        else:
            if opts.probabilities and zarr_out is not None:
                probs = zarr_out.create((k, h, w), np.float32, "cyx")  # straight from the tiles into the store
            else:
                probs = open_array((k, h, w), np.float32, Path(tmp) / "probs.npy")
            _, size = seg.predict_sized(seg.view(raw, name), out=probs)
            if opts.probabilities:
                result = probs[0] if k == 1 and zarr_out is None else probs
            elif seg.post.instances:
                block, halo = blockwise_layout(size.diameter if size and size.diameter else seg.object_diameter)
                result = zarr_out.create((h, w), np.int32) if zarr_out is not None else \
                    open_array((h, w), np.int32, Path(tmp) / "labels.npy")  # whole slides exceed uint16
                label_blockwise(probs, seg.segment_probs, block, halo, out=result, progress=seg.options.progress)
            else:
                block = blockwise_layout(0)[0]
                result = zarr_out.create((h, w), np.uint8) if zarr_out is not None else \
                    open_array((h, w), np.uint8, Path(tmp) / "mask.npy")
                for y in range(0, h, block):
                    result[y : y + block] = seg.segment_probs(np.asarray(probs[:, y : y + block]))
        written = [] if zarr_out is not None else [write_image(dest, result, kind=_kind(seg, opts))]
        if opts.measure:  # regionprops scans the label map once, then reads one object's box at a time
            from .measure import object_table, with_size, write_table

            if isinstance(result, np.ndarray) and isinstance(raw, np.ndarray):
                table = object_table(result, raw, opts.pixel_size)
            else:
                from .big import measure_blockwise

                table = measure_blockwise(result, raw, opts.pixel_size)
            written.append(write_table(dest.with_suffix(".csv"), [with_size(table, size)]))
        if opts.outlines:
            from .outlines import write_outlines

            written.append(write_outlines(dest.parent, dest.stem, opts.outlines, [np.asarray(result)]))
        if opts.overlays:
            from .overlay import overlay

            step = max(1, -(-max(h, w) // OVERLAY_MAX_SIDE))
            small = np.asarray(result[..., ::step, ::step])
            log.info("%s: overlay drawn at 1/%d scale", name, step)
            written.append(write_image(dest.with_name(f"{dest.stem}_overlay.png"),
                                       overlay(np.asarray(raw[::step, ::step]), _overlay_mask(seg, small, opts),
                                               title=f"{seg.name} (1/{step} scale)" if step > 1 else seg.name)))
        if zarr_out is not None:
            written.insert(0, zarr_out.commit())
    return written
