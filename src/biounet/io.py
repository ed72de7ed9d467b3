"""File formats: the one module that reads and writes images.

Every reader raises :class:`InputError` naming the file and the problem; none
returns ``None``. Every writer goes through :func:`atomic_path`, so an
interrupted run never leaves a half-written output under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class InputError(ValueError):
    """A problem with user input; the message is one line naming the file."""


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_image(path: str | Path, channel: int | None = None) -> np.ndarray:
    """Read one 2D image as (H, W) or (H, W, C); RGBA loses its alpha.

    A multi-page TIFF is rejected here: use :func:`read_stack` for stacks.
    ``channel`` reads one channel of a multi-channel image, as in :func:`read_stack`.
    """
    arr = read_stack(path, channel)
    if arr.shape[0] != 1:
        raise InputError(f"{path}: is a stack of {arr.shape[0]} pages; expected a single image")
    return arr[0]


def read_stack(path: str | Path, channel: int | None = None) -> np.ndarray:
    """Read an image or a multi-page TIFF as (N, H, W) or (N, H, W, C).

    Single images come back with N = 1. Alpha channels are dropped because no
    microscopy signal lives there (the DSB 2018 PNGs are RGBA with alpha 255).
    A TIFF with a channel axis (ImageJ / OME ``C``, e.g. DAPI + a membrane stain)
    is refused unless ``channel`` says which one to read: flattening channels into
    pages would segment each stain as if it were another image. ``channel`` also
    picks one plane of an RGB image (nuclei in the blue plane of a composite).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:  # decoders report this as e.g. "KeyError: b''"
        raise InputError(f"{path}: file is empty (0 bytes)")
    if channel is not None and channel < 0:
        raise InputError(f"{path}: channel must be >= 0, got {channel}")
    named_other = _other_format(path)  # a PNG or JPEG named .tif is read as what it is
    try:
        if _suffix(path) in (".tif", ".tiff") and not named_other:
            arr, channel = _read_tiff(path, channel)
        else:
            import imageio.v3 as iio

            # pinned plugin: on a corrupt file imageio would otherwise try every
            # plugin and report the last one's unrelated complaint
            arr = np.asarray(iio.imread(path, plugin="pillow"))[None]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file to the user
        why = _one_line(exc)
        if why.startswith(_NOT_IMAGE) and named_other:  # a PNG's or JPEG's own header, then nothing
            why = f"a {named_other} file cut short or damaged" + why[len(_NOT_IMAGE):]
        raise InputError(f"{path}: cannot read image ({why})") from None
    arr = check_finite(_drop_alpha(arr, path), path)
    return arr if channel is None else _pick_sample(arr, channel, path)


def pick_channel(image: np.ndarray, channel: int | None, name: str) -> np.ndarray:
    """Channel ``channel`` of an in-memory (H, W[, C]) image (None: the image as it is), as files get it."""
    return image if channel is None else _pick_sample(np.asarray(image)[None], channel, name)[0]


def _pick_sample(arr: np.ndarray, channel: int, path: Path | str) -> np.ndarray:
    """Plane ``channel`` of an (N, H, W, C) stack; channel 0 of a gray (N, H, W) one is itself."""
    n = arr.shape[-1] if arr.ndim == 4 else 1
    if channel >= n:
        raise InputError(f"{path}: has {n} channel(s); channel {channel} is out of range (0..{n - 1})")
    return arr[..., channel] if arr.ndim == 4 else arr


_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"GIF8": "GIF"}


def _other_format(path: Path) -> str | None:
    """The format a file's first bytes say it is when they say PNG, JPEG, BMP or GIF (not TIFF)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


# what a decoder's complaint means to a user: (words in the message or type name, the plain reason)
_NOT_IMAGE = "not an image file, or one this tool cannot decode"
_REASONS = (
    (("cannot identify image file", "unidentifiedimageerror"), _NOT_IMAGE),
    (("not a tiff file", "keyerror: b'"), "not a TIFF file, though named like one"),
    (("truncated", "failed to read", "unpack_from requires", "eoferror", "unexpected end", "buffer is too small"),
     "the file is cut short or damaged, perhaps not fully copied"),
)


def _one_line(exc: BaseException) -> str:
    """The root cause of a decoder failure in one line (imageio wraps Pillow's own error), led by what it
    means to a user when it is a known kind (not an image, cut short)."""
    while (exc.__cause__ or exc.__context__) not in (None, exc):
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    if type(exc).__name__ == "DecompressionBombError":
        return f"refused: the header claims more pixels than any image this tool reads ({text[0] if text else ''})"
    raw = f"{type(exc).__name__}: {text[0] if text else ''}"
    said = f"{type(exc).__name__}: {str(exc)}".lower()
    reason = next((r for keys, r in _REASONS if any(k in said for k in keys)), None)
    return raw if reason is None else f"{reason}; {raw}"


def tiff_channels(path: str | Path) -> int:
    """Length of a TIFF's channel axis (ImageJ / OME ``C``; RGB samples are not counted), 1 if none."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        return int(series.shape[series.axes.index("C")]) if "C" in series.axes else 1


def _read_tiff(path: Path, channel: int | None = None) -> tuple[np.ndarray, int | None]:
    """TIFF -> (N, H, W[, C]) using the file's own axes (samples last, pages first), and the part of
    ``channel`` still to apply: a ``C`` axis is resolved here, RGB samples by the caller."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        arr = series.asarray()
        axes = series.axes
    if "C" in axes:
        n = arr.shape[axes.index("C")]
        if channel is None and n > 1:
            raise InputError(f"{path}: has {n} channels (TIFF axes {axes}); choose the one to segment "
                             f"with --channel 0..{n - 1} (data.channel to train on it)")
        if (channel or 0) >= n:
            raise InputError(f"{path}: has {n} channel(s); channel {channel} is out of range (0..{n - 1})")
        arr = np.take(arr, channel or 0, axis=axes.index("C"))
        axes, channel = axes.replace("C", ""), None
    if "S" in axes and axes.index("S") != len(axes) - 1:
        arr = np.moveaxis(arr, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    spatial = 3 if axes.endswith("S") else 2
    return arr.reshape((-1,) + arr.shape[arr.ndim - spatial :]), channel


def strip_alpha(arr: np.ndarray) -> np.ndarray:
    """Drop an alpha channel on the last axis: RGBA -> RGB, gray + alpha -> gray + 1 channel."""
    c = arr.shape[-1]
    return arr[..., :3] if c == 4 else arr[..., :1] if c == 2 else arr


def check_finite(arr: Any, path: Path | str, rows: int = 1024) -> Any:
    """``arr`` unchanged, or an :class:`InputError` if a float image holds NaN or infinite pixels.

    Percentile normalisation turns one NaN into an all-NaN image, which would come out as a
    silently empty mask (or a crash deep in the watershed). Checked in row blocks, so a memory
    map (rows first) is never read into memory whole; integer images cannot hold NaN and cost nothing.
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    bad = sum(int(np.count_nonzero(~np.isfinite(arr[i:i + rows]))) for i in range(0, arr.shape[0], rows))
    if bad:
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite; replace them (e.g. with the background "
                         "value) before segmenting")
    return arr


def check_pixel_type(arr: Any, path: Path | str) -> Any:
    """``arr`` unchanged, or an :class:`InputError` for pixels that are not integers or real floats
    (complex, object, text): casting them would drop the imaginary part or fail deep in the network."""
    dtype = np.dtype(arr.dtype)
    if not (dtype == bool or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: pixel type {dtype} is not supported (expected integers or real floats)")
    return arr


# a stack whose pages are at most this wide is read as an (H, W, channels) array saved without axes
THIN_PAGE = 8


def _drop_alpha(arr: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W[, C]) without alpha; unsupported pixel types and shapes are refused by name."""
    check_pixel_type(arr, path)
    if arr.ndim == 4:
        arr = strip_alpha(arr)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.ndim not in (3, 4) or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(f"{path}: unsupported image shape {arr.shape}")
    n, h, w = arr.shape[:3]
    if arr.ndim == 3 and n > 1 and w <= THIN_PAGE < h:  # numpy's (H, W, C) written by a bare tifffile.imwrite
        raise InputError(f"{path}: holds {n} pages of {h}x{w} pixels, which looks like an (H, W, {w}) array "
                         f"saved without axes; save it with tifffile.imwrite(path, arr, metadata={{'axes': 'YXC'}}) "
                         "and choose a channel with --channel")
    return arr


# how mask files are commonly named after their image (``a.png`` -> ``a_mask.png``; Cellpose: ``a_cp_masks.png``),
# longest first, so that "_cp_masks" is stripped whole and not as "_masks"
MASK_SUFFIXES = ("_cp_masks", "_labels", "_masks", "_label", "_mask", "_seg", "_gt")


def image_stem(mask_stem: str) -> str:
    """The image stem a mask file is named after: ``a_mask`` -> ``a``; other stems as they are."""
    for suffix in MASK_SUFFIXES:
        if mask_stem.endswith(suffix) and len(mask_stem) > len(suffix):
            return mask_stem[: -len(suffix)]
    return mask_stem


def masks_by_image_stem(masks: list[Path]) -> dict[str, Path]:
    """Mask files keyed by the stem of the image each belongs to: its own stem, or that stem less one of
    :data:`MASK_SUFFIXES`. An exact name wins; two suffixed masks for one image are refused, naming both."""
    exact = {p.stem: p for p in masks}
    out: dict[str, Path] = {}
    for p in masks:
        stem = image_stem(p.stem)
        if stem == p.stem or stem in exact:
            continue
        if stem in out:
            raise InputError(f"{p}: {out[stem].name} is also a mask for image '{stem}'; keep one")
        out[stem] = p
    return {**out, **exact}


def image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in an existing ``folder``, possibly none."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _suffix(p) in IMAGE_SUFFIXES)


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly in ``folder``; an empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise InputError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}){_subfolder_hint(folder)}")
    return files


def _subfolder_hint(folder: Path) -> str:
    """Name a subfolder to try when an empty-looking folder only holds folders (an unzipped archive
    wraps its data in one: ``dsb/stage1_train/<id>/images``), so the fix is in the message."""
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        return ""
    more = f" (or one of its {len(subs)} folders)" if len(subs) > 1 else ""
    return f"; it holds folders: point at {folder / subs[0]}{more}"


def check_writable(path: str | Path, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: one line naming ``path`` and why.

    ``folder``: ``path`` is an output folder (created if missing); otherwise a file written beside
    its siblings (:func:`atomic_path`). Nothing is created: the nearest existing folder on the way
    must be writable (a read-only file system, a folder without write permission, or a file where
    a folder should be are refused).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{path}: is an existing file; give a folder")
    if not folder and path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    here = path if folder else path.parent
    while not here.exists() and here != here.parent:  # the folder that would hold what gets created
        here = here.parent
    if not here.is_dir():
        raise InputError(f"{path}: cannot create it: {here} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        try:
            why = "read-only file system" if os.statvfs(here).f_flag & os.ST_RDONLY else "permission denied"
        except OSError:
            why = "permission denied"
        raise InputError(f"{path}: cannot write here ({here} is not writable: {why})")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On any exception the temporary file is removed and an existing ``path`` is
    left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(path: str | Path, arr: np.ndarray, kind: str | None = None) -> Path:
    """Write (H, W), (H, W, C) or a (N, H, W) stack (TIFF only), atomically.

    TIFFs larger than 4 GB are written as BigTIFF. ``kind`` (``labels``,
    ``mask``, ``probabilities``) is recorded in a TIFF's metadata so readers
    (the napari plugin, :func:`output_kind`) know what the array is.
    """
    path = Path(path)
    arr = np.asarray(arr)
    with atomic_path(path) as tmp:
        if _suffix(path) in (".tif", ".tiff"):
            import tifffile

            rgb = arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8  # image or stack
            tifffile.imwrite(tmp, arr, bigtiff=arr.nbytes > 2**32 - 2**25,
                             photometric="rgb" if rgb else "minisblack",
                             metadata={"biounet": kind} if kind else {})
        elif _suffix(path) == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, arr, extension=".png")
        else:
            raise InputError(f"{path}: unsupported output format (use .tif or .png)")
    return path


def output_kind(path: str | Path) -> str | None:
    """What a biounet output TIFF holds (``labels``, ``mask``, ``probabilities``); None for other files."""
    path = Path(path)
    if _suffix(path) not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata
    except Exception:  # not a TIFF we can read: the caller's reader reports that
        return None
    kind = meta[0].get("biounet") if meta else None
    return kind if isinstance(kind, str) else None


def to_float01(image: np.ndarray) -> np.ndarray:
    """Map integer images to [0, 1] float32 by their dtype range (8/16-bit)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float32)
    return image.astype(np.float32)


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode one 2D image held in memory (a zip member) as (H, W) or (H, W, C).

    ``name`` is what error messages call the source (for a zip member,
    ``archive.zip::member``) and its suffix picks the decoder, so an archive
    never has to be extracted to disk. Alpha is dropped as in :func:`read_image`.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{name}: unsupported image format {suffix or '(no suffix)'}")
    pages = 1
    try:
        if suffix in (".tif", ".tiff"):
            import io as _io

            import tifffile

            with tifffile.TiffFile(_io.BytesIO(data)) as tf:
                series = tf.series[0]
                for ax, s in zip(series.axes, series.shape):
                    if ax not in "YXS":
                        pages *= s
                arr = series.asarray()
        else:
            import imageio.v3 as iio

            # A pinned plugin: on a corrupt file imageio would otherwise try
            # every plugin and report the last one's unrelated complaint.
            arr = np.asarray(iio.imread(data, plugin="pillow", extension=suffix))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file to the user
        raise InputError(f"{name}: cannot read image ({_one_line(exc)})") from None
    if pages != 1:
        raise InputError(f"{name}: is a stack of {pages} pages; expected a single image")
    if arr.ndim not in (2, 3):
        raise InputError(f"{name}: unsupported image shape {arr.shape}")
    # _drop_alpha works on stacks and names a Path; the name is only used in messages.
    return check_finite(_drop_alpha(arr.reshape(1, *arr.shape), name), name)[0]  # type: ignore[arg-type]


def open_lazy(path: str | Path):
    """A memory map of a single-page, uncompressed TIFF (or ``.npy``), else ``None``.

    Lets whole-slide-sized images be predicted without reading them into memory;
    other files are read normally by :func:`read_stack`.
    """
    path = Path(path)
    try:
        if _suffix(path) == ".npy":
            arr = np.load(path, mmap_mode="r")
        elif _suffix(path) in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                if len(tf.pages) != 1 or len(tf.series) != 1:
                    return None
            arr = tifffile.memmap(path, mode="r")
        else:
            return None
    except Exception:  # noqa: BLE001 - compressed or unusual layouts are simply read normally
        return None
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr if arr.ndim in (2, 3) else None


def open_array(shape: tuple[int, ...], dtype: Any = np.float32, path: str | Path | None = None) -> Any:
    """A zero-filled array to write results into: in memory, a ``.npy`` memmap, or a ``.zarr`` store.

    For outputs too large for memory (the tiling engine and block-wise
    labelling write into any of these); the chunks of a zarr store follow the
    last two axes in 512-pixel squares. zarr is imported only when asked for.
    """
    if path is None:
        return np.zeros(shape, dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zarr":
        import zarr

        chunks = (*([1] * (len(shape) - 2)), *(min(512, s) for s in shape[-2:]))
        return zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))


def replace_folder(new: Path, out: Path) -> None:
    """Rename the folder ``new`` to ``out``; an existing ``out`` is moved aside first and removed after, so a
    reader finds the old folder or the new one, never a mix (and the old one is put back if the rename fails)."""
    import os
    import shutil
    import tempfile

    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
