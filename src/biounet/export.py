"""``biounet export``: a model as an ONNX or TorchScript file, or as a bioimage.io package (:func:`export_model`).

The graphs themselves come from :mod:`biounet.graph_export`, the packages from
:mod:`biounet.zoo` (which uses the same graphs). Kaggle DSB 2018 submissions are
:func:`biounet.data.dsb.write_submission`, their run-length code :mod:`biounet.labels`.
"""
from __future__ import annotations

from pathlib import Path

from .graph_export import ONNX_OPSET, model_metadata, to_onnx, to_torchscript
from .io import InputError, atomic_path, check_writable

__all__ = ["to_onnx", "to_torchscript", "model_metadata", "ONNX_OPSET", "export_model", "MODEL_FORMATS"]

MODEL_FORMATS = ("onnx", "torchscript", "bioimageio")


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
    check_writable(out, folder=out.is_dir())  # a read-only --out fails here, before the model loads
    if fmt == "bioimageio":
        from .zoo import export_bioimageio

        return export_bioimageio(model, out)
    folder = checkpoint.resolve_model(model)
    _, module = checkpoint.load_module(folder)
    meta = model_metadata(folder)
    if fmt == "onnx":
        data = to_onnx(module, probabilities=True, metadata=meta)  # without the onnx package: an InputError naming it
    else:
        data = to_torchscript(module, probabilities=True, metadata=meta)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out
