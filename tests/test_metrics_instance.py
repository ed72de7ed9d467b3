"""Instance matching and DSB 2018 score on shifted squares with known IoU."""
import numpy as np
import pytest

from biounet.metrics import (
    DSB_THRESHOLDS,
    Matching,
    ap_at,
    dsb_score,
    evaluate_instances,
    iou_matrix,
    match,
    match_thresholds,
)


def squares(shape=(40, 40), specs=()):
    """Label image with 10x10 squares given as (label, top, left)."""
    lab = np.zeros(shape, dtype=np.int32)
    for label, top, left in specs:
        lab[top : top + 10, left : left + 10] = label
    return lab


TRUTH = squares(specs=[(1, 5, 5)])
SHIFT2 = squares(specs=[(1, 5, 7)])  # overlap 10x8 = 80, union 120: IoU 2/3


def test_dsb_thresholds():
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_iou_of_shifted_square():
    np.testing.assert_allclose(iou_matrix(TRUTH, SHIFT2), [[80 / 120]])


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 9, 10])
def test_shift_by_k_hand_computed(k):
    pred = squares(specs=[(1, 5, 5 + k)])
    inter = 10 * (10 - k)
    true_iou = inter / (200 - inter)
    n_matched = sum(true_iou > t for t in DSB_THRESHOLDS)
    # Matched thresholds score 1/(1+0+0); unmatched ones 0/(0+1+1).
    assert dsb_score(TRUTH, pred) == pytest.approx(n_matched / 10)


def test_shift_2_matching_record():
    m = match(TRUTH, SHIFT2, 0.5)
    assert isinstance(m, Matching)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (1, 0, 0, 1, 1)
    assert m.precision == m.recall == m.f1 == m.accuracy == 1.0
    assert m.mean_matched_iou == pytest.approx(2 / 3)
    assert m.panoptic_quality == pytest.approx(2 / 3)
    assert dsb_score(TRUTH, SHIFT2) == pytest.approx(0.4)  # matched at 0.50..0.65
    assert ap_at(TRUTH, SHIFT2, 0.65) == 1.0
    assert ap_at(TRUTH, SHIFT2, 0.7) == 0.0
    m7 = match(TRUTH, SHIFT2, 0.7)
    assert (m7.tp, m7.fp, m7.fn) == (0, 1, 1)
    assert m7.mean_matched_iou == 0.0


def test_threshold_is_strict():
    pred = squares(specs=[(1, 5, 5)])
    pred[5:15, 10:15] = 0  # half the square: IoU exactly 0.5
    assert match(TRUTH, pred, 0.5).tp == 0
    assert match(TRUTH, pred, 0.49).tp == 1


def test_empty_prediction():
    truth = squares(specs=[(1, 0, 0), (2, 20, 20)])
    empty = np.zeros_like(truth)
    m = match(truth, empty)
    assert (m.tp, m.fp, m.fn) == (0, 0, 2)
    assert m.precision == m.recall == m.f1 == 0.0
    assert dsb_score(truth, empty) == 0.0


def test_empty_truth():
    pred = squares(specs=[(3, 0, 0)])
    m = match(np.zeros_like(pred), pred)
    assert (m.tp, m.fp, m.fn) == (0, 1, 0)
    assert dsb_score(np.zeros_like(pred), pred) == 0.0


def test_both_empty_is_perfect():
    z = np.zeros((8, 8), dtype=np.uint16)
    m = match(z, z)
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert m.precision == m.recall == m.f1 == m.accuracy == 1.0
    assert dsb_score(z, z) == 1.0
    assert iou_matrix(z, z).shape == (0, 0)


def test_extra_objects_are_false_positives():
    pred = squares(specs=[(1, 5, 5), (2, 25, 25)])
    m = match(TRUTH, pred)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.precision == 0.5 and m.recall == 1.0
    assert dsb_score(TRUTH, pred) == pytest.approx(0.5)  # 1/(1+1+0) at every threshold


def test_non_sequential_labels_and_permutation():
    truth = squares(specs=[(1, 0, 0), (2, 20, 20), (3, 0, 25)])
    pred = squares(specs=[(1, 0, 2), (2, 21, 20), (3, 30, 0)])
    relabel_t = np.array([0, 7, 1000, 3], dtype=np.int64)
    relabel_p = np.array([0, 65535, 2, 40], dtype=np.int64)
    ref = [m.as_dict() for m in match_thresholds(truth, pred)]
    assert ref[0]["tp"] == 2 and ref[0]["fp"] == 1
    # Huge ids take the sorting path instead of a lookup table and must agree too.
    huge = truth.astype(np.uint64) * np.uint64(10**15)
    cases = [(relabel_t[truth], pred), (truth, relabel_p[pred]), (relabel_t[truth], relabel_p[pred]), (huge, pred)]
    for t, p in cases:
        assert [m.as_dict() for m in match_thresholds(t, p)] == [pytest.approx(r) for r in ref]


def test_iou_matrix_against_brute_force():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, size=(12, 13)) * 3  # ids 0, 3, ..., 12
    pred = rng.integers(0, 4, size=(12, 13))
    mat = iou_matrix(truth, pred)
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    assert mat.shape == (t_ids.size, p_ids.size)
    for i, a in enumerate(t_ids):
        for j, b in enumerate(p_ids):
            ta, pb = truth == a, pred == b
            assert mat[i, j] == pytest.approx((ta & pb).sum() / (ta | pb).sum())


def test_low_threshold_maximises_matches():
    # 1-pixel-high strips. Truth A = cols 0..9, B = cols 10..19.
    # Pred P = cols 2..13: IoU(A) = 8/14, IoU(B) = 4/18. Pred Q = cols 0..1: IoU(A) = 0.2.
    # Greedy (best IoU first) pairs P-A and leaves Q unmatched; the optimum is P-B, Q-A.
    truth = np.zeros((1, 20), dtype=np.int32)
    truth[0, :10], truth[0, 10:] = 1, 2
    pred = np.zeros_like(truth)
    pred[0, 2:14], pred[0, :2] = 1, 2
    m = match(truth, pred, 0.15)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.mean_matched_iou == pytest.approx((4 / 18 + 0.2) / 2)
    assert match(truth, pred, 0.5).tp == 1


def test_evaluate_instances_summary_and_rows():
    two = squares(specs=[(1, 5, 5), (2, 25, 25)])
    pairs = [
        ("shift2", TRUTH, SHIFT2),
        ("extra", TRUTH, two),
        ("empty", np.zeros_like(TRUTH), np.zeros_like(TRUTH)),
    ]
    summary, rows = evaluate_instances(iter(pairs))
    assert [r["name"] for r in rows] == ["shift2", "extra", "empty"]
    assert rows[0]["dsb_score"] == pytest.approx(0.4)
    assert rows[0]["ap50"] == 1.0 and rows[0]["ap75"] == 0.0
    assert (rows[1]["tp50"], rows[1]["fp50"], rows[1]["fn50"]) == (1, 1, 0)
    assert summary["n_images"] == 3
    assert summary["dsb_score"] == pytest.approx((0.4 + 0.5 + 1.0) / 3)
    assert summary["ap50"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert summary["ap75"] == pytest.approx((0.0 + 0.5 + 1.0) / 3)
    assert (summary["tp50"], summary["fp50"], summary["fn50"]) == (2, 1, 0)
    assert (summary["n_true"], summary["n_pred"]) == (2, 3)


def test_evaluate_instances_rejects_no_images():
    with pytest.raises(ValueError, match="no images"):
        evaluate_instances([])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(40, 40\).*\(40, 39\)"):
        match(TRUTH, TRUTH[:, :39])
    with pytest.raises(ValueError, match="integer"):
        iou_matrix(TRUTH.astype(float), TRUTH)
    with pytest.raises(ValueError, match=">= 0"):
        iou_matrix(-TRUTH, TRUTH)
    with pytest.raises(ValueError, match="threshold"):
        match(TRUTH, TRUTH, 1.5)
