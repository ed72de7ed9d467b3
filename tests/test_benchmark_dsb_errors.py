"""The error breakdown of benchmarks/dsb_errors.py on hand-made cases: one of each kind."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dsb_errors import classify  # noqa: E402


def box(lab, k, y, x, h=6, w=6):
    lab[y : y + h, x : x + w] = k


def test_each_error_kind_is_counted_once():
    truth = np.zeros((40, 60), np.int32)
    pred = np.zeros_like(truth)
    box(truth, 1, 2, 2)
    box(pred, 1, 2, 2)  # matched exactly
    box(truth, 2, 2, 20)
    box(truth, 3, 2, 26)
    box(pred, 2, 2, 20, w=12)  # one object over two touching nuclei: both merged
    box(truth, 4, 20, 2, w=10)
    box(pred, 3, 20, 2, w=5)
    box(pred, 4, 20, 7, w=5)  # two halves: split
    box(truth, 5, 20, 30)  # nothing predicted: missed
    box(pred, 5, 30, 50, h=4, w=4)  # on background: false positive
    box(truth, 6, 30, 20, w=10)
    box(pred, 6, 30, 20, w=4)  # IoU 0.4, one object: poor outline
    counts, sizes = classify(truth, pred)
    assert counts["tp"] == 1 and counts["n_true"] == 6 and counts["n_pred"] == 6
    assert (counts["merged"], counts["split"], counts["missed"], counts["poor outline"], counts["fp"]) == (2, 1, 1, 1, 1)
    assert sizes == [0.0]


def test_misses_are_put_down_to_the_network_or_to_post_processing():
    truth = np.zeros((20, 60), np.int32)
    box(truth, 1, 2, 2)  # the network never saw it
    box(truth, 2, 2, 20)  # the network saw it (0.9), post-processing dropped it
    box(truth, 3, 2, 40)  # the network saw a third of it: faint, the network's miss
    pred = np.zeros_like(truth)
    foreground = np.full(truth.shape, 0.1, np.float32)
    foreground[2:8, 20:26] = 0.9
    foreground[2:8, 2:8] = 0.55  # above 0.5 but not above the threshold used below
    foreground[2:4, 40:46] = 0.9  # 12 of its 36 pixels
    counts, _ = classify(truth, pred, foreground, threshold=0.6)
    assert (counts["missed"], counts["missed unseen"], counts["missed faint"], counts["missed dropped"]) == (3, 1, 1, 1)
    counts, _ = classify(truth, pred, foreground, threshold=0.5)
    assert (counts["missed unseen"], counts["missed faint"], counts["missed dropped"]) == (0, 1, 2)
    foreground[2:5, 40:46] = 0.9  # half of it: post-processing's miss
    counts, _ = classify(truth, pred, foreground, threshold=0.6)
    assert (counts["missed unseen"], counts["missed faint"], counts["missed dropped"]) == (1, 0, 2)
    counts, _ = classify(truth, pred)
    assert counts["missed"] == 3 and "missed unseen" not in counts
