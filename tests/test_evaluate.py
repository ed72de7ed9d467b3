"""Evaluate stage: folders in, numbers out, no model needed."""
import numpy as np
import pytest
import tifffile

from biounet.evaluate import evaluate_paths, membrane_cells
from biounet.io import InputError


def _dsb_folder(root, name, labels):
    import imageio.v3 as iio

    (root / name / "images").mkdir(parents=True)
    (root / name / "masks").mkdir()
    iio.imwrite(root / name / "images" / f"{name}.png", np.zeros(labels.shape + (4,), np.uint8))
    for k in range(1, labels.max() + 1):
        iio.imwrite(root / name / "masks" / f"m{k}.png", ((labels == k) * 255).astype(np.uint8))


def test_dsb_truth_against_label_folder(tmp_path):
    truth = np.zeros((20, 20), np.uint16)
    truth[2:12, 2:12] = 1
    truth[14:18, 14:18] = 2
    _dsb_folder(tmp_path / "stage", "img1", truth)
    (tmp_path / "pred").mkdir()
    pred = np.zeros_like(truth)
    pred[4:14, 2:12] = 7  # the 10x10 square shifted by 2 rows: IoU = 80/120
    tifffile.imwrite(tmp_path / "pred" / "img1.tif", pred)
    summary, rows = evaluate_paths(tmp_path / "stage", tmp_path / "pred")
    # thresholds 0.50..0.65 (4 of 10): TP 1, FP 0, FN 1 -> 1/2; above: TP 0, FP 1, FN 2 -> 0
    assert summary["dsb_score"] == pytest.approx(4 * 0.5 / 10)
    assert rows[0]["name"] == "img1" and rows[0]["n_true"] == 2 and rows[0]["n_pred"] == 1


def test_missing_prediction_and_size_mismatch_are_named(tmp_path):
    truth = np.zeros((8, 8), np.uint16)
    truth[1:4, 1:4] = 1
    _dsb_folder(tmp_path / "stage", "abc", truth)
    (tmp_path / "pred").mkdir()
    with pytest.raises(InputError, match="no prediction for 'abc'"):
        evaluate_paths(tmp_path / "stage", tmp_path / "pred")
    tifffile.imwrite(tmp_path / "pred" / "abc.tif", np.zeros((9, 8), np.uint16))
    with pytest.raises(InputError, match=r"abc\.tif: size \(9, 8\)") as err:
        evaluate_paths(tmp_path / "stage", tmp_path / "pred")
    assert str(err.value).startswith(f"{tmp_path / 'pred'}/abc.tif: size")  # the folder named once


def test_a_folder_holding_images_and_masks_is_scored_on_its_masks_and_drawn_on_its_images(tmp_path):
    from biounet.evaluate import worst_pictures

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = np.zeros((20, 20), np.uint16)
    truth[2:12, 2:12] = 1
    ramp = np.tile(np.arange(20, dtype=np.uint8) * 10, (20, 1))
    tifffile.imwrite(root / "images" / "img1.tif", ramp)
    tifffile.imwrite(root / "masks" / "img1_mask.tif", truth)
    (tmp_path / "pred").mkdir()
    pred = np.zeros_like(truth)
    pred[4:14, 2:12] = 3  # IoU 80/120: matched at thresholds 0.50..0.65, 4 of 10
    tifffile.imwrite(tmp_path / "pred" / "img1.tif", pred)
    summary, rows = evaluate_paths(root, tmp_path / "pred")
    assert summary["dsb_score"] == pytest.approx(0.4) and summary["n_true"] == 1
    ((name, truth_pic, _, score),) = worst_pictures(root, tmp_path / "pred", rows)
    assert name == "img1_mask" and score == pytest.approx(0.4)
    assert truth_pic[15:20, 15:20].min() > 0  # away from the outline: the image's bright end, not black
    tifffile.imwrite(root / "images" / "img1.tif", np.full((21, 20), 200, np.uint8))
    with pytest.raises(InputError, match=r"img1\.tif: size \(21, 20\) != its mask"):
        worst_pictures(root, tmp_path / "pred", rows)


def test_membrane_cells_from_masks_and_probabilities():
    assert membrane_cells(np.array([0, 255], np.uint8)).tolist() == [True, False]
    assert membrane_cells(np.array([0.2, 0.8], np.float32)).tolist() == [True, False]


def test_stack_shape_mismatch(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="does not match truth"):
        evaluate_paths(tmp_path / "t.tif", tmp_path / "p.tif")


def _two_truths_one_prediction(tmp_path) -> np.ndarray:
    """DSB truth images 'a' and 'b'; a perfect prediction for 'a' only. Returns the truth labels."""
    truth = np.zeros((8, 8), np.uint16)
    truth[1:4, 1:4] = 1
    _dsb_folder(tmp_path / "stage", "a", truth)
    _dsb_folder(tmp_path / "stage", "b", truth)
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "a.tif", truth)
    return truth


def test_skip_missing_scores_only_predicted_images(tmp_path):
    truth = _two_truths_one_prediction(tmp_path)
    summary, rows = evaluate_paths(tmp_path / "stage", tmp_path / "pred", skip_missing=True)
    assert [r["name"] for r in rows] == ["a"] and summary["dsb_score"] == 1.0
    assert summary["skipped_missing"] == 1 and summary["unmatched_predictions"] == 0
    # a prediction with no truth image is counted, not silently ignored (its overlay picture is not)
    tifffile.imwrite(tmp_path / "pred" / "zzz.tif", truth)
    tifffile.imwrite(tmp_path / "pred" / "a_overlay.png", np.zeros((8, 8, 3), np.uint8))
    summary, _ = evaluate_paths(tmp_path / "stage", tmp_path / "pred", skip_missing=True)
    assert summary["unmatched_predictions"] == 1


def test_truth_named_like_a_mask_finds_the_prediction_named_after_its_image(tmp_path):
    truth = np.zeros((8, 8), np.uint16)
    truth[1:4, 1:4] = 1
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "a_mask.tif", truth)
    tifffile.imwrite(tmp_path / "pred" / "a.tif", truth)
    summary, rows = evaluate_paths(tmp_path / "truth", tmp_path / "pred")
    assert summary["dsb_score"] == 1.0 and rows[0]["name"] == "a_mask"
    assert summary["unmatched_predictions"] == 0
    tifffile.imwrite(tmp_path / "pred" / "a_mask.tif", np.zeros_like(truth))  # an exact name wins
    assert evaluate_paths(tmp_path / "truth", tmp_path / "pred")[0]["dsb_score"] == 0.0


def test_skip_missing_with_no_match_at_all_says_what_was_looked_for(tmp_path):
    _two_truths_one_prediction(tmp_path)
    (tmp_path / "pred" / "a.tif").rename(tmp_path / "pred" / "other.tif")
    with pytest.raises(InputError, match=r"pred: no prediction named after any of the 2 truth image\(s\) in .*stage "
                                         r"\(e\.g\. a\.tif\)"):
        evaluate_paths(tmp_path / "stage", tmp_path / "pred", skip_missing=True)


def test_cli_warns_about_skipped_and_unmatched_images(tmp_path):
    from typer.testing import CliRunner

    from biounet.cli import app

    truth = _two_truths_one_prediction(tmp_path)
    tifffile.imwrite(tmp_path / "pred" / "extra.tif", truth)
    res = CliRunner().invoke(app, ["evaluate", "--truth", str(tmp_path / "stage"), "--pred", str(tmp_path / "pred"),
                                   "--skip-missing"])
    assert res.exit_code == 0, res.output
    assert "1 truth image(s) had no prediction and were skipped" in res.output
    assert "1 prediction(s)" in res.output and "have no truth image" in res.output
