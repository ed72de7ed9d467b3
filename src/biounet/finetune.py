"""Fine-tune a nuclei model on a few labelled images of one's own (1-20), in minutes on a CPU.

:func:`finetune` is the whole recipe; ``biounet finetune`` calls it and prints its report, and a
napari widget can call it the same way with in-memory ``(image, labels)`` pairs, a ``progress``
callback and a ``cancel`` flag. The recipe:

* starts from a nuclei model (a shipped one by name, or any run/model folder) and keeps its task,
  normalisation, channel, loss and post-processing. A model of several networks (the shipped
  ``dsb2018-nuclei`` holds three) is fine-tuned through its first network, the one trained with the
  recipe's seed, and the new model is that one network: all of the time budget goes to one network
  rather than a third to each, and it predicts as many times faster as the ensemble had networks.
  The "before" score is the starting model as it is, ensemble and all;
* holds out a fifth of the images (at least one) when there are 3 or more, drawn with ``seed``, and
  never trains on them; with 1 or 2 images the training images themselves are scored, and the
  report says so (those scores flatter the fine-tuned model);
* trains on random patches with the model's augmentation and a wider zoom range, at a tenth of the
  model's learning rate (Adam, a short warm-up, then cosine), for a number of steps sized by the
  labelled objects (:data:`STEPS_PER_OBJECT`, within :data:`MIN_STEPS`..:data:`MAX_STEPS`), cut so
  that the whole call, scoring included, takes about ``minutes`` of wall time; the last weights are
  kept (no image is spent on picking a step);
* scores the starting and the fine-tuned model (DSB score, AP@0.5, AP@0.75) on the held-out images,
  each as ``biounet predict`` would run it (``--diameter auto``);
* retunes the post-processing only with :data:`RETUNE_MIN_HELDOUT` held-out images or more (then
  they are the tuning images, and their scores are reported as tuned, not held-out); else keeps
  the starting model's;
* writes a model folder like any run's (config.json, model.safetensors, thresholds.json,
  metrics.json with ``object_diameter`` = the median nucleus of the given labels, so
  ``--diameter auto`` works; a one-line history.jsonl), built beside ``out`` and renamed into
  place: ``out`` is complete or absent, never half-written.

Every input problem is a one-line :class:`~biounet.io.InputError` raised before any training:
labels of another size than their image, an image whose labels hold no object, fewer than two
objects in all, float labels (in memory; files follow the label files' rule), a model that is not
a nuclei model, an existing ``out`` without ``overwrite``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import checkpoint
from .config import RunConfig
from .io import InputError, replace_folder

log = logging.getLogger(__name__)

LR_FACTOR = 0.1  # fine-tuning learning rate: this times the model's train.lr
LR_FLOOR = 0.05  # the cosine ends at this fraction of it
WARMUP_STEPS = 10  # linear warm-up (fewer in a shorter schedule): Adam's first steps are lr-sized whatever the gradient
STEPS_PER_OBJECT = 5  # the schedule: this many optimiser steps per labelled object ...
MIN_STEPS, MAX_STEPS = 100, 1000  # ... within these bounds, and within the time budget
SCALE_RANGE = (0.67, 1.5)  # zoom range of the augmentation, at least this wide (the model's if wider)
HOLDOUT_SHARE = 0.2  # held out when there are HOLDOUT_MIN_IMAGES or more: this share, at least one image
HOLDOUT_MIN_IMAGES = 3
RETUNE_MIN_HELDOUT = 5  # post-processing is retuned only on this many held-out images or more
MIN_OBJECTS = 2  # labelled objects needed in all


class FinetuneCancelled(Exception):
    """Raised by :func:`finetune` when its ``cancel`` flag is set; nothing has been written."""


@dataclass(frozen=True)
class Progress:
    """What a ``progress`` callback receives: the stage, and within it ``done`` of ``total`` steps."""

    stage: str  # "checking data", "scoring the starting model", "training", "scoring the fine-tuned model",
    #             "retuning post-processing", "writing"
    done: int = 0
    total: int = 0
    loss: float | None = None  # training: the mean loss of the last steps
    elapsed: float = 0.0  # seconds since finetune() began
    eta: float | None = None  # training: seconds of training left, estimated


@dataclass(eq=False)
class ArrayItem:
    """An in-memory (image, labels) pair, shaped like :class:`biounet.data.dataset.Item` for the patch sampler."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return self.image, self.labels


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the folder written, the images used and the scores before and after."""

    out: Path
    start: str  # the starting model as named
    networks: int  # networks in the starting model (the first was fine-tuned)
    images: int
    objects: int
    train_items: tuple[str, ...]
    scored_items: tuple[str, ...]
    held_out: bool  # the scored images were never trained on (else they are the training images)
    before: dict[str, float]
    after: dict[str, float]
    retuned: dict[str, float] | None = None  # after, at post-processing retuned on the scored images
    steps: int = 0
    planned: int = 0  # steps the object count asked for (more than ``steps`` when time ran out)
    train_seconds: float = 0.0
    seconds: float = 0.0
    relabelled: tuple[str, ...] = ()  # binary masks split into connected components
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The printed report: what was trained, on what it was scored, and the scores before and after."""
        from_ = self.start if self.networks == 1 else f"{self.start} (the first of its {self.networks} networks)"
        cut = f" of {self.planned} planned (time ran out)" if self.steps < self.planned else ""
        out = [f"fine-tuned {from_} on {len(self.train_items)} image(s) for {self.steps} steps{cut} "
               f"in {duration(self.train_seconds)} ({self.images} image(s), {self.objects} objects in all)"]
        if self.relabelled:
            out.append(f"note: {len(self.relabelled)} mask(s) held one label value and were split into connected "
                       f"objects (e.g. {self.relabelled[0]}); touching nuclei there count as one")
        names = ", ".join(self.scored_items[:5]) + (", ..." if len(self.scored_items) > 5 else "")
        if self.held_out:
            out.append(f"scored on {len(self.scored_items)} held-out image(s), never trained on: {names}")
        else:
            out.append(f"scored on the {len(self.scored_items)} training image(s) (fewer than {HOLDOUT_MIN_IMAGES} "
                       "images: none held out), so the 'after' scores flatter the fine-tuned model")
        out.append(f"before: {format_scores(self.before)}  ({self.start})")
        out.append(f"after:  {format_scores(self.after)}  ({self.out})")
        if self.retuned is not None:
            out.append(f"after, post-processing retuned on these images: {format_scores(self.retuned)} "
                       "(tuned on them, so optimistic); thresholds.json holds the retuned setting")
        final = self.retuned if self.retuned is not None else self.after
        if final.get("dsb", 0.0) < self.before.get("dsb", 0.0):
            out.append("warning: the fine-tuned model scores below the starting one here; label more images, "
                       "or keep the starting model")
        return out + self.notes


def duration(seconds: float) -> str:
    """'42 s' or '9.6 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def format_scores(scores: dict[str, float]) -> str:
    """'DSB 0.512, AP50 0.701, AP75 0.433'."""
    names = {"dsb": "DSB", "ap50": "AP50", "ap75": "AP75"}
    return ", ".join(f"{names[k]} {scores[k]:.3f}" for k in names if k in scores)


# ---- the recipe ---------------------------------------------------------------------
def finetune(
    model: str | Path,
    data: str | Path | Sequence[tuple[np.ndarray, np.ndarray]],
    out: str | Path,
    *,
    labels: str | Path | None = None,
    minutes: float = 10.0,
    steps: int = 0,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[Progress], Any] | None = None,
    cancel: Callable[[], bool] | Any = None,
    bar: bool = True,
) -> FinetuneResult:
    """Fine-tune the nuclei ``model`` on ``data`` and write the result to the model folder ``out``.

    ``data``: a folder holding ``images/`` and ``masks/`` (or ``labels/``), an image folder with its
    mask folder as ``labels``, a DSB-style folder or zip (``<id>/images``, ``<id>/masks``), a TIFF
    stack with its label stack as ``labels``; or in-memory ``(image, labels)`` pairs (a napari Image
    and Labels layer: (H, W[, C]) image, (H, W) integer labels, 0 = background).
    ``minutes`` bounds the whole call's wall time (about: one training step and the final writes may
    run over); ``steps`` > 0 replaces the object-sized schedule (still cut by ``minutes``).
    ``progress`` is called with a :class:`Progress` at each stage and training step; ``cancel`` (a
    callable returning True, or anything with ``is_set()`` such as a :class:`threading.Event`) is
    polled between steps and images and stops the call with :class:`FinetuneCancelled`, nothing
    written. ``bar`` shows a tqdm bar with ETA on a terminal. See the module docstring for the recipe.
    """
    t0 = time.perf_counter()
    if not minutes > 0:
        raise InputError(f"--minutes must be > 0, got {minutes}")
    if steps < 0:
        raise InputError(f"steps must be >= 0 (0 = sized by the labelled objects), got {steps}")
    stop = _cancel_check(cancel)

    def report(stage: str, done: int = 0, total: int = 0, loss: float | None = None, eta: float | None = None):
        if progress is not None:
            progress(Progress(stage, done, total, loss, time.perf_counter() - t0, eta))
        if stop():
            raise FinetuneCancelled("fine-tuning cancelled; nothing was written")

    from .predict import PredictOptions, check_device, load_model
    from .tasks import get_task

    device = check_device(device)
    folder = checkpoint.resolve_model(model)
    cfg = checkpoint.load_config(folder)
    task = get_task(cfg)
    if not task.instances:
        raise InputError(f"{model}: is a {task.name} model; fine-tuning takes a nuclei (instance) model, "
                         "e.g. dsb2018-nuclei")
    out = Path(out)
    check_out(out, overwrite, folder)

    report("checking data")
    items, relabelled = load_pairs(data, labels, cfg)
    objects = sum(count_objects(it.labels) for it in items)
    if objects < MIN_OBJECTS:
        raise InputError(f"only {objects} labelled object in all {len(items)} image(s); fine-tuning needs at least "
                         f"{MIN_OBJECTS} (label more nuclei)")
    train_items, scored_items = split_holdout(items, seed)
    held_out = bool(scored_items) and scored_items is not items
    trained_on = sum(count_objects(it.labels) for it in train_items)
    log.info("fine-tuning %s on %d image(s) (%d objects); %s", model, len(train_items), trained_on,
             f"{len(scored_items)} held out" if held_out else "none held out (fewer than 3 images)")

    options = PredictOptions()  # as `biounet predict` runs a model: --diameter auto
    start = load_model(folder, device=device, options=options)
    networks = cfg.model.members
    t_score = time.perf_counter()
    before = score(start, task, scored_items, lambda i: report("scoring the starting model", i, len(scored_items)))[0]
    t_score = time.perf_counter() - t_score
    del start

    # the after-scoring runs one network where the starting model ran ``networks``; tuning costs about as much again
    retune = held_out and len(scored_items) >= RETUNE_MIN_HELDOUT
    reserve = (t_score / networks) * (2.5 if retune else 1.3) + 2.0
    deadline = t0 + minutes * 60.0
    tuned_cfg, net = finetune_config(cfg, folder, train_items, out, data, labels, str(model))
    planned = steps or int(np.clip(STEPS_PER_OBJECT * sum(count_objects(it.labels) for it in train_items),
                                   MIN_STEPS, MAX_STEPS))
    done, train_seconds, last_loss = train_network(
        net, tuned_cfg, train_items, planned, deadline - reserve, device, seed,
        lambda d, n, loss, eta: report("training", d, n, loss, eta), bar)

    # the folder is built beside ``out`` and renamed into place at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        post = checkpoint.load_post(folder, cfg.post)  # the starting model's tuned post-processing
        checkpoint.save_config(tmp, tuned_cfg)
        checkpoint.save_weights(tmp / checkpoint.WEIGHTS, net)
        checkpoint.save_post(tmp, post)
        from .tune import median_diameter

        diameter = median_diameter([it.labels for it in items])
        checkpoint.save_metrics(tmp, checkpoint.RunMetrics(object_diameter=diameter))
        after_seg = load_model(tmp, device=device, options=options)  # as the written folder predicts
        after, preds = score(after_seg, task, scored_items,
                             lambda i: report("scoring the fine-tuned model", i, len(scored_items)))
        tuned = None
        if retune:
            from .tune import tune_post

            report("retuning post-processing")
            post, tuned = tune_post(task, preds, post)
            checkpoint.save_post(tmp, post)
        report("writing")
        result = FinetuneResult(
            out=out, start=str(model), networks=networks, images=len(items), objects=objects,
            train_items=tuple(it.name for it in train_items), scored_items=tuple(it.name for it in scored_items),
            held_out=held_out, before=before, after=after, retuned=tuned, steps=done, planned=planned,
            train_seconds=train_seconds, relabelled=relabelled)
        record = {"from": str(model), "networks": networks, "images": len(items), "objects": objects,
                  "train_items": list(result.train_items), "scored_items": list(result.scored_items),
                  "scored_on": "holdout" if held_out else "training", "steps": done, "planned_steps": planned,
                  "lr": tuned_cfg.train.lr, "minutes": round(train_seconds / 60, 2),
                  "before": before, "after": after}
        if tuned is not None:  # the held-out images tuned the thresholds: they are validation images now
            metrics = checkpoint.RunMetrics(scores=after, tuned=tuned, post=dataclasses.asdict(post),
                                            object_diameter=diameter, val_items=result.scored_items,
                                            extra={"finetune": record})
        elif held_out:
            metrics = checkpoint.RunMetrics(holdout=after, post=dataclasses.asdict(post), object_diameter=diameter,
                                            holdout_items=result.scored_items, extra={"finetune": record})
        else:  # scored on the training images: no score for `biounet models` to show as validation or held-out
            metrics = checkpoint.RunMetrics(post=dataclasses.asdict(post), object_diameter=diameter,
                                            extra={"finetune": record})
        checkpoint.save_metrics(tmp, metrics)
        checkpoint.append_history(tmp, {"epoch": 1, "loss": last_loss, "lr": tuned_cfg.train.lr, "steps": done,
                                        "seconds": round(train_seconds, 2)})
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; a model folder is an ordinary one
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result.seconds = time.perf_counter() - t0
    return result


# ---- inputs --------------------------------------------------------------------------
def check_out(out: Path, overwrite: bool, start: Path) -> None:
    """Refuse an ``out`` that exists (unless ``overwrite``), that is not a model folder (even with it: a data
    folder is never replaced), or that is the starting model; and one that cannot be written."""
    from .io import check_writable

    if out.exists():
        if out.resolve() == Path(start).resolve():
            raise InputError(f"{out}: is the starting model; write the fine-tuned one to another --out")
        if not out.is_dir():  # before the --overwrite hint: overwriting would not help
            raise InputError(f"{out}: is an existing file; give a folder")
        if not overwrite:
            raise InputError(f"{out}: exists; use --overwrite to replace it")
        if any(out.iterdir()) and not (out / checkpoint.CONFIG).is_file():
            raise InputError(f"{out}: is a folder but not a model folder (no {checkpoint.CONFIG}); not replacing it")
    check_writable(out, folder=True)


def load_pairs(data: Any, labels: Any, cfg: RunConfig) -> tuple[list[ArrayItem], tuple[str, ...]]:
    """Every (image, labels) pair of ``data``, read and checked once; the names of masks split into objects."""
    if isinstance(data, (str, Path)):
        pairs = [(it.name, *it.load()) for it in file_items(data, labels, cfg)]
        in_memory = False
    else:
        if labels is not None:
            raise InputError("labels is for a mask folder or label stack beside a data path; in-memory data are "
                             "(image, labels) pairs")
        pairs = []
        for i, pair in enumerate(data):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"data[{i}]: expected an (image, labels) pair")
            pairs.append((f"image {i + 1}", np.asarray(pair[0]), np.asarray(pair[1])))
        in_memory = True
    if not pairs:
        raise InputError(f"{data}: no images" if not in_memory else "no (image, labels) pairs given")
    items, relabelled = [], []
    for name, image, lab in pairs:
        image, lab, split = check_pair(name, image, lab, cfg, in_memory)
        if split:
            relabelled.append(name)
        items.append(ArrayItem(name, image, lab))
    return items, tuple(relabelled)


def file_items(data: str | Path, labels: str | Path | None, cfg: RunConfig) -> list:
    """The image/label items of a data path, of the kind :func:`~biounet.data.dataset.guess_kind` sees."""
    from .config import DataConfig
    from .data.dataset import guess_kind, items_from_config

    if not Path(data).exists():
        raise InputError(f"{data}: no such file or folder")
    if labels is not None and not Path(labels).exists():
        raise InputError(f"{labels}: no such file or folder")
    kind = guess_kind(data, labels)
    if kind is None:
        raise InputError(f"{data}: cannot tell what kind of data this is; give a folder holding images/ and masks/, "
                         "an image folder with its mask folder (--labels), a DSB folder (<id>/images, <id>/masks) "
                         "or a TIFF stack with its label stack (--labels)")
    dc = DataConfig(kind=kind, images=str(data), labels=str(labels or ""), channel=cfg.data.channel)
    return items_from_config(dc)


def check_pair(name: str, image: np.ndarray, lab: np.ndarray, cfg: RunConfig,
               in_memory: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(image, integer labels, whether a binary mask was split into connected objects), or a one-line error."""
    from .data.dataset import label_image

    if in_memory and np.issubdtype(lab.dtype, np.floating):
        raise InputError(f"{name}: labels are {lab.dtype}; expected integer labels (0 = background, one id per "
                         "nucleus), e.g. a napari Labels layer, not an Image layer")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > 4):
        raise InputError(f"{name}: image has shape {image.shape}; expected one 2D image (H, W) or (H, W, channels)")
    if in_memory:
        from .io import pick_channel

        if image.ndim == 3 and cfg.data.channel >= 0:
            image = pick_channel(image, cfg.data.channel, name)
        lab = label_image(lab, name)
    if lab.shape != image.shape[:2]:
        raise InputError(f"{name}: labels are {lab.shape[0]}x{lab.shape[1]} but the image is "
                         f"{image.shape[0]}x{image.shape[1]}; they must match pixel for pixel")
    values = np.unique(lab)
    values = values[values != 0]
    if values.size == 0:
        raise InputError(f"{name}: its labels hold no object (all 0); label its nuclei or leave the image out")
    split = False
    if values.size == 1:  # a binary mask (0/255): one label for every nucleus; its connected parts are the objects
        from skimage.measure import label as connected

        parts = connected(lab != 0, connectivity=1)
        if parts.max() > 1:
            lab, split = parts.astype(np.int32), True
    return image, lab, split


def count_objects(lab: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(lab.ravel().astype(np.int64))[1:]))


def split_holdout(items: list[ArrayItem], seed: int) -> tuple[list[ArrayItem], list[ArrayItem]]:
    """(training, scored) items: a seeded :data:`HOLDOUT_SHARE` held out (at least one) from
    :data:`HOLDOUT_MIN_IMAGES` images on; below that the training items are the scored ones (the same list)."""
    n = len(items)
    if n < HOLDOUT_MIN_IMAGES:
        return items, items
    k = max(1, round(n * HOLDOUT_SHARE))
    held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def _cancel_check(cancel: Any) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return lambda: bool(cancel.is_set())
    if callable(cancel):
        return lambda: bool(cancel())
    raise InputError("cancel must be a callable returning True to stop, or an object with is_set()")


# ---- scores ----------------------------------------------------------------------------
def score(seg, task, items: list[ArrayItem], each: Callable[[int], Any]) -> tuple[dict[str, float], list]:
    """The task's scores of ``seg`` on ``items`` at its own post-processing, and the predictions
    (name, probabilities, labels) they came from; ``each(i)`` before the i-th image."""
    from .tune import predict_items, score_predictions

    preds = []
    for i, item in enumerate(items):
        each(i)
        preds += predict_items(seg, [item])
    each(len(items))
    return score_predictions(task, preds, seg.post), preds


# ---- training ---------------------------------------------------------------------------
def finetune_config(cfg: RunConfig, folder: Path, train_items: list[ArrayItem], out: Path, data: Any,
                    labels: Any, model_name: str = "") -> tuple[RunConfig, torch.nn.Module]:
    """The fine-tuned model's config (one network, the fine-tuning's data, patch size, zoom range and
    learning rate; the rest the starting model's) and its network, loaded with the starting weights."""
    from .models.unet import build_model

    model_cfg = dataclasses.replace(cfg.model, members=1)
    net = build_model(model_cfg)
    checkpoint.load_weights(folder, net, prefix="members.0." if cfg.model.members > 1 else "")
    side = max(max(it.image.shape[:2]) for it in train_items)
    align = model_cfg.pool_size ** model_cfg.depth
    patch = min(cfg.data.patch_size, max(align, -(-side // align) * align))  # no bigger than the images need
    patch = net.valid_input_size(patch)
    lo, hi = cfg.augment.scale_range
    start = model_name if model_name in checkpoint.shipped_models() else str(folder.resolve())  # provenance
    path = isinstance(data, (str, Path))
    kind = None
    if path:
        from .data.dataset import guess_kind

        kind = guess_kind(data, labels)
    data_cfg = dataclasses.replace(
        cfg.data, images=str(Path(data).resolve()) if path else "",
        labels=str(Path(labels).resolve()) if path and labels is not None else "",
        kind=kind or cfg.data.kind, patch_size=patch, val_fraction=0.0, val_indices=(), folds=0, fold=0,
        holdout_fraction=0.0, modalities=(), exclude_groups=(), groups="", balance=False)
    tuned = dataclasses.replace(
        cfg, name=out.name, model=model_cfg, data=data_cfg,
        augment=dataclasses.replace(cfg.augment, scale_range=(min(lo, SCALE_RANGE[0]), max(hi, SCALE_RANGE[1]))),
        train=dataclasses.replace(cfg.train, lr=cfg.train.lr * LR_FACTOR, init_weights=start, ema=0.0,
                                  swa=0.0, early_stop=0, schedule="cosine"))
    return tuned, net


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine down to :data:`LR_FLOOR` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))


def train_network(net: torch.nn.Module, cfg: RunConfig, items: list[ArrayItem], planned: int, until: float,
                  device: str, seed: int, report: Callable[[int, int, float, float | None], Any],
                  bar: bool) -> tuple[int, float, float]:
    """Train ``net`` in place on random augmented patches of ``items`` for ``planned`` steps or until the
    ``time.perf_counter()`` value ``until``, whichever comes first (at least one step). The schedule is
    re-planned from the measured step time, so the learning rate still comes down when time is short.
    Returns (steps done, seconds, mean loss of the last steps)."""
    from tqdm.auto import tqdm

    from .data.dataset import PatchDataset
    from .losses import get_loss
    from .tasks import get_task
    from .train import crop_to

    torch.manual_seed(seed)
    np.random.seed(seed)
    dataset = PatchDataset(items, get_task(cfg))
    dataset.epoch_seed = seed
    net.to(device).train()
    channels_last = cfg.train.channels_last
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay) \
        if cfg.train.optimizer == "adamw" else \
        torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = get_loss(cfg.train.loss, cfg.model.out_channels, cfg.train.class_weights)
    batch_size = cfg.train.batch_size
    total, warmup = planned, min(WARMUP_STEPS, max(1, planned // 10))
    losses: list[float] = []
    t_start = time.perf_counter()
    t_first = None  # when the first step ended: later steps are timed from there (the first warms caches)
    progress_bar = tqdm(total=total, desc="fine-tuning", unit="step", dynamic_ncols=True, disable=None if bar else True)
    try:
        step = 0
        while step < total:
            for group in opt.param_groups:
                group["lr"] = cfg.train.lr * lr_factor(step, total, warmup)
            samples = [dataset[step * batch_size + j] for j in range(batch_size)]
            x = torch.stack([s["image"] for s in samples]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.stack([s["target"] for s in samples]).to(device)
            w = torch.stack([s["weight"] for s in samples]).to(device) if "weight" in samples[0] else None
            logits = net(x)
            y, w = crop_to(y, logits), crop_to(w, logits) if w is not None else None
            loss = loss_fn(logits.float(), y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            elif step > 1:  # re-plan: as many steps as fit before ``until`` at the pace so far, never more
                pace = (now - t_first) / (step - 1)
                total = max(step, min(total, step + int((until - now) / pace)))
            if now >= until:
                total = step
            progress_bar.total = total
            progress_bar.update(1)
            recent = float(np.mean(losses[-20:]))
            progress_bar.set_postfix(loss=f"{recent:.4f}")
            eta = (total - step) * (now - t_start) / step
            report(step, total, recent, eta)
    finally:
        progress_bar.close()
    net.eval()
    return step, time.perf_counter() - t_start, float(np.mean(losses[-20:]))

