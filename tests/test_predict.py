"""Segmenter and file prediction: immutable options, whole == tiled, TTA without tiles, streaming."""
import dataclasses

import numpy as np
import pytest
import tifffile
import torch

import biounet
from biounet import predict as P
from biounet.config import PostConfig, RunConfig
from biounet.tasks import apply_overrides
from biounet.models.unet import UNet


def make_segmenter(**model) -> P.Segmenter:
    torch.manual_seed(0)
    cfg = apply_overrides(RunConfig(), [f"model.{k}={v}" for k, v in model.items()])
    net = UNet(cfg.model).eval()
    return P.Segmenter(module=net, config=cfg, post=PostConfig(threshold=0.5))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_tiled_prediction_matches_whole_image(padding):
    seg = make_segmenter(base_features=4, depth=2, padding=padding, batch_norm=False)
    img = np.random.default_rng(0).integers(0, 255, (70, 91), dtype=np.uint8)
    whole = seg.predict(img)
    tiled = seg.with_options(tile=48).predict(img)
    assert tiled.shape == whole.shape == (70, 91)
    # valid tiles abut exactly; same nets blend tiles, and their zero-padded convolutions see
    # mirrored context at tile borders instead of zeros: a small, bounded difference
    tol = 1e-5 if padding == "valid" else 5e-3
    assert np.abs(tiled - whole).max() < tol


def test_options_are_fixed_and_with_options_shares_the_network():
    seg = make_segmenter(base_features=4, depth=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.options = P.PredictOptions(tta=True)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.options.tta = True  # type: ignore[misc]
    tta = seg.with_options(tta=True)
    assert tta.options.tta and not seg.options.tta and tta.module is seg.module


@pytest.mark.parametrize("bad,match", [({"tile": -1}, "--tile"), ({"batch_size": -1}, "--batch-size"),
                                       ({"overlap": -2}, "--overlap"), ({"diameter": 0.0}, "--diameter")])
def test_bad_options_are_one_line_errors(bad, match):
    with pytest.raises(biounet.io.InputError, match=match):
        P.PredictOptions(**bad)


@pytest.mark.parametrize("padding,hw", [("same", (40, 52)), ("valid", (33, 47))])
def test_tta_runs_the_whole_image_and_equals_the_mean_of_transformed_predictions(padding, hw):
    """TTA no longer forces tiling: it is the mean of the 8 dihedral views of the whole image."""
    seg = make_segmenter(base_features=4, depth=2, padding=padding)
    img = np.random.default_rng(1).integers(0, 255, hw, dtype=np.uint8)
    tta = seg.with_options(tta=True)
    assert not tta.uses_tiles(hw)
    got = tta.predict(img)
    views = []
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(img, k)
            v = v[:, ::-1] if flip else v
            p = seg.predict(np.ascontiguousarray(v))
            p = p[:, ::-1] if flip else p
            views.append(np.rot90(p, -k))
    assert got.shape == hw and 0 <= got.min() <= got.max() <= 1
    # same nets: exact; valid nets pad the far sides of each view to a valid size, so a rotated
    # view's padding (and pooling grid) differs slightly from the rotated padded image
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=2e-6 if padding == "same" else 2e-4)
    assert not np.allclose(got, seg.predict(img), atol=1e-4)  # it did average something


def test_tta_on_a_small_image_costs_no_mirror_padded_tile():
    """A 64x64 image with TTA: 8 forward passes of 64x64, not 8 of a 512x512 tile."""
    seg = make_segmenter(base_features=4, depth=2).with_options(tta=True)
    sizes = []
    hook = seg.module.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    seg.predict(np.zeros((64, 64), np.uint8))
    hook.remove()
    assert sizes == [(64, 64)] * 8


def test_big_images_stream_through_memmaps(tmp_path, monkeypatch):
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(3).integers(0, 255, (300, 260), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img)
    expected = seg.segment(img)  # whole-image path
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)
    monkeypatch.setattr(P, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(P, "OVERLAY_MAX_SIDE", 100)
    seg = seg.with_options(tile=128)
    out, overlay = P.predict_file(seg, tmp_path / "big.tif", tmp_path / "o", P.OutputOptions(overlays=True))
    mask = tifffile.imread(out)
    assert mask.shape == (300, 260) and mask.dtype == np.uint8
    assert (mask != expected).mean() < 1e-3  # same decisions up to blending at near-0.5 pixels
    assert overlay.name == "big_overlay.png"  # streamed images get overlays too, drawn smaller
    assert biounet.io.read_image(overlay).shape == (100, 87, 3)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["big.tif", "big_overlay.png"]  # temp files cleaned


@pytest.mark.parametrize("diameter", [None, 10.0])
def test_streamed_images_get_the_probabilities_however_they_are_computed(tmp_path, monkeypatch, diameter):
    """Regression: a streamed image predicted whole or rescaled (--diameter) wrote all-zero output,
    because those paths returned their result instead of filling the memory map."""
    seg = dataclasses.replace(make_segmenter(base_features=4, depth=2), train_diameter=20.0)
    seg = seg.with_options(diameter=diameter)
    img = np.random.default_rng(5).integers(0, 255, (120, 100), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img)
    expected = seg.predict(img)
    monkeypatch.setattr(P, "STREAM_PIXELS", 50 * 50)  # streamed, but below the automatic tiling size
    out, = P.predict_file(seg, tmp_path / "big.tif", tmp_path / "o", P.OutputOptions(probabilities=True))
    assert np.allclose(tifffile.imread(out), expected, atol=1e-6)


def test_a_streamed_rgb_image_predicts_one_plane_with_channel(tmp_path, monkeypatch):
    seg = make_segmenter(base_features=4, depth=2).with_options(tile=64)
    rgb = np.random.default_rng(6).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "plane.tif", rgb[..., 1])
    monkeypatch.setattr(P, "STREAM_PIXELS", 50 * 50)
    opts = P.OutputOptions(probabilities=True)
    got, = P.predict_file(seg, tmp_path / "rgb.tif", tmp_path / "a", opts, channel=1)
    want, = P.predict_file(seg, tmp_path / "plane.tif", tmp_path / "b", opts)
    assert np.array_equal(tifffile.imread(got), tifffile.imread(want))
    with pytest.raises(biounet.io.InputError, match="has 3 channel"):
        P.predict_file(seg, tmp_path / "rgb.tif", tmp_path / "c", opts, channel=3)


def test_the_python_api_takes_torch_tensors_and_lists_as_it_takes_arrays():
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(7).integers(0, 255, (40, 36)).astype(np.float32)
    want = seg.predict(img)
    assert np.array_equal(seg.predict(torch.from_numpy(img)), want)
    assert np.array_equal(seg.predict(img.tolist()), want)
    try:
        import dask.array as da  # napari's lazy layers; installed with the napari extra
    except ImportError:
        return
    assert np.array_equal(seg.predict(da.from_array(img, chunks=16)), want)


def test_nan_pixels_are_refused_in_memory_and_when_streamed(tmp_path, monkeypatch):
    """Regression: one NaN made the normalised image all NaN, so a float image came out empty
    (membranes) or crashed in the watershed (nuclei); now it is refused, naming the image."""
    seg = make_segmenter(base_features=4, depth=2)
    img = np.ones((120, 100), np.float32)
    img[60, 50] = np.nan
    with pytest.raises(biounet.io.InputError, match="^cells: 1 pixel"):
        seg.segment(img, "cells")  # the Python API (and napari) path
    tifffile.imwrite(tmp_path / "big.tif", img)
    monkeypatch.setattr(P, "STREAM_PIXELS", 50 * 50)
    with pytest.raises(biounet.io.InputError, match="big.tif: 1 pixel"):
        P.predict_file(seg, tmp_path / "big.tif", tmp_path / "o", P.OutputOptions())
    assert not list(tmp_path.glob("o/*.tif"))


def test_devices_this_torch_cannot_use_are_one_line_errors():
    assert P.check_device("cpu") == "cpu"
    for name in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(biounet.io.InputError, match=f"--device {name}: not"):
            P.check_device(name)
    if not torch.cuda.is_available():  # this project's machines: the CPU wheel
        with pytest.raises(biounet.io.InputError, match="--device cuda: this torch .* sees no CUDA GPU"):
            P.check_device("cuda")
    else:
        with pytest.raises(biounet.io.InputError, match="CUDA device"):
            P.check_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(biounet.io.InputError, match="no Apple GPU"):
            P.check_device("mps")


def test_a_quoted_pattern_expands_to_the_images_it_matches(tmp_path):
    """`predict "imgs/*.png"` (quoted, or on Windows, where no shell expands it)."""
    for name in ("b.png", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.tif").write_bytes(b"x")
    assert P.expand_inputs([str(tmp_path / "*.png")]) == [tmp_path / "a.png", tmp_path / "b.png"]
    assert P.expand_inputs([str(tmp_path / "**" / "*.*")]) == [tmp_path / n for n in ("a.png", "b.png", "sub/c.tif")]
    with pytest.raises(biounet.io.InputError, match=r"\*\.jpg: the pattern matches no image file"):
        P.expand_inputs([str(tmp_path / "*.jpg")])


def test_a_folder_holding_images_and_masks_expands_to_its_images(tmp_path):
    """`predict my_set/` on the folder `train --data` took: its images/, not its masks/; loose images win."""
    for sub in ("images", "masks"):
        (tmp_path / "set" / sub).mkdir(parents=True)
        for name in ("a.png", "b.png"):
            (tmp_path / "set" / sub / name).write_bytes(b"x")
    assert P.expand_inputs([tmp_path / "set"]) == [tmp_path / "set" / "images" / n for n in ("a.png", "b.png")]
    (tmp_path / "set" / "c.tif").write_bytes(b"x")
    assert P.expand_inputs([tmp_path / "set"]) == [tmp_path / "set" / "c.tif"]


def test_an_archive_or_other_file_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "stage1_train.zip").write_bytes(b"PK")
    (tmp_path / "notes.txt").write_text("x")
    unzip = r"stage1_train\.zip: not an image file .*; unzip it and point at the folder$"
    with pytest.raises(biounet.io.InputError, match=unzip):
        P.expand_inputs([tmp_path / "stage1_train.zip"])
    with pytest.raises(biounet.io.InputError, match=r"notes\.txt: not an image file \(expected [^)]*\)$"):
        P.expand_inputs([tmp_path / "notes.txt"])


def test_load_model_by_name_fails_clearly():
    with pytest.raises(biounet.io.InputError, match="not a model folder"):
        biounet.load_model("definitely-not-shipped")


def test_diameter_rescaling_keeps_output_size_and_needs_a_recorded_diameter():
    seg = make_segmenter(base_features=4, depth=2)
    img = np.random.default_rng(4).integers(0, 255, (50, 64), dtype=np.uint8)
    with pytest.raises(biounet.io.InputError, match="records no training object diameter"):
        seg.with_options(diameter=10)
    seg = dataclasses.replace(seg, train_diameter=20.0)
    big = seg.with_options(diameter=10)  # objects half the training size -> image enlarged 2x
    assert big.scale == 2.0 and seg.scale == 1.0 and big.object_diameter == 10
    sizes = []
    hook = big.module.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    probs = big.predict(img)
    hook.remove()
    assert sizes == [(100, 128)] and probs.shape == (50, 64) and np.isfinite(probs).all()


def test_median_diameter_of_discs():
    from biounet.tune import median_diameter

    lab = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    lab[(yy - 10) ** 2 + (xx - 10) ** 2 <= 36] = 1
    lab[(yy - 30) ** 2 + (xx - 30) ** 2 <= 36] = 2
    assert abs(median_diameter([lab]) - 12) < 1.0


# ---- the fast CPU path and the ONNX Runtime backend ------------------------------------
def trained_looking(seg: P.Segmenter) -> P.Segmenter:
    """Non-trivial batch-norm statistics and affine parameters, so folding them is really tested."""
    g = torch.Generator().manual_seed(1)
    for mod in seg.module.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    return seg


@pytest.mark.parametrize("padding,channels,hw", [("same", 1, (37, 53)), ("same", 3, (64, 41)),
                                                 ("valid", 1, (45, 38)), ("valid", 3, (33, 70))])
def test_fast_path_gives_the_plain_probabilities(padding, channels, hw):
    seg = trained_looking(make_segmenter(base_features=4, depth=2, padding=padding, in_channels=channels))
    img = np.random.default_rng(5).integers(0, 255, (*hw, channels) if channels > 1 else hw, dtype=np.uint8)
    plain = seg.with_options(fast=False).predict(img)
    fast = seg.with_options(fast=True)
    assert fast.network is not seg.module  # a folded, channels-last copy...
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.network.modules())
    got = fast.predict(img)
    assert got.shape == plain.shape == hw
    assert np.abs(got - plain).max() < 1e-4
    tiled = fast.with_options(tile=32).predict(img), seg.with_options(fast=False, tile=32).predict(img)
    assert np.abs(tiled[0] - tiled[1]).max() < 1e-4
    assert seg.module.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in seg.module.modules())


@pytest.mark.parametrize("padding,hw", [("same", (37, 53)), ("same", (64, 48)), ("valid", (45, 38))])
def test_onnxruntime_backend_matches_torch(padding, hw):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional 'onnx' extra")
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    seg = trained_looking(make_segmenter(base_features=4, depth=2, padding=padding))
    img = np.random.default_rng(6).integers(0, 255, hw, dtype=np.uint8)
    ort = seg.with_options(backend="onnxruntime")
    assert isinstance(ort.network, P.OnnxRunner)
    np.testing.assert_allclose(ort.predict(img), seg.with_options(fast=False).predict(img), atol=1e-4)
    np.testing.assert_allclose(ort.with_options(tta=True, tile=32).predict(img),
                               seg.with_options(fast=False, tta=True, tile=32).predict(img), atol=1e-4)


def test_automatic_tiling_starts_later_on_onnxruntime(monkeypatch):
    """Each backend runs images whole up to its own size (ONNX Runtime was faster whole at 2048², torch tiled)."""
    monkeypatch.setattr(P, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(P, "AUTO_TILE_PIXELS_ONNX", 200 * 200)
    monkeypatch.setattr(P, "onnxruntime_available", lambda: True)
    seg = make_segmenter(base_features=4, depth=2)
    torch_seg, ort, auto = seg, seg.with_options(backend="onnxruntime"), seg.with_options(backend="auto")
    assert [s.uses_tiles((100, 100)) for s in (torch_seg, ort, auto)] == [False, False, False]
    assert [s.uses_tiles((150, 150)) for s in (torch_seg, ort, auto)] == [True, False, False]
    assert [s.uses_tiles((201, 200)) for s in (torch_seg, ort, auto)] == [True, True, True]
    assert ort.with_options(tile=64).uses_tiles((100, 100))  # an explicit --tile always tiles
    monkeypatch.setattr(P, "onnxruntime_available", lambda: False)
    assert auto.uses_tiles((150, 150))  # auto without ONNX Runtime is torch


def test_segment_takes_a_channel(tiny_run):
    seg = P.load_model(tiny_run)
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 2), dtype=np.uint8)
    np.testing.assert_array_equal(seg.segment(img, channel=1), seg.segment(img[..., 1]))
    np.testing.assert_array_equal(seg.predict(img, channel=0), seg.predict(img[..., 0]))


def test_a_stack_goes_through_the_api_page_by_page_as_the_cli_takes_it(tiny_run):
    """Issue #51: the membrane API refused a 2-slice stack the CLI takes; segment_stack takes it, and the
    error for a bare (2, H, W) array names it."""
    seg = P.load_model(tiny_run)
    stack = np.random.default_rng(0).integers(0, 255, (2, 40, 48), dtype=np.uint8)
    out = seg.segment_stack(stack)
    assert out.shape == (2, 40, 48)
    np.testing.assert_array_equal(out[1], seg.segment(stack[1]))
    assert seg.predict_stack(stack).shape[0] == 2
    with pytest.raises(biounet.io.InputError, match="segment_stack"):
        seg.segment(stack)


def test_one_image_is_not_taken_for_a_stack_and_diameters_stay_in_range(tiny_run):
    seg = P.load_model(tiny_run)
    with pytest.raises(biounet.io.InputError, match="for one image use segment"):
        seg.segment_stack(np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(biounet.io.InputError, match="--diameter"):
        P.parse_diameter("inf")
    nuclei = dataclasses.replace(seg, train_diameter=20.0)
    with pytest.raises(biounet.io.InputError, match="more than 4x"):
        nuclei.with_options(diameter=1.0)
    assert nuclei.with_options(diameter=60.0).scale == pytest.approx(1 / 3)
