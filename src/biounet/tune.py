"""After training: validation predictions, post-processing tuning, ensembles, re-tuning.

A trained network is turned into a model here. :func:`finish` (which ends
``biounet train``) reloads the best weights, tunes the task's post-processing on
the validation images and scores the held-out images once with what validation
chose; :func:`ensemble` averages finished runs (tuned out-of-fold for the folds of
one cross-validation) and :func:`retune` tunes a finished model again. The
training loop (:mod:`biounet.train`) scores validation with
:func:`predict_items` and :func:`score_predictions` from here; this module never
imports the loop.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .config import RANGES, PostConfig, RunConfig
from .data.dataset import Item, split_run
from .io import InputError
from .models.unet import build_model
from .predict import PredictOptions, Segmenter, load_model
from .tasks import Task, apply_overrides, get_task

Prediction = tuple[str, np.ndarray, np.ndarray]  # (name, probabilities (K, H, W), raw labels (H, W))
AS_TRAINED = PredictOptions(diameter=None)  # validation images at their own scale, as training validated them


# ---- validation predictions and their scores ------------------------------------------
def predict_items(seg: Segmenter, items: list[Item]) -> list[Prediction]:
    """(name, probabilities (K, H, W), raw labels) for each validation image."""
    out = []
    for item in items:
        img, lab = item.load()
        out.append((item.name, seg.predict_prepared(seg.view(img, item.name)), lab))  # normalized as at prediction
    return out


def score_predictions(task: Task, preds: list[Prediction], post: PostConfig) -> dict[str, float]:
    """The task's validation scores of ``preds`` post-processed with ``post``."""
    return task.scores([lab for _, _, lab in preds], [task.segment(p, post) for _, p, _ in preds])


def tune_post(task: Task, preds: list[Prediction], base: PostConfig, grid: dict[str, list] | None = None,
              refine: dict[str, list] | None = None) -> tuple[PostConfig, dict[str, float]]:
    """Grid-search post-processing on validation predictions: the task's ``grid``, then its ``refine``
    grid around the best setting (``grid``/``refine`` given here replace the task's; ``{}`` skips)."""
    from .postprocess import tune_thresholds

    probs, truths = [p for _, p, _ in preds], [lab for _, _, lab in preds]
    best, _ = tune_thresholds(probs, truths, task.segment, task.image_score, task.grid if grid is None else grid, base)
    refine = task.refine if refine is None else refine
    if refine:
        best, _ = tune_thresholds(probs, truths, task.segment, task.image_score, refine, best)
    return best, score_predictions(task, preds, best)


# ---- after training -----------------------------------------------------------------
def finish(run_dir: Path, cfg: RunConfig, val_items: list[Item], holdout_items: list[Item] = (),
           val_preds: list[Prediction] | None = None, out_of_fold: int = 0) -> dict:
    """Reload the best weights, tune post-processing on validation (none: the config's), save thresholds + metrics.

    Held-out images are scored last, with the epoch and post-processing the
    validation images chose: ``holdout_*`` is the selection-free score.
    ``val_preds`` replaces the model's own predictions of ``val_items`` (out-of-fold ones from
    ``out_of_fold`` folds: see :func:`ensemble`).
    """
    seg = load_model(run_dir, options=AS_TRAINED)
    task = get_task(cfg)
    recorded = checkpoint.load_metrics(run_dir)  # training's best epoch and its scores, or an ensemble's members
    post, tuned, diameter = cfg.post, {}, None  # nothing to tune on: the config's post-processing
    if val_items:
        preds = predict_items(seg, val_items) if val_preds is None else val_preds
        post, tuned = tune_post(task, preds, cfg.post)
        if task.instances:
            diameter = median_diameter([lab for _, _, lab in preds])
    checkpoint.save_post(run_dir, post)
    if not val_items and not holdout_items:
        return {}
    # every score of an earlier tuning is replaced, none kept: held-out scores belong to these thresholds
    held = score_predictions(task, predict_items(seg, holdout_items), post) if holdout_items else {}
    metrics = dataclasses.replace(
        recorded, tuned=tuned, holdout=held, post=dataclasses.asdict(post), object_diameter=diameter,
        val_items=tuple(it.name for it in val_items), holdout_items=tuple(it.name for it in holdout_items),
        out_of_fold=out_of_fold or recorded.out_of_fold)
    checkpoint.save_metrics(run_dir, metrics)
    return metrics.as_dict()


def ensemble(runs: list[str | Path], out_dir: str | Path, data: str | None = None) -> dict:
    """Average finished runs' probabilities in one model folder, then tune and score it like a run.

    The runs must share task, model shape, data and held-out images, so that no
    member trained on an image the ensemble is scored on; their training settings
    (loss weights, the weight map, schedule) may differ. They validate on the same
    images, or on disjoint ones (the folds of a cross-validation, ``data.folds``):
    then the post-processing is tuned out-of-fold, each fold's images predicted by
    the members that validated on them (never trained on them), on all folds together.
    A folder that is an ensemble already (a shipped model) gives its members, so a new
    network can join one whose member runs are gone; a cross-validation ensemble cannot
    (its members trained on each other's folds). Every network weighs the same. Members may
    differ in dropout, which acts in training only. Thresholds are tuned on the validation
    images and the held-out ones are scored once (:func:`finish`). ``data`` replaces
    ``data.images`` when the data has moved since training.
    """
    if len(runs) < 2:
        raise InputError("an ensemble needs at least two runs")
    folders = [checkpoint.resolve_model(r) for r in runs]
    for f in folders:
        if checkpoint.load_metrics(f).out_of_fold:
            raise InputError(f"{f}: is a cross-validation ensemble, whose members trained on each other's "
                             "validation folds; give its fold runs instead")
    cfgs = [checkpoint.load_config(f) for f in folders]
    if data:
        cfgs = [apply_overrides(c, [f"data.images={data}"]) for c in cfgs]
    first = cfgs[0]

    def shared(c: RunConfig, key: str) -> Any:
        # the split seed may differ (-1 = train.seed): the drawn images themselves are compared below;
        # the weight map only weighs the training loss, so members may differ in it as in class weights,
        # and dropout acts in training only, as do the patch size and count (how training samples images)
        part = getattr(c, key)
        if key == "model":
            return dataclasses.replace(part, members=1, dropout=0.0)
        if key != "data":
            return part
        return dataclasses.replace(part, split_seed=-1, weight_map=False, w0=0.0, sigma=0.0,
                                   weight_kind="paper", patch_size=0, patches_per_epoch=0,
                                   val_fraction=0.0, val_indices=(), folds=0, fold=0)

    for f, c in zip(folders[1:], cfgs[1:]):
        for key in ("task", "model", "data"):
            if shared(c, key) != shared(first, key):
                raise InputError(f"{f}: its {key} config differs from {folders[0]}'s; ensemble members must share it")
    splits = [split_run(c) for c in cfgs]
    for f, (_, _, held) in zip(folders[1:], splits[1:]):
        if [it.name for it in held] != [it.name for it in splits[0][2]]:
            raise InputError(f"{f}: holds out other images than {folders[0]} "
                             "(another train.seed, data.split_seed or data.holdout_fraction?)")
    folds = validation_folds(folders, [val for _, val, _ in splits])
    most, count = int(RANGES["model.members"][1]), sum(c.model.members for c in cfgs)
    if count > most:  # from the configs, before any weights are read
        raise InputError(f"an ensemble holds at most {most} networks, these runs hold {count}")
    nets, records, owner = [], [], []  # owner: the run folder index each network comes from
    for i, (f, c) in enumerate(zip(folders, cfgs)):
        n, r = member_networks(f, c)
        nets += n
        records += r
        owner += [i] * len(n)
    cfg = dataclasses.replace(first, model=dataclasses.replace(first.model, members=len(nets)))
    module = build_model(cfg.model)
    for net, member in zip(nets, module.members):
        member.load_state_dict(net.state_dict())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save_config(out_dir, cfg)
    checkpoint.save_weights(out_dir / checkpoint.WEIGHTS, module)
    checkpoint.save_metrics(out_dir, checkpoint.RunMetrics(members=tuple(records)))
    _, val_items, holdout_items = splits[0]
    if len(folds) == 1:
        return finish(out_dir, cfg, val_items, holdout_items)
    seg = load_model(out_dir, options=AS_TRAINED)  # the saved (fp16) weights, as the ensemble will predict
    val_items, preds = [], []
    for runs_of_fold in folds:
        members = [k for k, i in enumerate(owner) if i in runs_of_fold]
        fold_items = splits[runs_of_fold[0]][1]
        preds += predict_items(dataclasses.replace(seg, module=seg.module.subset(members)), fold_items)
        val_items += fold_items
    return finish(out_dir, cfg, val_items, holdout_items, preds, out_of_fold=len(folds))


def validation_folds(folders: list[Path], vals: list[list[Item]]) -> list[list[int]]:
    """Runs grouped by their validation images (indices into ``folders``): one group when all share
    them; else the groups must be disjoint, the folds of one cross-validation, or an error names the pair."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, val in enumerate(vals):
        groups.setdefault(tuple(it.name for it in val), []).append(i)
    keys = list(groups)
    for a, ka in enumerate(keys):
        for kb in keys[a + 1:]:
            if set(ka) & set(kb):
                raise InputError(f"{folders[groups[kb][0]]}: validates on some but not all of the images "
                                 f"{folders[groups[ka][0]]} validates on; ensemble members must share their "
                                 "validation images or, for cross-validation, validate on disjoint folds "
                                 "(data.folds, data.fold, the same data.split_seed)")
    if len(keys) > 1 and () in groups:
        raise InputError(f"{folders[groups[()][0]]}: has no validation images, unlike "
                         f"{folders[next(g for k, g in groups.items() if k)[0]]}; ensemble members must share them")
    return list(groups.values())


def retune(model: str | Path, data: str | None = None) -> dict:
    """Tune a finished model's post-processing again on its validation images and score its held-out
    ones once (:func:`finish`): for a model trained before the task's grid gained a setting.

    The split is drawn again from the saved config, so it must give the images the model recorded;
    ``data`` replaces ``data.images`` when the data has moved since training.
    """
    folder = checkpoint.resolve_model(model)
    cfg = checkpoint.load_config(folder)
    if data:
        cfg = apply_overrides(cfg, [f"data.images={data}"])
    recorded = checkpoint.load_metrics(folder)
    if recorded.out_of_fold:
        raise InputError(f"{folder}: a cross-validation ensemble is tuned out-of-fold; build it again with "
                         "`biounet ensemble` from its fold runs")
    _, val_items, holdout_items = split_run(cfg)
    if not val_items:
        raise InputError(f"{folder}: the run has no validation images to tune on (data.val_fraction = 0)")
    for part, items in (("val_items", val_items), ("holdout_items", holdout_items)):
        if getattr(recorded, part) and list(getattr(recorded, part)) != [it.name for it in items]:
            raise InputError(f"{folder}: {cfg.data.images} gives other {part.split('_')[0]} images than the model "
                             "recorded (other data?)")
    return finish(folder, cfg, val_items, holdout_items)


def member_networks(folder: Path, cfg: RunConfig) -> tuple[list[torch.nn.Module], list[dict]]:
    """The U-Nets a run (one) or an ensemble folder (its members) holds, with their training records."""
    _, module = checkpoint.load_module(folder)
    if cfg.model.members == 1:
        return [module], [member_record(folder)]
    records = list(checkpoint.load_metrics(folder).members)
    if len(records) != cfg.model.members:
        records = [{"run": f"{folder} (member {i + 1})"} for i in range(cfg.model.members)]
    return list(module.members), records


def member_record(run_dir: Path) -> dict:
    """An ensemble member's folder, epochs and minutes of training + validation (from its history.jsonl)."""
    epochs, minutes = checkpoint.training_minutes(run_dir)
    return {"run": str(run_dir), "epochs": epochs, "minutes": round(minutes, 2)}


def median_diameter(label_images: list[np.ndarray]) -> float:
    """Median equivalent diameter (px) of all objects: the scale the model learned."""
    areas = np.concatenate([np.bincount(lab.ravel().astype(np.int64))[1:] for lab in label_images])
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0
