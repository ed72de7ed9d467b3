"""`biounet finetune`: a nuclei model fine-tuned on a few labelled images, one-line errors, an atomic model folder."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from biounet import checkpoint
from biounet.cli import app
from biounet.finetune import (FinetuneCancelled, check_pair, finetune, finetune_config, lr_factor, replace_folder,
                              split_holdout, ArrayItem)
from biounet.io import InputError


def disk_pair(rng: np.random.Generator, size: int = 48, nuclei: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy image with bright disc nuclei (one per quadrant) and their instance labels."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    half = size // 2
    for k, (qy, qx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)][:nuclei], start=1):
        cy, cx = qy * half + half // 2 + rng.integers(-2, 3), qx * half + half // 2 + rng.integers(-2, 3)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(5, 8) ** 2] = k
    image = np.clip((labels > 0) * 160 + rng.normal(30, 8, (size, size)), 0, 255).astype(np.uint8)
    return image, labels


def write_folder(root: Path, pairs) -> Path:
    """``root/images/img<i>.tif`` and ``root/masks/img<i>.tif``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (img, lab) in enumerate(pairs):
        tifffile.imwrite(root / "images" / f"img{i}.tif", img)
        tifffile.imwrite(root / "masks" / f"img{i}.tif", lab)
    return root


@pytest.fixture(scope="module")
def tiny_nuclei_model(tmp_path_factory) -> Path:
    """A nuclei run trained one short epoch on 4 synthetic images (a tiny same-padding net)."""
    from biounet.config import RunConfig
    from biounet.tasks import apply_overrides
    from biounet.train import train

    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    write_folder(root / "data", [disk_pair(rng) for _ in range(4)])
    cfg = apply_overrides(RunConfig(), [
        "task=nuclei", f"data.images={root / 'data'}", "data.kind=folders", "data.val_fraction=0.25",
        "data.patch_size=32", "data.patches_per_epoch=8", "model.base_features=4", "model.depth=2",
        "train.epochs=1", "train.lr=0.01"])
    train(cfg, root / "run", progress=False)
    return root / "run"


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders a fine-tuning may have left beside its output."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---- bad input: one line, nothing written ---------------------------------------------------
def _pairs(kind: str):
    rng = np.random.default_rng(3)
    pairs = [disk_pair(rng) for _ in range(3)]
    if kind == "size":
        pairs[1] = (pairs[1][0], pairs[1][1][:40])
    elif kind == "empty":
        pairs[2] = (pairs[2][0], np.zeros_like(pairs[2][1]))
    elif kind == "single":
        pairs = [disk_pair(rng, nuclei=1)]
    elif kind == "float":
        pairs[0] = (pairs[0][0], pairs[0][1].astype(np.float32))
    return pairs


@pytest.mark.parametrize("kind, message", [
    ("size", r"image 2: labels are 40x48 but the image is 48x48"),
    ("empty", r"image 3: its labels hold no object"),
    ("single", r"only 1 labelled object in all 1 image"),
    ("float", r"image 1: labels are float32; expected integer labels"),
])
def test_bad_pairs_are_one_line_errors_and_nothing_is_written(tiny_nuclei_model, tmp_path, kind, message):
    with pytest.raises(InputError, match=message) as err:
        finetune(tiny_nuclei_model, _pairs(kind), tmp_path / "out", minutes=0.1, bar=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_mask_file_of_another_size_is_named(tiny_nuclei_model, tmp_path):
    rng = np.random.default_rng(4)
    img, lab = disk_pair(rng)
    data = write_folder(tmp_path / "data", [(img, lab[:, :40]), disk_pair(rng)])
    with pytest.raises(InputError, match=r"img0\.tif: mask size \(48, 40\) != image size \(48, 48\)"):
        finetune(tiny_nuclei_model, data, tmp_path / "out", minutes=0.1, bar=False)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_nuclei_model_is_refused(tmp_path):
    pairs = _pairs("ok")
    with pytest.raises(InputError, match=r"isbi2012-membrane: is a membrane model; fine-tuning takes a nuclei"):
        finetune("isbi2012-membrane", pairs, tmp_path / "out", bar=False)
    assert not (tmp_path / "out").exists()


def test_an_existing_out_is_refused_and_a_data_folder_never_replaced(tiny_nuclei_model, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="exists; use --overwrite"):
        finetune(tiny_nuclei_model, _pairs("ok"), tmp_path / "out", bar=False)
    with pytest.raises(InputError, match="not a model folder"):
        finetune(tiny_nuclei_model, _pairs("ok"), tmp_path / "out", overwrite=True, bar=False)
    with pytest.raises(InputError, match="is the starting model"):
        finetune(tiny_nuclei_model, _pairs("ok"), tiny_nuclei_model, overwrite=True, bar=False)
    assert (tmp_path / "out" / "x.txt").read_text() == "mine"
    (tmp_path / "file").write_text("mine")  # a file: told so at once, not first sent to --overwrite
    with pytest.raises(InputError, match=r"file: is an existing file; give a folder"):
        finetune(tiny_nuclei_model, _pairs("ok"), tmp_path / "file", bar=False)
    assert (tmp_path / "file").read_text() == "mine"


# ---- pieces -----------------------------------------------------------------------------------
def test_a_binary_mask_is_split_into_its_connected_objects():
    _, lab = disk_pair(np.random.default_rng(5))
    mask = np.where(lab > 0, 255, 0).astype(np.uint8)
    cfg = checkpoint.load_config(checkpoint.resolve_model("dsb2018-nuclei"))
    _, out, split = check_pair("m", np.zeros((48, 48), np.uint8), mask, cfg, in_memory=True)
    assert split and out.max() == 4


def test_held_out_images_from_three_on():
    items = [ArrayItem(str(i), np.zeros((4, 4)), np.zeros((4, 4), int)) for i in range(10)]
    train, held = split_holdout(items[:2], seed=0)
    assert train is held  # scored on the training images
    train, held = split_holdout(items[:3], seed=0)
    assert len(held) == 1 and len(train) == 2
    train, held = split_holdout(items, seed=0)
    assert len(held) == 2 and not {i.name for i in held} & {i.name for i in train}


def test_learning_rate_warms_up_then_only_comes_down():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 0.1


def test_an_ensemble_is_fine_tuned_through_its_first_network(tmp_path):
    """The shipped model holds three networks: the one written is the first, as the recipe's seed trained it."""
    from safetensors.torch import load_file

    folder = checkpoint.resolve_model("dsb2018-nuclei")
    cfg = checkpoint.load_config(folder)
    items = [ArrayItem("a", np.zeros((300, 200), np.uint8), np.zeros((300, 200), np.int32))]
    tuned, net = finetune_config(cfg, folder, items, tmp_path / "mine", tmp_path, None, "dsb2018-nuclei")
    assert tuned.model.members == 1 and tuned.train.lr == pytest.approx(cfg.train.lr / 10)
    assert tuned.train.init_weights == "dsb2018-nuclei" and tuned.data.patch_size == 256
    assert tuned.augment.scale_range[0] < cfg.augment.scale_range[0] < cfg.augment.scale_range[1] < tuned.augment.scale_range[1]
    want = load_file(str(folder / checkpoint.WEIGHTS))["members.0.down.0.0.weight"]
    assert torch.equal(net.state_dict()["down.0.0.weight"], want.to(torch.float32))


def test_replacing_a_model_folder_leaves_the_new_one_alone(tmp_path):
    for name, text in (("old", "1"), ("new", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    replace_folder(tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old" / "config.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# ---- end to end ---------------------------------------------------------------------------------
def test_finetune_writes_a_model_that_predicts_and_scores_held_out_images(tiny_nuclei_model, tmp_path):
    from biounet.predict import load_model

    rng = np.random.default_rng(7)
    data = write_folder(tmp_path / "mine", [disk_pair(rng) for _ in range(3)])
    seen = []
    result = finetune(tiny_nuclei_model, data, tmp_path / "model", minutes=0.1, bar=False,
                      progress=lambda p: seen.append(p))
    out = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "thresholds.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert result.held_out and len(result.scored_items) == 1 and len(result.train_items) == 2 and result.steps >= 1
    assert result.train_seconds < 6 + 2  # --minutes 0.1 bounds the training
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["holdout_items"] == list(result.scored_items) and "holdout_dsb" in metrics
    assert metrics["object_diameter"] > 0 and metrics["finetune"]["steps"] == result.steps
    assert checkpoint.load_config(out).model.members == 1
    assert {p.stage for p in seen} >= {"checking data", "scoring the starting model", "training",
                                       "scoring the fine-tuned model", "writing"}
    assert all(p.total >= p.done for p in seen)
    seg = load_model(out)  # as `biounet predict --model` loads it, --diameter auto included
    labels = seg.segment(disk_pair(np.random.default_rng(8))[0])
    assert labels.shape == (48, 48) and np.issubdtype(labels.dtype, np.integer)
    assert not leftovers(tmp_path)
    lines = result.lines()
    assert any(line.startswith("before: DSB") for line in lines) and any(line.startswith("after:  DSB") for line in lines)


def test_cancel_stops_training_and_writes_nothing(tiny_nuclei_model, tmp_path):
    stop = threading.Event()

    def progress(p):
        if p.stage == "training" and p.done >= 2:
            stop.set()

    with pytest.raises(FinetuneCancelled):
        finetune(tiny_nuclei_model, _pairs("ok"), tmp_path / "out", steps=50, bar=False, progress=progress,
                 cancel=stop)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_enough_held_out_images_retune_the_post_processing(tiny_nuclei_model, tmp_path, monkeypatch):
    import biounet.finetune as ft

    monkeypatch.setattr(ft, "RETUNE_MIN_HELDOUT", 1)
    result = finetune(tiny_nuclei_model, _pairs("ok"), tmp_path / "out", steps=3, bar=False)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result.retuned is not None and "tuned_dsb" in metrics
    assert metrics["val_items"] == list(result.scored_items) and len(result.scored_items) == 1
    assert "holdout_dsb" not in metrics  # tuned on them: not held-out scores any more
    assert any("retuned on these images" in line for line in result.lines())


def test_cli_prints_scores_before_and_after(tiny_nuclei_model, tmp_path):
    rng = np.random.default_rng(9)
    data = write_folder(tmp_path / "mine", [disk_pair(rng) for _ in range(2)])
    res = CliRunner().invoke(app, ["finetune", "--model", str(tiny_nuclei_model), "--data", str(data),
                                   "--out", str(tmp_path / "model"), "--minutes", "0.05", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "scored on the 2 training image(s)" in res.output
    assert "\nbefore: DSB" in res.output and "\nafter:  DSB" in res.output
    assert (tmp_path / "model" / "model.safetensors").is_file()
    again = CliRunner().invoke(app, ["finetune", "--model", str(tiny_nuclei_model), "--data", str(data),
                                     "--out", str(tmp_path / "model")])
    assert again.exit_code == 2 and "exists; use --overwrite" in again.output
