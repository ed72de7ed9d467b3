"""Exports: Kaggle DSB 2018 submissions (run-length encoding of instance labels) and the network
as ONNX or TorchScript (:func:`export_model`).

Kaggle numbers pixels from 1, top to bottom then left to right (column-major,
Fortran order), and writes each object as ``"start length start length ..."``
on its own CSV row ``ImageId,EncodedPixels``. An image with no objects still
gets one row, with empty ``EncodedPixels``, so the scorer sees every image.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np

from biounet.io import InputError, atomic_path
from biounet.labels import check_labels

__all__ = ["rle_encode", "rle_decode", "labels_to_rles", "write_submission", "read_submission",
           "to_onnx", "to_torchscript", "export_model", "MODEL_FORMATS"]

SUBMISSION_HEADER = ("ImageId", "EncodedPixels")


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE of a (H, W) mask (nonzero = object); ``""`` for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order="F")
    return _runs_to_string(np.flatnonzero(flat))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: a (H, W) bool mask.

    Raises ``ValueError`` for anything Kaggle's scorer would reject: an odd
    number of values, non-integers, starts below 1 or lengths below 1, runs
    past the last pixel, and runs out of order or overlapping.
    """
    h, w = (int(v) for v in shape)
    runs = _parse_runs(rle)
    mask = np.zeros(h * w, dtype=bool)
    if runs.size:
        starts, lengths = runs[:, 0] - 1, runs[:, 1]
        ends = starts + lengths
        if ends[-1] > h * w:
            raise ValueError(f"RLE run ends at pixel {ends[-1]}, past the {h}x{w} image ({h * w} pixels)")
        # np.repeat + arange builds every covered index without a Python loop.
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask[np.repeat(starts, lengths) + offsets] = True
    return mask.reshape((h, w), order="F")


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One Kaggle RLE per object of a (H, W) label image (0 = background).

    Objects come in increasing label order; label values absent from the
    image produce no string. Objects cannot overlap because each pixel holds
    one label, which Kaggle requires.
    """
    labels = check_labels(labels)
    flat = labels.ravel(order="F")
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return []
    values = flat[idx]
    if values.min() < 0:
        raise ValueError("labels must be non-negative")
    # A stable sort by label keeps each object's pixel indices ascending, so
    # all objects are encoded in one pass over the image, not one pass each.
    order = np.argsort(values, kind="stable")
    values, idx = values[order], idx[order]
    splits = np.flatnonzero(np.diff(values)) + 1
    return [_runs_to_string(group) for group in np.split(idx, splits)]


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
                        _parse_runs(rle)
                    except ValueError as exc:
                        raise InputError(f"{path}:{line}: {exc}") from None
                    rles.append(rle)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read submission ({type(exc).__name__}: {exc})") from None
    return out


def _runs_to_string(idx: np.ndarray) -> str:
    """'start length ...' (1-based) for ascending 0-based flat pixel indices."""
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([idx[:1], idx[breaks]])
    ends = np.concatenate([idx[breaks - 1], idx[-1:]]) + 1
    pairs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def _parse_runs(rle: str) -> np.ndarray:
    """(N, 2) int64 array of (start, length) pairs, validated but not bounded by an image."""
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)})")
    bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
    if bad is not None:
        raise ValueError(f"RLE value {bad!r} is not a non-negative integer")
    runs = np.array([int(t) for t in tokens], dtype=np.int64).reshape(-1, 2)
    if runs.size == 0:
        return runs
    if (runs[:, 0] < 1).any():
        raise ValueError("RLE starts are 1-based; found a start below 1")
    if (runs[:, 1] < 1).any():
        raise ValueError("RLE lengths must be at least 1")
    ends = runs[:, 0] + runs[:, 1]
    if (runs[1:, 0] < ends[:-1]).any():
        raise ValueError("RLE runs must be sorted and must not overlap")
    return runs


# ---- the network as a file other runtimes load -------------------------------------
MODEL_FORMATS = ("onnx", "torchscript", "bioimageio")
ONNX_OPSET = 17


def _probabilities(module):
    """``module`` followed by its head's activation (sigmoid or softmax): outputs are probabilities."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, softmax: bool) -> None:
            super().__init__()
            self.net, self.softmax = net, softmax

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return torch.softmax(y, dim=1) if self.softmax else torch.sigmoid(y)

    return Probabilities(module, module.cfg.out_channels > 1).eval()


def _export_net(module, probabilities: bool):
    """What the exports trace: the network with batch norm folded, NCHW, optionally its activation after it."""
    from .models.unet import inference_copy

    net = inference_copy(module, channels_last=False)
    return _probabilities(net) if probabilities else net


def _example_input(module):
    import torch

    cfg = module.cfg
    side = module.valid_input_size(4 * cfg.pool_size**cfg.depth)
    return torch.zeros(1, cfg.in_channels, side, side)


def to_onnx(module, probabilities: bool = False, metadata: dict[str, str] | None = None) -> bytes:
    """A U-Net as ONNX bytes with dynamic batch, height and width.

    Input ``image`` (N, C, H, W) float32, normalized as ``config.json`` says;
    for ``same`` nets H and W must be multiples of ``pool_size ** depth`` (16 for
    the shipped models; :class:`biounet.predict.OnnxRunner` pads other sizes),
    for ``valid`` nets valid input sizes. Output ``logits`` or, with
    ``probabilities``, ``probabilities`` (sigmoid / softmax applied). Batch norm
    is folded into the convolutions first. ``metadata`` goes into the model's
    metadata_props, so the file describes itself.
    """
    import io
    import warnings

    import torch

    net = _export_net(module, probabilities)
    out_name = "probabilities" if probabilities else "logits"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(net, _example_input(module), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=[out_name],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        out_name: {0: "batch", 2: "height", 3: "width"}})
    data = buf.getvalue()
    if metadata:
        import onnx

        model = onnx.load_from_string(data)
        for k, v in metadata.items():
            model.metadata_props.add(key=k, value=v)
        data = model.SerializeToString()
    return data


def to_torchscript(module, probabilities: bool = True, metadata: dict[str, str] | None = None) -> bytes:
    """A U-Net traced to TorchScript bytes (``torch.jit.load`` reads it); metadata as extra files.

    Same input contract as :func:`to_onnx`; traced on a multiple-of-alignment
    input, so the graph runs any such size.
    """
    import io
    import warnings

    import torch

    net = _export_net(module, probabilities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, _example_input(module), check_trace=False)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which CPU users lack
        torch.jit.save(traced, buf, _extra_files=dict(metadata or {}))
    return buf.getvalue()


def model_metadata(model_dir: Path) -> dict[str, str]:
    """What a user of the exported file needs from the model folder, as strings."""
    import json

    from . import checkpoint
    from .config import to_dict

    cfg = checkpoint.load_config(model_dir)
    post = checkpoint.load_post(model_dir, cfg.post)
    align = cfg.model.pool_size**cfg.model.depth
    return {
        "biounet.name": cfg.name,
        "biounet.task": cfg.task,
        "biounet.normalize": cfg.data.normalize,
        "biounet.input": (f"(N, {cfg.model.in_channels}, H, W) float32, each image normalized by "
                          f"biounet.normalize '{cfg.data.normalize}'; H and W multiples of {align}"
                          if cfg.model.padding == "same" else "valid-padding net: see biounet.config"),
        "biounet.output": (f"(N, {cfg.model.out_channels}, H, W) "
                           + ("softmax probabilities" if cfg.model.out_channels > 1 else "sigmoid probability")),
        "biounet.config": json.dumps(checkpoint.config_dict(cfg)),
        "biounet.thresholds": json.dumps(to_dict(post)),
    }


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked; never replace a folder that is not a model package."""
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"{out}: exists; use --overwrite to replace it")
    if out.is_dir() and not (out / "rdf.yaml").exists():
        raise InputError(f"{out}: is a folder but not a bioimage.io package (no rdf.yaml); not replacing it")


def export_model(model: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write a shipped model or model folder as ONNX or TorchScript (probabilities out), atomically.

    ``bioimageio`` writes a bioimage.io model package instead (a folder, or a
    ``.zip``), see :mod:`biounet.zoo`.
    """
    from . import checkpoint

    if fmt not in MODEL_FORMATS:
        raise InputError(f"--format must be one of {', '.join(MODEL_FORMATS)}, got {fmt!r}")
    out = Path(out)
    suffixes = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}.get(fmt)
    if suffixes and out.suffix.lower() not in suffixes:  # e.g. an image path given by mistake, with --overwrite
        raise InputError(f"{out}: --format {fmt} writes a file ending in {' or '.join(suffixes)}")
    check_out(out, overwrite)
    if fmt == "bioimageio":
        from .zoo import export_bioimageio

        return export_bioimageio(model, out)
    folder = checkpoint.resolve_model(model)
    _, module = checkpoint.load_module(folder)
    meta = model_metadata(folder)
    if fmt == "onnx":
        try:
            data = to_onnx(module, probabilities=True, metadata=meta)
        except ImportError as exc:
            raise InputError(f"ONNX export needs the onnx package: pip install 'biounet[onnx]' ({exc})") from None
    else:
        data = to_torchscript(module, probabilities=True, metadata=meta)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out
