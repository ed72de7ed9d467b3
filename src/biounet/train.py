"""The training loop, readable top to bottom (after nanoGPT).

``train(cfg, run_dir)`` builds a :class:`Run` from one :class:`RunConfig`
(:func:`setup`), writes that config resolved into the run folder, and per
epoch: trains on random augmented patches (:func:`train_epoch`), predicts the
whole validation images and scores them with the task's metric
(:func:`validate`), keeps the best weights and saves a resumable state
(:func:`save_state`). At the end, :func:`biounet.tune.finish` tunes
post-processing on the validation images and scores the held-out ones. Under
``torchrun`` it runs data-parallel (DDP); validation and checkpoints happen on
rank 0 only. What is scored and how is the task's
business (:mod:`biounet.tasks`); the loop never asks what kind of run it is.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint, ddp
from .config import RunConfig, TrainConfig
from .io import InputError
from .data.dataset import Item, PatchDataset, split_run
from .losses import LossFn, get_loss
from .models.unet import build_model
from .predict import Segmenter
from .tasks import Task, get_task
from .tune import finish, predict_items, score_predictions, tune_post

log = logging.getLogger(__name__)


# ---- set-up -------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer):
    t = cfg.train
    if t.swa:
        return torch.optim.lr_scheduler.LambdaLR(opt, partial(swa_lr_factor, start=swa_start(t), floor=t.swa_lr))
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.epochs), eta_min=t.lr * 0.02)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, t.epochs // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


# ---- one run --------------------------------------------------------------------
@dataclass
class Run:
    """Everything one training run holds; built by :func:`setup`, advanced by the loop."""

    cfg: RunConfig
    task: Task
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DDP wrapper
    loss_fn: LossFn
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    dataset: PatchDataset
    loader: DataLoader
    val_items: list[Item]
    holdout_items: list[Item] = dataclasses.field(default_factory=list)
    writer: Any = None  # TensorBoard, when installed
    average: torch.optim.swa_utils.AveragedModel | None = None  # train.ema or train.swa: the averaged weights
    start_epoch: int = 0
    best: float = -math.inf
    stale: int = 0  # validations since the best one

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def kept(self) -> torch.nn.Module:
        """The weights that are validated and saved: the average with ``train.ema`` or ``train.swa`` once it
        has begun, else the live ones."""
        return self.model if self.average is None or not int(self.average.n_averaged) else self.average.module

    @property
    def use_amp(self) -> bool:
        return self.cfg.train.amp and self.device.type == "cuda"


def setup(cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> Run:
    """Data, model, optimiser and loader for ``cfg``; restores ``last.pt`` when resuming."""
    run_dir = Path(run_dir)
    rank, world, _ = ddp.join()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = _device(rank)
    seed_everything(cfg.train.seed + rank)
    task = get_task(cfg)

    if cfg.model.members > 1:
        raise InputError("model.members > 1 is an ensemble of trained runs (biounet ensemble), not trained as one")
    if cfg.train.init_weights and not resume:  # a shape mismatch fails before any data is read
        checkpoint.init_source(cfg.train.init_weights, cfg)
    train_items, val_items, holdout_items = split_run(cfg)
    for item in val_items + holdout_items:  # a bad validation pair (size mismatch, corrupt file) fails now, not after epochs
        item.load()
    dataset = PatchDataset(train_items, task)
    for i in range(len(train_items)):  # a bad training pair fails now, not mid-epoch (and the cache fills)
        dataset.load(i)
    run = build_run(cfg, dataset, device, run_dir, rank, world, init_weights=not resume)
    run.val_items, run.holdout_items = val_items, holdout_items
    if resume:
        restore_state(run, checkpoint.load_state(run_dir / checkpoint.STATE))
    elif run.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clear_history(run_dir)
    if run.main:
        checkpoint.save_config(run_dir, cfg)
        run.writer = _tensorboard(run_dir)
        log.info("train %d images, validate %d (%s), hold out %d; %d parameters", len(train_items),
                 len(val_items), task.metric, len(holdout_items), sum(p.numel() for p in run.model.parameters()))
        if not val_items:
            log.warning("no validation images: the last epoch's weights are kept and the config's post-processing, "
                        "untuned (add images, or set data.val_fraction / data.val_indices)")
    return run


def build_run(cfg: RunConfig, dataset: PatchDataset | None, device: torch.device, run_dir: Path = Path("."),
              rank: int = 0, world: int = 1, init_weights: bool = True) -> Run:
    """Model (on ``device``, channels-last if configured), optimiser, schedule, loss and loader for ``cfg``.

    ``benchmarks/speed.py`` times training steps on what this builds; ``dataset`` None builds no loader.
    """
    model = build_model(cfg.model)
    if cfg.train.init_weights and init_weights:
        log.info("starting from the weights of %s", checkpoint.load_init_weights(cfg.train.init_weights, cfg, model))
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters())
    average = None if not (cfg.train.ema or cfg.train.swa) else torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=average_step(cfg.train.ema), use_buffers=True)  # batch-norm statistics averaged too
    loader = None if dataset is None else DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=False, drop_last=True,
        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)
    return Run(
        cfg=cfg, task=get_task(cfg), run_dir=Path(run_dir), rank=rank, world=world, device=device, model=model,
        net=torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model,
        loss_fn=get_loss(cfg.train.loss, cfg.model.out_channels, cfg.train.class_weights),
        opt=opt, sched=make_scheduler(cfg, opt),
        scaler=torch.amp.GradScaler("cuda", enabled=cfg.train.amp and device.type == "cuda"),
        dataset=dataset, loader=loader, val_items=[], average=average,
    )


def average_step(decay: float = 0.0):
    """The update for :class:`torch.optim.swa_utils.AveragedModel`: a moving average with ``decay`` > 0,
    else the equal-weight mean of all updates (SWA).

    The decay is warmed up, min(decay, (1 + n) / (10 + n)) after n updates, as timm's ``ModelEmaV2`` does:
    a plain 0.995 still weighs the initial weights and batch-norm variances (1.0, where trained ones are
    ~0.01) 0.7 % after 1000 steps, enough to pull validation well below the live weights'.
    """
    def update(avg: list[torch.Tensor], new: list[torch.Tensor], n: torch.Tensor) -> None:
        n = float(n)  # one read per step and device, not per tensor
        d = min(decay, (1.0 + n) / (10.0 + n)) if decay else n / (n + 1.0)
        for a, b in zip(avg, new):
            if a.is_floating_point():
                a.lerp_(b, 1.0 - d)  # d * a + (1 - d) * b
            else:  # batch-norm's step count: copied, not averaged
                a.copy_(b)

    return update


def swa_start(t: TrainConfig) -> int:
    """The first epoch (0-based) of ``train.swa``'s flat, averaged stretch; at least the last epoch."""
    return t.epochs - max(1, round(t.swa * t.epochs))


def swa_lr_factor(epoch: int, start: int, floor: float) -> float:
    """Learning-rate factor of ``train.swa``: cosine from 1 down to ``floor`` until ``start``, then flat."""
    if epoch >= start:
        return floor
    return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * epoch / start)) / 2.0


# ---- the loop -------------------------------------------------------------------
def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train per ``cfg`` into ``run_dir``; returns the best validation scores (rank 0)."""
    run = setup(cfg, run_dir, resume)
    for epoch in range(run.start_epoch, cfg.train.epochs):
        record = train_epoch(run, epoch, progress)
        last = epoch + 1 == cfg.train.epochs
        if run.main and run.val_items and ((epoch + 1) % cfg.train.val_every == 0 or last):
            t0 = time.perf_counter()
            scores = validate(run)
            record.update({f"val_{k}": v for k, v in scores.items()})
            keep_if_best(run, epoch, scores)
            record["val_time"] = round(time.perf_counter() - t0, 2)
        elif run.main and not run.val_items:
            checkpoint.save_weights(run.run_dir / checkpoint.WEIGHTS, run.kept)
        if run.main:
            log_epoch(run, record)
            save_state(run, epoch)
        if should_stop(run):
            log.info("early stop: no improvement of %s for %d validations", run.task.metric, run.stale)
            break
    if run.world > 1:
        _leave_group(run)
    return finish(run.run_dir, cfg, run.val_items, run.holdout_items) if run.main else {}


def train_epoch(run: Run, epoch: int, progress: bool) -> dict:
    """One pass over ``patches_per_epoch`` random patches; returns the epoch's history record."""
    t0 = time.perf_counter()
    run.dataset.epoch_seed = run.cfg.train.seed * 100_003 + epoch * run.world + run.rank
    run.net.train()
    losses = []
    bar = _progress(run.loader, f"epoch {epoch + 1}/{run.cfg.train.epochs}", progress and run.main)
    for batch in bar:
        losses.append(train_step(run, batch))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    run.sched.step()
    if run.cfg.train.swa and epoch >= swa_start(run.cfg.train):
        run.average.update_parameters(run.model)  # once per epoch, at its end
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": run.opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2)}


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> float:
    """Forward, loss, backward, optimiser step on one batch; returns the loss."""
    x = batch["image"].to(run.device, non_blocking=True)
    if run.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch["target"].to(run.device, non_blocking=True)
    w = batch["weight"].to(run.device) if "weight" in batch else None
    with torch.autocast(run.device.type, enabled=run.use_amp):
        logits = run.net(x)
    y = crop_to(y, logits)
    w = crop_to(w, logits) if w is not None else None
    loss = run.loss_fn(logits.float(), y, w)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    if run.cfg.train.ema:
        run.average.update_parameters(run.model)  # once per step
    return loss.item()


def validate(run: Run) -> dict[str, float]:
    """The task's scores on the validation images with the weights as they are now (:attr:`Run.kept`).

    Tasks whose scores swing with the threshold from epoch to epoch (membranes)
    are scored at their best threshold (``tune_each_validation``); instance
    tuning is too slow for every validation and waits for :func:`finish`.
    """
    seg = Segmenter(module=run.kept, config=run.cfg, post=run.cfg.post)  # new each time: the weights moved
    preds = predict_items(seg, run.val_items)
    if run.task.tune_each_validation:
        return tune_post(run.task, preds, run.cfg.post)[1]
    return score_predictions(run.task, preds, run.cfg.post)


def keep_if_best(run: Run, epoch: int, scores: dict[str, float]) -> None:
    """Save the weights and their scores when the task's metric improved."""
    if scores[run.task.metric] > run.best:
        run.best, run.stale = scores[run.task.metric], 0
        checkpoint.save_weights(run.run_dir / checkpoint.WEIGHTS, run.kept)
        checkpoint.save_metrics(run.run_dir, checkpoint.RunMetrics(epoch=epoch + 1, scores=scores))
    else:
        run.stale += 1


def should_stop(run: Run) -> bool:
    """Early stopping: rank 0 decides, every rank leaves the loop together."""
    stop = bool(run.cfg.train.early_stop and run.stale >= run.cfg.train.early_stop)
    if run.world > 1:
        flag = torch.tensor([int(stop)], device=run.device)
        torch.distributed.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def log_epoch(run: Run, record: dict) -> None:
    """history.jsonl, the log line, TensorBoard and curve.png."""
    checkpoint.append_history(run.run_dir, record)
    log.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if run.writer is not None:
        for k, v in record.items():
            if k != "epoch":
                run.writer.add_scalar(k, v, record["epoch"])
    plot_history(run.run_dir)


# ---- resumable state --------------------------------------------------------------
def save_state(run: Run, epoch: int) -> None:
    checkpoint.save_state(run.run_dir / checkpoint.STATE, {
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "epoch": epoch, "best": run.best, "stale": run.stale, "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_state_to(), "python_rng": list(random.getstate()),
        **({_average_key(run.cfg): run.average.state_dict()} if run.average is not None else {}),
    })


def restore_state(run: Run, state: dict) -> None:
    # checked first: one kind of run's schedule does not load into another's, and an average must not be lost
    key = _average_key(run.cfg) if run.average is not None else None
    saved = next((k for k in ("ema", "swa") if k in state), None)
    if saved != key:
        had = f"with train.{saved}" if saved else f"without train.{key}"
        raise InputError(f"{run.run_dir}: this run was trained {had}; resume it as it was trained, or start anew")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    if key is not None:
        run.average.load_state_dict(state[key])
    # --resume --epochs N changes the run's length: stretch the schedule from where it is, never restart it
    if isinstance(run.sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        run.sched.T_max = max(1, run.cfg.train.epochs, state["epoch"] + 1)
    elif isinstance(run.sched, torch.optim.lr_scheduler.StepLR):
        run.sched.step_size = max(1, run.cfg.train.epochs // 3)
    run.start_epoch, run.best, run.stale = state["epoch"] + 1, state["best"], state["stale"]
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(_numpy_state_from(state["numpy_rng"]))
    random.setstate(_to_tuple(state["python_rng"]))


# ---- helpers ----------------------------------------------------------------------------
def _average_key(cfg: RunConfig) -> str:
    """Where ``last.pt`` keeps the averaged weights: under the option that made them."""
    return "swa" if cfg.train.swa else "ema"


def _leave_group(run: Run) -> None:
    """Every rank waits for the others, drops its DDP wrapper (which holds the process group) and
    destroys the group, before rank 0 tunes alone. A group still held by DDP when the interpreter
    exits can abort the process in gloo's threads ("terminate called without an active exception")."""
    torch.distributed.barrier()
    run.net = run.model
    gc.collect()
    torch.distributed.destroy_process_group()


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = ddp.local_rank(rank)
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def crop_to(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Centre-crop targets to a valid net's smaller output."""
    h, w = logits.shape[-2:]
    if y.shape[-2:] == (h, w):
        return y
    top, left = (y.shape[-2] - h) // 2, (y.shape[-1] - w) // 2
    return y[..., top : top + h, left : left + w]


def _numpy_state_to() -> list:
    """NumPy's global RNG state as tensors/ints, so ``weights_only`` loading accepts it."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def _progress(iterable, desc: str, enabled: bool):
    """A bar on a terminal only: redirected to a log (``nohup ... > log``), the epoch lines say it all."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_history(run_dir: Path) -> None:
    """curve.png: loss and validation scores per epoch."""
    hist = checkpoint.read_history(run_dir)
    if not hist:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in hist]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["loss"] for h in hist], "o-", ms=3)
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    shown = {k for h in hist for k, v in h.items()
             if k.startswith("val_") and isinstance(v, float) and k != "val_time" and not k.endswith(("_split", "_merge"))}
    for k in sorted(shown):
        b.plot(epochs, [h.get(k, np.nan) for h in hist], "o-", ms=3, label=k[4:])
    b.set(xlabel="epoch", title="validation")
    if b.lines:
        b.legend(fontsize=8)
    fig.tight_layout()
    from .io import atomic_path

    with atomic_path(run_dir / checkpoint.CURVE) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
