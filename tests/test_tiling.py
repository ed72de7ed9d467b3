"""Overlap-tile inference: stitching is invisible, borders mirror, memory streams."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from biounet.config import ModelConfig
from biounet.models.unet import UNet
from biounet.io import open_array
from biounet.models.unet import receptive_field
from biounet.tiling import (
    WINDOW_FLOOR,
    NetGeometry,
    TileConfig,
    blend_window,
    fit_tiles,
    mirror_index,
    predict_tiled,
    tile_starts,
)


def add_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def crop_add_one(m: int):
    """Emulates a valid net: loses ``m`` pixels per side."""
    return lambda x: x[..., m : x.shape[-2] - m, m : x.shape[-1] - m] + 1


def tiny_unet(padding: str) -> UNet:
    torch.manual_seed(0)
    net = UNet(ModelConfig(base_features=4, depth=2, padding=padding)).double().eval()
    # non-trivial batch-norm statistics, so eval mode matters
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return net


def canvas(n: int, out_tile: int, align: int) -> int:
    """Length the tiling covers: >= one tile, and the flush tile start aligned."""
    n = max(n, out_tile)
    return n + (-(n - out_tile)) % align


def run_net(net: UNet):
    return lambda x: net(x.double())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---- grid ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "tile", "step", "expected"),
    [
        (10, 4, 4, [0, 4, 6]),
        (12, 4, 4, [0, 4, 8]),
        (13, 4, 2, [0, 2, 4, 6, 8, 9]),
        (4, 4, 1, [0]),
        (3, 8, 4, [0]),
        (100, 32, 24, [0, 24, 48, 68]),
    ],
)
def test_tile_starts_cover_with_last_tile_flush(length, tile, step, expected):
    starts = tile_starts(length, tile, step)
    assert starts == expected
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert starts[-1] == max(length - tile, 0)
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_mirror_index_matches_numpy_reflect_and_handles_wide_pads():
    x = np.arange(5)
    idx = np.arange(-4, 9)
    np.testing.assert_array_equal(x[mirror_index(idx, 5)], np.pad(x, 4, mode="reflect"))
    assert set(mirror_index(np.arange(-30, 30), 3)) == {0, 1, 2}
    np.testing.assert_array_equal(mirror_index(np.arange(-3, 4), 1), 0)


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "constant"])
def test_blend_window_never_reaches_zero(blend):
    w = blend_window(32, blend, overlap=8)
    assert w.min() >= WINDOW_FLOOR and w.max() == 1.0


def test_cosine_taper_sums_to_one_across_a_seam():
    w = blend_window(32, "cosine", overlap=8)
    np.testing.assert_allclose(w[-8:] + w[:8], 1.0)


# ---- reconstruction through the tiling ---------------------------------------
@pytest.mark.parametrize("hw", [(37, 53), (1, 40), (5, 3), (64, 64)])
@pytest.mark.parametrize("blend", ["gaussian", "cosine", "constant"])
def test_add_one_predictor_reconstructs_the_input(rng, hw, blend):
    img = rng.random((2, *hw), dtype=np.float32)
    cfg = TileConfig(tile=16, overlap=5, batch_size=3, blend=blend)
    out = predict_tiled(add_one, img, cfg)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img + 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(37, 53), (1, 9), (30, 30)])
@pytest.mark.parametrize("align", [1, 4])
def test_valid_net_emulation_reconstructs_the_input(rng, hw, align):
    m = 6
    img = rng.random(hw, dtype=np.float32)  # (H, W): one channel
    out = predict_tiled(crop_add_one(m), img, TileConfig(tile=28, batch_size=2), NetGeometry(m, align))
    assert out.shape == (1, *hw)
    np.testing.assert_allclose(out[0], img + 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("margin", [0, 3])
def test_tta_with_identity_predictor_returns_the_input(rng, margin):
    img = rng.random((1, 23, 31), dtype=np.float32)
    cfg = TileConfig(tile=16, overlap=4, tta=True)
    out = predict_tiled(crop_add_one(margin), img, cfg, NetGeometry(margin))
    np.testing.assert_allclose(out, img + 1, rtol=0, atol=1e-6)


def test_tta_averages_the_inverted_transforms():
    """A predictor that sees orientation (x-ramp) must be averaged back to symmetric."""
    def ramp(x: torch.Tensor) -> torch.Tensor:
        return torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x).clone()

    out = predict_tiled(ramp, np.zeros((1, 8, 8), np.float32), TileConfig(tile=8, tta=True))
    np.testing.assert_allclose(out[0], out[0].T, atol=1e-6)
    np.testing.assert_allclose(out[0], np.rot90(out[0]), atol=1e-6)


# ---- real networks --------------------------------------------------------------
@pytest.mark.parametrize("hw", [(36, 52), (37, 53), (1, 20)])
def test_tiled_equals_untiled_for_a_valid_unet(rng, hw):
    net = tiny_unet("valid")
    geo = net.geometry
    cfg = fit_tiles(TileConfig(tile=64, batch_size=4), geo)
    assert (cfg.tile, geo.margin, geo.align) == (64, 20, 4)
    img = rng.random((1, *hw), dtype=np.float32)
    out = predict_tiled(run_net(net), img, cfg, geo)
    # reference: the whole image mirror-padded by the margin, and on the far side up
    # to the tiling canvas (>= one output tile, aligned), in one forward pass
    out_tile = cfg.tile - 2 * geo.margin
    rows, cols = (mirror_index(np.arange(-geo.margin, canvas(n, out_tile, geo.align) + geo.margin), n) for n in hw)
    padded = img[0][rows][:, cols]
    with torch.no_grad():
        whole = net(torch.from_numpy(padded)[None, None].double())[0].numpy()
    np.testing.assert_allclose(out, whole[:, : hw[0], : hw[1]], rtol=0, atol=1e-5)


def test_tiled_is_close_to_untiled_for_a_same_unet(rng):
    """Same nets zero-pad every tile, so tiled only approximates untiled. With the overlap
    at least the receptive field and Gaussian blending the max error measured 7e-4 of the
    output range (cosine 1.4e-3; overlap 16: 2e-2; no overlap: 0.7); 2e-3 guards that."""
    net = tiny_unet("same")
    rf = receptive_field(net, 1)
    geo = net.geometry
    cfg = fit_tiles(TileConfig(tile=96, overlap=rf, batch_size=4), geo)
    img = rng.random((1, 200, 200), dtype=np.float32)
    out = predict_tiled(run_net(net), img, cfg, geo)
    with torch.no_grad():
        whole = net(torch.from_numpy(img)[None].double())[0].numpy()
    span = whole.max() - whole.min()
    assert np.abs(out - whole).max() < 2e-3 * span
    # and it really is tiled: 4 x 4 tiles
    assert cfg.tile == 96 and cfg.overlap >= rf


def test_fit_tiles_rounds_tiles_and_caps_overlap():
    geo = tiny_unet("valid").geometry
    cfg = fit_tiles(TileConfig(tile=50), geo)
    assert (cfg.tile, cfg.overlap, geo.margin) == (52, 0, 20)
    assert fit_tiles(TileConfig(tile=10), geo).tile == 44  # output 4 = align
    geo = tiny_unet("same").geometry
    cfg = fit_tiles(TileConfig(tile=30), geo)
    assert (cfg.tile, geo.margin, geo.align) == (32, 0, 4)
    assert cfg.overlap == min(-(-geo.context // 3 // 4) * 4, 16)  # a third of the field, aligned, <= tile / 2
    # geometry alone, no network: a third of the context, rounded up to the alignment
    assert fit_tiles(TileConfig(tile=64), NetGeometry(align=8, context=188)) == TileConfig(tile=64, overlap=32)
    assert fit_tiles(TileConfig(tile=60), NetGeometry(align=8)).overlap is None  # unknown: left to predict_tiled


@pytest.mark.parametrize("shape", [(2048, 2048), (1024, 1000), (3000, 2000), (600, 700), (300, 5000), (100, 90)])
def test_covering_tile_shrinks_without_adding_tiles(shape):
    """Given the image, the tile shrinks to cover it with as many tiles as the requested size needs, no more."""
    from biounet.tiling import _axis, _step

    geo = NetGeometry(align=16, context=188)

    def tiles(cfg):
        step = _step(cfg.tile, cfg.overlap, geo.align)
        return [len(_axis(n, cfg.tile, step, geo.align, blend_window(cfg.tile, "gaussian")).starts) for n in shape]

    asked, fitted = fit_tiles(TileConfig(tile=512), geo), fit_tiles(TileConfig(tile=512), geo, shape)
    assert fitted.overlap == asked.overlap == 64 and fitted.tile % 16 == 0 and fitted.tile <= 512
    assert tiles(fitted) == tiles(asked)
    assert fitted.tile < 512 or max(shape) >= 512 * 8


@pytest.mark.parametrize("depth,kernel", [(1, 3), (2, 3), (3, 3), (2, 5)])
def test_geometry_valid_sizes_match_the_valid_network(depth, kernel):
    net = UNet(ModelConfig(base_features=2, depth=depth, kernel_size=kernel, padding="valid"))
    geo = net.geometry
    for n in range(1, 300, 7):
        assert geo.valid_size(n) == net.valid_input_size(n), n
        assert net.output_size(geo.valid_size(n)) == geo.valid_size(n) - 2 * geo.margin
    assert UNet(ModelConfig(base_features=2, depth=2)).geometry.valid_size(37) == 37  # same nets: any size


def test_wrong_prediction_shape_is_a_clear_error(rng):
    img = rng.random((1, 20, 20), dtype=np.float32)
    with pytest.raises(ValueError, match="valid input size"):
        predict_tiled(add_one, img, TileConfig(tile=16), NetGeometry(margin=2))
    with pytest.raises(ValueError, match="out has shape"):
        predict_tiled(add_one, img, TileConfig(tile=16), out=np.zeros((2, 20, 20), np.float32))


# ---- streaming ------------------------------------------------------------------
def test_memmap_input_and_output(rng, tmp_path):
    img = rng.random((1, 45, 70), dtype=np.float32)
    np.save(tmp_path / "in.npy", img)
    src = np.load(tmp_path / "in.npy", mmap_mode="r")
    out = open_array((1, 45, 70), path=tmp_path / "out.npy")
    assert isinstance(out, np.memmap)
    cfg = TileConfig(tile=16, overlap=4)
    predict_tiled(add_one, src, cfg, out=out)
    out.flush()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), predict_tiled(add_one, img, cfg), rtol=0, atol=0)


def test_zarr_output(rng, tmp_path):
    pytest.importorskip("zarr")
    img = rng.random((1, 40, 33), dtype=np.float32)
    out = open_array((1, 40, 33), path=tmp_path / "out.zarr")
    predict_tiled(add_one, img, TileConfig(tile=16, overlap=4), out=out)
    np.testing.assert_allclose(out[:], img + 1, rtol=0, atol=1e-6)




# ---- progress ------------------------------------------------------------------
def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "biounet.tiling" and r.levelname == "INFO"]


def test_a_large_image_logs_its_progress_every_tenth_of_the_tiles(rng, caplog):
    """#51: a 4000 x 4000 image ran for minutes without a word; the size alone now turns progress on."""
    img = rng.random((1, 160, 160), dtype=np.float32)
    with caplog.at_level("INFO", logger="biounet.tiling"):
        out = predict_tiled(add_one, img, TileConfig(tile=16, overlap=0, batch_size=2))  # 100 tiles
    np.testing.assert_allclose(out, img + 1, rtol=0, atol=1e-6)
    lines = _progress_lines(caplog)
    assert lines[0] == "predicting 160x160 in 100 tiles of 16 px"
    assert any(line.startswith("tiles 10/100 (10 %)") and "left" in line for line in lines)
    assert lines[-1].startswith("tiles 100/100 done in")
    assert len(lines) == 1 + 10  # a start line, then one per 10 %: now and then, not per tile


def test_progress_stays_quiet_on_small_images_or_when_turned_off(rng, caplog):
    small = rng.random((1, 32, 32), dtype=np.float32)  # 4 tiles
    large = rng.random((1, 64, 64), dtype=np.float32)  # 16 tiles
    with caplog.at_level("INFO", logger="biounet.tiling"):
        predict_tiled(add_one, small, TileConfig(tile=16, overlap=0))
        predict_tiled(add_one, large, TileConfig(tile=16, overlap=0), progress=False)
    assert _progress_lines(caplog) == []
    with caplog.at_level("INFO", logger="biounet.tiling"):
        predict_tiled(add_one, small, TileConfig(tile=16, overlap=0), progress=True)
    assert _progress_lines(caplog)[-1].startswith("tiles 4/4 done in")


def test_segmenting_one_large_image_logs_tile_progress(tiny_run, caplog):
    """Through the user's call, ``load_model(...).segment(img)``, with options.progress left off."""
    from biounet.predict import load_model

    seg = load_model(tiny_run).with_options(tile=32)
    assert not seg.options.progress
    img = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    with caplog.at_level("INFO", logger="biounet.tiling"):
        seg.segment(img)
    lines = _progress_lines(caplog)
    assert lines and lines[0].startswith("predicting 128x128 in") and lines[-1].startswith("tiles ")
