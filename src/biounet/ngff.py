"""Results written as OME-Zarr (NGFF), block by block, where big images live.

A :class:`ZarrOutput` is one output: a new store ``<stem>.ome.zarr`` (NGFF 0.4 on Zarr v2, which the
most viewers read), or a ``labels/<name>`` group inside the OME-Zarr image that was segmented, with
``image-label`` metadata, so napari-ome-zarr, MoBIE and other NGFF viewers show the labels over the
image. Its arrays are created under a temporary name beside the final one (:meth:`ZarrOutput.create`),
the caller writes them region by region, and :meth:`ZarrOutput.commit` adds the lower resolution
levels (nearest neighbour: labels stay labels) and the metadata, then renames the folder into place,
so an interrupted run never leaves a half-written output under the final name.

Labels inside an image have the image's axes less the channel axis and one resolution level per
image level (as NGFF asks); when one time point or z-plane of a larger image was segmented, the
others stay 0 (unwritten chunks take no space).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .formats import NgffImage, Plane, _zarr, ome_attrs
from .io import InputError, replace_folder

NEW_STORE_VERSION = "0.4"
CHUNK = 512  # chunk side (pixels) along y and x
PYRAMID_MAX_SIDE = 1024  # a new store gets halved levels until the smallest is at most this large
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def label_name(model_name: str) -> str:
    """The ``labels/<name>`` a model's output is written under: its name, made safe for a folder."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name or "").strip(".-")
    return name or "biounet"


def _encoding(zarr_format: int) -> dict:
    # NGFF 0.4 asks for "/" between chunk indices; Zarr v3's default encoding already uses it
    return {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if zarr_format == 2 else {}


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    return (*([1] * (len(shape) - 2)), *(min(CHUNK, max(1, s)) for s in shape[-2:]))


def _put_attrs(group: Any, version: str, payload: dict, extra: dict | None = None) -> None:
    """Write NGFF metadata: under ``ome`` (with the version) in 0.5, at the top level in 0.4."""
    attrs = {"ome": {"version": version, **payload}} if version == "0.5" else dict(payload)
    group.attrs.update({**attrs, **(extra or {})})


def _versioned(meta: dict, version: str) -> dict:
    """0.4 metadata objects carry their version; 0.5 ones take it from the ``ome`` object."""
    return {"version": version, **meta} if version != "0.5" else dict(meta)


def resample_nearest(src: Any, dst: Any, tile: int = 1024) -> None:
    """Fill ``dst`` (..., h, w) with the nearest-neighbour resampling of ``src`` (..., H, W), a tile at a time.

    Pixel (y, x) of ``dst`` takes pixel (y * H // h, x * W // w): halving takes every second pixel,
    doubling repeats each; labels stay labels. Memory is one tile of each.
    """
    hs, ws = src.shape[-2:]
    hd, wd = dst.shape[-2:]
    for y0 in range(0, hd, tile):
        ys = (np.arange(y0, min(hd, y0 + tile)) * hs) // hd
        for x0 in range(0, wd, tile):
            xs = (np.arange(x0, min(wd, x0 + tile)) * ws) // wd
            box = np.asarray(src[..., ys[0]: ys[-1] + 1, xs[0]: xs[-1] + 1])
            dst[..., y0: y0 + len(ys), x0: x0 + len(xs)] = box[..., ys - ys[0], :][..., xs - xs[0]]


class ZarrOutput:
    """One OME-Zarr output: a new store at ``dest``, or (``image`` given) ``labels/<name>`` of that image.

    ``kind`` is what the array holds (``labels``, ``mask`` or ``probabilities``); labels and masks get
    ``image-label`` metadata. Use as a context manager: leaving it by an exception removes what was
    written; :meth:`commit` makes the output appear under its final name.
    """

    def __init__(self, dest: str | Path, kind: str, image: NgffImage | None = None, name: str = "biounet",
                 model: str = "") -> None:
        self.kind, self.image, self.model = kind, image, model
        if image is not None:
            if kind == "probabilities":
                raise ValueError("probabilities are written to a new store, not as labels")
            self.dest = image.group / "labels" / label_name(name)
            self.version = image.version
        else:
            self.dest = Path(dest)
            self.version = NEW_STORE_VERSION
        self.zarr_format = 3 if self.version == "0.5" else 2
        self.tmp: Path | None = None
        self.group: Any = None
        self.levels: list[Any] = []
        self._made_labels_dir = False

    # -- writing ------------------------------------------------------------------------------------------
    def create(self, shape: Sequence[int], dtype: Any, axes: str = "") -> Any:
        """The full-resolution array to write into: (H, W) or, for a new store, (..., H, W) with ``axes``
        naming its axes (default: ``yx``, ``cyx``, ``czyx``). Zero-filled (zarr's fill value)."""
        zarr = _zarr()
        shape = tuple(int(s) for s in shape)
        parent = self.dest.parent
        if self.image is not None:
            self._made_labels_dir = not parent.exists()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=parent))
        except OSError as exc:
            where = f"labels into {self.image.group}" if self.image is not None else str(self.dest)
            raise InputError(f"{self.dest}: cannot write {where} ({exc.strerror or exc})") from None
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=self.zarr_format)
        if self.image is None:
            self.axes = axes or {2: "yx", 3: "cyx", 4: "czyx"}[len(shape)]
            self.shapes = [shape]
            while max(self.shapes[-1][-2:]) > PYRAMID_MAX_SIDE:
                *lead, h, w = self.shapes[-1]
                self.shapes.append((*lead, -(-h // 2), -(-w // 2)))
            self.top = 0
            self.levels = [self._array(str(i), s, dtype) for i, s in enumerate(self.shapes)]
            return self.levels[0]
        img = self.image
        keep = [i for i, a in enumerate(img.axes) if a.get("type") != "channel" and a["name"] != "c"]
        self.axes = "".join(img.axes[i]["name"][:1] for i in keep)
        self.keep = keep
        self.shapes = [tuple(s[i] for i in keep) for s in img.shapes]
        if self.shapes[img.level][-2:] != shape[-2:]:
            raise ValueError(f"labels of shape {shape} for an image level of shape {self.shapes[img.level]}")
        self.top = img.level
        self.levels = [self._array(str(i), s, dtype) for i, s in enumerate(self.shapes)]
        return self._plane(self.top)

    def _array(self, path: str, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.group.create_array(path, shape=shape, chunks=_chunks(shape), dtype=np.dtype(dtype), fill_value=0,
                                       **_encoding(self.zarr_format))

    def _plane(self, level: int) -> Any:
        """Level ``level`` of a labels array as its one written (y, x) plane (the image's fixed t/z mapped to it)."""
        arr = self.levels[level]
        if arr.ndim == 2:
            return arr
        img = self.image
        fixed = {}
        for j, i in enumerate(self.keep):
            name = img.axes[i]["name"]
            if name in ("y", "x"):
                continue
            idx, here, there = img.fixed.get(name, 0), self.shapes[level][j], self.shapes[img.level][j]
            fixed[name.upper()[:1]] = min(here - 1, idx * here // max(1, there))
        return Plane(arr, self.axes.upper(), fixed)

    def write(self, result: np.ndarray) -> None:
        """Write a whole in-memory result into the full-resolution array."""
        target = self.create(result.shape, result.dtype)
        target[...] = result

    # -- finishing ----------------------------------------------------------------------------------------
    def _fill_levels(self) -> None:
        """Every other level from the written one: down from it, then up to full resolution."""
        get = (lambda i: self._plane(i)) if self.image is not None else (lambda i: self.levels[i])
        for i in range(self.top + 1, len(self.levels)):
            resample_nearest(get(i - 1), get(i))
        for i in range(self.top - 1, -1, -1):
            resample_nearest(get(i + 1), get(i))

    def _multiscales(self) -> dict:
        if self.image is None:
            axes = [{"name": a, "type": AXIS_TYPES[a]} for a in self.axes]
            datasets = []
            for i, s in enumerate(self.shapes):
                f = [s0 / si for s0, si in zip(self.shapes[0], s)]
                datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": f}]})
            return {"name": self.model or self.kind, "axes": axes, "datasets": datasets}
        img = self.image

        def drop_c(transforms: list[dict]) -> list[dict]:
            out = []
            for t in transforms or []:
                t = dict(t)
                for key in ("scale", "translation"):
                    if isinstance(t.get(key), list) and len(t[key]) == len(img.axes):
                        t[key] = [v for i, v in enumerate(t[key]) if i in self.keep]
                out.append(t)
            return out

        datasets = [{"path": str(i), "coordinateTransformations": drop_c(d.get("coordinateTransformations"))
                     or [{"type": "scale", "scale": [1.0] * len(self.keep)}]} for i, d in enumerate(img.datasets)]
        ms = {"name": self.dest.name, "axes": [img.axes[i] for i in self.keep], "datasets": datasets}
        if img.multiscale_transforms:
            ms["coordinateTransformations"] = drop_c(img.multiscale_transforms)
        return ms

    def commit(self) -> Path:
        """Lower levels, metadata, then the rename into place; returns the final path."""
        if self.group is None or self.tmp is None:
            raise RuntimeError("nothing was created")
        self._fill_levels()
        payload: dict = {"multiscales": [_versioned(self._multiscales(), self.version)]}
        if self.kind in ("labels", "mask"):
            label = {"source": {"image": "../../"}} if self.image is not None else {}
            payload["image-label"] = _versioned(label, self.version)
        _put_attrs(self.group, self.version, payload, {"biounet": {"kind": self.kind, "model": self.model}})
        if self.image is not None:
            self._labels_group()  # a labels group before the label image appears in it
        replace_folder(self.tmp, self.dest)
        self.tmp = None
        if self.image is not None:
            self._list_label()
        return self.dest

    def _labels_group(self) -> None:
        zarr = _zarr()
        folder = self.dest.parent
        group = zarr.open_group(str(folder), mode="a", zarr_format=self.zarr_format)
        if "labels" not in ome_attrs(group.attrs.asdict()):
            _put_attrs(group, self.version, {"labels": []})

    def _list_label(self) -> None:
        zarr = _zarr()
        group = zarr.open_group(str(self.dest.parent), mode="a", zarr_format=self.zarr_format)
        names = list(ome_attrs(group.attrs.asdict()).get("labels") or [])
        if self.dest.name not in names:
            _put_attrs(group, self.version, {"labels": names + [self.dest.name]})

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._made_labels_dir:
            try:
                self.dest.parent.rmdir()  # only if nothing else was put there
            except OSError:
                pass

    def __enter__(self) -> "ZarrOutput":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None or self.tmp is not None:
            self.abort()


def read_labels(store: str | Path, name: str | None = None, level: int = 0) -> np.ndarray:
    """A label image written by biounet as a numpy array: ``store`` a new store, or an image store with
    ``labels/<name>`` (the only one when ``name`` is None). For tests and small images."""
    return np.asarray(open_labels(store, name, level)[...])


def open_labels(store: str | Path, name: str | None = None, level: int = 0) -> Any:
    """The zarr array of a label image written by biounet (see :func:`read_labels`), read only when sliced."""
    zarr = _zarr()
    store = Path(store)
    group = zarr.open_group(str(store), mode="r")
    meta = ome_attrs(group.attrs.asdict())
    if "image-label" not in meta and "labels" in group.group_keys():
        names = ome_attrs(group["labels"].attrs.asdict()).get("labels") or []
        if name is None and len(names) != 1:
            raise InputError(f"{store}: holds labels {names}; name one")
        group = group["labels"][name or names[0]]
        meta = ome_attrs(group.attrs.asdict())
    return group[meta["multiscales"][0]["datasets"][level]["path"]]
