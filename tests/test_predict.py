"""Segmenter and file prediction: whole == tiled, lazy views, streaming big images."""
import numpy as np
import pytest
import tifffile
import torch

import biounet
from biounet import predict as P
from biounet.config import PostConfig, RunConfig, apply_overrides
from biounet.models.unet import UNet


def make_segmenter(**model) -> P.Segmenter:
    torch.manual_seed(0)
    cfg = apply_overrides(RunConfig(), [f"model.{k}={v}" for k, v in model.items()])
    net = UNet(cfg.model).double().eval()
    net.float()
    return P.Segmenter(module=net, config=cfg, post=PostConfig(threshold=0.5))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_tiled_prediction_matches_whole_image(padding):
    seg = make_segmenter(base_features=4, depth=2, padding=padding, batch_norm=False)
    img = np.random.default_rng(0).integers(0, 255, (70, 91), dtype=np.uint8)
    whole = seg.predict(img)
    seg.tile = 48
    tiled = seg.predict(img)
    assert tiled.shape == whole.shape == (70, 91)
    # valid tiles abut exactly; same nets blend tiles, and their zero-padded convolutions see
    # mirrored context at tile borders instead of zeros: a small, bounded difference
    tol = 1e-5 if padding == "valid" else 5e-3
    assert np.abs(tiled - whole).max() < tol


def test_tta_returns_probabilities_at_the_image_size():
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)
    seg.tta = True
    probs = seg.predict(img)
    assert probs.shape == (40, 40) and np.isfinite(probs).all() and 0 <= probs.min() <= probs.max() <= 1


def test_view_normalizes_lazily_like_prepare():
    seg = make_segmenter(in_channels=3, base_features=4, depth=2)
    gray = np.random.default_rng(2).integers(0, 4000, (20, 30), dtype=np.uint16)
    view = seg.view(gray)
    assert view.shape == (3, 20, 30)
    full = seg.prepare(gray)
    assert np.allclose(view[:, 5:9, 10:20], full[:, 5:9, 10:20])
    assert 0 <= np.percentile(full, 50) <= 1


def test_wrong_channel_count_is_reported_with_the_name():
    seg = make_segmenter(in_channels=1, base_features=4, depth=2)
    with pytest.raises(biounet.io.InputError, match="x.tif: has 4 channels but the model expects 1"):
        seg.view(np.zeros((8, 8, 4), np.uint8), "x.tif")


def test_big_images_stream_through_memmaps(tmp_path, monkeypatch):
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(3).integers(0, 255, (300, 260), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img)
    expected = seg.segment(img)  # whole-image path
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)
    monkeypatch.setattr(P, "AUTO_TILE_PIXELS", 100 * 100)
    seg.tile = 128
    [out] = P.predict_file(seg, tmp_path / "big.tif", tmp_path / "o", P.OutputOptions())
    mask = tifffile.imread(out)
    assert mask.shape == (300, 260) and mask.dtype == np.uint8
    assert (mask != expected).mean() < 1e-3  # same decisions up to blending at near-0.5 pixels
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["big.tif"]  # temp files cleaned


def test_load_model_by_name_fails_clearly():
    with pytest.raises(biounet.io.InputError, match="not a model folder"):
        biounet.load_model("definitely-not-shipped")


def test_diameter_rescaling_keeps_output_size_and_needs_a_recorded_diameter():
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(4).integers(0, 255, (50, 64), dtype=np.uint8)
    with pytest.raises(biounet.io.InputError, match="records no training object diameter"):
        seg.with_diameter(10)
    seg.train_diameter = 20.0
    seg.with_diameter(10)  # objects half the training size -> image enlarged 2x
    assert seg.scale == 2.0
    probs = seg.predict(img)
    assert probs.shape == (50, 64) and np.isfinite(probs).all()


def test_median_diameter_of_discs():
    from biounet.train import median_diameter

    lab = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    lab[(yy - 10) ** 2 + (xx - 10) ** 2 <= 36] = 1
    lab[(yy - 30) ** 2 + (xx - 30) ** 2 <= 36] = 2
    assert abs(median_diameter([lab]) - 12) < 1.0
