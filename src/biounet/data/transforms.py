"""Augmentation applied identically to an image and its labels.

Every function here is pure: it takes arrays and an explicit
``np.random.Generator`` and returns new arrays, so a training patch is
reproducible from its seed and DataLoader workers never share hidden state.

Conventions
-----------
* ``image``: floating ``(H, W, C)``, already normalised (``[0, 1]`` or z-scored).
* ``labels``: integer or bool ``(H, W)`` (instance labels or a class mask).
  Labels are only ever resampled nearest-neighbour, so no label value is
  invented by interpolation.
* Weight maps and other targets derived from the labels are *not* warped
  here: recompute them from the augmented labels. Warping a weight map
  smears its touching-border ridges and breaks its class balance; recomputing
  is both simpler and exact.

Geometry is done with a single resampling: the random affine transform
(rotation, isotropic scale, shift) and the U-Net paper's elastic deformation
are composed into one coordinate map, which is then sampled once with
``scipy.ndimage.map_coordinates`` (bilinear for the image, nearest for the
labels). Both use ``mode="reflect"`` (half-sample mirror), the paper's mirror
extension; because image and labels use the same mode and coordinates, any
content pulled in from outside the patch is mirrored consistently in both.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from ..config import AugmentConfig

__all__ = [
    "ROTATION_DEG",
    "SHIFT_FRACTION",
    "augment",
    "context_margin",
    "crop",
    "crop_mirrored",
    "elastic_displacement",
    "random_affine_elastic",
    "random_flip_rot",
    "random_intensity",
    "upsample_displacement",
    "warp",
    "warp_coordinates",
]

# Ranges of the random affine transform. Module constants rather than config
# keys: they rarely need tuning and the config stays small. The zoom range is
# augment.scale_range (log-uniform, so zooming in and out are equally likely).
ROTATION_DEG = 180.0  # angle uniform in [-ROTATION_DEG, ROTATION_DEG)
SHIFT_FRACTION = 0.1  # shift uniform in +-10 % of the patch side


def _check_pair(image: np.ndarray, labels: np.ndarray) -> None:
    """Reject arrays that would silently misalign or be interpolated wrongly."""
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be floating point (normalised), got {image.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TypeError(f"labels must be integer or bool, got {labels.dtype}")
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in (H, W)")


def _check_cfg(cfg: AugmentConfig) -> None:
    if cfg.elastic_sigma < 0:
        raise ValueError(f"augment.elastic_sigma must be >= 0, got {cfg.elastic_sigma}")
    if cfg.elastic_grid < 2:
        raise ValueError(f"augment.elastic_grid must be >= 2, got {cfg.elastic_grid}")


# --------------------------------------------------------------------------- dihedral


def _random_dihedral_views(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, flips: bool, rot90: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a dihedral element and apply it as strided views (no copy).

    Returning views lets :func:`augment` feed the result straight into the
    resampling step, which reads strided input without copying it first.
    """
    square = image.shape[0] == image.shape[1]
    # A quarter turn swaps H and W; on a non-square patch only half turns keep the shape.
    if rot90 and square:
        k = int(rng.integers(4))
    elif rot90 or flips:
        # Flips alone still need the half turn: {id, fliplr, rot180, flipud}.
        k = 2 * int(rng.integers(2))
    else:
        k = 0
    flip = bool(rng.integers(2)) if flips else False
    if k:
        image = np.rot90(image, k, axes=(0, 1))
        labels = np.rot90(labels, k, axes=(0, 1))
    if flip:
        image = image[:, ::-1]
        labels = labels[:, ::-1]
    return image, labels


def random_flip_rot(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    flips: bool = True,
    rot90: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a uniformly random element of the dihedral group D4 (exact, no interpolation).

    Args:
        image: ``(H, W, C)`` floating image.
        labels: ``(H, W)`` integer labels.
        rng: source of randomness.
        flips: allow mirror images. Without ``rot90`` this draws from
            ``{identity, fliplr, flipud, rot180}``.
        rot90: allow quarter turns. On a non-square patch quarter turns would
            swap H and W, so only half turns are used there.

    Returns:
        ``(image, labels)`` as new C-contiguous arrays with the input shapes
        (for square patches) and dtypes.
    """
    _check_pair(image, labels)
    image, labels = _random_dihedral_views(image, labels, rng, flips, rot90)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


# --------------------------------------------------------------------------- geometry


@functools.lru_cache(maxsize=64)
def _spline_basis(grid: int, length: int) -> np.ndarray:
    """``(length, grid)`` matrix that cubic-spline-upsamples ``grid`` nodes to ``length`` samples.

    Cubic spline zooming is linear and separable, so upsampling a ``(g, g)``
    grid equals ``B_y @ grid @ B_x.T``. Two tiny matrix products replace a 2-D
    ``ndi.zoom`` (about 5 ms for 256 x 256) and the basis is cached per size.
    Nodes sit on the first and last samples (``grid_mode=False``); ``mirror``
    gives the field zero slope at the patch border.
    """
    basis = ndi.zoom(np.eye(grid), (length / grid, 1.0), order=3, mode="mirror")
    assert basis.shape == (length, grid), basis.shape
    basis.flags.writeable = False  # shared through the cache
    return basis


def upsample_displacement(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic (cubic B-spline) upsampling of a coarse displacement grid.

    Args:
        coarse: ``(2, g, g)`` (or ``(2, gy, gx)``) displacements in pixels at
            grid nodes spanning the patch corner to corner.
        shape: output ``(H, W)``.

    Returns:
        ``(2, H, W)`` float64 per-pixel displacements (row, column). Equal to
        ``ndi.zoom(coarse[i], ..., order=3, mode="mirror")`` per component; the
        field passes through the node values exactly.
    """
    if coarse.ndim != 3 or coarse.shape[0] != 2:
        raise ValueError(f"coarse displacement must be (2, gy, gx), got {coarse.shape}")
    by = _spline_basis(coarse.shape[1], int(shape[0]))
    bx = _spline_basis(coarse.shape[2], int(shape[1]))
    return np.einsum("yi,cij,xj->cyx", by, coarse, bx, optimize=True)


def elastic_displacement(
    shape: tuple[int, int], rng: np.random.Generator, sigma: float, grid: int
) -> np.ndarray:
    """Random smooth displacement field of the U-Net paper (Ronneberger et al. 2015).

    Displacement vectors are drawn from ``N(0, sigma^2)`` pixels on a coarse
    ``grid x grid`` lattice and interpolated bicubically to every pixel, so
    neighbouring pixels move almost together (a smooth, folding-free warp for
    the paper's sigma = 10 px on a 3 x 3 grid).

    Returns:
        ``(2, H, W)`` float64 displacements (row, column) in pixels.
    """
    if grid < 2:
        raise ValueError(f"elastic grid must be >= 2 nodes per side, got {grid}")
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    return upsample_displacement(coarse, shape)


def warp_coordinates(
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    angle_deg: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    displacement: np.ndarray | None = None,
) -> np.ndarray:
    """Source coordinates for every output pixel of an affine + elastic warp.

    The output pixel ``p`` (centred on the output patch) is first displaced by
    ``displacement[:, p]``, then rotated by ``angle_deg`` and zoomed by
    ``scale`` about the input centre, then shifted by ``shift`` input pixels:
    ``src = c_in + R(angle) (p - c_out + d(p)) / scale + shift``.
    A positive angle turns the content the same way as ``np.rot90(x, 1)``;
    ``scale > 1`` zooms in. Pixel ``i`` has its centre at coordinate ``i``, so
    ``angle_deg=90`` on a square patch reproduces ``np.rot90`` exactly.

    Returns:
        ``(2, Ho, Wo)`` float64 (row, column) coordinates into the input.
    """
    ho, wo = int(out_shape[0]), int(out_shape[1])
    if displacement is not None and displacement.shape != (2, ho, wo):
        raise ValueError(f"displacement must be (2, {ho}, {wo}), got {displacement.shape}")
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    qy = (np.arange(ho, dtype=np.float64) - (ho - 1) / 2.0)[:, None]
    qx = (np.arange(wo, dtype=np.float64) - (wo - 1) / 2.0)[None, :]
    cy = (in_shape[0] - 1) / 2.0 + shift[0]
    cx = (in_shape[1] - 1) / 2.0 + shift[1]
    coords = np.empty((2, ho, wo), dtype=np.float64)
    if displacement is None:
        coords[0] = cy + cos * qy + sin * qx
        coords[1] = cx - sin * qy + cos * qx
    else:
        py = qy + displacement[0]
        px = qx + displacement[1]
        coords[0] = cy + cos * py + sin * px
        coords[1] = cx - sin * py + cos * px
    return coords


def warp(
    image: np.ndarray, labels: np.ndarray, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (bilinear) and labels (nearest) at the same source coordinates.

    Args:
        image: ``(H, W, C)`` floating image; may be a strided view.
        labels: ``(H, W)`` integer or bool labels; may be a strided view.
        coords: ``(2, Ho, Wo)`` (row, column) source coordinates, e.g. from
            :func:`warp_coordinates`.

    Returns:
        ``(image, labels)`` of shapes ``(Ho, Wo, C)`` and ``(Ho, Wo)``,
        C-contiguous, input dtypes. Out-of-patch samples are mirrored
        (``mode="reflect"``) identically for both.
    """
    _check_pair(image, labels)
    out_hw = coords.shape[1:]
    channels = image.shape[2]
    # ndimage has no float16 kernels: resample such images in float32 and cast back.
    source = image if image.dtype in (np.float32, np.float64) else image.astype(np.float32)
    # Channel-first buffer: each map_coordinates call writes contiguously.
    planes = np.empty((channels, *out_hw), dtype=source.dtype)
    for c in range(channels):
        ndi.map_coordinates(source[:, :, c], coords, output=planes[c], order=1, mode="reflect")
    src_labels = labels.view(np.uint8) if labels.dtype == np.bool_ else labels
    out_labels = ndi.map_coordinates(src_labels, coords, order=0, mode="reflect")
    if labels.dtype == np.bool_:
        out_labels = out_labels.view(np.bool_)
    return np.moveaxis(planes, 0, -1).astype(image.dtype, order="C"), out_labels


def _draw_affine(
    rng: np.random.Generator, out_shape: tuple[int, int], scale_range: tuple[float, ...]
) -> tuple[float, float, tuple[float, float]]:
    """Angle (degrees), scale and shift (pixels, a fraction of the output size)."""
    angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    shift = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2) * np.asarray(out_shape, dtype=np.float64)
    return angle, scale, (float(shift[0]), float(shift[1]))


def random_affine_elastic(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    *,
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shift composed with an elastic deformation, one resampling.

    Which parts are drawn follows ``cfg.affine`` and ``cfg.elastic``
    (``cfg.elastic_sigma`` pixels on a ``cfg.elastic_grid`` square lattice);
    the affine ranges are :data:`ROTATION_DEG`, ``cfg.scale_range`` and
    :data:`SHIFT_FRACTION`. With both disabled the inputs are returned as
    contiguous copies.

    Args:
        image: ``(H, W, C)`` floating image.
        labels: ``(H, W)`` integer labels.
        rng: source of randomness.
        cfg: augmentation settings.
        out_shape: output ``(Ho, Wo)``, centred on the input; defaults to
            ``(H, W)``. Pass an input crop larger than the patch you want
            (:func:`context_margin` on each side) so rotated corners
            show real context instead of mirrored content.

    Returns:
        ``(image, labels)`` C-contiguous with shapes ``(Ho, Wo, C)``,
        ``(Ho, Wo)`` and the input dtypes.
    """
    _check_pair(image, labels)
    _check_cfg(cfg)
    in_shape = (image.shape[0], image.shape[1])
    out_shape = in_shape if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
    if not (cfg.affine or cfg.elastic):
        if out_shape != in_shape:
            top = (in_shape[0] - out_shape[0]) // 2
            left = (in_shape[1] - out_shape[1]) // 2
            if top < 0 or left < 0:
                raise ValueError(f"out_shape {out_shape} is larger than the input {in_shape}")
            return crop(image, labels, top, left, out_shape)
        return np.array(image, order="C", copy=True), np.array(labels, order="C", copy=True)
    angle, scale, shift = _draw_affine(rng, out_shape, cfg.scale_range) if cfg.affine else (0.0, 1.0, (0.0, 0.0))
    displacement = (
        elastic_displacement(out_shape, rng, cfg.elastic_sigma, cfg.elastic_grid) if cfg.elastic else None
    )
    coords = warp_coordinates(in_shape, out_shape, angle, scale, shift, displacement)
    return warp(image, labels, coords)


# --------------------------------------------------------------------------- intensity


def random_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast, brightness, per-channel colour and noise jitter.

    Magnitudes are relative to the image's own spread (its standard deviation,
    and its min..max range for gamma), so the same jitter suits ``[0, 1]``
    and z-scored inputs. Gamma is applied on the min..max-rescaled image and
    mapped back, so it is defined for negative (z-scored) values too and keeps
    the range. Labels are unaffected by design, so this takes the image only.

    Args:
        image: ``(H, W, C)`` floating image.
        rng: source of randomness.

    Returns:
        New C-contiguous image, same shape and dtype.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be floating point (normalised), got {image.dtype}")
    channels = image.shape[2]
    # Scalars are drawn up front so a seed gives the same jitter whatever the
    # image content; only the noise array is drawn later, and only when used.
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.0 / 0.7))))
    contrast = float(np.exp(rng.uniform(np.log(0.75), np.log(1.0 / 0.75))))
    brightness = float(rng.uniform(-0.1, 0.1))
    gains = 1.0 + rng.normal(0.0, 0.05, size=channels) if channels > 1 else None
    offsets = rng.normal(0.0, 0.05, size=channels) if channels > 1 else None
    noisy = bool(rng.random() < 0.5)
    noise_std = float(rng.uniform(0.0, 0.05))

    out = np.array(image, dtype=image.dtype, order="C", copy=True)
    lo, hi = float(out.min()), float(out.max())
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return out  # constant (or non-finite) image: nothing meaningful to jitter
    std = float(out.std()) or span

    out -= lo
    out *= 1.0 / span
    np.power(out, gamma, out=out)
    mean01 = float(out.mean())
    # Contrast about the mean, then brightness; folded into one multiply-add.
    out *= span * contrast
    out += lo + (mean01 * span) * (1.0 - contrast) + brightness * std
    if gains is not None:
        out *= gains.astype(out.dtype)
        out += (offsets * std).astype(out.dtype)
    if noisy and noise_std > 0:
        noise_dtype = np.float32 if out.dtype == np.float32 else np.float64  # what the generator offers
        noise = rng.standard_normal(size=out.shape, dtype=noise_dtype)
        noise *= noise_std * std
        out += noise.astype(out.dtype, copy=False)
    return out


def _check_floating(image: np.ndarray) -> None:
    """The image-only augmentations take a floating ``(H, W, C)`` image."""
    if image.ndim != 3 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be floating (H, W, C), got {image.dtype} {image.shape}")


def random_degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How another lab's image differs: gamma, contrast, blur and noise, each drawn independently.

    Half the patches get a gamma in [0.5, 2] and half a contrast cut to x0.3-1 about the mean
    (log-uniform); a third are blurred (Gaussian, sigma 0.5-2 px) and a third get noise: Gaussian
    (up to 0.2 of the image's standard deviation) or Poisson-like (variance proportional to the
    brightness above the minimum). Like :func:`random_intensity`, magnitudes are relative to the
    image's own range, so it suits any normalisation; labels are unaffected.

    Args:
        image: ``(H, W, C)`` floating image.
        rng: source of randomness; all scalars are drawn first, so a seed gives the same draw.

    Returns:
        New C-contiguous image, same shape and dtype.
    """
    from scipy import ndimage as ndi

    _check_floating(image)
    gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if rng.random() < 0.5 else 1.0
    contrast = float(np.exp(rng.uniform(np.log(0.3), 0.0))) if rng.random() < 0.5 else 1.0
    sigma = float(rng.uniform(0.5, 2.0)) if rng.random() < 1 / 3 else 0.0
    noise = float(rng.uniform(0.02, 0.2)) if rng.random() < 1 / 3 else 0.0
    poisson = bool(rng.random() < 0.5)

    out = np.array(image, order="C", copy=True)
    lo, hi = float(out.min()), float(out.max())
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return out
    if gamma != 1.0:
        out = (((out - lo) / span) ** gamma * span + lo).astype(image.dtype)
    if contrast != 1.0:
        mean = float(out.mean())
        out = ((out - mean) * contrast + mean).astype(image.dtype)
    if sigma:
        out = ndi.gaussian_filter(out, sigma=(sigma, sigma, 0), mode="reflect").astype(image.dtype)
    if noise:
        std = float(out.std()) or span
        z = rng.standard_normal(size=out.shape).astype(image.dtype)
        if poisson:  # shot noise: standard deviation grows as the root of the signal
            rel = np.sqrt(np.clip((out - lo) / span, 0.0, None))
            out = out + z * (noise * std * 2.0) * rel
        else:
            out = out + z * (noise * std)
    return np.ascontiguousarray(out, dtype=image.dtype)


def random_uneven(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven images: a smooth illumination gain and bright plateaus, each on half the patches.

    Tissue and wide fields are lit unevenly, so faint nuclei lie beside bright ones; in brightfield (inverted
    to "nuclei bright") each nucleus sits on its cell's cytoplasm, a large mid-grey plateau that a network
    trained on fluorescence takes for one big nucleus. The gain multiplies the image above its minimum by a
    field that varies smoothly between x0.25 and x1 (log-uniform on a coarse 2-4 node grid, spline
    interpolated). The plateaus are large soft blobs (a blurred noise field above one of its quantiles,
    edges softened over 2-6 px) added at 0.15-0.5 of the image's range, over nuclei and background alike,
    so what stays a nucleus is what is brighter than its own surroundings. Labels are unaffected.

    Args:
        image: ``(H, W, C)`` floating image.
        rng: source of randomness; the same seed gives the same result.

    Returns:
        New C-contiguous image, same shape and dtype.
    """
    _check_floating(image)
    h, w = image.shape[:2]
    gain_on, plateau_on = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    nodes = int(rng.integers(2, 5))
    coarse = np.exp(rng.uniform(np.log(0.25), 0.0, size=(nodes, nodes)))
    seed_field = rng.standard_normal((max(1, h // 8), max(1, w // 8)))
    quantile, soft, amp = float(rng.uniform(0.4, 0.8)), float(rng.uniform(2.0, 6.0)), float(rng.uniform(0.15, 0.5))

    out = np.array(image, order="C", copy=True)
    lo, hi = float(out.min()), float(out.max())
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return out
    if gain_on:
        gain = ndi.zoom(coarse, (h / nodes, w / nodes), order=1, mode="nearest", grid_mode=True)[:h, :w]
        gain = np.clip(gain, 0.25, 1.0).astype(image.dtype)
        out = (lo + (out - lo) * gain[..., None]).astype(image.dtype)
    if plateau_on:
        field = ndi.gaussian_filter(seed_field, sigma=max(1.0, min(seed_field.shape) / 6), mode="wrap")
        field = ndi.zoom(field, (h / field.shape[0], w / field.shape[1]), order=1, mode="nearest", grid_mode=True)[:h, :w]
        blobs = (field > np.quantile(field, quantile)).astype(np.float32)
        blobs = ndi.gaussian_filter(blobs, sigma=soft, mode="reflect")
        out = (out + (amp * span) * blobs[..., None]).astype(image.dtype)
    return np.ascontiguousarray(out, dtype=image.dtype)


def random_lowres(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small nuclei seen enlarged: on a third of the patches the image is shrunk by a factor of 1.5-4
    (log-uniform, anti-aliased) and enlarged back (bilinear) to its own size.

    That is how an image of nuclei 2-4x smaller than the training ones reaches the network once
    ``--diameter auto`` has enlarged it: the detail lost in the shrinking does not come back. Both resizes
    map pixel centres as skimage's ``resize`` does, so the image stays on its labels' grid (tested); labels
    are unaffected. Takes a floating ``(H, W, C)`` image, returns a new C-contiguous one like it.
    """
    from skimage.transform import resize

    _check_floating(image)
    on, factor = bool(rng.random() < 1 / 3), float(np.exp(rng.uniform(np.log(1.5), np.log(4.0))))
    out = np.array(image, order="C", copy=True)
    if not on:
        return out
    h, w, c = out.shape
    small = resize(out, (max(2, round(h / factor)), max(2, round(w / factor)), c), order=1, anti_aliasing=True,
                   preserve_range=True)
    out = resize(small, (h, w, c), order=1, anti_aliasing=False, preserve_range=True)
    return np.ascontiguousarray(out, dtype=image.dtype)


def random_stain(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """H&E stain jitter of a raw RGB image (Tellez et al. 2018, "HED" augmentation).

    Stained slides differ from lab to lab in how much hematoxylin and eosin they
    took up and how the scanner saw them. Colour deconvolution (Ruifrok's
    matrix, :data:`skimage.color.hed_from_rgb`) turns each pixel's optical density
    ``-ln(rgb)`` into one density per stain; each stain's is scaled by
    ``U(1 - strength, 1 + strength)`` and shifted by ``U(-strength, strength)``,
    and the result goes back to RGB. The map is applied without clipping the
    densities (:func:`skimage.color.rgb2hed` clips negative ones, which changes real
    H&E images by up to ~30 gray levels with no jitter at all), so strength 0 gives
    the image back. It runs on the raw image, before normalisation, so what the
    network sees is the normalised view of a differently stained slide.

    Args:
        image: ``(H, W, C)`` raw image, ``C >= 3`` (channels past the third pass unchanged).
        rng: source of randomness.
        strength: jitter size; 0.05 is Tellez's "light", 0.2 their "strong" setting.

    Returns:
        New image, same shape and dtype (integer images keep their full range).
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"stain jitter needs an (H, W, 3) RGB image, got shape {image.shape}")
    scale = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    shift = rng.uniform(-strength, strength, size=3)
    # transmission in 0..1: integer images by their type's range, floats by their max
    top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else \
        max(1.0, float(image[..., :3].max(initial=0.0)))
    density = -np.log(np.maximum(image[..., :3].astype(np.float64) / top, 1e-6))
    stains = (density @ hed_from_rgb) * scale + shift
    rgb = np.clip(np.exp(-(stains @ rgb_from_hed)), 0.0, 1.0) * top
    out = np.array(image, copy=True)
    out[..., :3] = np.round(rgb) if np.issubdtype(image.dtype, np.integer) else rgb
    return out


# --------------------------------------------------------------------------- composition


def crop(
    image: np.ndarray, labels: np.ndarray, top: int, left: int, size: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the same window out of image and labels (contiguous copies).

    Raises ``ValueError`` instead of silently returning a short window when
    the window leaves the array.
    """
    _check_pair(image, labels)
    sh, sw = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    h, w = labels.shape
    if top < 0 or left < 0 or top + sh > h or left + sw > w:
        raise ValueError(f"crop ({top}, {left}, {sh}x{sw}) leaves the {h}x{w} array")
    window = (slice(top, top + sh), slice(left, left + sw))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(labels[window])


def context_margin(size: int, cfg: AugmentConfig) -> int:
    """Pixels of input needed on each side of a ``size`` patch so no warp of ``cfg`` samples beyond them.

    The output's corners lie ``size / sqrt(2)`` from its centre; at the smallest zoom they come from
    ``1 / scale_range[0]`` times as far, plus the largest shift and four elastic sigmas (the displacement is Gaussian on its grid nodes).
    """
    if not (cfg.affine or cfg.elastic):
        return 0
    reach = size / 2.0
    if cfg.affine:
        reach = reach * np.sqrt(2.0) / min(cfg.scale_range[0], 1.0) + SHIFT_FRACTION * size
    if cfg.elastic:
        reach += 4.0 * cfg.elastic_sigma
    return int(np.ceil(reach - size / 2.0)) + 1


def crop_mirrored(arr: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``arr[top:top+height, left:left+width]`` where rows/columns outside ``arr`` are mirrored in
    (edge pixel repeated, as ``np.pad(mode="symmetric")`` and ``ndimage``'s ``"reflect"``), any distance out."""
    def index(start: int, length: int, n: int) -> np.ndarray:
        i = np.mod(np.arange(start, start + length), 2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)

    if top >= 0 and left >= 0 and top + height <= arr.shape[0] and left + width <= arr.shape[1]:
        return arr[top : top + height, left : left + width]  # a view: the warp that follows copies
    return arr[index(top, height, arr.shape[0])][:, index(left, width, arr.shape[1])]


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    *,
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the augmentations enabled in ``cfg`` to a training patch.

    Order: dihedral flip/rotation (exact), then affine + elastic (one
    bilinear/nearest resampling), then intensity jitter (image only). The
    dihedral step only re-strides the arrays, so geometry costs one pass.

    Args:
        image: ``(H, W, C)`` floating image.
        labels: ``(H, W)`` integer or bool labels.
        rng: source of randomness; the same seed gives the same result.
        cfg: which transforms to apply.
        out_shape: the patch ``(Ho, Wo)`` to warp out of the centre of a larger
            input (context, see :func:`context_margin`); defaults to the input's.
            Needs ``cfg.affine`` or ``cfg.elastic``.

    Returns:
        ``(image, labels)``: new C-contiguous arrays with the input (or
        ``out_shape``) shapes and dtypes. Recompute weight maps from the
        returned labels.
    """
    _check_pair(image, labels)
    _check_cfg(cfg)
    if cfg.flips or cfg.rot90:
        image, labels = _random_dihedral_views(image, labels, rng, cfg.flips, cfg.rot90)
    if cfg.affine or cfg.elastic:
        image, labels = random_affine_elastic(image, labels, rng, cfg, out_shape=out_shape)
    else:
        if out_shape is not None and tuple(out_shape) != labels.shape:
            raise ValueError("augment: out_shape needs augment.affine or augment.elastic")
        # Never hand back the caller's buffer: a later in-place edit would corrupt the dataset.
        labels = np.array(labels, order="C", copy=True)
        if not cfg.intensity:  # random_intensity copies the image itself
            image = np.array(image, order="C", copy=True)
    if cfg.intensity:
        image = random_intensity(image, rng)
    if cfg.degrade:
        image = random_degrade(image, rng)
    if cfg.uneven:
        image = random_uneven(image, rng)
    if cfg.lowres:
        image = random_lowres(image, rng)
    return image, labels
