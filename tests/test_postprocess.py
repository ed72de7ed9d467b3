"""Probabilities -> masks / instances, and threshold tuning, on tiny synthetic maps."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from biounet.config import PostConfig
from biounet.data.targets import border_target
from biounet.io import open_array
from biounet.postprocess import (
    cells_from_membrane,
    blockwise_layout,
    label_blockwise,
    connected_components,
    fill_holes,
    instances_from_border_probs,
    instances_from_prob,
    relabel_sequential,
    remove_small,
    segment,
    threshold_mask,
    tune_thresholds,
)

INSTANCES = PostConfig(mode="instances", threshold=0.5, seed_threshold=0.7, min_size=5, fill_holes=True)


def _touching_disks(shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    """Two overlapping disks (radius 10, centres 18 px apart): one blob, two nuclei."""
    labels = np.zeros(shape, dtype=np.int32)
    labels[disk((20, 18), 10, shape=shape)] = 1
    labels[disk((20, 36), 10, shape=shape)] = 2  # overwrites the overlap: a straight shared edge
    return labels


def _border_probs(labels: np.ndarray, smooth: float = 1.0, contours: bool = False) -> np.ndarray:
    """A plausible (3, H, W) softmax: the one-hot border3 (or contour3) target, blurred and renormalised."""
    onehot = np.stack([border_target(labels, 2, contours) == c for c in range(3)]).astype(np.float64)
    probs = np.stack([ndimage.gaussian_filter(ch, smooth) for ch in onehot]) + 1e-3
    return probs / probs.sum(0, keepdims=True)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering of the objects."""
    return np.array_equal(relabel_sequential(a), relabel_sequential(b))


def _mean_best_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Stand-in instance score: each truth object's best IoU, averaged over max(#truth, #pred)."""
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    if len(t_ids) == 0 and len(p_ids) == 0:
        return 1.0
    total = 0.0
    for t in t_ids:
        tm = truth == t
        total += max((np.sum(tm & (pred == p)) / np.sum(tm | (pred == p)) for p in p_ids), default=0.0)
    return total / max(len(t_ids), len(p_ids))


# --- building blocks ---------------------------------------------------------

def test_threshold_mask_is_strict():
    np.testing.assert_array_equal(threshold_mask(np.array([0.4, 0.5, 0.6]), 0.5), [False, False, True])


def test_remove_small_drops_specks_and_keeps_ids():
    lab = np.zeros((10, 10), dtype=np.int32)
    lab[1:5, 1:5] = 3  # 16 px
    lab[8, 8] = 4  # 1 px speck
    lab[7:9, 1:3] = 9  # 4 px
    out = remove_small(lab, min_size=5)
    assert set(np.unique(out)) == {0, 3}
    assert (out[1:5, 1:5] == 3).all()


def test_fill_holes_per_object_keeps_nested_object():
    lab = np.zeros((12, 12), dtype=np.int32)
    lab[1:10, 1:10] = 1
    lab[3:8, 3:8] = 0  # hole
    lab[5, 5] = 2  # another object inside the hole
    out = fill_holes(lab)
    assert (out[1:10, 1:10] > 0).all()
    assert out[5, 5] == 2
    assert (out[3:8, 3:8][out[3:8, 3:8] != 2] == 1).all()


def test_relabel_sequential_gives_1_to_n():
    lab = np.array([[0, 7, 7], [100, 0, 3]])
    out = relabel_sequential(lab)
    assert sorted(np.unique(out)) == [0, 1, 2, 3]
    assert _same_partition(out, lab) and out.dtype == np.int32


# --- instances ----------------------------------------------------------------

def test_border_probs_split_touching_disks_that_components_merge():
    truth = _touching_disks()
    probs = _border_probs(truth)
    assert connected_components(threshold_mask(1 - probs[0], 0.5)).max() == 1
    labels = instances_from_border_probs(probs, INSTANCES)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert _mean_best_iou(truth, labels) > 0.9


def test_contour_probs_split_touching_disks_and_restore_their_full_extent():
    """contour3 seeds are shrunk objects; the watershed must grow them back over the outline band."""
    truth = _touching_disks()
    probs = _border_probs(truth, contours=True)
    labels = instances_from_border_probs(probs, INSTANCES)
    assert labels.max() == 2
    assert _mean_best_iou(truth, labels) > 0.9
    assert abs(int((labels > 0).sum()) - int((truth > 0).sum())) < 0.05 * (truth > 0).sum()


def test_contact_probs_are_foreground_and_split_like_the_border():
    """4 classes: the contact class is neither interior nor background, so it cuts and is grown over."""
    truth = _touching_disks()
    probs = _border_probs(truth, contours=True)
    contact = np.zeros_like(probs[2])
    contact[:, 26:29] = probs[2][:, 26:29]  # hand the band along the shared edge to a contact class
    four = np.stack([probs[0], probs[1], probs[2] - contact, contact])
    labels = instances_from_border_probs(four, INSTANCES)
    np.testing.assert_array_equal(labels, instances_from_border_probs(probs, INSTANCES))
    np.testing.assert_array_equal(segment(four, INSTANCES), labels)
    with pytest.raises(ValueError, match="4, H, W"):
        instances_from_border_probs(np.concatenate([four, contact[None]]), INSTANCES)


def _weak_border_probs(truth: np.ndarray, dip: float) -> np.ndarray:
    """Touching disks whose shared border the network only half saw: interior dips to ``dip`` there."""
    probs = _border_probs(truth, contours=True)
    interior = ndimage.gaussian_filter((truth > 0).astype(float), 1.0)
    interior[:, 26:29] = np.minimum(interior[:, 26:29], dip)  # the shared edge, columns 26..28
    rest = 1.0 - interior
    return np.stack([rest * probs[0] / (probs[0] + probs[2]), interior, rest * probs[2] / (probs[0] + probs[2])])


def test_seed_h_splits_a_seed_at_a_dip_the_seed_threshold_misses():
    truth = _touching_disks()
    probs = _weak_border_probs(truth, dip=0.8)  # stays above seed_threshold 0.7: one seed
    assert instances_from_border_probs(probs, INSTANCES).max() == 1
    split = instances_from_border_probs(probs, dataclasses.replace(INSTANCES, seed_h=0.1))
    assert split.max() == 2 and _mean_best_iou(truth, split) > 0.85
    # a dip shallower than seed_h is no cut: the two peaks stay one seed
    assert instances_from_border_probs(probs, dataclasses.replace(INSTANCES, seed_h=0.3)).max() == 1


def test_seed_h_leaves_a_single_disk_whole():
    truth = np.zeros((40, 40), dtype=np.int32)
    truth[disk((20, 20), 12, shape=truth.shape)] = 1
    probs = _border_probs(truth, contours=True)
    rng = np.random.default_rng(0)
    bumps = ndimage.gaussian_filter(rng.normal(0, 1, probs[1].shape), 2.0)
    probs[1] = np.clip(probs[1] + 0.02 * bumps / bumps.std(), 0, 1)  # a smoothly bumpy plateau, as networks give
    for h in (0.05, 0.1, 0.2):
        assert instances_from_border_probs(probs, dataclasses.replace(INSTANCES, seed_h=h)).max() == 1


def test_min_score_drops_a_faint_object_and_keeps_a_sure_one():
    truth = np.zeros((40, 60), dtype=np.int32)
    truth[disk((20, 15), 8, shape=truth.shape)] = 1
    truth[disk((20, 45), 8, shape=truth.shape)] = 2
    probs = _border_probs(truth, contours=True)
    faint = truth == 2  # the network is only 70 % sure of the second nucleus
    probs[0][faint] = 0.3
    probs[1:, faint] *= 0.7 / probs[1:, faint].sum(0)
    loose = dataclasses.replace(INSTANCES, seed_threshold=0.3)
    assert instances_from_border_probs(probs, loose).max() == 2
    kept = instances_from_border_probs(probs, dataclasses.replace(loose, min_score=0.8))
    assert kept.max() == 1 and (kept[truth == 1] > 0).mean() > 0.9 and not kept[faint].any()


def test_distance_watershed_splits_touching_disks():
    truth = _touching_disks()
    prob = np.where(truth > 0, 0.9, 0.1)
    assert connected_components(prob > 0.5).max() == 1
    labels = instances_from_prob(prob, INSTANCES)
    assert labels.max() == 2
    assert _mean_best_iou(truth, labels) > 0.85


def test_distance_watershed_keeps_an_ellipse_whole():
    yy, xx = np.mgrid[:40, :60]
    prob = (((yy - 20) / 8.0) ** 2 + ((xx - 30) / 22.0) ** 2 <= 1).astype(float)
    assert instances_from_prob(prob, INSTANCES).max() == 1


def test_unseeded_component_still_becomes_an_object():
    truth = np.zeros((30, 40), dtype=np.int32)
    truth[disk((15, 10), 6)] = 1
    truth[disk((15, 30), 5)] = 2
    probs = _border_probs(truth)
    faint = truth == 2  # foreground, but never confident enough to seed
    probs[:, faint] = np.array([0.2, 0.5, 0.3])[:, None]
    labels = instances_from_border_probs(probs, INSTANCES)
    assert labels.max() == 2
    assert (labels[faint] > 0).all()


def test_instances_are_hole_filled_small_free_and_sequential():
    prob = np.zeros((40, 40))
    prob[disk((12, 12), 8)] = 0.9
    prob[10:14, 10:14] = 0.0  # hole
    prob[disk((30, 30), 6)] = 0.9
    prob[2, 37] = prob[3, 37] = 0.9  # 2 px speck
    labels = instances_from_prob(prob, INSTANCES)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels[10:14, 10:14] > 0).all()
    assert labels[2, 37] == 0
    kept = instances_from_prob(prob, dataclasses.replace(INSTANCES, fill_holes=False, min_size=0))
    assert (kept[10:14, 10:14] == 0).all() and kept[2, 37] > 0


# --- dispatcher ---------------------------------------------------------------

def test_segment_mask_mode_gives_uint8_255():
    prob = np.array([[[0.2, 0.8], [0.9, 0.1]]])
    out = segment(prob, PostConfig(mode="mask", threshold=0.5))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 255], [255, 0]])
    np.testing.assert_array_equal(segment(prob[0], PostConfig(mode="mask")), out)


def test_segment_instances_routes_on_channel_count():
    truth = _touching_disks()
    probs = _border_probs(truth)
    np.testing.assert_array_equal(segment(probs, INSTANCES), instances_from_border_probs(probs, INSTANCES))
    prob = np.where(truth > 0, 0.9, 0.1)[None]
    np.testing.assert_array_equal(segment(prob, INSTANCES), instances_from_prob(prob[0], INSTANCES))
    with pytest.raises(ValueError, match="mode"):
        segment(prob, PostConfig(mode="blobs"))


# --- tuning ---------------------------------------------------------------------

def _bridged_squares() -> tuple[np.ndarray, np.ndarray]:
    """Two squares (p=0.6) joined by a bridge (p=0.4): only threshold 0.5 gives the truth."""
    truth = np.zeros((20, 30), dtype=np.int32)
    truth[5:15, 3:11] = 1
    truth[5:15, 19:27] = 2
    prob = np.where(truth > 0, 0.6, 0.05)
    prob[9:11, 11:19] = 0.4
    return prob, truth


def test_tune_thresholds_finds_the_only_correct_threshold():
    prob, truth = _bridged_squares()

    def post(p: np.ndarray, cfg: PostConfig) -> np.ndarray:
        return connected_components(threshold_mask(p, cfg.threshold))

    base = PostConfig(mode="instances", min_size=3)
    best, score = tune_thresholds([prob, prob], [truth, truth], post, _mean_best_iou,
                                  {"threshold": [0.3, 0.5, 0.7]}, base)
    assert best.threshold == 0.5 and score == pytest.approx(1.0)
    assert best.min_size == 3 and best.mode == "instances"  # untouched fields come from base


def test_tune_thresholds_searches_every_combination():
    truth = _touching_disks()
    probs = _border_probs(truth)
    grid = {"threshold": [0.5], "seed_threshold": [0.01, 0.7]}  # a 0.01 seed floods both disks as one
    best, score = tune_thresholds([probs], [truth], instances_from_border_probs, _mean_best_iou, grid, INSTANCES)
    assert best.seed_threshold == 0.7 and score > 0.9


def test_tune_thresholds_rejects_bad_input():
    prob, truth = _bridged_squares()
    post, score = (lambda p, c: p > c.threshold), _mean_best_iou
    with pytest.raises(ValueError, match="not PostConfig fields"):
        tune_thresholds([prob], [truth], post, score, {"thresh": [0.5]}, PostConfig())
    with pytest.raises(ValueError, match="ground truths"):
        tune_thresholds([prob], [], post, score, {"threshold": [0.5]}, PostConfig())


# ---- block-wise labelling -----------------------------------------------------
def split_touching(mask: np.ndarray) -> np.ndarray:
    """Seeds from erosion; each pixel joins the nearest seed centroid of its own component.

    A component without a seed (a fragment cut by the window) stays one object.
    Ties go to the lower seed label, i.e. the seed first in raster order, so the
    result is exactly translation-equivariant. (skimage's watershed is not: it
    breaks ties between equal-priority pixels by flooding history, which depends
    on the window, so a contact pixel can change owner between windows.)
    """
    comps, n_comps = ndimage.label(mask)
    seeds, n = ndimage.label(ndimage.binary_erosion(mask, iterations=2))
    pix = np.argwhere(mask)
    labels = np.zeros(mask.shape, np.int64)
    labels[mask] = n + comps[mask]  # seedless components keep their own label
    if n:
        centres = np.array(ndimage.center_of_mass(mask, seeds, range(1, n + 1)))
        seed_comp = np.array(ndimage.maximum(comps, seeds, range(1, n + 1)))
        d2 = ((pix[:, None, :] - centres[None]) ** 2).sum(-1)
        d2[comps[mask][:, None] != seed_comp[None]] = np.inf
        has_seed = np.isfinite(d2).any(1)
        labels[tuple(pix[has_seed].T)] = d2[has_seed].argmin(1) + 1
    return labels


def touching_discs(shape=(96, 110), r=6) -> np.ndarray:
    yy, xx = np.indices(shape)
    mask = np.zeros(shape, bool)
    # pairs of touching discs straddling the block seams at 32 and 64, plus one on a corner
    centres = [(32, 20), (32, 32), (20, 64), (32, 64), (64, 64), (64, 76), (5, 5), (90, 100), (58, 106)]
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: a one-to-one label mapping, background to background."""
    if ((a == 0) != (b == 0)).any():
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist()))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def test_blockwise_labels_equal_whole_image_labels():
    mask = touching_discs()
    whole = split_touching(mask)
    assert whole.max() == 9  # the label function separates the touching pairs
    blocks = label_blockwise(mask, split_touching, block=32, halo=26)
    assert blocks.max() == 9
    assert same_partition(whole, blocks)


def test_blockwise_labels_stream_into_a_memmap(tmp_path):
    mask = touching_discs()
    out = open_array(mask.shape, np.int32, tmp_path / "labels.npy")
    label_blockwise(mask, lambda m: ndimage.label(m)[0], block=40, halo=30, out=out)
    assert same_partition(ndimage.label(mask)[0], np.asarray(out))


@pytest.mark.parametrize("diameter,expect", [(0, (2048, 128)), (17.3, (2048, 128)), (50, (2048, 200)),
                                             (100, (3200, 400))])
def test_blockwise_layout_grows_with_the_objects(diameter, expect):
    assert blockwise_layout(diameter) == expect


def test_blockwise_layout_halo_keeps_big_touching_objects_whole():
    """Objects of diameter d: with blockwise_layout(d)'s halo the blocks agree with one whole-image pass."""
    d = 40
    yy, xx = np.indices((400, 400))
    mask = np.zeros((400, 400), bool)
    for cy, cx in [(150, 130), (150, 169), (250, 250), (289, 250)]:  # touching pairs across a seam at 200
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (d // 2) ** 2
    _, halo = blockwise_layout(d)
    assert same_partition(split_touching(mask), label_blockwise(mask, split_touching, block=200, halo=halo))


# ---- EM cells from a membrane probability -------------------------------------------
def test_cells_from_membrane_covers_every_pixel_and_splits_at_the_ridge():
    prob = np.full((20, 30), 0.1, np.float32)
    prob[:, 14:16] = 0.9  # a membrane column: two cells
    prob[5, 5] = 0.95  # a lone bright speck inside a cell is not a membrane
    cells = cells_from_membrane(prob, PostConfig(threshold=0.5, min_size=10))
    assert cells.dtype == np.int32 and cells.min() == 1 and cells.max() == 2  # no background, two cells
    assert (cells[:, :14] == cells[0, 0]).all() and (cells[:, 16:] == cells[0, 29]).all()
    # a seed smaller than min_size joins its neighbour instead of becoming a cell
    prob[2:4, 25:27] = 0.95
    prob[3, 26] = 0.2  # a 1-pixel "cell" inside the speck
    assert cells_from_membrane(prob, PostConfig(threshold=0.5, min_size=10)).max() == 2
    assert (cells_from_membrane(np.ones((4, 4), np.float32), PostConfig()) == 1).all()  # no seed: one cell
