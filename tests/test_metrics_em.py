"""ISBI 2012 V_rand / V_info on hand-computed splits and merges, and the thinned evaluation."""
import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error

from biounet.metrics import (
    RandInfo,
    cells_from_membrane_mask,
    em_scores,
    evaluate_membranes,
    v_info,
    v_rand,
)


def row(*labels):
    return np.array([labels], dtype=np.int32)


def test_identical_is_perfect():
    seg = row(1, 1, 2, 2, 3, 3, 3, 3)
    assert em_scores(seg, seg) == RandInfo(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_merge_of_two_2x2_cells():
    # n = 8; p_ij = 1/2, 1/2; truth sizes 1/2, 1/2; one predicted segment of size 1.
    # Rand split = 0.5 / 0.5 = 1; merge = 0.5 / 1 = 0.5; F = 2/3.
    truth = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = np.ones_like(truth)
    s = em_scores(truth, pred)
    assert s.v_rand_split == pytest.approx(1.0)
    assert s.v_rand_merge == pytest.approx(0.5)
    assert s.v_rand == pytest.approx(2 / 3)
    # H(S) = 0 (nothing can be split); I = 0 so the merge part is 0.
    assert s.v_info_split == 1.0
    assert s.v_info_merge == pytest.approx(0.0)
    assert s.v_info == pytest.approx(0.0)


def test_merge_of_two_of_three_cells():
    # Truth sizes 2, 2, 4 (of 8); pred merges the first two: sizes 4, 4.
    # sum p^2 = sum t^2 = 24/64, sum s^2 = 32/64 -> split 1, merge 0.75.
    # H(T) = 1.5 bit, H(S) = 1 bit, I = 1 bit -> info split 1, merge 2/3.
    truth = row(1, 1, 2, 2, 3, 3, 3, 3)
    pred = row(5, 5, 5, 5, 9, 9, 9, 9)
    s = em_scores(truth, pred)
    assert (s.v_rand_split, s.v_rand_merge) == pytest.approx((1.0, 0.75))
    assert s.v_rand == pytest.approx(6 / 7)
    assert (s.v_info_split, s.v_info_merge) == pytest.approx((1.0, 2 / 3))
    assert s.v_info == pytest.approx(0.8)


def test_split_of_one_cell():
    # The mirror image of the merge case: pred splits the first true cell in two.
    truth = row(1, 1, 1, 1, 2, 2, 2, 2)
    pred = row(1, 1, 2, 2, 3, 3, 3, 3)
    s = em_scores(truth, pred)
    assert (s.v_rand_split, s.v_rand_merge) == pytest.approx((0.75, 1.0))
    assert (s.v_info_split, s.v_info_merge) == pytest.approx((2 / 3, 1.0))
    assert v_rand(truth, pred) == pytest.approx(6 / 7)
    assert v_info(truth, pred) == pytest.approx(0.8)


def test_unassigned_pred_pixels_are_singletons():
    truth = row(1, 1, 1, 1)
    s = em_scores(truth, np.zeros_like(truth))
    # Four singleton segments: sum p^2 = sum s^2 = 4/16, sum t^2 = 1.
    assert (s.v_rand_split, s.v_rand_merge) == pytest.approx((0.25, 1.0))
    assert s.v_info_split == pytest.approx(0.0)


def test_no_truth_foreground_scores_one():
    z = np.zeros((3, 3), dtype=np.int32)
    assert em_scores(z, z + 4) == RandInfo(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def _random_segs(seed=0, shape=(24, 24)):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, size=shape)  # 0 = ignored membrane
    pred = rng.integers(1, 5, size=shape)
    pred[truth == 1] = 7  # some structure so the scores are not trivial
    return truth, pred


def test_invariant_to_label_permutation():
    truth, pred = _random_segs()
    ref = em_scores(truth, pred)
    perm_t = np.array([0, 50, 3, 999, 2, 1])  # keeps 0 as the ignored label
    perm_p = np.arange(8)[::-1] + 100
    for t, p in [(perm_t[truth], pred), (truth, perm_p[pred]), (perm_t[truth], perm_p[pred])]:
        got = em_scores(t, p)
        for key in ref.__dataclass_fields__:
            assert getattr(got, key) == pytest.approx(getattr(ref, key))


def test_truth_background_pixels_do_not_count():
    truth, pred = _random_segs(1)
    ref = em_scores(truth, pred)
    changed = pred.copy()
    changed[truth == 0] = 42  # anything on the truth membrane is ignored
    padded_t = np.pad(truth, 5)  # more membrane, with arbitrary predicted labels
    padded_p = np.pad(pred, 5, constant_values=3)
    for t, p in [(truth, changed), (padded_t, padded_p)]:
        got = em_scores(t, p)
        for key in ref.__dataclass_fields__:
            assert getattr(got, key) == pytest.approx(getattr(ref, key))


def test_agrees_with_skimage_adapted_rand_error():
    # Large segments: skimage counts pixel pairs (subtracting n), we use squared
    # probabilities; the difference is O(1 / segment size).
    truth = np.zeros((128, 128), dtype=np.int32)
    for i in range(4):
        for j in range(2):
            truth[32 * i : 32 * i + 30, 64 * j : 64 * j + 62] = 1 + 2 * i + j
    pred = np.zeros_like(truth)
    pred[:64, :] = 1  # merges four true cells
    pred[64:, :40], pred[64:, 40:] = 2, 3  # splits the lower-left cells
    s = em_scores(truth, pred)
    are, sk_prec, sk_rec = adapted_rand_error(truth, pred, ignore_labels=(0,))
    assert s.v_rand == pytest.approx(1 - are, abs=2e-3)
    # skimage's "precision" divides by the truth marginal: our split part.
    assert s.v_rand_split == pytest.approx(sk_prec, abs=2e-3)
    assert s.v_rand_merge == pytest.approx(sk_rec, abs=2e-3)
    assert s.v_rand_split < 1 and s.v_rand_merge < 1


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(1, 4\).*\(1, 3\)"):
        em_scores(row(1, 1, 2, 2), row(1, 1, 2))


# --- thinned evaluation -------------------------------------------------------


def test_cells_from_membrane_mask_fills_membrane():
    cells = np.ones((5, 7), dtype=bool)
    cells[:, 3] = False
    lab = cells_from_membrane_mask(cells)
    assert lab.dtype == np.int32 and lab.shape == cells.shape
    assert lab.min() > 0
    left, right = np.unique(lab[:, :3]), np.unique(lab[:, 4:])
    assert left.size == right.size == 1 and left[0] != right[0]
    assert set(np.unique(lab[:, 3])) <= {left[0], right[0]}


def test_cells_from_membrane_mask_uses_4_connectivity():
    cells = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    lab = cells_from_membrane_mask(cells)
    assert lab[0, 0] != lab[1, 1]
    assert np.unique(lab).size == 2 and lab.min() > 0


def test_cells_from_membrane_mask_edge_cases():
    assert not cells_from_membrane_mask(np.zeros((4, 4), dtype=bool)).any()
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        cells_from_membrane_mask(np.ones((2, 4, 4), dtype=bool))


def _grid(membrane_width, shape=(21, 21)):
    """Four cells separated by a cross of membrane centred on row/column 10."""
    cells = np.ones(shape, dtype=bool)
    lo, hi = 10 - membrane_width // 2, 10 + membrane_width // 2 + 1
    cells[lo:hi, :] = False
    cells[:, lo:hi] = False
    return cells


def test_evaluate_membranes_perfect():
    truth = np.stack([_grid(3), _grid(1)])
    out = evaluate_membranes(truth, truth)
    assert out["n_slices"] == 2
    for key in ("membrane_dice", "membrane_iou", "v_rand", "v_info", "v_rand_split", "v_info_merge"):
        assert out[key] == 1.0
    assert out["pixel_error"] == 0.0


def test_thinner_membranes_are_not_segmentation_errors():
    truth, pred = _grid(3), _grid(1)
    out = evaluate_membranes(truth, pred)
    assert out["pixel_error"] > 0 and out["membrane_dice"] < 1
    assert out["v_rand"] == pytest.approx(1.0)
    assert out["v_info"] == pytest.approx(1.0)


def test_gap_in_membrane_merges_cells():
    truth, pred = _grid(1), _grid(1)
    pred[10, 2] = True  # a one-pixel gap joins the two left cells
    out = evaluate_membranes(truth, pred)
    assert out["v_rand_split"] == pytest.approx(1.0)
    assert out["v_rand_merge"] < 1.0
    # Four equal true cells, two merged: p = four quarters, s = (1/2, 1/4, 1/4),
    # so merge = (4/16) / (6/16) = 2/3.
    assert out["v_rand_merge"] == pytest.approx(2 / 3)
    assert out["pixel_error"] == pytest.approx(1 / 441)
    stacked = evaluate_membranes(np.stack([truth, truth]), np.stack([truth, pred]))
    assert stacked["v_rand_merge"] == pytest.approx((1 + 2 / 3) / 2)


def test_evaluate_membranes_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        evaluate_membranes(_grid(1), _grid(1)[:, :20])
    with pytest.raises(ValueError, match="binary"):
        evaluate_membranes(_grid(1).astype(np.uint8) * 255, _grid(1))
    assert math.isfinite(evaluate_membranes(_grid(1), ~_grid(1))["v_rand"])


def test_evaluate_cells_scores_labels_as_they_are():
    """Un-thinned: a drawn membrane inside a true cell costs split score; covering labels score 1."""
    from biounet.metrics import evaluate_cells

    truth = np.ones((4, 6), bool)
    truth[:, 3] = False  # truth: cells of 12 px (columns 0-2) and 8 px (4-5); the membrane column is ignored
    perfect = np.where(np.arange(6)[None, :] < 3, 1, 2).repeat(4, 0)
    assert evaluate_cells(truth, perfect)["v_rand"] == pytest.approx(1.0)
    drawn = perfect.copy()
    drawn[:, 2] = 0  # a drawn membrane: column 2 of the left cell unassigned, 4 singletons
    s = evaluate_cells(truth, drawn)
    # by hand over the 20 scored px: left cell = 8 px together + 4 singletons, right cell = 8 px together
    n = 20
    sum_p2 = (8**2 + 4 * 1 + 8**2) / n**2
    split = sum_p2 / ((12**2 + 8**2) / n**2)  # 132 / 208
    merge = sum_p2 / ((8**2 + 4 * 1 + 8**2) / n**2)  # 1: no predicted segment spans two cells
    assert merge == 1.0 and split == pytest.approx(132 / 208)
    assert s["v_rand_split"] == pytest.approx(split) and s["v_rand_merge"] == pytest.approx(merge)
    assert s["v_rand"] == pytest.approx(2 * split * merge / (split + merge)) and s["n_slices"] == 1
