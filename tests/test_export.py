"""Kaggle RLE and submission files: hand cases, round trips, malformed input."""
from __future__ import annotations

import numpy as np
import pytest

from biounet.data.dsb import read_submission, write_submission
from biounet.labels import labels_to_rles, rle_decode, rle_encode
from biounet.io import InputError


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        # 3x3, first column full: pixels 1..3.
        ([[1, 0, 0], [1, 0, 0], [1, 0, 0]], "1 3"),
        # Pixel numbering runs down columns: (0,1) is 4, (0,2) is 7, (1,2) is 8.
        ([[0, 1, 1], [0, 0, 1], [0, 0, 0]], "4 1 7 2"),
        # Top row of a 2x3 image: column-major gives three separate runs.
        ([[1, 1, 1], [0, 0, 0]], "1 1 3 1 5 1"),
        # A run continues from the bottom of one column to the top of the next.
        ([[0, 1], [1, 0]], "2 2"),
        ([[0, 0], [0, 0]], ""),
        ([[1, 1], [1, 1]], "1 4"),
    ],
)
def test_rle_hand_cases(mask: list[list[int]], expected: str) -> None:
    arr = np.array(mask, dtype=bool)
    assert rle_encode(arr) == expected
    np.testing.assert_array_equal(rle_decode(expected, arr.shape), arr)


def test_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = tuple(rng.integers(1, 20, size=2))
        mask = rng.random(shape) < rng.random()
        np.testing.assert_array_equal(rle_decode(rle_encode(mask), shape), mask)


def test_labels_to_rles_round_trip_random_labels() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = tuple(rng.integers(1, 24, size=2))
        labels = rng.integers(0, 6, size=shape)
        rles = labels_to_rles(labels)
        present = [v for v in range(1, 6) if (labels == v).any()]
        assert len(rles) == len(present)
        for value, rle in zip(present, rles):
            np.testing.assert_array_equal(rle_decode(rle, shape), labels == value)
            assert rle == rle_encode(labels == value)


def test_labels_to_rles_skips_missing_labels_and_background() -> None:
    labels = np.zeros((4, 5), dtype=np.int32)
    labels[0, 0] = 7
    labels[3, 4] = 2
    assert labels_to_rles(labels) == ["20 1", "1 1"]  # label order: 2, then 7
    assert labels_to_rles(np.zeros((3, 3), dtype=np.uint16)) == []


@pytest.mark.parametrize(
    "bad",
    ["1", "1 2 3", "0 2", "1 0", "a 2", "1.5 2", "-1 2", "5 2 1 1", "1 3 2 1", "8 3"],
)
def test_rle_decode_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        rle_decode(bad, (3, 3))


def test_rle_rejects_wrong_dimensions() -> None:
    with pytest.raises(ValueError):
        rle_encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError):
        labels_to_rles(np.zeros((2, 2), np.float32))


def test_submission_round_trip_and_empty_image(tmp_path) -> None:
    a = np.zeros((4, 4), dtype=np.int32)
    a[0:2, 0] = 1
    a[3, 3] = 2
    empty = np.zeros((4, 4), dtype=np.int32)
    path = write_submission(tmp_path / "sub" / "submission.csv", [("img_a", a), ("img_b", empty)])
    text = path.read_text().splitlines()
    assert text == ["ImageId,EncodedPixels", "img_a,1 2", "img_a,16 1", "img_b,"]
    assert read_submission(path) == {"img_a": ["1 2", "16 1"], "img_b": []}


def test_write_submission_rejects_duplicate_id_and_leaves_no_file(tmp_path) -> None:
    labels = np.ones((2, 2), dtype=np.int32)
    path = tmp_path / "submission.csv"
    with pytest.raises(ValueError, match="twice"):
        write_submission(path, [("x", labels), ("x", labels)])
    assert list(tmp_path.iterdir()) == []


def test_read_submission_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ImageId,EncodedPixels\nimg,1 2\nimg,3 x\n")
    with pytest.raises(InputError, match=r"bad\.csv:3:"):
        read_submission(path)
    path.write_text("id,rle\n")
    with pytest.raises(InputError, match="header"):
        read_submission(path)
    with pytest.raises(InputError, match="no such file"):
        read_submission(tmp_path / "missing.csv")


# ---- the network as ONNX / TorchScript ------------------------------------------------
def _tiny_run(tmp_path, members: int = 1):
    """A model folder written by checkpoint.py (random weights, non-trivial batch norm; an ensemble if members > 1)."""
    import torch

    from biounet import checkpoint
    from biounet.models.unet import build_model
    from biounet.tasks import build_config

    cfg = build_config({"task": "nuclei", "model": {"base_features": 4, "depth": 2, "members": members}})
    torch.manual_seed(0)
    net = build_model(cfg.model)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    folder = tmp_path / "model"
    folder.mkdir()
    checkpoint.save_config(folder, cfg)
    checkpoint.save_weights(folder / checkpoint.WEIGHTS, net)
    return folder, net.eval()


@pytest.mark.parametrize("members", [1, 2])
def test_onnx_export_reproduces_torch_and_describes_itself(tmp_path, members):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional 'onnx' extra")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    import json

    import torch

    from biounet.export import export_model

    folder, net = _tiny_run(tmp_path, members)
    out = export_model(folder, "onnx", tmp_path / "m.onnx")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["biounet.task"] == "nuclei" and meta["biounet.normalize"] == "nuclei"
    assert json.loads(meta["biounet.config"])["model"]["base_features"] == 4
    assert "softmax" in meta["biounet.output"] and "multiples of 4" in meta["biounet.input"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 32, 32), (2, 1, 48, 76)]:  # dynamic batch, height and width
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("members", [1, 2])
def test_torchscript_export_reproduces_torch(tmp_path, members):
    import torch

    from biounet.export import export_model

    folder, net = _tiny_run(tmp_path, members)
    out = export_model(folder, "torchscript", tmp_path / "m.pt")
    extra = {"biounet.task": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert extra["biounet.task"] in ("nuclei", b"nuclei")
    x = torch.rand(2, 1, 40, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), torch.softmax(net(x), 1), atol=1e-5)


def test_export_refuses_unknown_formats_and_models(tmp_path):
    from biounet.export import export_model

    with pytest.raises(InputError, match="--format must be one of onnx, torchscript, bioimageio"):
        export_model("dsb2018-nuclei", "tflite", tmp_path / "x")
    with pytest.raises(InputError, match="not a model folder"):
        export_model(tmp_path / "nothing", "onnx", tmp_path / "x.onnx")
    image = tmp_path / "a.tif"  # a wrong suffix is refused even with overwrite: it is most likely another file
    image.write_bytes(b"image")
    with pytest.raises(InputError, match=r"a\.tif: --format onnx writes a file ending in \.onnx"):
        export_model("dsb2018-nuclei", "onnx", image, overwrite=True)
    with pytest.raises(InputError, match=r"m\.onnx: --format torchscript writes a file ending in \.pt or \.pth or \.ts"):
        export_model("dsb2018-nuclei", "torchscript", tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"] and image.read_bytes() == b"image"


def test_onnx_export_without_the_onnx_package_names_the_extra(tmp_path, monkeypatch):
    """``biounet export --format onnx`` without onnx: one line naming ``biounet[onnx]``, not torch's traceback."""
    import sys

    from typer.testing import CliRunner

    from biounet.cli import app

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError, as when not installed
    res = CliRunner().invoke(app, ["export", "--format", "onnx", "--model", "isbi2012-membrane",
                                   "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and "pip install 'biounet[onnx]'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "m.onnx").exists()
