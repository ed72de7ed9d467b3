"""Big images where they live: the file side of predicting OME-Zarr, tiled TIFF and vendor inputs and of
writing OME-Zarr outputs (:func:`biounet.predict.predict_file` calls these), and per-object measurements
of label images too large for memory (:func:`measure_blockwise`).

Readers are in :mod:`biounet.formats`, the OME-Zarr writer in :mod:`biounet.ngff`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .formats import PlanePick, Source, input_stem, is_zarr, ome_attrs
from .io import InputError, check_writable
from .ngff import ZarrOutput, label_name

OUT_FORMATS = ("tif", "ome-zarr")


def check_out_format(out_format: str, out: Path) -> str:
    """``--out-format``'s value (``tif`` or ``ome-zarr``); an ``--out`` ending in ``.zarr`` means ``ome-zarr``."""
    fmt = (out_format or "tif").lower().replace("_", "-")
    fmt = {"tiff": "tif", "zarr": "ome-zarr", "omezarr": "ome-zarr"}.get(fmt, fmt)
    if fmt not in OUT_FORMATS:
        raise InputError(f"--out-format must be tif or ome-zarr, got {out_format!r}")
    if Path(out).suffix.lower() == ".zarr":
        return "ome-zarr"
    return fmt


def side_folder(out: Path) -> Path:
    """Where tables, outlines and overlays go: ``out``, or the folder holding an ``--out x.ome.zarr`` store."""
    out = Path(out)
    return out.parent if out.suffix.lower() == ".zarr" else out


def zarr_target(path: Path, out: Path, model: str, probabilities: bool, pick: PlanePick | None = None) -> Path:
    """The store or labels group ``--out-format ome-zarr`` writes for input ``path`` (see :class:`ZarrOutput`).

    Labels and masks of an OME-Zarr input go into its image group as ``labels/<model>``; probabilities
    and other inputs get ``<out>/<stem>.ome.zarr``; an ``--out`` ending in ``.zarr`` is the store itself.
    """
    out = Path(out)
    if out.suffix.lower() == ".zarr":
        return out
    if not probabilities and is_zarr(path):
        from .formats import _image_group

        return _image_group(Path(path), pick or PlanePick())[1] / "labels" / label_name(model)
    return out / f"{input_stem(path)}.ome.zarr"


def zarr_output(seg: Any, path: Path, out: Path, probabilities: bool, kind: str,
                source: Source | None = None) -> ZarrOutput:
    """The :class:`ZarrOutput` for one input (the labels group of ``source``'s image, or a new store)."""
    out = Path(out)
    image = source.ngff if source is not None and not probabilities and out.suffix.lower() != ".zarr" else None
    dest = out if out.suffix.lower() == ".zarr" else out / f"{input_stem(path)}.ome.zarr"
    return ZarrOutput(dest, kind, image=image, name=label_name(seg.name), model=seg.name)


def write_zarr(out: ZarrOutput, result: np.ndarray, probabilities: bool, pages: int = 1) -> Path:
    """Write an in-memory result (an image's, or the ``pages`` of a stack's) as OME-Zarr; returns where it went.

    Pages of a stack become z; probabilities keep their classes as c (``(N, K, H, W)`` -> ``czyx``).
    """
    with out:
        if out.image is not None:
            out.write(result)
        else:
            if probabilities and result.ndim == 4:
                result, axes = np.moveaxis(result, 0, 1), "czyx"
            elif result.ndim == 3:
                axes = "zyx" if pages > 1 else "cyx"
            else:
                axes = "yx"
            arr = out.create(result.shape, result.dtype, axes)
            arr[...] = result
        return out.commit()


def check_zarr_outputs(files: Sequence[Path], out: Path, model: str, probabilities: bool = False,
                       pick: PlanePick | None = None, overwrite: bool = False, skip_existing: bool = False) -> list[Path]:
    """:func:`biounet.predict.check_outputs` for ``--out-format ome-zarr``: the inputs to predict, after checking
    that their stores or labels groups can be written; one-line errors otherwise, before any model runs."""
    out = Path(out)
    if out.suffix.lower() == ".zarr" and len(files) > 1:
        raise InputError(f"{out}: one store for {len(files)} inputs; give a folder as --out with --out-format ome-zarr")
    side = side_folder(out)
    check_writable(side, folder=True)
    try:
        side.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{side}: cannot create the output folder ({exc.strerror})") from None
    seen: dict[Path, Path] = {}
    inputs = {Path(f).resolve() for f in files}
    for f in files:
        dest = zarr_target(f, out, model, probabilities, pick)
        if dest in seen:
            raise InputError(f"{f}: would write {dest} like {seen[dest]}; predict them into separate --out folders")
        if dest.resolve() in inputs:
            raise InputError(f"{f}: the output would replace this input image; choose another --out")
        check_writable(dest, folder=True)  # the store's folder, or the image group its labels go into
        seen[dest] = f
    existing = {f: d for d, f in seen.items() if d.exists()}
    if existing and skip_existing:
        return [f for f in files if f not in existing]
    if existing and not overwrite:
        raise InputError(f"{next(iter(existing.values()))}: exists ({len(existing)} output(s) in all); use --overwrite "
                         "to replace or --skip-existing to resume")
    return list(files)


def count_objects(path: str | Path, block: int = 2048) -> int | None:
    """Objects in a label image biounet wrote as OME-Zarr (a store or a ``labels/<name>`` group), counted
    block by block; None for masks, probabilities and anything else."""
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
        if (attrs.get("biounet") or {}).get("kind") != "labels":
            return None
        arr = group[ome_attrs(attrs)["multiscales"][0]["datasets"][0]["path"]]
    except Exception:  # noqa: BLE001 - not one of ours: no count
        return None
    ids: set[int] = set()
    for lead in np.ndindex(*arr.shape[:-2]):
        for y in range(0, arr.shape[-2], block):
            for x in range(0, arr.shape[-1], block):
                ids.update(np.unique(arr[(*lead, slice(y, y + block), slice(x, x + block))]).tolist())
    return len(ids - {0})


# ---- per-object measurements, block by block ------------------------------------------------------------
def _boxes(labels: Any, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounding boxes (y0, y1, x0, x1; ends exclusive) of every label, indexed by label, one block read at a time."""
    h, w = labels.shape
    y0 = np.zeros(0, np.int64)
    y1, x0, x1 = y0.copy(), y0.copy(), y0.copy()
    for by in range(0, h, block):
        for bx in range(0, w, block):
            tile = np.asarray(labels[by: by + block, bx: bx + block])
            flat = tile.ravel()
            nz = np.flatnonzero(flat)
            if not len(nz):
                continue
            ids = flat[nz].astype(np.int64)
            top = int(ids.max()) + 1
            if top > len(y0):
                grow = top - len(y0)
                y0 = np.concatenate([y0, np.full(grow, np.iinfo(np.int64).max)])
                x0 = np.concatenate([x0, np.full(grow, np.iinfo(np.int64).max)])
                y1 = np.concatenate([y1, np.zeros(grow, np.int64)])
                x1 = np.concatenate([x1, np.zeros(grow, np.int64)])
            rows, cols = nz // tile.shape[1] + by, nz % tile.shape[1] + bx
            np.minimum.at(y0, ids, rows)
            np.maximum.at(y1, ids, rows + 1)
            np.minimum.at(x0, ids, cols)
            np.maximum.at(x1, ids, cols + 1)
    return y0, y1, x0, x1


def measure_blockwise(labels: Any, image: Any = None, pixel_size: float | None = None,
                      block: int = 2048) -> dict[str, np.ndarray]:
    """:func:`biounet.measure.object_table` of a label image too large for memory (zarr, memmap), block by block.

    A first pass finds every object's bounding box; then each block's objects (those whose box starts in
    it) are measured by scikit-image's ``regionprops_table`` on the window that holds their boxes, with
    the raw ``image`` under it. Memory is a block plus the objects that start in it; the table equals
    the whole-image one (positions up to float rounding).
    """
    from skimage.measure import regionprops_table

    from .measure import INTENSITY, SHAPE, _same_channels

    h, w = labels.shape[-2:]
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    gray = False
    if image is not None:
        if tuple(image.shape[:2]) != (h, w):
            raise ValueError(f"image size {tuple(image.shape[:2])} != label size {(h, w)}")
        gray = image.ndim == 3 and _same_channels(image)
    props = ["label", "centroid", *[k for k in SHAPE if k not in ("label", "centroid-0", "centroid-1")]]
    if image is not None:
        props += list(INTENSITY)
    y0, y1, x0, x1 = _boxes(labels, block)
    present = np.flatnonzero(y1 > 0)
    parts: list[dict[str, np.ndarray]] = []
    for by in range(0, h, block):
        for bx in range(0, w, block):
            ids = present[(y0[present] >= by) & (y0[present] < by + block) & (x0[present] >= bx) & (x0[present] < bx + block)]
            if not len(ids):
                continue
            wy0, wy1 = int(y0[ids].min()), int(y1[ids].max())
            wx0, wx1 = int(x0[ids].min()), int(x1[ids].max())
            lab = np.asarray(labels[wy0:wy1, wx0:wx1]).astype(np.int32, copy=False)
            lab = np.where(np.isin(lab, ids), lab, 0).astype(np.int32, copy=False)
            inten = None
            if image is not None:
                inten = np.asarray(image[wy0:wy1, wx0:wx1])
                if gray:
                    inten = inten[..., 0]
            raw = regionprops_table(lab, intensity_image=inten, properties=props)
            raw["centroid-0"] = raw["centroid-0"] + wy0
            raw["centroid-1"] = raw["centroid-1"] + wx0
            parts.append(raw)
    keys = ["label", "centroid-0", "centroid-1", *[p for p in props if p not in ("label", "centroid")]]
    if parts:
        keys = list(parts[0])
        raw = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        order = np.argsort(raw["label"], kind="stable")
        raw = {k: v[order] for k, v in raw.items()}
    else:  # no object: the empty table of the whole-image measurement
        from .measure import object_table

        return object_table(np.zeros((1, 1), np.int32), None if image is None else np.zeros((1, 1) + tuple(image.shape[2:]),
                                                                                          image.dtype), pixel_size)
    table = {SHAPE[k]: v for k, v in raw.items() if k in SHAPE}
    lab_ids = table["label"].astype(np.int64)
    table["touches_border"] = ((y0[lab_ids] == 0) | (x0[lab_ids] == 0) | (y1[lab_ids] == h)
                               | (x1[lab_ids] == w)).astype(np.int64)
    from .measure import finish_table

    return finish_table(table, raw, pixel_size)
