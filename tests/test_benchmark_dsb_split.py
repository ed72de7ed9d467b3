"""benchmarks/dsb_split.py: the eager cut, the split it applies, and its logistic regression."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dsb_split import apply_splits, candidates, eager_parts, fit_logistic  # noqa: E402


def _two_disks(gap_dip: float):
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 < 100
    b = (yy - 20) ** 2 + (xx - 38) ** 2 < 100
    obj = a | b
    # interior probability: a peak of 1 in each disk centre, falling to gap_dip where they meet
    interior = np.maximum(np.clip(1 - np.hypot(yy - 20, xx - 20) / 10 * (1 - gap_dip), 0, 1),
                          np.clip(1 - np.hypot(yy - 20, xx - 38) / 10 * (1 - gap_dip), 0, 1)) * obj
    return obj, interior.astype(np.float32), a, b


def test_a_dip_between_two_peaks_is_cut_there():
    obj, interior, a, b = _two_disks(0.3)
    parts, from_shape = eager_parts(obj, interior, alt_h=0.1, shape_h=2.0)
    assert parts.max() == 2 and not from_shape
    # each part is essentially one disk
    for disk in (a, b):
        ids, counts = np.unique(parts[disk], return_counts=True)
        assert counts.max() / disk.sum() > 0.9


def test_without_a_dip_the_shape_cuts_a_dumbbell_but_not_a_disk():
    obj, _, a, b = _two_disks(0.0)
    flat = obj.astype(np.float32)  # interior probability with no dip at all
    parts, from_shape = eager_parts(obj, flat, alt_h=0.1, shape_h=2.0)
    assert parts.max() == 2 and from_shape
    yy, xx = np.mgrid[:40, :40]
    disk = (yy - 20) ** 2 + (xx - 20) ** 2 < 150
    parts, _ = eager_parts(disk, disk.astype(np.float32), alt_h=0.1, shape_h=2.0)
    assert parts.max() == 0


def test_apply_splits_gives_each_part_a_new_id_and_keeps_the_rest():
    obj, interior, a, b = _two_disks(0.3)
    labels = np.zeros((40, 80), np.int32)
    labels[:, :60][obj] = 1
    labels[5:10, 70:75] = 2
    probs = np.stack([1 - (labels > 0), np.pad(interior, ((0, 0), (0, 20))), np.zeros((40, 80))]).astype(np.float32)
    cands = candidates(labels, probs, colour=False, alt_h=0.1, shape_h=2.0, min_size=10)
    assert [c["id"] for c in cands] == [1]
    out = apply_splits(labels, cands)
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert (out[labels == 2] == 2).all() and (out[labels == 0] == 0).all()
    assert len(np.unique(out[labels == 1])) == 2


def test_logistic_regression_recovers_the_separating_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.2 * rng.normal(size=400) > 0).astype(float)
    beta = fit_logistic(x, y, np.ones(400), l2=0.1)
    assert beta[1] > 0 and beta[2] < 0
    assert abs(beta[2] / beta[1] + 0.5) < 0.15
    pred = (beta[0] + x @ beta[1:]) > 0
    assert (pred == (y > 0)).mean() > 0.9
