"""#14: one table of bad inputs, generated here. Each case runs the command a user would run and checks
the one-line message (naming the file or key), the exit status, no traceback, and that nothing
half-written is left in the output folder. ``--debug`` brings the traceback back.
"""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from biounet import checkpoint
from biounet.cli import app

runner = CliRunner()


def _png(arr: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", arr, extension=".png")


def _bomb_png() -> bytes:
    """A valid PNG whose header claims 60000 x 60000 pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _model_copy(tiny_run: Path, tmp: Path, edit) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    for f in tiny_run.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    edit(folder)
    return folder


def _dsb_zip(tmp: Path, masks: list[np.ndarray]) -> Path:
    path = tmp / "dsb.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("abc/images/abc.png", _png(np.full((16, 16, 3), 40, np.uint8)))
        for i, m in enumerate(masks):
            z.writestr(f"abc/masks/m{i}.png", _png(m))
    return path


def _folders(tmp: Path, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    (tmp / "imgs").mkdir()
    (tmp / "masks").mkdir()
    tifffile.imwrite(tmp / "imgs" / "a.tif", image)
    tifffile.imwrite(tmp / "masks" / "a.tif", mask)
    return tmp / "imgs", tmp / "masks"


def _predict(tiny_run: Path, tmp: Path, name: str, data: bytes) -> list[str]:
    (tmp / name).write_bytes(data)
    return ["predict", "-m", str(tiny_run), "-o", str(tmp / "out"), str(tmp / name)]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _out_is_a_file(tiny_run: Path, tmp: Path) -> list[str]:
    (tmp / "taken").write_text("x")
    (tmp / "ok.tif").write_bytes(_tiff_bytes())
    return ["predict", "-m", str(tiny_run), "-o", str(tmp / "taken" / "sub"), str(tmp / "ok.tif")]


def _disk(r: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[:16, :16]
    return (((yy - 8) ** 2 + (xx - 8) ** 2) <= r * r).astype(np.uint8) * 255


# (id, build(tiny_run, tmp) -> argv, expected text in the message)
CASES = [
    ("corrupt png", lambda m, t: _predict(m, t, "x.png", b"\x89PNG\r\n\x1a\n garbage"), "x.png: cannot read image"),
    ("zero-byte tiff", lambda m, t: _predict(m, t, "z.tif", b""), "z.tif: file is empty (0 bytes)"),
    ("text as image", lambda m, t: _predict(m, t, "notes.png", b"just some text\n" * 20),
     "notes.png: cannot read image"),
    ("truncated tiff", lambda m, t: _predict(m, t, "cut.tif", _tiff_bytes()[:300]), "cut.tif: cannot read image"),
    ("decompression bomb", lambda m, t: _predict(m, t, "bomb.png", _bomb_png()),
     "bomb.png: cannot read image (refused: the header claims more pixels"),
    ("wrong channel count", lambda m, t: _predict(m, t, "five.tif", _tiff_bytes(np.zeros((40, 40, 5), np.uint8))),
     "if it has 5 channels: the models take 1 to 4"),
    ("empty folder", lambda m, t: (t / "nothing").mkdir() or ["predict", "-m", str(m), "-o", str(t / "out"),
                                                               str(t / "nothing")], "no images found"),
    ("malformed config.json",
     lambda m, t: _predict(_model_copy(m, t, lambda f: (f / "config.json").write_text("{ not json")), t, "ok.tif",
                           _tiff_bytes()), "config.json: invalid JSON"),
    ("truncated safetensors",
     lambda m, t: _predict(_model_copy(m, t, lambda f: (f / checkpoint.WEIGHTS).write_bytes(
         (f / checkpoint.WEIGHTS).read_bytes()[:200])), t, "ok.tif", _tiff_bytes()),
     "model.safetensors: cannot read weights"),
    ("model from a newer biounet",
     lambda m, t: _predict(_model_copy(m, t, lambda f: (f / "config.json").write_text(
         json.dumps({**json.loads((f / "config.json").read_text()), "format": 99}))), t, "ok.tif", _tiff_bytes()),
     "model format 99 is newer"),
    ("output folder is a file", lambda m, t: _out_is_a_file(m, t), "cannot create the output folder"),
    ("config value of the wrong type",
     lambda m, t: ["train", "--task", "membrane", "--data", str(t / "v.tif"), "--labels", str(t / "l.tif"),
                   "--out", str(t / "run"), "--set", "train.epochs=many"], "train.epochs"),
    ("mask/image size mismatch",
     lambda m, t: ["check-data", str(_folders(t, np.zeros((16, 16), np.uint8), np.zeros((12, 16), np.uint8))[0]),
                   "--labels", str(t / "masks")], "mask size (12, 16) != image size (16, 16)"),
    ("colour labels",
     lambda m, t: ["check-data", str(_folders(t, np.zeros((16, 16), np.uint8),
                                              np.dstack([_disk(), _disk(3), _disk(2)]))[0]),
                   "--labels", str(t / "masks")], "differing channels"),
    ("fractional labels",
     lambda m, t: ["check-data", str(_folders(t, np.zeros((16, 16), np.uint8),
                                              _disk().astype(np.float32) / 7)[0]),
                   "--labels", str(t / "masks")], "fractional"),
    ("negative labels",
     lambda m, t: ["check-data", str(_folders(t, np.zeros((16, 16), np.uint8),
                                              -(_disk() > 0).astype(np.int16))[0]),
                   "--labels", str(t / "masks")], "negative values"),
    ("non-binary DSB mask",
     lambda m, t: ["check-data", str(_dsb_zip(t, [(_disk() // 255 * np.arange(16, dtype=np.uint8)[None])]))],
     "distinct values"),
    ("all-zero DSB mask",
     lambda m, t: ["check-data", str(_dsb_zip(t, [_disk(), np.zeros((16, 16), np.uint8)]))], "mask is empty"),
    ("overlapping DSB masks",
     lambda m, t: ["check-data", str(_dsb_zip(t, [_disk(5), _disk(4)]))], "pixels lie in more than one mask"),
    ("NaN pixels in a float image",
     lambda m, t: _predict(m, t, "nan.tif", _tiff_bytes(np.where(np.eye(40, dtype=bool), np.nan, 1.0)
                                                          .astype(np.float32))),
     "nan.tif: 40 pixel(s) are NaN or infinite"),
    ("complex pixels",
     lambda m, t: _predict(m, t, "cplx.tif", _tiff_bytes(np.ones((40, 40), np.complex64))),
     "cplx.tif: pixel type complex64 is not supported"),
    ("channels-last array saved as thin pages",
     lambda m, t: _predict(m, t, "hwc.tif", _raw_tiff_bytes(np.zeros((40, 40, 5), np.uint8))),
     "hwc.tif: holds 40 pages of 40x5 pixels"),
    ("infinite pixels in a training image",
     lambda m, t: ["check-data", str(_folders(t, np.full((16, 16), np.inf, np.float32), _disk())[0]),
                   "--labels", str(t / "masks")], "a.tif: 256 pixel(s) are NaN or infinite"),
    ("pickled checkpoint as a model",
     lambda m, t: _predict(_model_copy(m, t, lambda f: (f / checkpoint.WEIGHTS).unlink() or
                                       (f / "model.pt").write_bytes(b"\x80\x04pickle")), t, "ok.tif", _tiff_bytes()),
     "model.safetensors: weights file not found"),
    ("the weights file for its model folder",  # #51: said 'not a model folder', not which folder to give
     lambda m, t: ["predict", "-m", str(m / checkpoint.WEIGHTS), *_predict(m, t, "ok.tif", _tiff_bytes())[3:]],
     f"{checkpoint.WEIGHTS}: is a file of the model folder "),
    ("an ONNX export as the model",
     lambda m, t: ["predict", "-m", str(_file(t / "nuclei.onnx", b"\x08\x07onnx")),
                   *_predict(m, t, "ok.tif", _tiff_bytes())[3:]],
     "nuclei.onnx: an ONNX export is for other runtimes (ONNX Runtime"),
]


def _tiff_bytes(arr: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    if arr is None or arr.ndim == 2:
        tifffile.imwrite(buf, np.full((40, 40), 30, np.uint8) if arr is None else arr)
    else:  # (H, W, C): one page of C samples per pixel
        tifffile.imwrite(buf, arr, photometric="minisblack", planarconfig="contig")
    return buf.getvalue()


def _raw_tiff_bytes(arr: np.ndarray) -> bytes:
    """``arr`` as a bare ``tifffile.imwrite`` writes it: no axes, so (H, W, 5) becomes H pages."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def _leftovers(root: Path) -> list[str]:
    """Temporary or partial files anywhere under ``root`` (atomic writes leave none)."""
    return [str(p) for p in root.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_a_nonzero_exit_and_leaves_nothing_half_written(tiny_run, tmp_path, build, expected):
    argv = build(tiny_run, tmp_path)
    res = runner.invoke(app, argv)
    assert res.exit_code != 0, res.output
    assert expected in res.output, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    error_lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert error_lines, res.output
    out = tmp_path / "out"
    if out.is_dir():
        assert not [p for p in out.iterdir() if p.suffix in (".tif", ".png")], "an output was written for bad input"
    assert not _leftovers(tmp_path)


def test_debug_shows_the_traceback(tiny_run, tmp_path):
    (tmp_path / "ok.tif").write_bytes(_tiff_bytes())
    argv = ["predict", "-m", str(tmp_path / "no-model"), "-o", str(tmp_path / "out"), str(tmp_path / "ok.tif")]
    res = runner.invoke(app, ["--debug", *argv])
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)
    plain = runner.invoke(app, argv)
    assert plain.exit_code == 2 and "no-model" in plain.output  # without --debug: the one line


def _unwritable_folder(tmp: Path) -> Path:
    """A folder nothing can be written into: mode 0o555, or (as root, who may write there anyway) a path
    under a regular file, which fails for root too."""
    import os

    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro
    ro.chmod(0o755)
    (tmp / "plain-file").write_text("x")
    return tmp / "plain-file" / "sub"


@pytest.mark.parametrize("command", ["train", "export", "evaluate --report", "evaluate --json"])
def test_an_unwritable_output_is_one_line_and_exit_2_before_any_work(tiny_run, stack_files, tmp_path, command):
    """#51: train --out, export --out and evaluate --report in a read-only folder ended in an OSError traceback."""
    ro = _unwritable_folder(tmp_path)
    vol, lab = stack_files
    target, argv = {
        "train": (ro / "run", ["train", "--task", "membrane", "--data", str(vol), "--labels", str(lab), "--epochs", "1",
                               "--quiet", "--out", str(ro / "run")]),
        "export": (ro / "m.onnx", ["export", "-m", str(tiny_run), "--out", str(ro / "m.onnx")]),
        "evaluate --report": (ro / "r.html", ["evaluate", "--truth", str(lab), "--pred", str(lab),
                                              "--report", str(ro / "r.html")]),
        "evaluate --json": (ro / "r.json", ["evaluate", "--truth", str(lab), "--pred", str(lab),
                                            "--json", str(ro / "r.json")]),
    }[command]
    try:
        res = runner.invoke(app, argv)
    finally:
        if (tmp_path / "ro").is_dir():
            (tmp_path / "ro").chmod(0o755)  # so pytest can clean up
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {target}: cannot "), res.output
    assert res.output.startswith("error:"), res.output  # refused before any scoring or training output
    assert not (tmp_path / "ro" / "run").exists()
