"""Augmentation must move image and labels together and never invent label values."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from biounet.config import AugmentConfig
from biounet.data import transforms as T

# Non-consecutive instance ids: any interpolation between them (or with the
# background) produces values outside this set.
IDS = (3, 7, 250, 1000, 31, 12, 99, 500, 4000, 17)
SEEDS = range(6)


def disc_labels(size: int = 128, seed: int = 0) -> np.ndarray:
    """Overlapping discs with sparse ids, some cut by the border (tests mirroring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), dtype=np.int32)
    centres = rng.uniform(0, size, size=(len(IDS), 2))
    centres[0] = (2, size // 3)  # a disc cut by the top edge
    radii = rng.uniform(size / 16, size / 6, size=len(IDS))
    for value, (cy, cx), r in zip(IDS, centres, radii):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = value
    return labels


def paired(labels: np.ndarray, channels: int = 3) -> np.ndarray:
    """Image whose channel 0 is the foreground mask; other channels carry texture."""
    rng = np.random.default_rng(1)
    image = rng.random((*labels.shape, channels)).astype(np.float32)
    image[..., 0] = labels > 0
    return image


def agreement(image: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((image[..., 0] > 0.5) == (labels > 0)))


def geometry_only(**kw) -> AugmentConfig:
    return dataclasses.replace(AugmentConfig(intensity=False), **kw)


# --------------------------------------------------------------------------- dihedral


def _key(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _rotations(flip: bool) -> list:
    pre = np.fliplr if flip else (lambda a: a)
    return [lambda a, k=k: np.rot90(pre(a), k) for k in range(4)]


@pytest.mark.parametrize(
    ("flips", "rot90", "expected"),
    [
        (True, True, _rotations(False) + _rotations(True)),
        (True, False, [lambda a: a, np.fliplr, np.flipud, lambda a: np.rot90(a, 2)]),
        (False, True, _rotations(False)),
    ],
    ids=["D4", "flips-only", "rot90-only"],
)
def test_flip_rot_draws_exactly_the_allowed_dihedral_elements(flips, rot90, expected):
    base = np.arange(25).reshape(5, 5)  # all 8 dihedral images of it differ
    wanted = {_key(e(base)) for e in expected}
    assert len(wanted) == len(expected)
    seen = set()
    for seed in range(64):
        image, labels = T.random_flip_rot(
            base[..., None].astype(np.float32), base.astype(np.int32), np.random.default_rng(seed),
            flips=flips, rot90=rot90,
        )
        np.testing.assert_array_equal(image[..., 0], labels)  # moved together, exactly
        seen.add(_key(labels.astype(base.dtype)))
    assert seen == wanted


def test_flip_rot_keeps_non_square_shape_and_is_contiguous():
    labels = np.arange(6 * 9, dtype=np.uint16).reshape(6, 9)
    image = np.stack([labels, labels], axis=-1).astype(np.float32)
    image[..., 1] *= -1
    for seed in range(16):
        out_image, out_labels = T.random_flip_rot(image, labels, np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_labels.shape == labels.shape
        assert out_image.flags.c_contiguous and out_labels.flags.c_contiguous
        assert out_labels.dtype == np.uint16
        np.testing.assert_array_equal(out_image[..., 0], out_labels)
        np.testing.assert_array_equal(out_image[..., 1], -out_labels.astype(np.float32))


# --------------------------------------------------------------------------- warp conventions


def test_quarter_turn_of_the_warp_equals_np_rot90():
    labels = disc_labels(64)
    image = paired(labels)
    for angle, k in ((90.0, 1), (-90.0, 3), (180.0, 2)):
        coords = T.warp_coordinates(labels.shape, labels.shape, angle_deg=angle)
        out_image, out_labels = T.warp(image, labels, coords)
        np.testing.assert_array_equal(out_labels, np.rot90(labels, k))
        np.testing.assert_allclose(out_image, np.rot90(image, k), atol=1e-5)


def test_zero_displacement_gives_the_plain_affine_map():
    args = ((40, 50), (30, 20), 33.0, 0.9, (1.5, -2.0))
    np.testing.assert_allclose(
        T.warp_coordinates(*args, displacement=np.zeros((2, 30, 20))), T.warp_coordinates(*args), atol=1e-12
    )


def test_shift_moves_content_and_mirrors_at_the_border():
    labels = disc_labels(32)
    image = paired(labels)
    coords = T.warp_coordinates(labels.shape, labels.shape, shift=(2.0, 0.0))
    out_image, out_labels = T.warp(image, labels, coords)
    np.testing.assert_array_equal(out_labels[:-2], labels[2:])  # output row i reads input row i + 2
    np.testing.assert_array_equal(out_labels[-2:], labels[::-1][:2])  # half-sample mirror
    np.testing.assert_array_equal(out_image, image[np.r_[2:32, 31, 30]])


def test_scale_above_one_zooms_in():
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    labels = ((yy - c) ** 2 + (xx - c) ** 2 <= 15**2).astype(np.int32)
    coords = T.warp_coordinates(labels.shape, labels.shape, scale=1.25)
    _, out_labels = T.warp(paired(labels), labels, coords)
    assert out_labels.sum() / labels.sum() == pytest.approx(1.25**2, rel=0.05)


# --------------------------------------------------------------------------- affine + elastic


@pytest.mark.parametrize(
    "cfg",
    [
        geometry_only(),
        geometry_only(elastic=False),
        geometry_only(affine=False),
        geometry_only(flips=False, rot90=False),
    ],
    ids=["all", "affine", "elastic", "no-dihedral"],
)
def test_image_and_labels_stay_aligned(cfg):
    labels = disc_labels()
    image = paired(labels)
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        out_image, out_labels = T.augment(image, labels, rng, cfg)
        assert agreement(out_image, out_labels) >= 0.99, seed
        # the warp really did something
        assert not np.array_equal(out_labels, labels)


def test_random_affine_elastic_alone_stays_aligned():
    labels = disc_labels()
    image = paired(labels)
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        out_image, out_labels = T.random_affine_elastic(image, labels, rng, AugmentConfig())
        assert agreement(out_image, out_labels) >= 0.99, seed


def test_labels_are_never_interpolated():
    labels = disc_labels()
    allowed = set(np.unique(labels).tolist())
    for seed in SEEDS:
        _, out_labels = T.augment(paired(labels), labels, np.random.default_rng(seed), AugmentConfig())
        assert set(np.unique(out_labels).tolist()) <= allowed, seed


@pytest.mark.parametrize("label_dtype", [np.int32, np.uint16, np.int64, np.bool_])
@pytest.mark.parametrize("image_dtype", [np.float32, np.float64, np.float16])
def test_shapes_dtypes_and_fresh_contiguous_buffers(image_dtype, label_dtype):
    labels = disc_labels(48)
    labels = (labels > 0) if label_dtype is np.bool_ else labels.astype(label_dtype)
    image = paired(disc_labels(48)).astype(image_dtype)
    before_image, before_labels = image.copy(), labels.copy()
    nothing = AugmentConfig(flips=False, rot90=False, affine=False, elastic=False, intensity=False)
    for cfg in (AugmentConfig(), nothing):
        out_image, out_labels = T.augment(image, labels, np.random.default_rng(0), cfg)
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert out_labels.shape == labels.shape and out_labels.dtype == labels.dtype
        assert out_image.flags.c_contiguous and out_labels.flags.c_contiguous
        assert not np.shares_memory(out_image, image) and not np.shares_memory(out_labels, labels)
    np.testing.assert_array_equal(image, before_image)  # inputs untouched
    np.testing.assert_array_equal(labels, before_labels)


def test_same_seed_same_result_different_seed_different_result():
    labels = disc_labels()
    image = paired(labels)
    a = T.augment(image, labels, np.random.default_rng(5), AugmentConfig())
    b = T.augment(image, labels, np.random.default_rng(5), AugmentConfig())
    c = T.augment(image, labels, np.random.default_rng(6), AugmentConfig())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_elastic_with_zero_sigma_and_no_affine_is_the_identity():
    labels = disc_labels(64)
    image = np.random.default_rng(2).normal(size=(64, 64, 2)).astype(np.float32)
    cfg = AugmentConfig(affine=False, elastic=True, elastic_sigma=0.0)
    out_image, out_labels = T.random_affine_elastic(image, labels, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)


def test_out_shape_takes_a_centred_patch_from_a_larger_context():
    labels = disc_labels(96)
    image = paired(labels)
    out_image, out_labels = T.random_affine_elastic(
        image, labels, np.random.default_rng(3), AugmentConfig(), out_shape=(64, 48)
    )
    assert out_image.shape == (64, 48, 3) and out_labels.shape == (64, 48)
    assert agreement(out_image, out_labels) >= 0.99
    # no warp: exactly the central window
    cfg = AugmentConfig(affine=False, elastic=True, elastic_sigma=0.0)
    _, centre = T.random_affine_elastic(image, labels, np.random.default_rng(3), cfg, out_shape=(64, 48))
    np.testing.assert_array_equal(centre, labels[16:80, 24:72])


# --------------------------------------------------------------------------- displacement field


def test_elastic_field_is_smooth():
    sigma = 10.0
    for seed in range(20):
        d = T.elastic_displacement((128, 128), np.random.default_rng(seed), sigma, 3)
        assert d.shape == (2, 128, 128)
        first = max(np.abs(np.diff(d, axis=1)).max(), np.abs(np.diff(d, axis=2)).max())
        second = max(np.abs(np.diff(d, 2, axis=1)).max(), np.abs(np.diff(d, 2, axis=2)).max())
        # Per-pixel Gaussian noise would jump by ~sigma between neighbours.
        assert first < 0.15 * sigma, seed
        assert second < 0.02 * sigma, seed
        assert np.abs(d).max() > 0.5 * sigma  # and it is not trivially zero


def test_separable_upsampling_equals_2d_cubic_zoom_and_hits_the_nodes():
    coarse = np.random.default_rng(0).normal(0, 10, size=(2, 3, 3))
    d = T.upsample_displacement(coarse, (129, 65))
    for i in range(2):
        np.testing.assert_allclose(
            d[i], ndi.zoom(coarse[i], (129 / 3, 65 / 3), order=3, mode="mirror"), atol=1e-9
        )
    np.testing.assert_allclose(d[:, ::64, ::32], coarse, atol=1e-9)  # nodes at 0, mid, end


# --------------------------------------------------------------------------- intensity


def test_intensity_touches_the_image_only():
    labels = disc_labels()
    image = paired(labels)
    for seed in SEEDS:
        with_int = T.augment(image, labels, np.random.default_rng(seed), AugmentConfig(intensity=True))
        without = T.augment(image, labels, np.random.default_rng(seed), AugmentConfig(intensity=False))
        np.testing.assert_array_equal(with_int[1], without[1])
        assert not np.array_equal(with_int[0], without[0])


@pytest.mark.parametrize("zscored", [False, True])
def test_intensity_jitter_is_mild_and_keeps_structure(zscored):
    image = paired(disc_labels(64))
    if zscored:
        image = (image - image.mean()) / image.std()
    before = image.copy()
    for seed in range(10):
        out = T.random_intensity(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == image.dtype and out.flags.c_contiguous
        assert not np.array_equal(out, image)
        # monotone-ish transforms plus small noise: the content is still the same picture
        assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.9
        assert abs(out.mean() - image.mean()) < 0.5 * image.std()
    np.testing.assert_array_equal(image, before)


def test_intensity_leaves_a_constant_image_alone():
    image = np.full((8, 8, 1), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(T.random_intensity(image, np.random.default_rng(0)), image)


# --------------------------------------------------------------------------- helpers and errors


def test_crop_matches_slicing_and_refuses_to_leave_the_array():
    labels = disc_labels(32)
    image = paired(labels)
    out_image, out_labels = T.crop(image, labels, 4, 6, (10, 12))
    np.testing.assert_array_equal(out_image, image[4:14, 6:18])
    np.testing.assert_array_equal(out_labels, labels[4:14, 6:18])
    with pytest.raises(ValueError, match="leaves"):
        T.crop(image, labels, 30, 0, 4)


def test_bad_inputs_raise_clear_errors():
    labels = disc_labels(16)
    image = paired(labels)
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="labels must be integer"):
        T.augment(image, labels.astype(np.float32), rng, AugmentConfig())
    with pytest.raises(TypeError, match="image must be floating"):
        T.augment((image * 255).astype(np.uint8), labels, rng, AugmentConfig())
    with pytest.raises(ValueError, match="differ"):
        T.augment(image, labels[:8], rng, AugmentConfig())
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        T.augment(image[..., 0], labels, rng, AugmentConfig())
    with pytest.raises(ValueError, match="elastic_grid"):
        T.augment(image, labels, rng, AugmentConfig(elastic_grid=1))


# --------------------------------------------------------------------------- stain jitter
def _he_like(seed: int = 0) -> np.ndarray:
    """A light pink background with purple blobs, as an H&E image shows nuclei."""
    rng = np.random.default_rng(seed)
    img = np.empty((40, 50, 3), np.uint8)
    img[:] = (235, 200, 220)
    yy, xx = np.mgrid[:40, :50]
    for cy, cx in ((10, 12), (25, 30), (30, 10)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = (110, 60, 160)
    return np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_stain_jitter_of_strength_zero_gives_the_image_back(dtype):
    img = _he_like().astype(dtype) * (257 if dtype == np.uint16 else 1)
    img = np.concatenate([img, np.full(img.shape[:2] + (1,), 7, dtype)], -1)  # an alpha channel passes through
    out = T.random_stain(img, np.random.default_rng(0), 0.0)
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_allclose(out.astype(float), img.astype(float), atol=1 if dtype != np.float32 else 1e-3)


def test_stain_jitter_scales_and_shifts_each_stain_density():
    """In Ruifrok's stain space the output is the input's densities times the drawn scale plus the shift."""
    from skimage.color import hed_from_rgb

    img = _he_like()
    out = T.random_stain(img, np.random.default_rng(3), 0.2)
    draw = np.random.default_rng(3)
    scale, shift = draw.uniform(0.8, 1.2, 3), draw.uniform(-0.2, 0.2, 3)

    def stains(x):
        return -np.log(np.maximum(x.astype(float) / 255, 1e-6)) @ hed_from_rgb

    inside = (out > 5).all(-1) & (out < 250).all(-1)  # away from rounding at the ends of the range
    err = np.abs(stains(out) - (stains(img) * scale + shift))[inside]
    assert np.median(err) < 0.01 and not np.allclose(out, img, atol=5)
    assert np.array_equal(out, T.random_stain(img, np.random.default_rng(3), 0.2))  # seeded


def test_stain_jitter_refuses_gray_images():
    with pytest.raises(ValueError, match="RGB"):
        T.random_stain(np.zeros((8, 8, 1), np.uint8), np.random.default_rng(0), 0.1)


# --------------------------------------------------------------------------- context (augment.context)


@pytest.mark.parametrize("kw", [{}, {"scale_range": (0.5, 2.0)}, {"elastic": False}, {"affine": False},
                                {"elastic_sigma": 25.0}], ids=["default", "wide-zoom", "affine", "elastic", "sigma25"])
def test_context_margin_holds_every_warp_the_config_draws(monkeypatch, kw):
    """No sampled coordinate leaves the crop of patch + 2 margins, so no mirrored content enters the patch;
    and the margin is not loose: the farthest coordinate reaches into its outer half."""
    cfg = geometry_only(**kw)
    size = 64
    m = T.context_margin(size, cfg)
    seen = []
    real_warp = T.warp
    monkeypatch.setattr(T, "warp", lambda image, labels, coords: seen.append(coords) or real_warp(image, labels, coords))
    labels = np.zeros((size + 2 * m,) * 2, np.int32)
    for seed in range(200):
        T.augment(paired(labels, 1), labels, np.random.default_rng(seed), cfg, out_shape=(size, size))
    coords = np.stack(seen)
    assert coords.min() >= 0 and coords.max() <= size + 2 * m - 1
    assert np.abs(coords - (size + 2 * m - 1) / 2).max() - (size - 1) / 2 > m / 2


def test_context_margin_is_zero_without_a_warp():
    assert T.context_margin(64, geometry_only(affine=False, elastic=False)) == 0


@pytest.mark.parametrize("top,left", [(0, 0), (-7, 3), (-25, -40), (5, 12)])
def test_crop_mirrored_equals_a_symmetric_pad_then_a_slice(top, left):
    arr = np.arange(10 * 12).reshape(10, 12)
    padded = np.pad(arr, 60, mode="symmetric")
    np.testing.assert_array_equal(T.crop_mirrored(arr, top, left, 30, 20), padded[60 + top : 90 + top, 60 + left : 80 + left])


def test_augment_with_out_shape_keeps_image_and_labels_aligned():
    labels = disc_labels(160)
    image = paired(labels)
    for seed in SEEDS:
        out_image, out_labels = T.augment(image, labels, np.random.default_rng(seed), geometry_only(), out_shape=(64, 64))
        assert out_image.shape == (64, 64, 3) and out_labels.shape == (64, 64)
        assert agreement(out_image, out_labels) >= 0.99, seed
    with pytest.raises(ValueError, match="out_shape"):
        T.augment(image, labels, np.random.default_rng(0), geometry_only(affine=False, elastic=False), out_shape=(64, 64))


def test_scale_range_sets_the_zoom_drawn():
    """The drawn zoom stays in augment.scale_range, log-uniform (as many zoom-ins as zoom-outs)."""
    rng = np.random.default_rng(0)
    scales = np.array([T._draw_affine(rng, (64, 64), (0.5, 2.0))[1] for _ in range(2000)])
    assert scales.min() >= 0.5 and scales.max() <= 2.0 and scales.min() < 0.55 and scales.max() > 1.8
    assert 0.45 < np.mean(scales > 1) < 0.55
