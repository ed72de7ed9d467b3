"""Dice, IoU and pixel error on hand-computed masks, plus their invariances."""
import numpy as np
import pytest

from biounet.metrics import dice, iou, pixel_error


def square(shape, top, left, size):
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


# Two 4x4 squares in a 10x10 image offset by (1, 1): overlap 3x3 = 9 pixels,
# areas 16 + 16, union 23, 14 pixels differ.
A = square((10, 10), 2, 2, 4)
B = square((10, 10), 3, 3, 4)


@pytest.mark.parametrize(
    "truth, pred, d, j, err",
    [
        (A, B, 18 / 32, 9 / 23, 14 / 100),
        (A, A, 1.0, 1.0, 0.0),
        (A, ~A, 0.0, 0.0, 1.0),
        (A, square((10, 10), 2, 2, 2), 2 * 4 / 20, 4 / 16, 12 / 100),  # pred inside truth
        (A, square((10, 10), 6, 6, 4), 0.0, 0.0, 32 / 100),  # disjoint
    ],
)
def test_hand_computed(truth, pred, d, j, err):
    assert dice(truth, pred) == pytest.approx(d)
    assert iou(truth, pred) == pytest.approx(j)
    assert pixel_error(truth, pred) == pytest.approx(err)


def test_dice_and_iou_are_related():
    d, j = dice(A, B), iou(A, B)
    assert d == pytest.approx(2 * j / (1 + j))


def test_symmetric():
    for f in (dice, iou, pixel_error):
        assert f(A, B) == f(B, A)


def test_invariant_to_pixel_permutation():
    perm = np.random.default_rng(0).permutation(A.size)
    a, b = A.ravel()[perm].reshape(4, 25), B.ravel()[perm].reshape(4, 25)
    for f in (dice, iou, pixel_error):
        assert f(a, b) == pytest.approx(f(A, B))


def test_both_empty_is_perfect():
    z = np.zeros((5, 7), dtype=bool)
    assert dice(z, z) == 1.0
    assert iou(z, z) == 1.0
    assert pixel_error(z, z) == 0.0


def test_one_empty_scores_zero():
    z = np.zeros_like(A)
    assert dice(A, z) == dice(z, A) == 0.0
    assert iou(A, z) == iou(z, A) == 0.0
    assert pixel_error(A, z) == 16 / 100


def test_zero_one_ints_equal_bool_and_any_ndim():
    a3, b3 = np.stack([A, B]).astype(np.uint8), np.stack([B, A]).astype(np.int64)
    assert dice(a3, b3) == pytest.approx(dice(A, B))
    assert iou(A.astype(np.float32), B) == pytest.approx(9 / 23)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 9\)"):
        dice(A, A[:, :9])


def test_non_binary_values_rejected():
    with pytest.raises(ValueError, match="binary"):
        dice(A.astype(np.uint8) * 255, B)
    with pytest.raises(ValueError, match="binary"):
        iou(A, B * 0.7)
