"""Kaggle Data Science Bowl 2018 nuclei: read the layout from a folder or a zip; write submissions.

The layout is ``<stage>/<ImageId>/images/<ImageId>.png`` (RGBA) plus, for
training data, ``<stage>/<ImageId>/masks/<MaskId>.png``: one binary PNG per
nucleus. Folders without ``masks/`` (the stage 1 and 2 test sets) are
prediction inputs.

A zip is read in place, never extracted, so the 24,000 PNGs of stage 1 need
no second copy on disk that can go stale. :class:`DsbItem` holds
only paths and member names, so it pickles cheaply into DataLoader workers;
each process opens its own handle to the archive on first use
(:func:`_open_zip`), because a ``ZipFile`` shared across a fork shares one file
offset and corrupts reads.
"""
from __future__ import annotations

import csv
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from biounet.io import IMAGE_SUFFIXES, InputError, atomic_path, read_image, read_image_bytes
from biounet.labels import labels_to_rles, parse_rle

log = logging.getLogger(__name__)

__all__ = [
    "DsbItem",
    "list_dsb_items",
    "load_dsb_image",
    "load_dsb_labels",
    "load_dsb_pair",
    "write_submission",
    "read_submission",
]


@dataclass(frozen=True)
class DsbItem:
    """One DSB image and its per-nucleus masks.

    ``source`` is the stage folder or the ``.zip``; ``image`` and ``masks`` are
    relative to the stage folder (folder source) or zip member names (zip
    source), always with ``/`` separators. ``masks`` is sorted by name, which
    fixes the label numbering of :func:`load_dsb_labels`. ``has_masks`` is
    False for prediction inputs (no ``masks/`` folder); an empty ``masks/``
    folder counts as annotated with no nuclei.
    """

    image_id: str
    source: Path
    image: str
    masks: tuple[str, ...]
    has_masks: bool

    @property
    def is_zip(self) -> bool:
        # A stage folder is a directory; anything else list_dsb_items accepted is an archive.
        return self.source.is_file()

    def describe(self, member: str) -> str:
        """How error messages name ``member``: the file, or ``archive.zip::member``."""
        if self.is_zip:
            return f"{self.source}::{member}"
        return str(self.source / member)


def list_dsb_items(root: str | Path) -> list[DsbItem]:
    """All DSB items under ``root``, sorted by image id.

    ``root`` is a stage folder (holding ``<ImageId>/images/``), a folder
    holding exactly one stage folder, or a ``.zip`` whose members sit under any
    one prefix (``stage1_train/<ImageId>/images/<ImageId>.png``). Finding no
    items, or several stage folders to choose between, is an :class:`InputError`.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_dir():
        return _list_folder(root)
    if root.suffix.lower() == ".zip" or zipfile.is_zipfile(root):
        return _list_zip(root)
    raise InputError(f"{root}: expected a DSB folder or a .zip")


def load_dsb_image(item: DsbItem) -> np.ndarray:
    """The image as (H, W, 3) uint8.

    Always three channels, so one model serves the gray and the colour
    (histology) images of the set: alpha is dropped, gray is replicated.
    16-bit images are rescaled to 8 bits.
    """
    arr = _read(item, item.image)
    name = item.describe(item.image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{name}: unsupported pixel type {arr.dtype} (expected 8 or 16-bit)")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"{name}: unsupported image shape {arr.shape}")
    return np.ascontiguousarray(arr)


OVERLAP_TOLERANCE_PX = 5  # overlapping pixels per image accepted by check-data ...
OVERLAP_TOLERANCE = 0.005  # ... or this share of the image's nucleus pixels, whichever is larger


def load_dsb_labels(item: DsbItem, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Instance labels (H, W) int32: mask ``i`` of ``item.masks`` becomes label ``i + 1``.

    Label numbers follow the sorted mask names so a label can be traced back
    to its file; an empty mask therefore leaves a gap in the numbering. Where
    masks overlap the later mask wins and a warning is logged (the official
    DSB masks do not overlap, so overlap signals a data problem). ``shape`` is
    the image's (H, W); when omitted the image is decoded to learn it. A mask
    of another size is an :class:`InputError` naming the mask.
    """
    if not item.has_masks:
        raise InputError(f"{item.describe(item.image)}: image {item.image_id} has no masks/ folder (a prediction input)")
    if shape is None:
        shape = _read(item, item.image).shape[:2]
    labels = np.zeros(shape, dtype=np.int32)
    overlap = 0
    for i, member in enumerate(item.masks):
        mask = _read(item, member)
        if mask.ndim == 3:
            mask = mask.any(axis=-1)
        if mask.shape != tuple(shape):
            raise InputError(
                f"{item.describe(member)}: mask is {mask.shape[0]}x{mask.shape[1]}, image is {shape[0]}x{shape[1]}"
            )
        values = np.unique(mask)
        if len(values) > 2:  # JPEG-damaged or anti-aliased: where the nucleus ends is a guess
            raise InputError(f"{item.describe(member)}: mask has {len(values)} distinct values (expected 0 and one "
                             "foreground value)")
        fg = mask > 0
        if not fg.any():  # an empty nucleus mask is a data error; check-data fails on it, training warns
            log.warning("%s: mask is empty (no nucleus pixel)", item.describe(member), extra={"data_error": True})
        overlap += int(np.count_nonzero(labels[fg]))
        labels[fg] = i + 1
    if overlap:
        # a few seam pixels occur in the official masks (a warning); more means masks that were not meant to
        # be instances (check-data fails on them, training warns)
        serious = overlap > max(OVERLAP_TOLERANCE_PX, OVERLAP_TOLERANCE * np.count_nonzero(labels))
        log.warning("%s: %d pixels lie in more than one mask; the later mask (by name) wins", item.image_id, overlap,
                    extra={"data_error": serious})
    return labels


def load_dsb_pair(item: DsbItem) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, labels (H, W) int32), decoding the image once."""
    image = load_dsb_image(item)
    return image, load_dsb_labels(item, shape=image.shape[:2])


# --- folders -----------------------------------------------------------------


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _is_item_dir(p: Path) -> bool:
    return p.is_dir() and (p / "images").is_dir()


def _list_folder(root: Path) -> list[DsbItem]:
    stage = root
    if not any(_is_item_dir(p) for p in root.iterdir()):
        stages = sorted(p for p in root.iterdir() if p.is_dir() and any(_is_item_dir(q) for q in p.iterdir()))
        if len(stages) > 1:
            names = ", ".join(p.name for p in stages)
            raise InputError(f"{root}: holds several DSB stage folders ({names}); pass one of them")
        if not stages:
            raise InputError(f"{root}: no DSB items found (expected <ImageId>/images/<ImageId>.png)")
        stage = stages[0]
    items = []
    for d in sorted(p for p in stage.iterdir() if _is_item_dir(p)):
        images = sorted(p.name for p in (d / "images").iterdir() if _is_image_file(p))
        image = _pick_image(d.name, images, str(d / "images"))
        masks_dir = d / "masks"
        masks = sorted(p.name for p in masks_dir.iterdir() if _is_image_file(p)) if masks_dir.is_dir() else []
        items.append(
            DsbItem(
                image_id=d.name,
                source=stage,
                image=f"{d.name}/images/{image}",
                masks=tuple(f"{d.name}/masks/{m}" for m in masks),
                has_masks=masks_dir.is_dir(),
            )
        )
    return items


def _pick_image(image_id: str, names: list[str], where: str) -> str:
    """``<ImageId>.png`` if present, else the only image in ``images/``."""
    preferred = [n for n in names if PurePosixPath(n).stem == image_id]
    if len(preferred) == 1:
        return preferred[0]
    if len(names) == 1:
        return names[0]
    if not names:
        raise InputError(f"{where}: no image found")
    raise InputError(f"{where}: {len(names)} images and none named {image_id}.png; expected one")


# --- zips --------------------------------------------------------------------


def _check_member_name(zip_path: Path, name: str) -> None:
    """Reject absolute and ``..`` entries (zip slip).

    We never extract, but a member name flows into error messages, caches and
    possibly a later extraction by someone else; refusing the archive is the
    safe reading.
    """
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise InputError(f"{zip_path}: unsafe zip entry {name!r} (absolute path or '..' component)")


def _list_zip(zip_path: Path) -> list[DsbItem]:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{zip_path}: cannot open zip ({type(exc).__name__}: {exc})") from None
    # (prefix, image_id) -> {"images": [...], "masks": [...]}; "masks" present if any masks/ entry.
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    seen: set[str] = set()
    for name in names:
        _check_member_name(zip_path, name)
        if name in seen:
            # ZipFile.read returns the last copy, other tools the first: ambiguous.
            raise InputError(f"{zip_path}: duplicate zip entry {name!r}")
        seen.add(name)
        parts = name.split("/")
        if any(p == "__MACOSX" or p.startswith("._") for p in parts):
            continue  # macOS resource forks, not images
        # Directory entries end in "/" and give an empty last part.
        if len(parts) < 3 or parts[-2] not in ("images", "masks"):
            continue
        kind, image_id, prefix = parts[-2], parts[-3], "/".join(parts[:-3])
        if not image_id:
            continue
        entry = found.setdefault((prefix, image_id), {})
        files = entry.setdefault(kind, [])
        fname = parts[-1]
        if fname and not fname.startswith(".") and PurePosixPath(fname).suffix.lower() in IMAGE_SUFFIXES:
            files.append(fname)
    found = {k: v for k, v in found.items() if "images" in v}
    if not found:
        raise InputError(f"{zip_path}: no DSB items found (expected <stage>/<ImageId>/images/<ImageId>.png)")
    prefixes = sorted({prefix for prefix, _ in found})
    if len(prefixes) > 1:
        shown = ", ".join(p or "(top level)" for p in prefixes)
        raise InputError(f"{zip_path}: holds several DSB stage folders ({shown}); use a zip with one")
    items = []
    for (prefix, image_id), entry in sorted(found.items()):
        base = f"{prefix}/{image_id}" if prefix else image_id
        image = _pick_image(image_id, sorted(entry["images"]), f"{zip_path}::{base}/images/")
        items.append(
            DsbItem(
                image_id=image_id,
                source=zip_path,
                image=f"{base}/images/{image}",
                masks=tuple(f"{base}/masks/{m}" for m in sorted(entry.get("masks", []))),
                has_masks="masks" in entry,
            )
        )
    return items


# One handle per (archive, process): a forked DataLoader worker sees a new pid
# and opens its own handle instead of sharing the parent's file offset.
_ZIP_CACHE: dict[tuple[str, int], zipfile.ZipFile] = {}


def _open_zip(path: Path) -> zipfile.ZipFile:
    key = (str(path.resolve()), os.getpid())
    zf = _ZIP_CACHE.get(key)
    if zf is None:
        # Handles inherited from a parent process are dropped, not closed:
        # closing would only close this process's copy, but dropping is enough.
        for stale in [k for k in _ZIP_CACHE if k[1] != key[1]]:
            del _ZIP_CACHE[stale]
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path}: cannot open zip ({type(exc).__name__}: {exc})") from None
        _ZIP_CACHE[key] = zf
    return zf


def _close_zips() -> None:
    """Close this process's cached archive handles (tests, or before replacing a zip)."""
    pid = os.getpid()
    for key in [k for k in _ZIP_CACHE if k[1] == pid]:
        _ZIP_CACHE.pop(key).close()


MAX_ZIP_MEMBER = 256 * 2**20  # bytes; a DSB PNG is under 1 MB, so a larger entry is a zip bomb or not DSB


def _read(item: DsbItem, member: str) -> np.ndarray:
    if not item.is_zip:
        return read_image(item.source / member)
    name = item.describe(member)
    try:
        zf = _open_zip(item.source)
        size = zf.getinfo(member).file_size  # zipfile never inflates past the declared size
        if size > MAX_ZIP_MEMBER:
            raise InputError(f"{name}: entry declares {size / 2**20:.0f} MiB uncompressed "
                             f"(limit {MAX_ZIP_MEMBER / 2**20:.0f} MiB); refusing a possible zip bomb")
        data = zf.read(member)
    except KeyError:
        raise InputError(f"{name}: no such zip member") from None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise InputError(f"{name}: cannot read zip member ({type(exc).__name__}: {exc})") from None
    return read_image_bytes(data, name)


# ---- Kaggle submissions -------------------------------------------------------------
SUBMISSION_HEADER = ("ImageId", "EncodedPixels")


def write_submission(path: str | Path, rows: Iterable[tuple[str, np.ndarray]]) -> Path:
    """Write ``ImageId,EncodedPixels`` rows for (image id, (H, W) labels) pairs, atomically.

    Each object is one row; an image without objects is one row with empty
    ``EncodedPixels``. A repeated image id is a ``ValueError`` (Kaggle rejects
    it) and leaves no file behind.
    """
    path = Path(path)
    seen: set[str] = set()
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(SUBMISSION_HEADER)
            for image_id, labels in rows:
                image_id = str(image_id)
                if image_id in seen:
                    raise ValueError(f"{path}: image id {image_id!r} given twice")
                seen.add(image_id)
                rles = labels_to_rles(labels)
                for rle in rles or [""]:
                    writer.writerow((image_id, rle))
    return path


def read_submission(path: str | Path) -> dict[str, list[str]]:
    """Read a submission CSV as {image id: [RLE per object]}, in file order.

    An image listed only with empty ``EncodedPixels`` maps to ``[]``. Malformed
    rows or RLE strings raise :class:`InputError` naming the file and line;
    runs are not checked against an image size, which the CSV does not carry.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out: dict[str, list[str]] = {}
    try:
        # utf-8-sig: spreadsheet tools often prepend a BOM to the header.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != SUBMISSION_HEADER:
                raise InputError(f"{path}: header is {header}, expected {','.join(SUBMISSION_HEADER)}")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != 2:
                    raise InputError(f"{path}:{line}: expected 2 fields, got {len(row)}")
                image_id, rle = row[0], row[1].strip()
                if not image_id:
                    raise InputError(f"{path}:{line}: empty ImageId")
                rles = out.setdefault(image_id, [])
                if rle:
                    try:
                        parse_rle(rle)
                    except ValueError as exc:
                        raise InputError(f"{path}:{line}: {exc}") from None
                    rles.append(rle)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read submission ({type(exc).__name__}: {exc})") from None
    return out
