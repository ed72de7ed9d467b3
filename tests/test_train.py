"""Training end to end on tiny synthetic stacks: run folder, resume, reload."""
import io
import json
import sys
from unittest.mock import patch

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from biounet.checkpoint import read_history
from biounet.config import RunConfig, TrainConfig
from biounet.io import InputError
from biounet.tasks import apply_overrides
from biounet.predict import load_model
from biounet.train import make_optimizer, swa_lr_factor, swa_start, train


def tiny_config(images, labels, **extra) -> RunConfig:
    overrides = [
        f"data.images={images}", f"data.labels={labels}", "data.kind=stack", "task=membrane",
        "data.val_indices=[3]", "data.patch_size=32", "data.patches_per_epoch=8",
        "model.base_features=4", "model.depth=2", "train.batch_size=4", "train.epochs=2", "train.lr=0.01",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return apply_overrides(RunConfig(), overrides)


def test_train_writes_a_self_describing_run_folder(stack_files, tmp_path):
    cfg = tiny_config(*stack_files)
    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "thresholds.json", "metrics.json", "last.pt",
                 "history.jsonl", "curve.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["base_features"] == 4
    assert len(read_history(run)) == 2 and "tuned_v_rand" in result
    seg = load_model(run)  # no flags: the folder rebuilds the net
    img = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
    prob = seg.predict(img)
    assert prob.shape == (37, 53) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    mask = seg.segment(img)
    assert mask.shape == (37, 53) and set(np.unique(mask)) <= {0, 255}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_go_to_a_terminal_only(stack_files, tmp_path, monkeypatch, terminal):
    """``nohup biounet train ... > log``: a bar redrawn 50 times an epoch would fill the log."""
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    train(tiny_config(*stack_files, **{"train.epochs": 1}), tmp_path / "run", progress=True)
    assert ("epoch 1/1" in err.getvalue()) == terminal


@pytest.mark.parametrize("extra,key", [  # the live weights; the moving average; the SWA average
    ({"train.schedule": "none"}, "model"), ({"train.schedule": "none", "train.ema": 0.9}, "ema"),
    ({"train.swa": 0.9}, "swa"),
])
def test_resume_continues_exactly(stack_files, tmp_path, extra, key):
    # constant LR (swa 0.9 of 2 epochs or of 1: flat from the first) so that the interrupted run (epochs=1)
    # and the full run share a schedule
    cfg = tiny_config(*stack_files, **{"train.epochs": 2, **extra})
    train(cfg, tmp_path / "straight", progress=False)
    train(apply_overrides(cfg, ["train.epochs=1"]), tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)[key]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)[key]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in read_history(tmp_path / "resumed")] == [1, 2]


def test_valid_padding_and_weight_map_train(stack_files, tmp_path):
    import biounet.train as train_module

    cfg = tiny_config(*stack_files, **{"model.padding": "valid", "data.weight_map": "true",
                                       "data.patch_size": 44, "train.epochs": 1})
    with patch("biounet.train.train_step", wraps=train_module.train_step) as step:
        train(cfg, tmp_path / "run", progress=False)
    run, batch = step.call_args_list[0].args
    w = batch["weight"]  # the paper's map: class balance, plus w0 between close objects
    assert w.shape == batch["target"].shape and torch.isfinite(w).all() and w.min() > 0
    assert w.max() > 2 * w.min()  # not a constant: some pixels weigh much more than others
    with torch.no_grad():
        logits = run.model(batch["image"])
        assert logits.shape[-1] < batch["image"].shape[-1]  # valid padding: the output is the patch less its margin
        y, wc = train_module.crop_to(batch["target"], logits), train_module.crop_to(w, logits)
        weighted, plain = run.loss_fn(logits, y, wc).item(), run.loss_fn(logits, y, None).item()
    assert np.isfinite(weighted) and np.isfinite(plain) and abs(weighted - plain) > 1e-3 * plain  # the map weighs
    seg = load_model(tmp_path / "run")
    assert seg.predict(np.zeros((30, 41), np.uint8)).shape == (30, 41)


def test_early_stop_stops(stack_files, tmp_path):
    cfg = tiny_config(*stack_files, **{"train.epochs": 6, "train.early_stop": 1, "train.lr": 0.0})
    train(cfg, tmp_path / "run", progress=False)
    assert len(read_history(tmp_path / "run")) == 2  # epoch 2 did not improve on epoch 1


def test_sgd_and_binary_target(stack_files, tmp_path):
    cfg = tiny_config(*stack_files, **{"train.optimizer": "sgd", "train.lr": 0.01, "task": "binary",
                                       "data.foreground": "zero", "train.loss": "bce", "train.schedule": "step"})
    result = train(cfg, tmp_path / "run", progress=False)
    hist = read_history(tmp_path / "run")
    assert [h["lr"] for h in hist] == pytest.approx([1e-3, 1e-4])  # the step schedule: x0.1 per epochs // 3 (>= 1)
    assert all(0 < h["loss"] < 2 for h in hist)  # finite binary cross-entropy
    assert 0 <= result["tuned_iou"] <= result["tuned_dice"] <= 1
    opt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]
    assert opt["param_groups"][0]["momentum"] == cfg.train.momentum
    assert all("momentum_buffer" in s for s in opt["state"].values())  # SGD's own state, not Adam's moments
    from biounet.train import setup, train_step

    run = setup(cfg, tmp_path / "steps")
    batch = next(iter(run.loader))
    before = train_step(run, batch)
    assert train_step(run, batch) < before  # one SGD step on a batch lowers that batch's loss


@pytest.mark.parametrize("optimizer,expected", [
    ("adamw", 0.9 * (1 - 0.1 * 0.5)),  # decoupled: the weight shrinks by lr * weight_decay, whatever the gradient
    ("adam", 0.9 - 0.1),  # L2 in the gradient: Adam normalises the decay term's gradient to a step of lr
])
def test_weight_decay_of_adam_and_adamw(optimizer, expected):
    cfg = apply_overrides(RunConfig(), [f"train.optimizer={optimizer}", "train.lr=0.1", "train.weight_decay=0.5"])
    w = torch.nn.Parameter(torch.full((3,), 0.9))
    opt = make_optimizer(cfg, [w])
    w.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), expected))


def test_a_run_without_validation_images_says_what_it_keeps(stack_files, tmp_path, caplog):
    cfg = tiny_config(*stack_files, **{"train.epochs": 1, "data.val_indices": "[]", "data.val_fraction": 0})
    with caplog.at_level("WARNING", logger="biounet.train"):
        assert train(cfg, tmp_path / "run", progress=False) == {}
    assert "no validation images: the last epoch's weights are kept" in caplog.text
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_run_without_validation_images_still_scores_its_held_out_ones(stack_files, tmp_path):
    """Training on everything but the held-out images (data.val_fraction = 0) must not lose their score."""
    cfg = tiny_config(*stack_files, **{"train.epochs": 1, "data.val_indices": "[]", "data.val_fraction": 0,
                                       "data.holdout_fraction": 0.25, "post.threshold": 0.3})
    result = train(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["holdout_items"]) == 1 and "holdout_v_rand" in metrics and "tuned_v_rand" not in metrics
    assert result["holdout_v_rand"] == metrics["holdout_v_rand"]
    assert metrics["post"]["threshold"] == 0.3 == json.loads((tmp_path / "run" / "thresholds.json").read_text())["threshold"]


def test_init_weights_starts_from_another_run(stack_files, tmp_path):
    first = tiny_config(*stack_files, **{"train.epochs": 1})
    train(first, tmp_path / "a", progress=False)
    second = tiny_config(*stack_files, **{"train.epochs": 1, "train.lr": 0.0, "train.init_weights": str(tmp_path / "a")})
    train(second, tmp_path / "b", progress=False)  # lr 0: the weights stay those of run a
    a, b = load_model(tmp_path / "a").module.state_dict(), load_model(tmp_path / "b").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)


def test_init_weights_from_an_ensemble_starts_from_its_first_network(stack_files, tmp_path):
    """Fine-tuning the shipped nuclei model (three networks) used to fail with a state-dict error."""
    from safetensors.torch import load_file

    from biounet import checkpoint
    from biounet.train import build_run

    shipped = checkpoint.resolve_model("dsb2018-nuclei")
    cfg = apply_overrides(RunConfig(), ["task=nuclei", "train.init_weights=dsb2018-nuclei", "train.channels_last=false"])
    got = build_run(cfg, None, torch.device("cpu")).model.state_dict()
    want = {k.removeprefix("members.0."): v for k, v in load_file(str(shipped / checkpoint.WEIGHTS)).items()
            if k.startswith("members.0.")}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in want)
    second = load_file(str(shipped / checkpoint.WEIGHTS))["members.1.down.0.0.weight"]
    assert not torch.equal(got["down.0.0.weight"], second.to(got["down.0.0.weight"].dtype))  # the first, not any


def test_init_weights_of_another_shape_is_refused_by_key_before_data_is_read(tmp_path):
    from biounet.io import InputError
    from biounet.train import setup

    cfg = apply_overrides(RunConfig(), ["task=nuclei", "train.init_weights=dsb2018-nuclei", "model.depth=3",
                                        f"data.images={tmp_path / 'missing'}", "data.kind=folders"])
    with pytest.raises(InputError, match=r"init_weights = dsb2018-nuclei: .*model.depth = 4 there, 3 here"):
        setup(cfg, tmp_path / "run")


def test_resume_with_more_epochs_continues_the_schedule_instead_of_restarting_it(stack_files, tmp_path):
    """#14: `--resume --epochs 4` on a finished 2-epoch cosine run used to climb back to the start lr."""
    cfg = tiny_config(*stack_files, **{"train.epochs": 2, "train.lr": 0.01})
    train(cfg, tmp_path / "run", progress=False)
    train(apply_overrides(cfg, ["train.epochs=4"]), tmp_path / "run", resume=True, progress=False)
    lrs = [h["lr"] for h in read_history(tmp_path / "run")]
    assert len(lrs) == 4 and all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs


def test_holdout_images_are_never_trained_or_tuned_on_and_scored_once(stack_files, tmp_path):
    from biounet.data.dataset import items_from_config, split_holdout

    cfg = tiny_config(*stack_files, **{"data.val_indices": "[]", "data.val_fraction": 0.34,
                                       "data.holdout_fraction": 0.25, "train.epochs": 1})
    result = train(cfg, tmp_path / "run", progress=False)
    held = [it.name for it in split_holdout(items_from_config(cfg.data), cfg.data, cfg.train.seed)[1]]
    assert result["holdout_items"] == held and len(held) == 1
    assert not set(held) & set(result["val_items"])
    assert {"holdout_v_rand", "tuned_v_rand"} <= set(result)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["holdout_items"] == held and 0 <= on_disk["holdout_v_rand"] <= 1


def test_ensemble_averages_the_runs_probabilities_and_is_tuned_and_scored_like_a_run(stack_files, tmp_path):
    from biounet.tune import ensemble

    base = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}
    train(tiny_config(*stack_files, **base), tmp_path / "a", progress=False)
    train(tiny_config(*stack_files, **base, **{"train.lr": 0.02}), tmp_path / "b", progress=False)
    result = ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert {"tuned_v_rand", "holdout_v_rand"} <= set(result)
    assert [m["epochs"] for m in result["members"]] == [1, 1] and all(m["minutes"] >= 0 for m in result["members"])
    a, b, ab = (load_model(tmp_path / n) for n in ("a", "b", "ab"))
    assert ab.config.model.members == 2 and result["holdout_items"] == json.loads(
        (tmp_path / "a" / "metrics.json").read_text())["holdout_items"]
    img = np.random.default_rng(1).integers(0, 255, (45, 38), dtype=np.uint8)
    expected = (a.predict(img) + b.predict(img)) / 2
    assert np.abs(ab.predict(img) - expected).max() < 1e-4
    from biounet.io import InputError

    # an ensemble joins as its members: (a, b) + a averages a, b and a again, each network one vote
    result = ensemble([tmp_path / "ab", tmp_path / "a"], tmp_path / "aba")
    aba = load_model(tmp_path / "aba")
    assert aba.config.model.members == 3 and [m["epochs"] for m in result["members"]] == [1, 1, 1]
    assert np.abs(aba.predict(img) - (2 * a.predict(img) + b.predict(img)) / 3).max() < 1e-4
    with pytest.raises(InputError, match="at least two runs"):
        ensemble([tmp_path / "ab"], tmp_path / "x")
    with pytest.raises(InputError, match="at most 16 networks, these runs hold 18"):  # config.RANGES' bound
        ensemble([tmp_path / "ab"] * 9, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ensemble_refuses_runs_that_split_the_data_differently(stack_files, tmp_path):
    from biounet.io import InputError
    from biounet.tune import ensemble

    base = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}
    train(tiny_config(*stack_files, **base), tmp_path / "a", progress=False)
    train(tiny_config(*stack_files, **base, **{"train.seed": 3}), tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="holds out other images"):
        ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    train(tiny_config(*stack_files, **{"train.epochs": 1, "model.base_features": 6}), tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="model config differs"):
        ensemble([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")


def test_ensemble_takes_runs_of_other_seeds_that_fix_the_split(stack_files, tmp_path):
    """Two initialisations (train.seed 0 and 3) on one split (data.split_seed=0) make an ensemble."""
    from biounet.tune import ensemble

    base = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}
    train(tiny_config(*stack_files, **base), tmp_path / "a", progress=False)
    train(tiny_config(*stack_files, **base, **{"train.seed": 3, "data.split_seed": 0}), tmp_path / "b",
          progress=False)
    result = ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    held_a = json.loads((tmp_path / "a" / "metrics.json").read_text())["holdout_items"]
    assert result["holdout_items"] == held_a and "holdout_v_rand" in result


def test_a_cross_validation_ensemble_tunes_each_fold_on_the_members_that_never_trained_on_it(stack_files,
                                                                                             tmp_path):
    """Runs on folds 0 and 1 of 3 (data.folds): every validation image is predicted by its own fold's run only
    (out-of-fold), the thresholds are tuned on both folds' images, the held-out one is scored by both runs."""
    from biounet import tune as tune_mod
    from biounet.tune import ensemble, retune

    base = {"data.val_indices": "[]", "data.holdout_fraction": 0.25, "data.folds": 3, "train.epochs": 1}
    for k in (0, 1):
        train(tiny_config(*stack_files, **base, **{"data.fold": k}), tmp_path / f"f{k}", progress=False)
    runs = {k: json.loads((tmp_path / f"f{k}" / "metrics.json").read_text()) for k in (0, 1)}
    assert runs[0]["holdout_items"] == runs[1]["holdout_items"]
    assert len(runs[0]["val_items"]) == 1 and runs[0]["val_items"] != runs[1]["val_items"]

    calls = []
    real = tune_mod.predict_items

    def spy(seg, items):
        calls.append(([it.name for it in items], seg.module))
        return real(seg, items)

    with patch.object(tune_mod, "predict_items", spy):
        result = ensemble([tmp_path / "f0", tmp_path / "f1"], tmp_path / "cv")
    assert result["out_of_fold"] == 2 and result["val_items"] == runs[0]["val_items"] + runs[1]["val_items"]
    assert {"tuned_v_rand", "holdout_v_rand"} <= set(result)
    cv = load_model(tmp_path / "cv").module
    for k in (0, 1):  # fold k's image went through member k alone (the ensemble's own copy of run k)
        names, module = next(c for c in calls if c[0] == runs[k]["val_items"])
        assert module is not cv and not hasattr(module, "members")
        own = load_model(tmp_path / f"f{k}").module.state_dict()
        assert all(torch.allclose(v.float(), own[n].float(), atol=1e-3) for n, v in module.state_dict().items())
    assert [c[0] for c in calls][-1] == runs[0]["holdout_items"] and calls[-1][1].cfg.members == 2
    with pytest.raises(InputError, match="cross-validation ensemble is tuned out-of-fold"):
        retune(tmp_path / "cv")
    with pytest.raises(InputError, match="is a cross-validation ensemble, whose members trained on each other"):
        ensemble([tmp_path / "cv", tmp_path / "f0"], tmp_path / "x")
    # fold 0 of 2 holds fold 0 of 3 and more (consecutive runs of one permutation): overlapping, refused
    train(tiny_config(*stack_files, **{**base, "data.folds": 2}), tmp_path / "g", progress=False)
    g_val = json.loads((tmp_path / "g" / "metrics.json").read_text())["val_items"]
    assert set(runs[0]["val_items"]) < set(g_val)
    with pytest.raises(InputError, match="validates on some but not all of the images"):
        ensemble([tmp_path / "f0", tmp_path / "g"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_amp_runs_only_on_cuda(stack_files):
    """train.amp asks for mixed precision; on a CPU it stays off (bf16/fp16 autocast there is far slower)."""
    from biounet.train import build_run

    cfg = tiny_config(*stack_files, **{"train.amp": "true"})
    assert cfg.train.amp
    cpu = build_run(cfg, None, torch.device("cpu"))
    assert not cpu.use_amp and not cpu.scaler.is_enabled()
    off = build_run(tiny_config(*stack_files, **{"train.amp": "false"}), None, torch.device("cpu"))
    assert not off.use_amp
    if torch.cuda.is_available():  # where a GPU is lent, the same config turns both on
        gpu = build_run(cfg, None, torch.device("cuda"))
        assert gpu.use_amp and gpu.scaler.is_enabled()


def test_split_seed_keeps_the_split_while_train_seed_changes():
    """data.split_seed fixes which images are held out and validated; train.seed alone moves them."""
    from biounet.config import DataConfig
    from biounet.data.dataset import Item
    from biounet.data.dataset import split_run

    items = [Item(name=f"im{i}", kind="folders", image=f"im{i}.tif") for i in range(40)]
    base = RunConfig(data=DataConfig(val_fraction=0.2, holdout_fraction=0.2))

    def names(cfg):
        with patch("biounet.data.dataset.items_from_config", return_value=items):
            return [[it.name for it in part] for part in split_run(cfg)]

    seed0 = names(base)
    assert names(apply_overrides(base, ["data.split_seed=0", "train.seed=5"])) == seed0
    assert names(apply_overrides(base, ["train.seed=5"])) != seed0
    assert names(apply_overrides(base, ["data.split_seed=5"])) == names(apply_overrides(base, ["train.seed=5"]))
    train_names, val_names, held_names = seed0
    assert len(held_names) == 8 and len(val_names) == 6 and not set(train_names) & (set(val_names) | set(held_names))


def test_modality_filter_keeps_each_part_of_the_unfiltered_split(tmp_path):
    """data.modalities drops other modalities after the split: an expert's held-out and validation
    images are exactly the unfiltered run's images of its modality, so the two compare image for image."""
    import pytest
    import tifffile

    from biounet.config import DataConfig
    from biounet.data.dataset import Item, modality
    from biounet.io import InputError
    from biounet.data.dataset import split_run

    rng = np.random.default_rng(0)
    items = []
    for i in range(30):
        if i % 3:  # fluorescence: dark background
            img = (rng.random((16, 16)) * 40).astype(np.uint8)
        else:  # stained: light and coloured
            img = np.dstack([np.full((16, 16), v, np.uint8) for v in (200, 120, 220)])
        path, labels = tmp_path / f"im{i}.tif", tmp_path / f"lab{i}.tif"
        tifffile.imwrite(path, img)
        tifffile.imwrite(labels, np.zeros((16, 16), np.uint8))
        items.append(Item(name=f"im{i}", kind="folders", image=str(path), labels=str(labels)))
    base = RunConfig(data=DataConfig(val_fraction=0.2, holdout_fraction=0.2))

    def parts(cfg):
        with patch("biounet.data.dataset.items_from_config", return_value=items):
            return [[it.name for it in part] for part in split_run(cfg)]

    colour = {f"im{i}" for i in range(0, 30, 3)}
    assert {it.name for it in items if modality(it.load()[0]) == "colour"} == colour
    expert = parts(apply_overrides(base, ['data.modalities=["colour"]']))
    assert expert == [[n for n in part if n in colour] for part in parts(base)]
    assert sum(map(len, expert)) == len(colour) and all(expert)
    with pytest.raises(InputError, match="no training image of modality bright"):
        parts(apply_overrides(base, ['data.modalities=["bright"]']))
    with pytest.raises(InputError, match="data.modalities"):
        apply_overrides(base, ['data.modalities=["purple"]'])


def test_retune_tunes_a_finished_run_again_on_its_own_validation_images(stack_files, tmp_path):
    from biounet.io import InputError
    from biounet.tune import retune

    base = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}
    first = train(tiny_config(*stack_files, **base), tmp_path / "run", progress=False)
    thresholds = tmp_path / "run" / "thresholds.json"
    tuned = json.loads(thresholds.read_text())
    thresholds.write_text(json.dumps({**tuned, "threshold": 0.99}))  # a stale choice
    again = retune(tmp_path / "run")
    assert json.loads(thresholds.read_text()) == tuned
    assert again["tuned_v_rand"] == pytest.approx(first["tuned_v_rand"])
    assert again["holdout_items"] == first["holdout_items"] and again["val_items"] == first["val_items"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics["val_items"] = ["not-this-image"]
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InputError, match="other val images than the model recorded"):
        retune(tmp_path / "run")


def test_ensemble_takes_a_run_trained_with_the_weight_map(stack_files, tmp_path):
    """The weight map only weighs the loss, and dropout and the patch sampling act in training only: a run
    with them and one without average like any two runs."""
    from biounet.tune import ensemble

    base = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}
    train(tiny_config(*stack_files, **base), tmp_path / "a", progress=False)
    train(tiny_config(*stack_files, **base, **{"data.weight_map": "true", "data.w0": 3, "model.dropout": 0.5}),
          tmp_path / "b", progress=False)
    result = ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert "holdout_v_rand" in result and load_model(tmp_path / "ab").config.model.members == 2
    train(tiny_config(*stack_files, **base, **{"data.patch_size": 40, "data.patches_per_epoch": 6}), tmp_path / "p",
          progress=False)  # patches only decide what training sees
    assert "holdout_v_rand" in ensemble([tmp_path / "a", tmp_path / "p"], tmp_path / "ap")
    train(tiny_config(*stack_files, **base, **{"data.normalize": "percentile_invert"}), tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="data config differs"):  # settings that change the input still must match
        ensemble([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")
    train(tiny_config(*stack_files, **base, **{"model.batch_norm": "false"}), tmp_path / "d", progress=False)
    with pytest.raises(InputError, match="model config differs"):  # as must the network's shape
        ensemble([tmp_path / "a", tmp_path / "d"], tmp_path / "ad")


def test_soft_depth_targets_train_a_nuclei_run_end_to_end(tmp_path):
    """data.target = depth3: soft (B, 3, H, W) targets go through loader, loss and tuning to instances."""
    import tifffile

    from tests.conftest import synthetic_pair

    rng = np.random.default_rng(2)
    pairs = [synthetic_pair(rng) for _ in range(4)]
    tifffile.imwrite(tmp_path / "vol.tif", np.stack([p[0] for p in pairs]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([p[1] for p in pairs]), photometric="minisblack")
    cfg = tiny_config(tmp_path / "vol.tif", tmp_path / "lab.tif",
                      **{"task": "nuclei", "data.target": "depth3", "train.epochs": 2, "train.val_every": 1})
    assert cfg.model.out_channels == 3 and cfg.train.loss == "ce_dice"
    import biounet.train as train_module

    with patch("biounet.train.train_step", wraps=train_module.train_step) as step:
        result = train(cfg, tmp_path / "run", progress=False)
    target = step.call_args_list[0].args[1]["target"]
    assert target.shape == (4, 3, 32, 32) and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(1), torch.ones(4, 32, 32))
    assert "tuned_dsb" in result and all(np.isfinite(h["loss"]) for h in read_history(tmp_path / "run"))
    labels = load_model(tmp_path / "run").segment(pairs[0][0])
    assert labels.dtype == np.int32 and labels.shape == (64, 64)


def test_ema_keeps_and_ships_the_moving_average_of_the_weights(stack_files, tmp_path):
    # one step, then the same step and a second: the average after two steps is d * w1 + (1 - d) * w2,
    # d warmed up (min(decay, (1 + n) / (10 + n)) after n = 1 update), so the first weights fade fast
    decay = 0.75
    d = min(decay, 2 / 11)
    one = tiny_config(*stack_files, **{"train.epochs": 1, "train.schedule": "none", "data.patches_per_epoch": 4})
    two = apply_overrides(one, ["data.patches_per_epoch=8", f"train.ema={decay}"])
    train(one, tmp_path / "one", progress=False)
    train(two, tmp_path / "two", progress=False)
    w1 = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    w2, ema = state["model"], state["ema"]
    shipped = load_file(tmp_path / "two" / "model.safetensors")
    floats = [k for k in w1 if w1[k].is_floating_point()]
    assert floats and "running_mean" in " ".join(floats)  # batch-norm statistics are averaged too
    for k in floats:
        torch.testing.assert_close(ema["module." + k], d * w1[k] + (1 - d) * w2[k])
        torch.testing.assert_close(shipped[k].float(), ema["module." + k])
    assert any(not torch.equal(shipped[k].float(), w2[k]) for k in floats)  # not the live weights
    counts = [k for k in w1 if k not in floats]  # batch-norm step counts: the live ones, not averaged
    assert counts and all(torch.equal(ema["module." + k], w2[k]) for k in counts)


def test_swa_keeps_and_ships_the_equal_average_of_the_averaged_epochs_weights(stack_files, tmp_path):
    # swa 0.9 of 2 epochs: both epochs flat at swa_lr * lr and averaged; one epoch alone gives the first weights
    one = tiny_config(*stack_files, **{"train.epochs": 1, "train.swa": 0.9, "train.swa_lr": 0.5})
    two = apply_overrides(one, ["train.epochs=2"])
    train(one, tmp_path / "one", progress=False)
    train(two, tmp_path / "two", progress=False)
    w1 = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    w2, swa = state["model"], state["swa"]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * two.train.lr)
    floats = [k for k in w1 if w1[k].is_floating_point()]
    assert floats and "running_var" in " ".join(floats)  # batch-norm statistics are averaged too
    for k in floats:
        torch.testing.assert_close(swa["module." + k], (w1[k] + w2[k]) / 2)
    assert any(not torch.equal(swa["module." + k], w2[k]) for k in floats)  # not the live weights
    assert all(torch.equal(swa["module." + k], w2[k]) for k in w1 if k not in floats)  # step counts copied
    # what ships is what validated best: the average of epoch 2, or at epoch 1 the one weights averaged so far
    best = json.loads((tmp_path / "two" / "metrics.json").read_text())["epoch"]
    shipped = load_file(tmp_path / "two" / "model.safetensors")
    for k in floats:
        torch.testing.assert_close(shipped[k].float(), swa["module." + k] if best == 2 else w1[k])


def test_swa_schedule_is_cosine_down_to_its_floor_then_flat():
    factors = [swa_lr_factor(e, start=swa_start(TrainConfig(epochs=20, swa=0.25)), floor=0.2) for e in range(20)]
    assert factors[0] == 1.0 and factors[15:] == [0.2] * 5
    assert all(a > b > 0.2 for a, b in zip(factors[:14], factors[1:15]))
    assert factors[8] < 0.6 < factors[7]  # the cosine's midpoint, (1 + 0.2) / 2, at epoch 7.5 of 15
    assert swa_start(TrainConfig(epochs=3, swa=0.01)) == 2  # at least the last epoch is averaged


@pytest.mark.parametrize("key, value", [("ema", 0.9), ("swa", 0.5)])
def test_resuming_a_run_trained_without_an_average_with_one_is_refused(stack_files, tmp_path, key, value):
    cfg = tiny_config(*stack_files, **{"train.epochs": 2, f"train.{key}": value})
    train(apply_overrides(cfg, [f"train.{key}=0", "train.epochs=1"]), tmp_path / "plain", progress=False)
    with pytest.raises(InputError, match=f"without train.{key}"):
        train(cfg, tmp_path / "plain", resume=True, progress=False)


@pytest.mark.parametrize("key, value, other", [("ema", 0.9, ["train.ema=0"]), ("swa", 0.5, ["train.swa=0"]),
                                                ("swa", 0.5, ["train.swa=0", "train.ema=0.9"])])
def test_resuming_a_run_trained_with_an_average_otherwise_is_refused(stack_files, tmp_path, key, value, other):
    """Resumed without its average (or with the other kind), a run would drop the weights it validates."""
    cfg = tiny_config(*stack_files, **{"train.epochs": 1, f"train.{key}": value})
    train(cfg, tmp_path / "avg", progress=False)
    changed = apply_overrides(cfg, other + ["train.epochs=2"])
    with pytest.raises(InputError, match=f"with train.{key};"):
        train(changed, tmp_path / "avg", resume=True, progress=False)
    train(apply_overrides(cfg, ["train.epochs=2"]), tmp_path / "avg", resume=True, progress=False)  # as trained: goes on
