"""Tasks: one registry decides targets, heads, losses, scores; inconsistent configs fail at load."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk

from biounet import checkpoint
from biounet.config import RunConfig, to_dict
from biounet.data.targets import border_target, contact_target, depth_target
from biounet.io import InputError
from biounet.tasks import TASKS, apply_overrides, build_config, get_task, load_config

ROOT = Path(__file__).resolve().parents[1]


def task_for(*overrides: str):
    return get_task(apply_overrides(RunConfig(), list(overrides)))


def two_touching_disks() -> np.ndarray:
    lab = np.zeros((40, 60), np.int32)
    lab[disk((20, 15), 6.5, shape=lab.shape)] = 1
    lab[disk((20, 28), 6.5, shape=lab.shape)] = 2
    return lab


# ---- the registry contract: every task, the same promises ----------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_trains_segments_and_scores(name):
    cfg = build_config({"task": name})  # the task's defaults alone make a consistent config
    task = get_task(cfg)
    lab = two_touching_disks()
    target = task.target(lab)
    assert target.shape == lab.shape
    softmax = cfg.model.out_channels > 1
    assert target.dtype == (np.int64 if softmax else np.float32)
    assert target.min() >= 0 and target.max() < max(2, cfg.model.out_channels)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(cfg.model.out_channels), lab.shape).transpose(2, 0, 1).astype(np.float32) \
        if softmax else rng.random((1, *lab.shape), dtype=np.float32)
    out = task.segment(probs, cfg.post)
    assert out.shape == lab.shape
    scores = task.scores([lab, lab], [out, out])
    assert task.metric in scores and set(task.headline) <= set(scores)
    assert 0 <= task.image_score(lab, out) <= 1
    assert set(task.grid) | set(task.refine) <= set(to_dict(cfg.post))


@pytest.mark.parametrize("name", ["binary", "nuclei"])
def test_dataset_score_is_the_mean_of_image_scores(name):
    """The two scoring paths (epoch picking, threshold tuning) must measure the same thing."""
    task = get_task(build_config({"task": name}))
    a = two_touching_disks()
    b = np.roll(a, 3, axis=1)
    c = np.where(a == 2, 0, a)
    outs = [(x > 0).astype(np.uint8) * 255 if name == "binary" else x for x in (b, c)]
    per_image = [task.image_score(a, o) for o in outs]
    assert task.scores([a, a], outs)[task.metric] == pytest.approx(np.mean(per_image))


def test_binary_dice_by_hand():
    task = get_task(build_config({"task": "binary"}))
    truth = np.zeros((4, 4), np.int32)
    truth[:2] = 1  # 8 px
    pred = np.zeros((4, 4), np.uint8)
    pred[1:3] = 255  # 8 px, 4 shared: dice = 2*4 / 16
    assert task.image_score(truth, pred) == pytest.approx(0.5)
    zero_fg = task_for("data.foreground=zero")  # ISBI-style labels: 0 is the foreground
    assert zero_fg.image_score(truth, pred) == pytest.approx(2 * 4 / (8 + 8))
    assert np.array_equal(zero_fg.target(truth), (truth == 0).astype(np.float32))


def test_membrane_target_and_objects():
    task = get_task(build_config({"task": "membrane"}))
    lab = np.full((6, 6), 255, np.uint8)
    lab[:, 3] = 0  # a membrane column splits two cells
    assert np.array_equal(task.target(lab), (lab == 0).astype(np.float32))
    assert task.weight_objects(lab).max() == 2  # the two cells, for the weight map


def test_nuclei_targets_follow_data_target_and_fraction():
    lab = two_touching_disks()
    touching = task_for("task=nuclei", "data.target=border3").target(lab)
    outline = task_for("task=nuclei", "data.border_fraction=0").target(lab)
    wide = task_for("task=nuclei").target(lab)  # the task's default: half the inscribed radius
    np.testing.assert_array_equal(touching, border_target(lab))
    np.testing.assert_array_equal(outline, border_target(lab, contours=True))
    np.testing.assert_array_equal(wide, border_target(lab, contours=True, border_fraction=0.5))
    assert ((touching == 2) <= (outline == 2)).all() and (outline == 2).sum() > (touching == 2).sum()
    assert (wide == 2).sum() >= (outline == 2).sum()
    contact = task_for("task=nuclei", "data.target=contour4", "model.out_channels=4").target(lab)
    np.testing.assert_array_equal(contact, contact_target(lab, border_fraction=0.5))
    # contour4 = contour3 with the contact between the disks moved out of the band into class 3
    np.testing.assert_array_equal(contact == 3, (border_target(lab, border_width=3) == 2))
    np.testing.assert_array_equal(np.where(contact == 3, 2, contact), wide)
    depth = task_for("task=nuclei", "data.target=depth3", "data.border_fraction=0.9").target(lab)
    np.testing.assert_array_equal(depth, depth_target(lab))  # soft (3, H, W) classes; fraction unused
    # border3 ignores the fraction
    np.testing.assert_array_equal(task_for("task=nuclei", "data.target=border3",
                                           "data.border_fraction=0.9").target(lab), touching)


# ---- consistency checks: one line naming the key --------------------------------------
@pytest.mark.parametrize("raw,match", [
    # the example: a 3-class target on the default binary head and BCE
    ({"task": "binary", "data": {"target": "contour3"}}, "task 'binary': needs data.target = 'binary', got 'contour3'"),
    ({"task": "nuclei", "model": {"out_channels": 1}}, "task 'nuclei': needs model.out_channels = 3, got 1"),
    ({"task": "nuclei", "train": {"loss": "bce_dice"}}, "train.loss = 'bce_dice' does not fit a 3-channel softmax head"),
    ({"task": "membrane", "model": {"out_channels": 2}}, "task 'membrane': needs model.out_channels = 1, got 2"),
    ({"task": "binary", "model": {"out_channels": 2}}, "train.loss = 'bce_dice' does not fit a 2-channel softmax head"),
    ({"task": "nuclei", "data": {"target": "contour4"}}, "task 'nuclei': needs model.out_channels = 4, got 3"),
    ({"task": "nuclei", "train": {"class_weights": [1, 2]}}, "class_weights needs one weight per class"),
    ({"task": "nuclei", "train": {"class_weights": [0, 0, 0]}}, "must not all be 0"),
    ({"task": "cells"}, "task = \"cells\" is not allowed \\(allowed: binary, membrane, nuclei\\)"),
])
def test_inconsistent_configs_fail_at_load(raw, match):
    with pytest.raises(InputError, match=match) as err:
        build_config(raw)
    assert "\n" not in str(err.value)


def test_switching_task_by_override_brings_its_defaults():
    cfg = apply_overrides(RunConfig(), ["task=nuclei"])
    assert (cfg.model.out_channels, cfg.data.target, cfg.train.loss, cfg.post.mode) == (3, "contour3", "ce_dice",
                                                                                       "instances")
    back = apply_overrides(cfg, ["task=membrane", "train.loss=dice"])  # explicit overrides still win
    assert (back.model.out_channels, back.data.target, back.train.loss) == (1, "membrane", "dice")


@pytest.mark.parametrize("toml,model", [("dsb2018.toml", "dsb2018-nuclei"), ("isbi2012.toml", "isbi2012-membrane")])
def test_short_configs_resolve_to_the_shipped_models_configs(toml, model):
    """configs/ hold a task plus what differs from it; resolved they are exactly what the models trained with."""
    if model not in checkpoint.shipped_models():
        pytest.skip(f"{model} not shipped")
    shipped = checkpoint.load_config(checkpoint.resolve_model(model))
    config = load_config(ROOT / "configs" / toml)
    # the differences allowed: the layout flag (the first dsb2018-nuclei network was trained before channels-last
    # existed), and the number of networks (dsb2018-nuclei averages two runs of its config: biounet ensemble)
    assert config == dataclasses.replace(shipped, train=dataclasses.replace(shipped.train, channels_last=True),
                                         model=dataclasses.replace(shipped.model, members=1))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_builds(path):
    cfg = load_config(path)
    assert cfg.task in TASKS and cfg.name


def test_tuning_refines_the_grids_best_setting_with_the_objects_the_network_is_unsure_of():
    """The nuclei task tunes min_score after its grid: a faint false object is dropped only by that stage."""
    from biounet.tune import tune_post

    task = get_task(build_config({"task": "nuclei"}))
    truth = np.zeros((48, 64), dtype=np.int32)
    truth[disk((24, 18), 9, shape=truth.shape)] = 1
    probs = np.zeros((3, *truth.shape), dtype=np.float32)
    probs[0], probs[1] = 0.02, 0.02
    probs[0][truth == 0], probs[1][truth == 0] = 0.98, 0.01
    probs[1][truth == 1] = 0.96
    ghost = np.zeros(truth.shape, dtype=bool)
    ghost[disk((24, 46), 9, shape=truth.shape)] = True  # a blob the network is 70 % sure of, and wrong
    probs[0][ghost], probs[1][ghost] = 0.3, 0.69
    probs[2] = 1 - probs[0] - probs[1]
    preds = [("a", probs, truth)]
    best, scores = tune_post(task, preds, task.cfg.post)
    assert best.min_score > 0.7 and scores["dsb"] == 1.0
    assert task.segment(probs, dataclasses.replace(best, min_score=0.0)).max() == 2  # the grid alone keeps it


# ---- one place per decision (#52) ----------------------------------------------------------
def test_the_task_registry_is_the_one_list_of_task_names():
    """config.py lists no task names: RunConfig.task is any string until the registry checks it."""
    import typing

    from biounet import config

    assert typing.get_type_hints(RunConfig)["task"] is str and not hasattr(config, "TaskName")
    assert RunConfig.task in TASKS
    with pytest.raises(InputError, match=r"allowed: " + ", ".join(TASKS)):
        build_config({"task": "cells"})


@pytest.mark.parametrize("name", sorted(TASKS))
def test_what_a_task_exports_and_instances_are_read_from_the_task(name):
    from biounet import zoo
    from biounet.config import PostConfig

    cls = TASKS[name]
    cfg = build_config({"task": name})
    assert len(cls.channels) == cfg.model.out_channels  # an export names each channel of the default head
    assert (zoo.SAMPLES / cls.sample[0]).is_file()
    assert cfg.data.target == cls.targets[0]  # the first target is the task's default
    assert cls.instances == cfg.post.instances == PostConfig(**cls.defaults.get("post", {})).instances
    assert get_task(cfg).instances == (name == "nuclei")


def test_a_format_1_config_gets_its_task_from_the_tasks_metrics_and_targets():
    from biounet.tasks import legacy_task

    for name, cls in TASKS.items():
        assert legacy_task("binary", cls.metric) == name  # an explicit val_metric names the task
        assert all(legacy_task(t) == name for t in cls.targets)
    assert legacy_task("binary", "auto") == "binary"
    migrated = checkpoint.migrate({"data": {"target": "binary"}, "train": {"val_metric": "v_rand"}})
    assert migrated["task"] == "membrane" and "val_metric" not in migrated["train"]


def test_output_instances_is_one_property_of_the_post_processing():
    from biounet.config import PostConfig

    assert PostConfig(mode="instances").instances and not PostConfig(mode="mask").instances
    # membrane: a mask by default, cell labels when the post-processing asks for instances
    task = get_task(build_config({"task": "membrane"}))
    probs = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    assert task.segment(probs, PostConfig(mode="mask")).dtype == np.uint8
    assert task.segment(probs, PostConfig(mode="instances")).dtype != np.uint8
