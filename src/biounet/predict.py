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
from typing import Any, Callable, Literal

import numpy as np
import torch

from . import checkpoint
from .config import PostConfig, RunConfig
from .io import InputError
from .models.unet import Ensemble, UNet
from .normalize import NormalizedView

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
    training objects (outputs stay at the image's size). ``fast`` runs a
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
    diameter: float | None = None
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
        if self.diameter is not None and not self.diameter > 0:
            raise InputError(f"--diameter must be positive, got {self.diameter}")
        if self.backend not in ("torch", "onnxruntime", "auto"):
            raise InputError(f"--backend must be torch, onnxruntime or auto, got {self.backend!r}")


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
        if self.options.diameter is not None and not self.train_diameter:
            raise InputError(f"model {self.name}: records no training object diameter; --diameter needs one")

    def with_options(self, **changes: Any) -> "Segmenter":
        """A Segmenter with some :class:`PredictOptions` changed, sharing this one's network."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))

    def with_post(self, **changes: Any) -> "Segmenter":
        """A Segmenter with some post-processing settings changed (e.g. ``mode="instances"``)."""
        return dataclasses.replace(self, post=dataclasses.replace(self.post, **changes))

    @property
    def scale(self) -> float:
        """Resize factor applied before the network (1 unless ``options.diameter`` is set)."""
        d = self.options.diameter
        return self.train_diameter / d if d else 1.0

    @property
    def object_diameter(self) -> float:
        """Expected object size in the input images (px), 0 if unknown."""
        return self.options.diameter or self.train_diameter

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> "Segmenter":
        self.module.to(device)
        return self

    def view(self, image: Any, name: str = "image") -> NormalizedView:
        """Lazy normalized (C, H, W) view of a raw image, normalized as in training."""
        return NormalizedView(image, self.config.data.normalize, self.config.model.in_channels, name)

    def prepare(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Raw (H, W[, C]) image -> normalized float32 (C, H, W) in memory: what the network is fed."""
        return np.asarray(self.view(image, name))

    def predict(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Probabilities at the image's size: (H, W) for binary heads, (K, H, W) for softmax."""
        probs = self.predict_prepared(self.view(image, name))
        return probs[0] if probs.shape[0] == 1 else probs

    def segment(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Mask (uint8, 255 = foreground) or instance labels (int32), per the task and ``post``."""
        return self.segment_probs(self.predict_prepared(self.view(image, name)))

    def segment_probs(self, probs: np.ndarray) -> np.ndarray:
        from .tasks import get_task

        return get_task(self.config).segment(probs, self.post)

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
        self.module.eval()
        if self.scale != 1.0:
            probs = self._predict_rescaled(np.asarray(x))
        else:
            probs = self._predict_native(x, out)
        if out is not None and probs is not out:
            out[...] = probs
            return out
        return probs

    def _predict_native(self, x: Any, out: Any = None) -> Any:
        if self.uses_tiles(x.shape[1:]):
            from .tiling import predict_tiled

            return predict_tiled(self._predict_fn, x, self._tiling(tuple(x.shape[1:])), self.module.geometry,
                                 out=out, progress=self.options.progress)
        return self._predict_whole(np.asarray(x))

    def _predict_rescaled(self, x: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        h, w = x.shape[1:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        small = resize(x, (x.shape[0], *size), order=1, anti_aliasing=self.scale < 1, preserve_range=True)
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


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxRunner:
    """A U-Net exported to ONNX and run by ONNX Runtime on the CPU; called like the module.

    The exported graph takes sides that are multiples of the network's
    down-sampling (``biounet.export.to_onnx``); other sizes are padded here with
    ``UNet.forward``'s own :func:`~biounet.models.unet.pad_to_multiple` and
    cropped back, so both backends see the same pixels.
    """

    def __init__(self, module: UNet | Ensemble) -> None:
        if not onnxruntime_available():
            raise InputError("--backend onnxruntime needs ONNX Runtime: pip install 'biounet[onnx]'")
        import onnxruntime as ort

        from .export import to_onnx

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

    from .io import IMAGE_SUFFIXES, image_files, list_images

    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists() and any(c in str(raw) for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            images = [m for m in matched if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise InputError(f"{raw}: the pattern matches no image file")
            files.extend(images)
        elif p.is_dir():
            dsb = sorted(p.glob("*/images/*.png"))
            inner = p / "images"  # a training-style folder: my_set/images beside my_set/masks
            files.extend(dsb or list_images(inner if inner.is_dir() and not image_files(p) else p))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                unzip = "; unzip it and point at the folder" if p.suffix.lower() == ".zip" else ""
                raise InputError(f"{p}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}){unzip}")
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError("no input images given")
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


def _result(seg: Segmenter, probs: np.ndarray, opts: OutputOptions) -> np.ndarray:
    if opts.probabilities:
        return probs[0] if probs.shape[0] == 1 else probs
    return _compact(seg.segment_probs(probs))


def _overlay_mask(seg: Segmenter, result: np.ndarray, opts: OutputOptions) -> np.ndarray:
    """What an overlay outlines: the output itself, or the thresholded probabilities."""
    if not opts.probabilities:
        return result
    from .postprocess import foreground_prob

    return foreground_prob(result) > seg.post.threshold


def _kind(seg: Segmenter, opts: OutputOptions) -> str:
    """What an output file holds, recorded in its metadata (see :func:`biounet.io.output_kind`)."""
    return "probabilities" if opts.probabilities else "labels" if seg.post.mode == "instances" else "mask"


def predict_file(seg: Segmenter, path: Path, out_dir: Path, opts: OutputOptions,
                 channel: int | None = None) -> list[Path]:
    """Predict one image or TIFF stack; writes ``<stem>.tif`` (+ overlay); returns written paths.

    ``channel`` reads one channel of a multi-channel file (see :func:`biounet.io.read_stack`).
    """
    from .io import open_lazy, pick_channel, read_stack, write_image

    out_dir = Path(out_dir)
    lazy = open_lazy(path)
    if lazy is not None and lazy.shape[0] * lazy.shape[1] > STREAM_PIXELS:
        lazy = pick_channel(lazy, channel, str(path))  # a strided view: still read tile by tile
        return predict_large(seg, lazy, output_path(path, out_dir), opts, str(path))
    stack = read_stack(path, channel)
    results = [_result(seg, seg.predict_prepared(seg.view(page, str(path))), opts) for page in stack]
    written = [write_image(output_path(path, out_dir), np.stack(results) if len(results) > 1 else results[0],
                           kind=_kind(seg, opts))]
    if opts.measure:
        from .measure import object_table, write_table

        tables = [object_table(res, page, opts.pixel_size) for page, res in zip(stack, results)]
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


def predict_large(seg: Segmenter, raw: Any, dest: Path, opts: OutputOptions, name: str) -> list[Path]:
    """Stream one huge 2D image: tiles -> memory-mapped probabilities -> block-wise mask/labels -> TIFF.

    Peak memory is a few tiles plus one block, whatever the image size; the
    intermediate ``.npy`` files live beside ``dest`` and are removed at the end.
    Block and halo of the instance labelling follow the expected object size
    (:func:`biounet.postprocess.blockwise_layout`). An overlay, if asked for, is
    drawn on a strided view at most ``OVERLAY_MAX_SIDE`` pixels across.
    """
    import tempfile

    from .io import open_array, write_image
    from .postprocess import blockwise_layout, label_blockwise

    k = seg.config.model.out_channels
    h, w = raw.shape[:2]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".biounet-") as tmp:
        probs = open_array((k, h, w), np.float32, Path(tmp) / "probs.npy")
        seg.predict_prepared(seg.view(raw, name), out=probs)
        if opts.probabilities:
            result = probs[0] if k == 1 else probs
        elif seg.post.mode == "instances":
            block, halo = blockwise_layout(seg.object_diameter)
            result = open_array((h, w), np.int32, Path(tmp) / "labels.npy")  # whole slides exceed uint16
            label_blockwise(probs, seg.segment_probs, block, halo, out=result, progress=seg.options.progress)
        else:
            block = blockwise_layout(0)[0]
            result = open_array((h, w), np.uint8, Path(tmp) / "mask.npy")
            for y in range(0, h, block):
                result[y : y + block] = seg.segment_probs(np.asarray(probs[:, y : y + block]))
        written = [write_image(dest, result, kind=_kind(seg, opts))]
        if opts.measure:  # regionprops scans the label map once, then reads one object's box at a time
            from .measure import object_table, write_table

            written.append(write_table(dest.with_suffix(".csv"), [object_table(result, raw, opts.pixel_size)]))
        if opts.outlines:
            from .outlines import write_outlines

            written.append(write_outlines(dest.parent, dest.stem, opts.outlines, [result]))
        if opts.overlays:
            from .overlay import overlay

            step = max(1, -(-max(h, w) // OVERLAY_MAX_SIDE))
            small = np.asarray(result[..., ::step, ::step])
            log.info("%s: overlay drawn at 1/%d scale", name, step)
            written.append(write_image(dest.with_name(f"{dest.stem}_overlay.png"),
                                       overlay(np.asarray(raw[::step, ::step]), _overlay_mask(seg, small, opts),
                                               title=f"{seg.name} (1/{step} scale)" if step > 1 else seg.name)))
    return written
