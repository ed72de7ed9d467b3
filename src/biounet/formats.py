"""Images where microscopes leave them: OME-Zarr stores, large tiled TIFFs and vendor files (CZI, ND2, LIF).

:func:`open_source` turns one of these into a :class:`Plane`: a lazy (H, W) or (H, W, S) view of one
2D plane that reads only the region it is sliced with, so the tiling engine and the block-wise
labelling of :func:`biounet.predict.predict_large` stream it region by region.

* OME-Zarr (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3; a folder ``x.zarr`` / ``x.ome.zarr``): the full
  resolution level, or ``level``; a bioformats2raw store's series are its scenes. Needs ``zarr``.
* TIFF: a plane larger than ``big_pixels`` (compressed, tiled or striped) is read through tifffile's
  ``aszarr`` store region by region instead of being decoded whole; smaller files return None and are
  read as before by :func:`biounet.io.read_stack`, so their outputs do not change.
* CZI, ND2, LIF: through ``bioio`` and its plugins (``pip install 'biounet[formats]'``), lazily (dask).

A file with several channels, scenes, time points or z-planes needs ``--channel``, ``--scene``,
``--time`` or ``--z`` to say which plane to segment; the one-line error names the file and the choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .io import InputError, _one_line

BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")  # read through bioio (the plugins in the 'formats' extra)
FORMATS_EXTRA = "pip install 'biounet[formats]'"
ZARR_EXTRA = "pip install 'biounet[zarr]'"


@dataclass(frozen=True)
class PlanePick:
    """Which plane of a multi-scene / time-lapse / z-stack / multi-resolution file to segment (None: the only one)."""

    scene: int | None = None
    time: int | None = None
    z: int | None = None
    level: int | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--scene", self.scene), ("--time", self.time), ("--z", self.z), ("--level", self.level)):
            if value is not None and value < 0:
                raise InputError(f"{flag} must be >= 0, got {value}")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.scene, self.time, self.z, self.level))


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr store folder (named ``*.zarr``, or holding Zarr v2/v3 metadata)."""
    p = Path(path)
    return p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).exists() for m in ("zarr.json", ".zgroup",
                                                                                        ".zattrs")))


def is_big_input(path: str | Path) -> bool:
    """An input this module reads and :func:`biounet.io.read_stack` does not: a Zarr store or a vendor file."""
    p = Path(path)
    return is_zarr(p) or (p.is_file() and p.suffix.lower() in BIOIO_SUFFIXES)


def input_stem(path: str | Path) -> str:
    """``x`` for ``x.ome.zarr``, ``x.zarr``, ``x.ome.tif`` and ``x.czi``: the name outputs are called after."""
    name = Path(path).name
    for ext in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return Path(name).stem


class Plane:
    """One 2D plane of an N-D array (zarr, dask, a tifffile zarr store) seen as (H, W) or (H, W, S).

    ``axes`` names the array's axes in order (``TCZYX``, tifffile's ``YXS``...); ``fixed`` gives an
    index for every axis but Y, X and the samples axis S. Slicing ``plane[rows, cols]`` (steps and
    ``...`` allowed) reads just that region; assigning to it writes it (zarr arrays), so a label array
    with time or z axes can be filled one plane at a time.
    """

    def __init__(self, arr: Any, axes: str, fixed: dict[str, int] | None = None, samples: int | None = None) -> None:
        self.arr, self.axes, self.fixed = arr, axes.upper(), dict(fixed or {})
        if len(self.axes) != len(arr.shape):
            raise ValueError(f"axes {axes!r} do not match an array of shape {tuple(arr.shape)}")
        self._free = [a for a in self.axes if a not in self.fixed]
        self._order = ["Y", "X"] + (["S"] if "S" in self._free else [])
        if sorted(self._free) != sorted(self._order):
            raise ValueError(f"axes {axes!r} with {sorted(self.fixed)} fixed do not leave one (Y, X[, S]) plane")
        self.shape = tuple(int(arr.shape[self.axes.index(a)]) for a in self._order)
        self.samples = samples  # the first ``samples`` of S only (RGBA seen as RGB without reading it whole)
        if samples is not None and "S" in self._order:
            self.shape = self.shape[:2] + (min(samples, self.shape[2]),)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _index(self, key: Any) -> tuple[tuple, list[int]]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a plane of shape {self.shape}")
        key = tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in key)
        by_axis = dict(zip(self._order, key + (slice(None),) * (self.ndim - len(key))))
        if self.samples is not None and "S" in by_axis:  # an index into the first ``samples`` samples
            picked = range(self.shape[2])[by_axis["S"]]
            by_axis["S"] = picked if isinstance(picked, int) else slice(picked.start, picked.stop, picked.step)
        full = tuple(self.fixed[a] if a in self.fixed else by_axis[a] for a in self.axes)
        kept = [a for a in self._free if not isinstance(by_axis[a], int)]  # result axes, in array order
        return full, [kept.index(a) for a in self._order if a in kept]

    def __getitem__(self, key: Any) -> np.ndarray:
        full, perm = self._index(key)
        data = np.asarray(self.arr[full])
        return data.transpose(perm) if perm != sorted(perm) else data

    def __setitem__(self, key: Any, value: Any) -> None:
        full, perm = self._index(key)
        value = np.asarray(value)
        if value.ndim == len(perm) and perm != sorted(perm):
            value = value.transpose(np.argsort(perm))
        self.arr[full] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class NgffImage:
    """Where an OME-Zarr image lives and what its metadata says: enough to write labels beside it."""

    root: Path  # the store's folder
    group: Path  # the image group's folder (the root, or a bioformats2raw series under it)
    version: str  # what labels are written as: "0.5" in a Zarr v3 store, "0.4" in a v2 one (0.1-0.4 are read)
    zarr_format: int
    axes: list[dict]  # the multiscales axes, as dicts with a name and a type
    datasets: list[dict]  # the multiscales datasets (path, coordinateTransformations)
    shapes: list[tuple[int, ...]]  # the shape of every level
    level: int  # the level that was read
    fixed: dict[str, int]  # axis name -> index of the plane that was read
    multiscale_transforms: list[dict] = field(default_factory=list)  # top-level coordinateTransformations


@dataclass
class Source:
    """An opened input: a lazy 2D :class:`Plane` (``plane``) and, for OME-Zarr, the :class:`NgffImage` it came from."""

    path: Path
    kind: str  # "ome-zarr", "tiff" or "bioio"
    plane: Any
    ngff: NgffImage | None = None
    closer: Callable[[], None] | None = None

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_source(path: str | Path, channel: int | None = None, pick: PlanePick | None = None,
                big_pixels: int | None = None) -> Source | None:
    """The plane of ``path`` to segment, opened lazily; None where :func:`biounet.io.read_stack` reads it as before.

    OME-Zarr stores and CZI/ND2/LIF files always open here. A TIFF opens here when ``pick`` names a
    scene, level, time point or z-plane, or when its one plane holds more than ``big_pixels`` pixels
    (None: never by size); other files and smaller TIFFs give None. ``channel`` picks the channel
    (or, in an RGB image, the colour plane) as ``--channel`` does.
    """
    path, pick = Path(path), pick or PlanePick()
    if channel is not None and channel < 0:
        raise InputError(f"{path}: channel must be >= 0, got {channel}")
    if is_zarr(path):
        return _open_ome_zarr(path, channel, pick)
    suffix = path.suffix.lower()
    if suffix in BIOIO_SUFFIXES:
        return _open_bioio(path, channel, pick)
    if suffix in (".tif", ".tiff") and path.is_file():
        return _open_tiff(path, channel, pick, big_pixels)
    if pick.given:
        raise InputError(f"{path}: --scene, --time, --z and --level apply to OME-Zarr, TIFF and CZI/ND2/LIF files")
    return None


def _plane(arr: Any, axes: str, fixed: dict[str, int]) -> Plane:
    """A :class:`Plane`; RGBA is seen as RGB and gray + alpha as gray, as :func:`biounet.io.read_stack` reads them."""
    n = arr.shape[axes.index("S")] if "S" in axes and "S" not in fixed else 0
    if n == 2:
        return Plane(arr, axes, {**fixed, "S": 0})
    return Plane(arr, axes, fixed, samples=3 if n == 4 else None)


# ---- choosing the plane -----------------------------------------------------------------------------------------
_WHAT = {"T": ("time point", "--time"), "Z": ("z-plane", "--z"), "C": ("channel", "--channel")}


def _choose(path: Path, n: int, asked: int | None, what: str, flag: str, names: list[str] | None = None) -> int:
    """The index of one of ``n`` entries: ``asked``, or the only one; else a one-line error naming the choices."""
    if asked is None:
        if n == 1:
            return 0
        listed = f" ({', '.join(f'{i}={name}' for i, name in enumerate(names[:n]))})" if names and any(names) else ""
        raise InputError(f"{path}: has {n} {what}s{listed}; choose one with {flag} 0..{n - 1}")
    if not 0 <= asked < n:
        raise InputError(f"{path}: has {n} {what}(s); {flag} {asked} is out of range (0..{n - 1})")
    return asked


def _level(path: Path, n: int, asked: int | None) -> int:
    """The resolution level to read: ``asked``, or 0 (full resolution)."""
    return _choose(path, n, 0 if asked is None else asked, "resolution level", "--level")


def _fix_axes(path: Path, axes: str, shape: tuple[int, ...], channel: int | None, pick: PlanePick,
              channel_names: list[str] | None = None, strict: bool = True) -> dict[str, int] | None:
    """An index for every axis of ``axes`` but Y, X and S, from ``channel``, ``pick.time`` and ``pick.z``.

    ``channel`` picks the C axis when it has several channels, else the samples (S: RGB) axis. Other
    axes must be 1 long; with ``strict`` False an axis that is not (a TIFF's unnamed page axis) gives None.
    """
    fixed: dict[str, int] = {}
    sizes = dict(zip(axes, shape))
    n_c, n_s = sizes.get("C", 1), sizes.get("S", 1)
    for ax, n in sizes.items():
        if ax in "YXS":
            continue
        if ax == "C":
            fixed[ax] = _choose(path, n, channel if n > 1 or n_s == 1 else None, "channel", "--channel", channel_names)
        elif ax in "TZ":
            what, flag = _WHAT[ax]
            fixed[ax] = _choose(path, n, pick.time if ax == "T" else pick.z, what, flag)
        elif n == 1:
            fixed[ax] = 0
        elif strict:
            raise InputError(f"{path}: has an axis {ax!r} of {n} entries that biounet cannot choose from")
        else:
            return None
    for ax, asked in (("T", pick.time), ("Z", pick.z)):
        if asked is not None and ax not in sizes:  # a file without that axis has only plane 0
            what, flag = _WHAT[ax]
            _choose(path, 1, asked, what, flag)
    if channel is not None and n_c == 1:
        if "S" in sizes:
            fixed["S"] = _choose(path, n_s, channel, "channel", "--channel")
        else:
            _choose(path, 1, channel, "channel", "--channel")
    if "S" in sizes and sizes["S"] == 1 and "S" not in fixed:
        fixed["S"] = 0
    return fixed


# ---- OME-Zarr ---------------------------------------------------------------------------------------------------
def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise InputError(f"reading and writing OME-Zarr needs zarr: {ZARR_EXTRA}") from None
    return zarr


def ome_attrs(attrs: dict) -> dict:
    """The OME metadata of a group's attributes: under ``ome`` in NGFF 0.5, the attributes themselves before."""
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs


def _open_group(path: Path) -> Any:
    zarr = _zarr()
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - a folder that is no Zarr group, or broken metadata
        raise InputError(f"{path}: not a readable Zarr store ({_one_line(exc)})") from None


def _image_group(path: Path, pick: PlanePick) -> tuple[Any, Path]:
    """The multiscales image group to read: the store itself, or one series (scene) of a bioformats2raw store."""
    root = _open_group(path)
    meta = ome_attrs(root.attrs.asdict())
    if "multiscales" in meta:
        if pick.scene is not None:
            _choose(path, 1, pick.scene, "scene", "--scene")
        return root, path
    if "plate" in meta or "well" in meta:
        raise InputError(f"{path}: is an OME-Zarr {'plate' if 'plate' in meta else 'well'}; point at one field's image "
                         f"(e.g. {path}/A/1/0)")
    series = []
    for name in sorted((k for k in root.group_keys() if k.isdigit()), key=int):
        if "multiscales" in ome_attrs(root[name].attrs.asdict()):
            series.append(name)
    if not series:
        raise InputError(f"{path}: is a Zarr store without OME-Zarr image metadata (no 'multiscales')")
    scene = _choose(path, len(series), pick.scene, "scene", "--scene")
    return root[series[scene]], path / series[scene]


def _axes(meta: dict, ndim: int) -> list[dict]:
    """The multiscales axes as dicts (NGFF 0.3 lists names; 0.1/0.2 have none: t, c, z, y, x)."""
    axes = meta.get("axes") or list("tczyx"[-ndim:])
    out = []
    for a in axes:
        a = {"name": a} if isinstance(a, str) else dict(a)
        a["name"] = str(a.get("name", "")).lower()
        a.setdefault("type", {"t": "time", "c": "channel"}.get(a["name"], "space"))
        out.append(a)
    return out


def _letters(axes: list[dict], path: Path) -> str:
    """Axis names as the letters :func:`_fix_axes` knows (T, C, Z, Y, X), from the names and types."""
    out = ""
    for a in axes:
        name, kind = a["name"], a.get("type")
        letter = name.upper() if name in ("t", "c", "z", "y", "x") else \
            {"time": "T", "channel": "C"}.get(kind, name.upper()[:1] or "?")
        if letter in out:
            raise InputError(f"{path}: has two axes read as {letter!r} ({[a['name'] for a in axes]})")
        out += letter
    if "Y" not in out or "X" not in out:
        raise InputError(f"{path}: axes {[a['name'] for a in axes]} have no y and x")
    return out


def _open_ome_zarr(path: Path, channel: int | None, pick: PlanePick) -> Source:
    group, group_path = _image_group(path, pick)
    attrs = group.attrs.asdict()
    meta = ome_attrs(attrs)
    ms = meta["multiscales"][0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise InputError(f"{path}: OME-Zarr multiscales list no datasets")
    level = _level(path, len(datasets), pick.level)
    try:
        arrays = [group[d["path"]] for d in datasets]
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: a resolution level listed in the metadata is missing ({_one_line(exc)})") from None
    arr = arrays[level]
    axes = _axes(ms, arr.ndim)
    if len(axes) != arr.ndim:
        raise InputError(f"{path}: metadata names {len(axes)} axes for an array of shape {tuple(arr.shape)}")
    letters = _letters(axes, path)
    names = [c.get("label", "") for c in (meta.get("omero") or {}).get("channels", [])] or None
    fixed = _fix_axes(path, letters, tuple(arr.shape), channel, pick, names)
    zarr_format = int(group.metadata.zarr_format)
    info = NgffImage(root=path, group=group_path, version="0.5" if zarr_format == 3 else "0.4", zarr_format=zarr_format,
                     axes=axes, datasets=[dict(d) for d in datasets], shapes=[tuple(a.shape) for a in arrays],
                     level=level, fixed={axes[letters.index(k)]["name"]: v for k, v in fixed.items()},
                     multiscale_transforms=list(ms.get("coordinateTransformations") or []))
    return Source(path=path, kind="ome-zarr", plane=Plane(arr, letters, fixed), ngff=info)


# ---- TIFF ----------------------------------------------------------------------------------------------------
def _open_tiff(path: Path, channel: int | None, pick: PlanePick, big_pixels: int | None) -> Source | None:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - read_stack reports an unreadable file in its own words
        if pick.given:
            raise InputError(f"{path}: cannot read image") from None
        return None
    try:
        if pick.scene is not None:
            series = tf.series[_choose(path, len(tf.series), pick.scene, "scene", "--scene")]
        else:
            series = tf.series[0]
        level = _level(path, len(series.levels), pick.level)
        s = series.levels[level]
        axes, shape = s.axes.upper(), tuple(s.shape)
        big = big_pixels is not None and shape[axes.index("Y")] * shape[axes.index("X")] > big_pixels
        if not (pick.given or big):
            tf.close()
            return None
        if not pick.given:
            import importlib.util

            from .io import open_lazy

            # uncompressed, one page: a memory map, read as before; without zarr: decoded whole, as before
            if open_lazy(path) is not None or importlib.util.find_spec("zarr") is None:
                tf.close()
                return None
        fixed = _fix_axes(path, axes, shape, channel, pick, strict=pick.given)
        if fixed is None:  # an unnamed stack of big pages: read_stack segments every page
            tf.close()
            return None
        store = s.aszarr() if level == 0 or len(series.levels) == 1 else series.aszarr(level=level)
        arr = _zarr().open(store, mode="r")
    except InputError:
        tf.close()
        raise
    except Exception as exc:  # noqa: BLE001
        tf.close()
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None

    def close() -> None:
        store.close()
        tf.close()

    return Source(path=path, kind="tiff", plane=_plane(arr, axes, fixed), closer=close)


# ---- vendor formats (bioio) -----------------------------------------------------------------------------------
def require_bioio(path: str | Path) -> Any:
    """bioio's ``BioImage``, or a one-line error naming the file and the install that reads it."""
    try:
        from bioio import BioImage
    except ImportError:
        raise InputError(f"{path}: reading {Path(path).suffix.lower()} files needs bioio and its readers: "
                         f"{FORMATS_EXTRA}") from None
    return BioImage


BIOIO_PLUGINS = {".czi": "bioio_czi", ".nd2": "bioio_nd2", ".lif": "bioio_lif"}  # suffix -> the plugin reading it


def _open_bioio(path: Path, channel: int | None, pick: PlanePick) -> Source:
    import importlib.util
    import logging

    BioImage = require_bioio(path)
    suffix = path.suffix.lower()
    plugin = BIOIO_PLUGINS.get(suffix)
    if plugin and importlib.util.find_spec(plugin) is None:
        raise InputError(f"{path}: reading {suffix} files needs the {plugin.replace('_', '-')} reader: {FORMATS_EXTRA}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    quiet = logging.getLogger("bioio")
    level, quiet.level = quiet.level, logging.CRITICAL  # bioio logs each reader it tried; the error below says it
    try:
        img = BioImage(path)
    except Exception as exc:  # noqa: BLE001
        if "unsupported" in type(exc).__name__.lower():  # bioio's message is a paragraph about plugins
            raise InputError(f"{path}: cannot read image (no installed bioio reader accepts it: damaged, "
                             f"or not a {suffix} file)") from None
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None
    finally:
        quiet.setLevel(level)
    try:
        scenes = list(img.scenes)
        img.set_scene(_choose(path, len(scenes), pick.scene, "scene", "--scene", [str(s) for s in scenes]))
        levels = list(getattr(img, "resolution_levels", None) or [0])
        level = _level(path, len(levels), pick.level)
        if level:
            img.set_resolution_level(levels[level])
        data = img.dask_data
        axes = str(img.dims.order).upper()
        try:
            names = [str(c) for c in img.channel_names]
        except Exception:  # noqa: BLE001 - names are only for the message
            names = None
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None
    fixed = _fix_axes(path, axes, tuple(data.shape), channel, pick, names)
    return Source(path=path, kind="bioio", plane=_plane(data, axes, fixed),
                  closer=getattr(img, "close", None))


def describe(source: Source) -> str:
    """One line saying which plane of which file is segmented (for logs)."""
    fixed = source.plane.fixed if isinstance(source.plane, Plane) else {}
    where = ", ".join(f"{k.lower()}={v}" for k, v in fixed.items() if k != "S")
    return f"{source.path} ({source.kind}{': ' + where if where else ''}; {source.plane.shape[0]}x{source.plane.shape[1]})"
