"""Image normalisation, the one step training and prediction must do identically.

Both sides call these functions and nothing else: the training data set
(:mod:`biounet.data.dataset`) on whole images, prediction
(:mod:`biounet.predict`) through :class:`NormalizedView`, which applies the
same per-image ``(offset, scale)`` window by window so a memory-mapped image
is never converted whole. The mode is stored in the model's config, so a model
always sees its inputs as it saw them in training.
"""
from __future__ import annotations

import logging
import typing
from typing import Any, Literal

import numpy as np

from .io import InputError, check_finite, check_pixel_type, strip_alpha

log = logging.getLogger("biounet")

# data.normalize: the one list of modes (the config's allowed values are this Literal)
Mode = Literal["percentile", "percentile_invert", "nuclei", "minmax", "range", "none"]
MODES: tuple[str, ...] = typing.get_args(Mode)
PERCENTILES = (1.0, 99.8)  # the intensity window of the percentile modes (also what a bioimage.io export says)
# bioimage.io's scale_range divides by (hi - lo + eps), eps 1e-6 by default; biounet's own modes divide by
# max(hi - lo, 1e-6). The two differ only in the last digits of an image with a wide window, and an exported
# package must reproduce its test output as consumers compute it, so :func:`scale_range` keeps the spec's form.
SPEC_EPS = 1e-6


def percentile_window(image: np.ndarray, axis: Any = None) -> tuple[Any, Any]:
    """(lo, hi): the :data:`PERCENTILES` of ``image`` (over ``axis``, kept as size-1 axes), the window that the
    percentile modes map to 0..1 and that a bioimage.io export's ``scale_range`` pre-processing names."""
    lo, hi = np.percentile(image, PERCENTILES, axis=axis, keepdims=axis is not None)
    return lo, hi


def scale_range(x: np.ndarray, axis: Any = (2, 3), eps: float = SPEC_EPS) -> np.ndarray:
    """bioimage.io's ``scale_range`` as consumers of an exported package apply it: ``(x - lo) / (hi - lo + eps)``
    per image over ``axis`` (y and x of (batch, channel, y, x)); biounet's ``percentile`` mode on a gray image,
    up to ``eps`` (see :data:`SPEC_EPS`)."""
    lo, hi = percentile_window(x, axis)
    return ((x - lo) / (hi - lo + eps)).astype(np.float32)


def norm_params(image: np.ndarray, mode: str) -> tuple[float, float | np.ndarray]:
    """(offset, scale) so that ``(image - offset) * scale`` is the normalized image.

    ``percentile`` maps the 1st..99.8th percentile of each image to 0..1, which
    makes 8-bit, 16-bit, dim and bright acquisitions look alike to the network.
    Percentiles of big images are estimated on a strided subsample, so a
    memory-mapped whole-slide image is never read whole.
    """
    if mode == "none":
        return 0.0, 1.0
    if mode == "range":
        dtype = np.dtype(image.dtype)
        return 0.0, 1.0 / float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 4_000_000)))
    sample = np.asarray(image[::step, ::step], dtype=np.float32)
    if mode == "percentile":
        lo, hi = percentile_window(sample)
    elif mode == "minmax":
        lo, hi = float(sample.min()), float(sample.max())
    elif mode in ("percentile_invert", "nuclei"):
        return _bright_objects(sample, red_for_colour=mode == "nuclei")
    else:
        raise ValueError(f"data.normalize must be one of {', '.join(MODES)}, got {mode!r}")
    return float(lo), 1.0 / max(float(hi - lo), 1e-6)


def _bright_objects(sample: np.ndarray, red_for_colour: bool) -> tuple[float, float | np.ndarray]:
    """Percentile (offset, scale) of a 1-channel "nuclei are bright" view of the image.

    Brightfield and H&E show nuclei dark on a light background, fluorescence
    bright on a dark one. Inverting the first kind (a negative scale) makes every
    modality look like fluorescence to a 1-channel net, so the rare modalities
    borrow what it learned on the common one. The background is taken to be
    bright when the median gray pixel lies in the upper half of the 1st..99.8th
    percentile range (nuclei cover well under half of these images).

    ``red_for_colour`` (``normalize = "nuclei"``, for stained tissue): a
    light-background colour image is read through its red channel alone:
    hematoxylin (nuclei) absorbs red strongly and eosin (cytoplasm, stroma)
    hardly at all, whereas in the channel mean pink stroma is as dark as a
    nucleus; dense tissue is recognised the same way, by a bright red-channel
    median. The channel choice is folded into a per-channel ``scale`` whose
    channel mean (what a 1-channel model sees, see :func:`match_channels`) is
    the normalized red channel; gray images get scalars.
    """
    colour = sample.ndim == 3 and sample.shape[-1] > 1
    if colour and red_for_colour:
        # decided on the red channel too: in dense tissue the pink stroma makes the gray median dark
        lo, med, hi = _percentiles(sample[..., 0])
        if med - lo > 0.5 * (hi - lo):
            scale = np.zeros(sample.shape[-1], dtype=np.float32)
            scale[0] = -sample.shape[-1] / (hi - lo)
            return hi, scale
    lo, med, hi = _percentiles(sample.mean(axis=-1) if sample.ndim == 3 else sample)
    if med - lo > 0.5 * (hi - lo):  # light background: brightfield
        return hi, -1.0 / (hi - lo)
    return lo, 1.0 / (hi - lo)


def _percentiles(gray: np.ndarray) -> tuple[float, float, float]:
    """1st, 50th and 99.8th percentiles, the top kept at least 1e-6 above the bottom."""
    lo, med, hi = (float(v) for v in np.percentile(gray, (PERCENTILES[0], 50.0, PERCENTILES[1])))
    return lo, med, max(hi, lo + 1e-6)


def apply_norm(image: np.ndarray, offset: float, scale: float | np.ndarray) -> np.ndarray:
    """(H, W[, C]) -> float32 (H, W, C) normalized with :func:`norm_params` values (scale may be per channel)."""
    img = image if image.ndim == 3 else image[..., None]
    out = np.asarray(img, dtype=np.float32) - np.float32(offset)
    out *= np.asarray(scale, dtype=np.float32)
    return out


def match_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """Make an (H, W, C) image have ``channels`` channels (gray <-> RGB) or fail clearly."""
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 1 and c == 3:
        return image.mean(axis=-1, keepdims=True)
    if c == 1:
        return np.repeat(image, channels, axis=-1)
    raise InputError(f"{name}: has {c} channels but the model expects {channels}")


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) -> float32 (H, W, C), normalized per image (see :func:`norm_params`)."""
    return apply_norm(image, *norm_params(image, mode))


def network_input(image: np.ndarray, mode: str, channels: int, name: str = "image") -> np.ndarray:
    """Raw (H, W[, C]) -> what the network is fed, float32 (H, W, ``channels``); training's entry point."""
    return match_channels(normalize(image, mode), channels, name)


def drop_alpha(image: Any, name: str = "image") -> Any:
    """(H, W, 4) RGBA -> RGB and (H, W, 2) gray+alpha -> gray, as the file readers do; stacks are refused.

    Arrays handed to the Python API get the same treatment as files, and a
    (Z, H, W) stack (more than 4 trailing "channels") is named as one.
    """
    if image.ndim == 3 and image.shape[2] in (2, 4):
        image = strip_alpha(image)  # the file readers' rule
        return image[..., 0] if image.shape[2] == 1 else image
    refuse_channel_first(image, name)
    if image.ndim == 3 and image.shape[2] > 4:
        raise InputError(f"{name}: shape {tuple(image.shape)} looks like a stack of {image.shape[0]} pages, "
                         f"not an (H, W, C) image; use segment_stack / predict_stack (or, if it has "
                         f"{image.shape[2]} channels: the models take 1 to 4)")
    if image.ndim not in (2, 3):
        raise InputError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {tuple(image.shape)}")
    return image


def refuse_channel_first(image: Any, name: str = "image") -> None:
    """A (C, H, W) array (C <= 4, as torch and many readers lay channels out) is named as such, with the fix:
    biounet takes (H, W, C), and reading it as H rows of W pixels with H-wide channels would be nonsense."""
    if image.ndim == 3 and image.shape[0] <= 4 < image.shape[2]:
        c = image.shape[0]
        raise InputError(f"{name}: shape {tuple(image.shape)} looks channel-first ({c}, H, W); biounet takes "
                         f"(H, W, C) images: pass np.moveaxis(image, 0, -1) (or, if it is a stack of {c} pages, "
                         "segment_stack / predict_stack)")


def one_channel(image: Any, channel: int, name: str = "image") -> Any:
    """Channel ``channel`` of an (H, W[, C]) image, as ``--channel`` picks one from a file (a gray image is
    its own channel 0); a lazy slice, so a memory map is not read."""
    refuse_channel_first(image, name)
    n = image.shape[2] if image.ndim == 3 else 1
    if not 0 <= channel < n:
        raise InputError(f"{name}: has {n} channel(s); channel {channel} is out of range (0..{n - 1})")
    return image[..., channel] if image.ndim == 3 else image


def _warn_if_not_alpha(image: Any, name: str) -> None:
    """An (H, W, 2) array is read as gray + alpha, as a file would be; say so when the second channel
    varies like a second stain rather than an opacity (nuclei there would silently give 0 objects)."""
    if not (image.ndim == 3 and image.shape[2] == 2):
        return
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 1_000_000)))
    second = np.asarray(image[::step, ::step, 1])
    if second.size and second.min() != second.max():
        log.warning("%s: 2 channels: the second is taken for alpha and dropped, as a gray + alpha file's would be; "
                    "give channel=1 to segment the second channel (channel=0: the first)", name)


def array_like(raw: Any) -> Any:
    """``raw`` if it slices like a numpy array (ndarray, memory map, zarr or dask array: read lazily, window
    by window), else as a numpy array: a torch tensor (moved to the CPU) or nested lists from the Python API."""
    if isinstance(getattr(raw, "dtype", None), np.dtype) and hasattr(raw, "shape"):
        return raw
    if hasattr(raw, "detach"):  # a torch tensor, without importing torch here
        return raw.detach().cpu().numpy()
    return np.asarray(raw)


class NormalizedView:
    """A raw (H, W[, C]) image seen as :func:`network_input` in (C, H, W) layout, computed per window.

    The tiling engine slices it tile by tile, so a memory-mapped image is never
    converted (or even read) whole; ``view[:, a:b, c:d]`` equals the same
    window of ``network_input(raw).transpose(2, 0, 1)``. ``channel`` views that one channel
    of a multi-channel (H, W, C) array; a channel-first (C, H, W) one is refused with the fix.
    """

    def __init__(self, raw: Any, mode: str, channels: int, name: str = "image", channel: int | None = None) -> None:
        raw = check_pixel_type(array_like(raw), name)
        if channel is not None:  # segment this channel of a multi-channel array (the API's --channel)
            raw = one_channel(raw, channel, name)
        else:
            _warn_if_not_alpha(raw, name)
        # one NaN would make the whole view NaN; a complex image would lose its imaginary part
        raw = check_finite(drop_alpha(raw, name), name)
        self.raw, self.channels, self.name = raw, channels, name
        self.offset, self.scale = norm_params(raw, mode)
        self.shape = (channels, raw.shape[0], raw.shape[1])
        self.ndim = 3
        # fail now, naming the file, rather than at the first tile: a 1-pixel probe of the channel rule
        match_channels(np.zeros((1, 1, 1 if raw.ndim == 2 else raw.shape[2]), np.float32), channels, name)

    def __getitem__(self, key: tuple) -> np.ndarray:
        _, rows, cols = key
        window = apply_norm(np.asarray(self.raw[rows, cols]), self.offset, self.scale)
        return match_channels(window, self.channels, self.name).transpose(2, 0, 1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, slice(None), slice(None)]
        return np.ascontiguousarray(whole if dtype is None else whole.astype(dtype))
