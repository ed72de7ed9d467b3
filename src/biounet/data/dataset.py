"""Training data: pair images with labels, normalize, sample augmented patches.

Normalisation lives in :mod:`biounet.normalize` (prediction uses the same
functions) and the training target comes from the run's task
(:mod:`biounet.tasks`). Sources are lists of :class:`Item` objects that know how to load one image and
its labels on demand, so DataLoader workers read lazily and data sets larger
than memory train. Three sources exist: TIFF stacks (ISBI 2012), image/mask
folders, and the Kaggle DSB 2018 layout (folder or zip).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DATA_KINDS, DataConfig, DataKind, RunConfig
from ..io import InputError, list_images, masks_by_image_stem, pick_channel, read_image, read_stack
from ..labels import check_labels
from ..normalize import network_input


# ---- items -------------------------------------------------------------------
def stack_channel(path: str, channel: int) -> np.ndarray:
    """``read_stack(path, channel)``, read once per file version rather than once per page.

    A channel of a multi-channel stack cannot be read one page at a time (the channel axis may lie
    between the pages), so each page's :meth:`Item.load` would otherwise decode the whole stack again.
    The key holds the file's size and modification time, so a file replaced on disk is read afresh.
    """
    try:
        st = Path(path).stat()
    except OSError:
        return read_stack(path, channel)  # raises the one-line error that names the file
    return _stack_channel(str(path), channel, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _stack_channel(path: str, channel: int, size: int, mtime_ns: int) -> np.ndarray:
    arr = read_stack(path, channel)
    arr.setflags(write=False)  # shared between pages: callers copy their page
    return arr


@dataclass(frozen=True)
class Item:
    """One training/validation image: a name and how to load it lazily."""

    name: str
    kind: DataKind  # the data.kind of its source, which says how to read it
    image: str
    labels: str = ""
    page: int = 0
    extra: object = None  # DsbItem / CocoItem for dsb and coco sources
    channel: int | None = None  # data.channel: read this channel of multi-channel images

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """-> raw image (H, W[, C]) and integer labels (H, W)."""
        if self.kind == "stack":
            import tifffile

            try:
                img = (tifffile.imread(self.image, key=self.page) if self.channel is None
                       else stack_channel(self.image, self.channel)[self.page].copy())
                lab = tifffile.imread(self.labels, key=self.page)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{self.image}: cannot read page {self.page} ({exc})") from None
        elif self.kind == "folders":  # an image file and its mask file
            img, lab = read_image(self.image, self.channel), read_image(self.labels)
        elif self.kind == "dsb":
            from .dsb import load_dsb_pair

            img, lab = load_dsb_pair(self.extra)
        elif self.kind == "coco":
            from .coco import coco_labels, load_coco_image

            img, lab = load_coco_image(self.extra), coco_labels(self.extra)
        else:
            raise ValueError(self.kind)
        if self.kind in ("dsb", "coco"):
            img = pick_channel(img, self.channel, self.name)
        lab = label_image(lab, str(self.labels or self.image))
        if img.shape[:2] != lab.shape[:2]:
            raise InputError(f"{self.labels or self.image}: mask size {lab.shape[:2]} != image size {img.shape[:2]}")
        return img, lab


def label_image(lab: np.ndarray, name: str) -> np.ndarray:
    """A label file's array as an (H, W) label image, or a one-line error naming the file.

    What files add to the label convention of :func:`biounet.labels.check_labels`
    (which then checks dtype and sign): a colour picture of labels (channels that
    differ; channel 0 alone would silently merge or drop objects) and fractional
    floats are refused; a gray image saved as RGB and whole-number floats pass.
    """
    lab = np.asarray(lab)
    if lab.ndim == 3:
        if any(not np.array_equal(lab[..., 0], lab[..., c]) for c in range(1, lab.shape[-1])):
            raise InputError(f"{name}: labels have {lab.shape[-1]} differing channels (a colour picture?); "
                             "expected one label value per pixel")
        lab = lab[..., 0]
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            raise InputError(f"{name}: labels are {lab.dtype} with fractional or non-finite values; "
                             "expected integer labels")
        lab = lab.astype(np.int64)
    try:
        return check_labels(lab, name)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def stack_items(images: str | Path, labels: str | Path, channel: int | None = None) -> list[Item]:
    """Pages of an image TIFF stack paired with the pages of a label stack."""
    img, lab = read_stack(images, channel), read_stack(labels)
    if img.shape[0] != lab.shape[0]:
        raise InputError(f"{labels}: {lab.shape[0]} label pages but {img.shape[0]} image pages in {images}")
    if img.shape[1:3] != lab.shape[1:3]:
        raise InputError(f"{labels}: label size {lab.shape[1:3]} != image size {img.shape[1:3]}")
    stem = Path(images).stem
    return [Item(f"{stem}[{i}]", "stack", str(images), str(labels), page=i, channel=channel)
            for i in range(img.shape[0])]


def folder_items(images: str | Path, masks: str | Path, missing: list[str] | None = None) -> list[Item]:
    """Images paired with the masks in another folder named after them: the same stem, or the stem plus
    a common mask suffix (``a.png`` with ``a.png``, ``a_mask.png``, ``a_labels.tif``, ...).

    An image without a mask is an error; given a ``missing`` list, its message goes there and the image
    is left out instead (``check-data`` lists every problem, not the first)."""
    imgs = list_images(images)
    by_stem = masks_by_image_stem(list_images(masks))
    items = []
    for p in imgs:
        if p.stem not in by_stem:
            msg = f"{p}: no mask named {p.stem}.* (or {p.stem}_mask.*, {p.stem}_labels.*, ...) in {masks}"
            if missing is None:
                raise InputError(msg)
            missing.append(msg)
            continue
        items.append(Item(p.stem, "folders", str(p), str(by_stem[p.stem])))
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


MASK_FOLDERS = ("masks", "labels", "mask", "label", "gt")


def image_mask_folders(root: str | Path) -> tuple[Path, Path] | None:
    """``root/images`` and ``root/masks`` (or ``labels``, ``mask``, ``label``, ``gt``), or None.

    Most datasets ship as one folder holding these two, so a user may name that folder alone.
    """
    root = Path(root)
    if not (root / "images").is_dir():
        return None
    masks = next((root / m for m in MASK_FOLDERS if (root / m).is_dir()), None)
    return None if masks is None else (root / "images", masks)


def guess_kind(images: str | Path, labels: str | Path | None = None) -> str | None:
    """The ``data.kind`` a user means by ``--data`` (and ``--labels``), or None when it is not clear.

    A zip or a folder of ``<id>/images`` + ``<id>/masks`` is DSB; two folders, or one holding
    ``images/`` and ``masks/``, are image/mask folders; a ``.json`` is COCO; two TIFF files are stacks.
    """
    images = Path(images)
    if images.suffix.lower() == ".zip" or (images.is_dir() and any(images.glob("*/masks"))):
        return "dsb"
    if images.suffix.lower() == ".json":
        return "coco"
    if images.is_dir() and labels is not None and Path(labels).is_dir():
        return "folders"
    if images.is_dir() and labels is None and image_mask_folders(images) is not None:
        return "folders"
    if images.suffix.lower() in (".tif", ".tiff") and labels is not None:
        return "stack"
    return None


def items_from_config(cfg: DataConfig, missing: list[str] | None = None) -> list[Item]:
    """The image/label pairs of ``cfg``; ``missing`` collects images without a mask (see :func:`folder_items`)."""
    if not cfg.images:
        raise InputError("data.images is not set (give --data or set it in the config)")
    channel = cfg.channel if cfg.channel >= 0 else None
    if cfg.kind in ("stack", "folders"):
        pair = (cfg.images, cfg.labels) if cfg.labels else image_mask_folders(cfg.images)
        # a folder without masks, whether taken for image folders or (a stack is one file) for a stack
        if pair is None and (cfg.kind == "folders" or Path(cfg.images).is_dir()):
            raise InputError(f"{cfg.images}: a folder of images needs --labels (data.labels), a folder of masks "
                             "named after them (or holds images/ and masks/; or give a DSB folder: "
                             "<id>/images/<id>.png with <id>/masks/*.png)")
        if cfg.kind == "stack":
            return stack_items(cfg.images, cfg.labels, channel)
        items = folder_items(*pair, missing=missing)
    elif cfg.kind == "dsb":
        items = dsb_items(cfg.images)
    elif cfg.kind == "coco":  # images = the annotation JSON, labels = image folder (optional)
        items = coco_items(cfg.images, cfg.labels)
    else:
        raise InputError(f"data.kind must be {'|'.join(DATA_KINDS)}, got {cfg.kind!r}")
    return items if channel is None else [dataclasses.replace(it, channel=channel) for it in items]


def split_items(items: list[Item], cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Train/validation split: explicit ``val_indices``, fold ``fold`` of ``folds`` seeded folds, or a
    seeded random fraction. Folds are consecutive runs of the fraction's permutation, so fold 0 of
    ``1 / val_fraction`` folds is the fraction's validation set whenever both round to the same size."""
    n = len(items)
    perm = np.random.default_rng(seed).permutation(n)  # one draw for both the folds and the fraction
    if cfg.val_indices:
        val_idx = sorted({i % n for i in cfg.val_indices})
    elif cfg.folds:
        if n < cfg.folds:
            raise InputError(f"data.folds = {cfg.folds} needs at least {cfg.folds} images, found {n}")
        val_idx = sorted(np.array_split(perm, cfg.folds)[cfg.fold].tolist())
    else:
        n_val = max(1, round(n * cfg.val_fraction)) if n > 1 and cfg.val_fraction > 0 else 0
        val_idx = sorted(perm[:n_val].tolist())
    val_set = set(val_idx)
    train = [it for i, it in enumerate(items) if i not in val_set]
    if not train:
        raise InputError("no training images left after the validation split")
    return train, [items[i] for i in val_idx]


def split_holdout(items: list[Item], cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Set aside ``holdout_fraction`` of the items before the validation split.

    The draw is the one :func:`split_items` makes for a validation fraction of the
    same size and seed, so ``holdout_fraction`` = an older run's ``val_fraction``
    holds out exactly that run's validation images: a new model can then be
    scored, free of selection, on images the old one was tuned on.
    """
    if cfg.holdout_fraction <= 0:
        return list(items), []
    rest, held = split_items(items, DataConfig(val_fraction=cfg.holdout_fraction), seed)
    if len(rest) < 2:
        raise InputError(f"data.holdout_fraction = {cfg.holdout_fraction} leaves {len(rest)} image(s) to train "
                         "and validate on")
    return rest, held


def read_groups(path: str | Path) -> dict[str, str]:
    """Image name -> group (experiment) from a CSV with columns ``image`` and ``group``."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the groups file ({exc.strerror or exc})") from None
    if not rows or not {"image", "group"} <= set(rows[0]):
        raise InputError(f"{path}: a groups file needs the columns image and group")
    return {r["image"]: r["group"] for r in rows}


def drop_groups(items: list[Item], groups_csv: str | Path, exclude: tuple[str, ...]) -> list[Item]:
    """``items`` less those whose group (per ``groups_csv``) is in ``exclude``; every name must be a group."""
    groups = read_groups(groups_csv)
    unknown = sorted(set(exclude) - set(groups.values()))
    if unknown:
        raise InputError(f"{groups_csv}: no group named {unknown[0]!r} (groups: {', '.join(sorted(set(groups.values())))})")
    return [it for it in items if groups.get(it.name) not in exclude]


def items_named(items: list[Item], names: list[str]) -> list[Item]:
    """The items called ``names``, in that order (a finished run's recorded validation images)."""
    by_name = {it.name: it for it in items}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{len(missing)} validation image(s) not in this data set, e.g. {missing[0]!r}")
    return [by_name[n] for n in names]


def split_run(cfg: RunConfig) -> tuple[list[Item], list[Item], list[Item]]:
    """(training, validation, held-out) items of a run: seeded by ``data.split_seed`` (default
    ``train.seed``), so reproducible."""
    seed = cfg.data.split_seed if cfg.data.split_seed >= 0 else cfg.train.seed
    rest, holdout_items = split_holdout(items_from_config(cfg.data), cfg.data, seed)
    if cfg.data.exclude_groups:  # after the held-out draw, so it is the same images less the left-out groups
        rest, holdout_items = (drop_groups(p, cfg.data.groups, cfg.data.exclude_groups) for p in (rest, holdout_items))
    # a different draw for validation when a holdout was taken (the holdout used the plain seed's draw)
    train_items, val_items = split_items(rest, cfg.data, seed + (1 if holdout_items else 0))
    parts = (train_items, val_items, holdout_items)
    if cfg.data.modalities:  # after the split, so each part is the unfiltered run's, less other modalities
        parts = tuple(keep_modalities(p, cfg.data.modalities) for p in parts)
        if not parts[0]:
            raise InputError(f"{cfg.data.images}: no training image of modality {', '.join(cfg.data.modalities)}")
    return parts


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


def item_modalities(items: list[Item]) -> list[str]:
    """:func:`modality` of each item's image; reads every item once."""
    return [modality(item.load()[0]) for item in items]


def keep_modalities(items: list[Item], modalities: tuple[str, ...]) -> list[Item]:
    """The items whose image is of one of ``modalities``."""
    return [item for item, kind in zip(items, item_modalities(items)) if kind in modalities]


def modality_weights(items: list[Item], power: float = 1.0) -> np.ndarray:
    """Sampling probabilities: each image weighs 1 / (images of its modality) ** ``power``.

    DSB 2018 is ~85 % fluorescence; without balancing, the rare brightfield and
    H&E images are seen too seldom to be learned. ``power`` 1 gives each modality
    equal total weight, 0 leaves the data as found, between is a compromise that
    still shows the common modality most. Reads every image once.
    """
    kinds = item_modalities(items)
    counts = {k: kinds.count(k) for k in set(kinds)}
    w = np.array([counts[k] ** -power for k in kinds])
    return w / w.sum()


class TargetMaker(Protocol):
    """What patches need of a task (:class:`biounet.tasks.Task` is one): its config and label conversions."""

    cfg: RunConfig

    def target(self, labels: np.ndarray) -> np.ndarray: ...

    def weight_objects(self, labels: np.ndarray) -> np.ndarray: ...


class PatchDataset(Dataset):
    """Random augmented patches: index i draws a patch from a random item.

    Images are normalized by :func:`biounet.normalize.network_input`, exactly
    as prediction does, and targets come from the run's task
    (:class:`biounet.tasks.Task`, which also carries the run's config). Item loads are
    cached per worker process (``cache=True``) because decoding a PNG costs
    more than the network on a small patch; turn it off for data sets larger
    than memory.
    """

    def __init__(self, items: list[Item], task: TargetMaker, augment: bool = True, cache: bool = True) -> None:
        self.items, self.task, self.augment, self.cache = items, task, augment, cache
        self.cfg = task.cfg
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self.epoch_seed = 0
        self.p = modality_weights(items, self.cfg.data.balance_power) if self.cfg.data.balance else None

    def __len__(self) -> int:
        return self.cfg.data.patches_per_epoch

    def load(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``idx`` as (network input (H, W, C) float32, raw labels (H, W))."""
        return self._load(idx)[:2]

    def _load(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`load` plus the raw image when patches of it get stain jitter (stained tissue), else None."""
        if idx in self._cache:
            return self._cache[idx]
        raw, lab = self.items[idx].load()
        img = network_input(raw, self.cfg.data.normalize, self.cfg.model.in_channels, self.items[idx].name)
        stained = self.augment and self.cfg.augment.stain > 0 and modality(raw) == "colour"
        entry = (img, lab, raw if stained else None)
        if self.cache:
            self._cache[idx] = entry
        return entry

    def draw(self, i: int) -> tuple[np.random.Generator, int, int, int]:
        """Patch ``i`` of this epoch: (its generator, item index, top, left in the padded image)."""
        return self._draw(i)[:4]

    def _draw(self, i: int) -> tuple:
        """:meth:`draw` plus the item's (image, labels), loaded once per patch even without the cache;
        with ``augment.stain`` a stained image comes restained (drawn from the patch's generator first)."""
        rng = np.random.default_rng([self.epoch_seed, i, torch.initial_seed() % 2**31])
        idx = int(rng.choice(len(self.items), p=self.p))
        img, lab, raw = self._load(idx)
        if raw is not None:  # stain jitter: a restained slide, normalised as a whole as prediction would
            from .transforms import random_stain

            restained = random_stain(raw, rng, self.cfg.augment.stain)
            img = network_input(restained, self.cfg.data.normalize, self.cfg.model.in_channels, self.items[idx].name)
        size = self.cfg.data.patch_size
        top = int(rng.integers(max(lab.shape[0], size) - size + 1))
        left = int(rng.integers(max(lab.shape[1], size) - size + 1))
        return rng, idx, top, left, img, lab

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng, _, top, left, img, lab = self._draw(i)
        size = self.cfg.data.patch_size
        img, lab = _pad_to(img, size), _pad_to(lab, size)
        aug = self.cfg.augment
        from .transforms import augment, context_margin, crop_mirrored

        # augment.context: warp the patch out of a larger crop (margin m), so no mirror fills its corners
        m = context_margin(size, aug) if self.augment and aug.context else 0
        img = crop_mirrored(img, top - m, left - m, size + 2 * m, size + 2 * m)
        lab = crop_mirrored(lab, top - m, left - m, size + 2 * m, size + 2 * m)
        if self.augment:
            img, lab = augment(img, lab, rng, aug, out_shape=(size, size) if m else None)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)),
            "target": torch.from_numpy(self.task.target(lab)),
        }
        if self.cfg.data.weight_map:
            from .targets import unet_weight_map

            d = self.cfg.data
            touch = d.weight_kind == "touch"
            weights = unet_weight_map(self.task.weight_objects(lab), w0=d.w0, sigma=d.sigma,
                                      class_weights=(1.0, 1.0) if touch else None,
                                      touching="all" if touch else "background")
            out["weight"] = torch.from_numpy(weights.astype(np.float32))
        return out
