"""Normalisation shared by training and prediction: bit depth, modality inversion, H&E, lazy windows."""
import numpy as np
import pytest

from biounet.io import InputError
from biounet.normalize import NormalizedView, apply_norm, match_channels, network_input, norm_params, normalize


def test_percentile_normalization_is_bit_depth_invariant():
    img8 = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    img16 = img8.astype(np.uint16) * 257
    assert np.allclose(normalize(img8, "percentile"), normalize(img16, "percentile"), atol=1e-5)


def _disks(bright_objects: bool) -> np.ndarray:
    """Two 'nuclei' on a background: bright on dark (fluorescence) or dark on light."""
    yy, xx = np.mgrid[:64, :64]
    inside = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 44) ** 2 + (xx - 40) ** 2 < 81)
    img = np.where(inside, 220, 30).astype(np.uint8)
    return img if bright_objects else (250 - img).astype(np.uint8)


def test_percentile_invert_makes_objects_bright_in_every_modality():
    fluo, bf = _disks(True), _disks(False)
    inside = fluo > 100
    for img in (fluo, bf, np.stack([bf, bf // 2 + 60, bf], axis=-1)):  # gray, inverted, colour (H&E-like)
        out = normalize(img, "percentile_invert").mean(axis=-1)
        assert out[inside].mean() > 0.9 and out[~inside].mean() < 0.1
    # a dark-background image is left as plain percentile normalization would leave it
    assert np.allclose(normalize(fluo, "percentile_invert"), normalize(fluo, "percentile"))
    # and a brightfield image comes out as the mirror of its fluorescence twin
    assert np.allclose(normalize(bf, "percentile_invert"), normalize(fluo, "percentile"), atol=1e-6)


def _he_tissue(dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """H&E-like RGB: purple nuclei on pink stroma, on a white background unless ``dense``."""
    yy, xx = np.mgrid[:64, :64]
    nuclei = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 44) ** 2 + (xx - 40) ** 2 < 81)
    stroma = (xx < 58) if dense else (xx > 24)  # dense: a thin white gap only
    img = np.full((64, 64, 3), 245, np.uint8)
    img[stroma & ~nuclei] = (235, 60, 140)  # eosin: red passes
    img[nuclei] = (70, 40, 150)  # hematoxylin: red absorbed
    return img, nuclei


@pytest.mark.parametrize("dense", [False, True])
def test_nuclei_mode_reads_stained_tissue_through_the_red_channel(dense):
    img, nuclei = _he_tissue(dense)
    out = match_channels(normalize(img, "nuclei"), 1)[..., 0]
    assert out[nuclei].min() > 0.9 and out[~nuclei].max() < 0.1  # stroma as dark as background
    # the channel mean cannot tell stroma from nuclei this well (and gets dense tissue backwards)
    gray = match_channels(normalize(img, "percentile_invert"), 1)[..., 0]
    assert out[nuclei].mean() - out[~nuclei].mean() > gray[nuclei].mean() - gray[~nuclei].mean() + 0.3
    # gray and fluorescence images are read exactly as percentile_invert reads them
    for other in (_disks(True), _disks(False), np.repeat(_disks(False)[..., None], 3, axis=-1)):
        assert np.allclose(match_channels(normalize(other, "nuclei"), 1),
                           match_channels(normalize(other, "percentile_invert"), 1), atol=1e-6)


@pytest.mark.parametrize("mode", ["percentile_invert", "nuclei"])
def test_one_channel_view_equals_normalizing_the_whole_image(mode):
    """Per-window apply_norm + channel mean (the lazy view) gives the same pixels as one pass."""
    img, _ = _he_tissue(dense=False)
    off, scale = norm_params(img, mode)
    whole = match_channels(apply_norm(img, off, scale), 1)
    window = match_channels(apply_norm(img[10:30, 5:50], off, scale), 1)
    assert np.allclose(window, whole[10:30, 5:50]) and whole.min() >= -1e-6 and whole.max() <= 1 + 1e-6


def test_percentile_invert_agrees_with_the_lazy_view_channel_mean():
    """The model averages colour channels after the affine map: stats must be those of the gray image."""
    rgb = np.stack([_disks(False), _disks(False) // 3, _disks(False)], axis=-1)
    off, scale = norm_params(rgb, "percentile_invert")
    gray = match_channels(apply_norm(rgb, off, scale), 1)
    assert np.allclose(gray, normalize(rgb.mean(axis=-1), "percentile_invert"), atol=1e-5)


def test_match_channels():
    gray = np.ones((4, 4, 1), np.float32)
    assert match_channels(gray, 3).shape == (4, 4, 3)
    assert match_channels(np.ones((4, 4, 3), np.float32), 1).shape == (4, 4, 1)
    with pytest.raises(InputError, match="has 4 channels but the model expects 3"):
        match_channels(np.ones((4, 4, 4), np.float32), 3)




@pytest.mark.parametrize("mode", ["percentile", "nuclei", "minmax"])
def test_lazy_view_windows_equal_the_whole_network_input(mode):
    img, _ = _he_tissue(dense=True)
    whole = network_input(img, mode, 1).transpose(2, 0, 1)
    view = NormalizedView(img, mode, 1, "x.png")
    assert view.shape == (1, 64, 64)
    np.testing.assert_array_equal(view[:, 7:40, 3:61], whole[:, 7:40, 3:61])
    np.testing.assert_array_equal(np.asarray(view), whole)


def test_view_refuses_a_channel_count_it_cannot_map_naming_the_file():
    with pytest.raises(InputError, match="x.tif: has 3 channels but the model expects 2"):
        NormalizedView(np.zeros((8, 8, 3), np.uint8), "percentile", 2, "x.tif")


def test_arrays_get_what_files_get_rgba_loses_alpha_and_stacks_are_named():
    """#14: the Python API took RGBA arrays the CLI accepts as '4 channels', and read (Z, H, W) as channels."""
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(np.asarray(NormalizedView(rgba, "percentile", 1)),
                                  np.asarray(NormalizedView(rgb, "percentile", 1)))
    gray_alpha = np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)
    np.testing.assert_array_equal(np.asarray(NormalizedView(gray_alpha, "percentile", 1)),
                                  np.asarray(NormalizedView(rgb[..., 0], "percentile", 1)))
    with pytest.raises(InputError, match=r"stack.tif: shape \(25, 64, 64\) looks like a stack of 25 pages"):
        NormalizedView(np.zeros((25, 64, 64), np.uint8), "percentile", 1, "stack.tif")


def _two_stains() -> np.ndarray:
    """(H, W, 2): a dim, flat first channel and the nuclei (bright discs) in the second."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    nuclei = (((yy - 20) ** 2 + (xx - 24) ** 2) < 64) * 180 + rng.integers(0, 20, (48, 48))
    return np.stack([rng.integers(0, 10, (48, 48)), nuclei], axis=-1).astype(np.uint8)


def test_channel_picks_one_channel_of_a_multichannel_array(caplog):
    """#51: an (H, W, 2) array with the nuclei in channel 1 was read as gray + alpha, silently 0 objects."""
    img = _two_stains()
    for channel in (0, 1):
        np.testing.assert_array_equal(np.asarray(NormalizedView(img, "percentile", 1, "a", channel=channel)),
                                      np.asarray(NormalizedView(img[..., channel], "percentile", 1, "a")))
    gray = img[..., 1]
    np.testing.assert_array_equal(np.asarray(NormalizedView(gray, "percentile", 1, channel=0)),
                                  np.asarray(NormalizedView(gray, "percentile", 1)))
    with pytest.raises(InputError, match=r"a: has 2 channel\(s\); channel 2 is out of range \(0..1\)"):
        NormalizedView(img, "percentile", 1, "a", channel=2)
    with caplog.at_level("WARNING", logger="biounet"):  # no channel: the file rule, said out loud
        NormalizedView(img, "percentile", 1, "a")
    assert "a: 2 channels: the second is taken for alpha" in caplog.text and "channel=1" in caplog.text
    caplog.clear()
    opaque = np.dstack([img[..., 1], np.full((48, 48), 255, np.uint8)])  # a real alpha channel: nothing to say
    with caplog.at_level("WARNING", logger="biounet"):
        NormalizedView(opaque, "percentile", 1, "b")
    assert not caplog.text


@pytest.mark.parametrize("channel", [None, 1])
def test_a_channel_first_array_is_refused_with_the_fix(channel):
    chw = np.moveaxis(_two_stains(), -1, 0)  # (2, 48, 48), as torch lays it out
    with pytest.raises(InputError, match=r"x: shape \(2, 48, 48\) looks channel-first \(2, H, W\).*"
                                         r"np\.moveaxis\(image, 0, -1\)"):
        NormalizedView(chw, "percentile", 1, "x", channel=channel)


def test_segment_of_a_channel_first_array_names_the_fix(tiny_run):
    from biounet import load_model

    with pytest.raises(InputError, match=r"looks channel-first .*np\.moveaxis"):
        load_model(tiny_run).segment(np.zeros((2, 40, 40), np.uint8))


def test_the_config_allows_exactly_the_modes_normalize_knows():
    import typing

    from biounet.config import DataConfig
    from biounet.normalize import MODES

    assert typing.get_args(typing.get_type_hints(DataConfig)["normalize"]) == MODES
    for mode in MODES:
        norm_params(np.arange(16, dtype=np.uint8).reshape(4, 4), mode)


def test_the_bioimageio_scale_range_shares_the_percentile_window_and_keeps_the_specs_epsilon():
    from biounet.normalize import SPEC_EPS, percentile_window, scale_range

    x = np.random.default_rng(1).gamma(2.0, 30.0, (2, 1, 24, 32)).astype(np.float32)
    lo, hi = percentile_window(x, (2, 3))
    assert lo.shape == hi.shape == (2, 1, 1, 1)
    assert np.array_equal(scale_range(x), ((x - lo) / (hi - lo + SPEC_EPS)).astype(np.float32))
    offset, scale = norm_params(x[0, 0], "percentile")
    assert offset == pytest.approx(lo[0].item()) and scale == pytest.approx(1 / (hi[0] - lo[0]).item())
