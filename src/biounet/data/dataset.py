"""Training data: pair images with labels, normalize, sample augmented patches.

Sources are lists of :class:`Item` objects that know how to load one image and
its labels on demand, so DataLoader workers read lazily and data sets larger
than memory train. Three sources exist: TIFF stacks (ISBI 2012), image/mask
folders, and the Kaggle DSB 2018 layout (folder or zip).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import AugmentConfig, DataConfig
from ..io import InputError, list_images, read_image, read_stack


# ---- normalization ---------------------------------------------------------
def norm_params(image: np.ndarray, mode: str) -> tuple[float, float | np.ndarray]:
    """(offset, scale) so that ``(image - offset) * scale`` is the normalized image.

    ``percentile`` maps the 1st..99.8th percentile of each image to 0..1, which
    makes 8-bit, 16-bit, dim and bright acquisitions look alike to the network;
    the same function runs at training and at prediction so they always agree.
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
        lo, hi = np.percentile(sample, (1.0, 99.8))
    elif mode == "minmax":
        lo, hi = float(sample.min()), float(sample.max())
    elif mode in ("percentile_invert", "nuclei"):
        return _bright_objects(sample, red_for_colour=mode == "nuclei")
    else:
        raise ValueError(f"data.normalize must be percentile|percentile_invert|nuclei|minmax|range|none, got {mode!r}")
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
    lo, med, hi = (float(v) for v in np.percentile(gray, (1.0, 50.0, 99.8)))
    return lo, med, max(hi, lo + 1e-6)


def apply_norm(image: np.ndarray, offset: float, scale: float | np.ndarray) -> np.ndarray:
    """(H, W[, C]) -> float32 (H, W, C) normalized with :func:`norm_params` values (scale may be per channel)."""
    img = image if image.ndim == 3 else image[..., None]
    out = np.asarray(img, dtype=np.float32) - np.float32(offset)
    out *= np.asarray(scale, dtype=np.float32)
    return out


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) -> float32 (H, W, C), normalized per image (see :func:`norm_params`)."""
    return apply_norm(image, *norm_params(image, mode))


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


# ---- items -------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One training/validation image: a name and how to load it lazily."""

    name: str
    kind: str  # stack | file | dsb | coco
    image: str
    labels: str = ""
    page: int = 0
    extra: object = None  # DsbItem / CocoItem for dsb and coco sources

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """-> raw image (H, W[, C]) and integer labels (H, W)."""
        if self.kind == "stack":
            import tifffile

            try:
                img = tifffile.imread(self.image, key=self.page)
                lab = tifffile.imread(self.labels, key=self.page)
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{self.image}: cannot read page {self.page} ({exc})") from None
        elif self.kind == "file":
            img, lab = read_image(self.image), read_image(self.labels)
        elif self.kind == "dsb":
            from .dsb import load_dsb_pair

            img, lab = load_dsb_pair(self.extra)
        elif self.kind == "coco":
            from .coco import coco_labels, load_coco_image

            img, lab = load_coco_image(self.extra), coco_labels(self.extra)
        else:
            raise ValueError(self.kind)
        if lab.ndim == 3:
            lab = lab[..., 0]
        if img.shape[:2] != lab.shape[:2]:
            raise InputError(f"{self.labels or self.image}: mask size {lab.shape[:2]} != image size {img.shape[:2]}")
        return img, lab


def stack_items(images: str | Path, labels: str | Path) -> list[Item]:
    """Pages of an image TIFF stack paired with the pages of a label stack."""
    img, lab = read_stack(images), read_stack(labels)
    if img.shape[0] != lab.shape[0]:
        raise InputError(f"{labels}: {lab.shape[0]} label pages but {img.shape[0]} image pages in {images}")
    if img.shape[1:3] != lab.shape[1:3]:
        raise InputError(f"{labels}: label size {lab.shape[1:3]} != image size {img.shape[1:3]}")
    stem = Path(images).stem
    return [Item(f"{stem}[{i}]", "stack", str(images), str(labels), page=i) for i in range(img.shape[0])]


def folder_items(images: str | Path, masks: str | Path) -> list[Item]:
    """Images paired with masks of the same stem in another folder."""
    imgs = list_images(images)
    by_stem = {p.stem: p for p in list_images(masks)}
    items = []
    for p in imgs:
        if p.stem not in by_stem:
            raise InputError(f"{p}: no mask named {p.stem}.* in {masks}")
        items.append(Item(p.stem, "file", str(p), str(by_stem[p.stem])))
    return items


def dsb_items(root: str | Path) -> list[Item]:
    from .dsb import list_dsb_items

    items = [i for i in list_dsb_items(root) if i.has_masks]
    if not items:
        raise InputError(f"{root}: no DSB images with masks/ found")
    return [Item(i.image_id, "dsb", str(root), extra=i) for i in items]


def coco_items(json_path: str | Path, image_root: str = "") -> list[Item]:
    from .coco import load_coco

    items = load_coco(json_path, image_root or None)
    if not items:
        raise InputError(f"{json_path}: no images in this COCO file")
    return [Item(Path(i.file_name).stem, "coco", str(i.image_path), extra=i) for i in items]


def items_from_config(cfg: DataConfig) -> list[Item]:
    if not cfg.images:
        raise InputError("data.images is not set (give --data or set it in the config)")
    if cfg.kind == "stack":
        return stack_items(cfg.images, cfg.labels)
    if cfg.kind == "folders":
        return folder_items(cfg.images, cfg.labels)
    if cfg.kind == "dsb":
        return dsb_items(cfg.images)
    if cfg.kind == "coco":  # images = the annotation JSON, labels = image folder (optional)
        return coco_items(cfg.images, cfg.labels)
    raise InputError(f"data.kind must be stack|folders|dsb|coco, got {cfg.kind!r}")


def split_items(items: list[Item], cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Train/validation split: explicit ``val_indices`` or a seeded random fraction."""
    n = len(items)
    if cfg.val_indices:
        val_idx = sorted({i % n for i in cfg.val_indices})
    else:
        n_val = max(1, round(n * cfg.val_fraction)) if n > 1 and cfg.val_fraction > 0 else 0
        val_idx = sorted(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    val_set = set(val_idx)
    train = [it for i, it in enumerate(items) if i not in val_set]
    if not train:
        raise InputError("no training images left after the validation split")
    return train, [items[i] for i in val_idx]


# ---- targets -----------------------------------------------------------------
def make_target(labels: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Integer labels -> training target: float {0,1} for binary, int64 classes for border3/contour3."""
    from . import targets

    if cfg.target == "membrane":  # ISBI: label 0 = membrane = the class we predict
        return (labels == 0).astype(np.float32)
    if cfg.target == "binary":
        return (labels != 0).astype(np.float32) if cfg.foreground == "nonzero" else (labels == 0).astype(np.float32)
    if cfg.target in ("border3", "contour3"):
        if cfg.border_fraction < 0:
            raise InputError(f"data.border_fraction must be >= 0, got {cfg.border_fraction}")
        contours = cfg.target == "contour3"  # border_target uses the fraction for contours only
        return targets.border_target(labels, contours=contours, border_fraction=cfg.border_fraction).astype(np.int64)
    raise InputError(f"data.target must be binary|membrane|border3|contour3, got {cfg.target!r}")


def instance_labels(labels: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Objects for the weight map: cells between membranes (ISBI) or the instance labels."""
    if cfg.target == "membrane":
        from skimage.measure import label

        return label(labels != 0, connectivity=1)
    return labels


def weight_map(labels: np.ndarray, cfg: DataConfig) -> np.ndarray:
    from .targets import unet_weight_map

    return unet_weight_map(instance_labels(labels, cfg), w0=cfg.w0, sigma=cfg.sigma).astype(np.float32)


# ---- patch dataset -------------------------------------------------------------
def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if not (ph or pw):
        return arr
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="symmetric")


def modality(image: np.ndarray) -> str:
    """Coarse imaging modality: 'colour' (H&E etc.), 'bright' (brightfield) or 'dark' (fluorescence)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] >= 3 and float(img[..., :3].std(axis=-1).mean()) > 2.0:
        return "colour"
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return "bright" if float(img.mean()) / scale > 0.4 else "dark"


def modality_weights(items: list[Item]) -> np.ndarray:
    """Sampling probabilities that give each modality equal total weight.

    DSB 2018 is ~85 % fluorescence; without balancing, the rare brightfield and
    H&E images are seen too seldom to be learned. Reads every image once.
    """
    kinds = [modality(item.load()[0]) for item in items]
    counts = {k: kinds.count(k) for k in set(kinds)}
    w = np.array([1.0 / counts[k] for k in kinds])
    return w / w.sum()


class PatchDataset(Dataset):
    """Random augmented patches: index i draws a patch from a random item.

    Item loads are cached per worker process (``cache=True``) because decoding a
    PNG costs more than the network on a small patch; turn it off for data sets
    larger than memory.
    """

    def __init__(
        self,
        items: list[Item],
        data: DataConfig,
        augment: AugmentConfig | None,
        in_channels: int,
        cache: bool = True,
    ) -> None:
        self.items, self.data, self.aug, self.in_channels, self.cache = items, data, augment, in_channels, cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.epoch_seed = 0
        self.p = modality_weights(items) if data.balance else None

    def __len__(self) -> int:
        return self.data.patches_per_epoch

    def _get(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        if idx in self._cache:
            return self._cache[idx]
        img, lab = self.items[idx].load()
        img = match_channels(normalize(img, self.data.normalize), self.in_channels, self.items[idx].name)
        if self.cache:
            self._cache[idx] = (img, lab)
        return img, lab

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.epoch_seed, i, torch.initial_seed() % 2**31])
        img, lab = self._get(int(rng.choice(len(self.items), p=self.p)))
        size = self.data.patch_size
        img, lab = _pad_to(img, size), _pad_to(lab, size)
        top = int(rng.integers(img.shape[0] - size + 1))
        left = int(rng.integers(img.shape[1] - size + 1))
        img = img[top : top + size, left : left + size]
        lab = lab[top : top + size, left : left + size]
        if self.aug is not None:
            from .transforms import augment

            img, lab = augment(img, lab, rng, self.aug)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)),
            "target": torch.from_numpy(make_target(lab, self.data)),
        }
        if self.data.weight_map:
            out["weight"] = torch.from_numpy(weight_map(lab, self.data))
        return out
