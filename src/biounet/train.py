"""The training loop, readable top to bottom (after nanoGPT).

``train(cfg, run_dir)`` builds everything from one :class:`RunConfig`, writes
that config resolved into the run folder, and per epoch: trains on random
augmented patches, predicts the whole validation images, scores them with the
task's own metric (V-Rand for membranes, DSB score for nuclei, Dice otherwise),
keeps the best weights, and saves a resumable state. Under ``torchrun`` it runs
data-parallel (DDP); validation and checkpoints happen on rank 0 only.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .config import PostConfig, RunConfig
from .data.dataset import Item, PatchDataset, items_from_config, split_items
from .io import InputError
from .losses import get_loss
from .models.unet import build_model
from .predict import Segmenter

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
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise InputError(f"train.optimizer must be adam|sgd, got {t.optimizer!r}")


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer):
    t = cfg.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.epochs), eta_min=t.lr * 0.02)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, t.epochs // 3), gamma=0.1)
    if t.schedule == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise InputError(f"train.schedule must be cosine|step|none, got {t.schedule!r}")


def val_metric_name(cfg: RunConfig) -> str:
    if cfg.train.val_metric != "auto":
        return cfg.train.val_metric
    return {"membrane": "v_rand", "border3": "dsb", "contour3": "dsb"}.get(cfg.data.target, "dice")


# ---- validation ---------------------------------------------------------------
def predict_items(seg: Segmenter, items: list[Item]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probabilities (K, H, W), raw labels) for each validation image."""
    out = []
    for item in items:
        img, lab = item.load()
        out.append((item.name, seg.predict_prepared(seg.view(img, item.name)), lab))  # normalized as at prediction
    return out


def score_predictions(preds, cfg: RunConfig, post: PostConfig) -> dict[str, float]:
    """The task's validation scores for given post-processing thresholds."""
    metric = val_metric_name(cfg)
    if metric == "v_rand":
        from .metrics.em import evaluate_membranes

        truth = np.stack([lab != 0 for _, _, lab in preds])
        pred_cells = np.stack([p[0] < post.threshold for _, p, _ in preds])
        return evaluate_membranes(truth, pred_cells)
    if metric == "dsb":
        from .metrics.instance import evaluate_instances
        from .postprocess import segment

        inst = dataclasses.replace(post, mode="instances")
        summary, _ = evaluate_instances((n, lab, segment(p, inst)) for n, p, lab in preds)
        return {"dsb": summary["dsb_score"], "ap50": summary["ap50"], "ap75": summary["ap75"]}
    from .metrics.semantic import dice, iou

    fg = [(lab != 0) if cfg.data.foreground == "nonzero" else (lab == 0) for _, _, lab in preds]
    pm = [(p[0] if p.shape[0] == 1 else 1 - p[0]) > post.threshold for _, p, _ in preds]
    return {"dice": float(np.mean([dice(t, q) for t, q in zip(fg, pm)])),
            "iou": float(np.mean([iou(t, q) for t, q in zip(fg, pm)]))}


def _image_score(cfg: RunConfig):
    """Per-image score of post-processed output, for threshold tuning."""
    metric = val_metric_name(cfg)
    if metric == "v_rand":
        from .metrics.em import evaluate_membranes

        return lambda lab, mask: evaluate_membranes(lab != 0, mask == 0)["v_rand"]
    if metric == "dsb":
        from .metrics.instance import dsb_score

        return dsb_score
    from .metrics.semantic import dice

    zero_fg = cfg.data.foreground == "zero"
    return lambda lab, mask: dice((lab == 0) if zero_fg else (lab != 0), mask > 0)


def tune_post(preds, cfg: RunConfig) -> tuple[PostConfig, dict[str, float]]:
    """Grid-search post-processing thresholds on validation predictions."""
    from .postprocess import segment, tune_thresholds

    grid: dict[str, list] = {"threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}
    base = cfg.post
    if val_metric_name(cfg) == "dsb":
        # min_size up to 40 px: fragments of 20-40 px cost more (false positives) than the few
        # nuclei that small that they drop (the median nucleus is ~17 px across, ~230 px in area)
        grid = {"threshold": [0.3, 0.4, 0.5, 0.6], "seed_threshold": [0.5, 0.6, 0.7, 0.8, 0.9],
                "min_size": [10, 20, 30, 40]}
        base = dataclasses.replace(cfg.post, mode="instances")
    best, _ = tune_thresholds([p for _, p, _ in preds], [lab for _, _, lab in preds], segment,
                              _image_score(cfg), grid, base)
    return best, score_predictions(preds, cfg, best)


# ---- the loop -------------------------------------------------------------------
def _ddp() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train per ``cfg`` into ``run_dir``; returns the best validation scores."""
    run_dir = Path(run_dir)
    rank, world = _ddp()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = _device(rank)
    seed_everything(cfg.train.seed + rank)

    items = items_from_config(cfg.data)
    train_items, val_items = split_items(items, cfg.data, cfg.train.seed)
    model = build_model(cfg.model)
    if cfg.train.init_weights and not resume:
        from .predict import resolve_model

        checkpoint.load_weights(resolve_model(cfg.train.init_weights) / "model.safetensors", model)
    model = model.to(device)
    loss_fn = get_loss(cfg.train.loss, cfg.model.out_channels, cfg.train.class_weights)
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    dataset = PatchDataset(train_items, cfg.data, cfg.augment, cfg.model.in_channels)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)
    metric = val_metric_name(cfg)
    start_epoch, best, stale = 0, -math.inf, 0
    if resume:
        state = checkpoint.load_state(run_dir / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_numpy_state_from(state["numpy_rng"]))
        random.setstate(_to_tuple(state["python_rng"]))
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale_file in ("history.jsonl",):
            (run_dir / stale_file).unlink(missing_ok=True)
    if rank == 0:
        checkpoint.save_config(run_dir, cfg)
        log.info("train %d images, validate %d (%s); %d parameters", len(train_items), len(val_items),
                 metric, sum(p.numel() for p in model.parameters()))
    writer = _tensorboard(run_dir) if rank == 0 else None
    segmenter = Segmenter(module=model, config=cfg, post=cfg.post)

    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        dataset.epoch_seed = cfg.train.seed * 100_003 + epoch * world + rank
        net.train()
        losses = []
        bar = _progress(loader, f"epoch {epoch + 1}/{cfg.train.epochs}", progress and rank == 0)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["target"].to(device, non_blocking=True)
            w = batch["weight"].to(device) if "weight" in batch else None
            with torch.autocast(device.type, enabled=use_amp):
                logits = net(x)
            y = _crop_to(y, logits)
            w = _crop_to(w, logits) if w is not None else None
            loss = loss_fn(logits.float(), y, w)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        sched.step()
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 2)}
        validate = (epoch + 1) % max(1, cfg.train.val_every) == 0 or epoch + 1 == cfg.train.epochs
        if rank == 0 and val_items and validate:
            preds = predict_items(segmenter, val_items)
            # Membrane/semantic scores swing with the threshold from epoch to epoch: pick epochs
            # by their score at their best threshold (cheap here); instance tuning waits for the end.
            scores = tune_post(preds, cfg)[1] if metric != "dsb" else score_predictions(preds, cfg, cfg.post)
            record.update({f"val_{k}": v for k, v in scores.items()})
            improved = scores[metric] > best
            if improved:
                best, stale = scores[metric], 0
                checkpoint.save_weights(run_dir / "model.safetensors", model)
                checkpoint.write_json(run_dir / "metrics.json", {"epoch": epoch + 1, **scores})
            else:
                stale += 1
        elif rank == 0 and not val_items:
            checkpoint.save_weights(run_dir / "model.safetensors", model)
        if rank == 0:
            record["val_time"] = round(max(0.0, time.perf_counter() - t0 - record["seconds"]), 2)
            checkpoint.append_history(run_dir, record)
            log.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if writer is not None:
                for k, v in record.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            checkpoint.save_state(run_dir / "last.pt", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "best": best, "stale": stale, "torch_rng": torch.get_rng_state(),
                "numpy_rng": _numpy_state_to(), "python_rng": list(random.getstate()),
            })
            plot_history(run_dir)
        stop = bool(cfg.train.early_stop and stale >= cfg.train.early_stop)
        if world > 1:  # rank 0 decides; every rank must leave the loop together
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            log.info("early stop: no improvement of %s for %d validations", metric, stale)
            break

    result: dict = {}
    if rank == 0:
        result = finish(run_dir, cfg, val_items)
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def finish(run_dir: Path, cfg: RunConfig, val_items: list[Item]) -> dict:
    """Reload the best weights, tune post-processing on validation, save thresholds + metrics."""
    from .predict import load_model

    seg = load_model(run_dir)
    if not val_items:
        checkpoint.save_post(run_dir, cfg.post)
        return {}
    preds = predict_items(seg, val_items)
    post, scores = tune_post(preds, cfg)
    checkpoint.save_post(run_dir, post)
    metrics = checkpoint.read_json(run_dir / "metrics.json")
    metrics.update({"tuned_" + k: v for k, v in scores.items()})
    metrics["post"] = dataclasses.asdict(post)
    if val_metric_name(cfg) == "dsb":
        metrics["object_diameter"] = median_diameter([lab for _, _, lab in preds])
    metrics["val_items"] = [it.name for it in val_items]
    checkpoint.write_json(run_dir / "metrics.json", metrics)
    return metrics


def median_diameter(label_images: list[np.ndarray]) -> float:
    """Median equivalent diameter (px) of all objects: the scale the model learned."""
    areas = np.concatenate([np.bincount(lab.ravel().astype(np.int64))[1:] for lab in label_images])
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def _crop_to(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
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
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


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

    with atomic_path(run_dir / "curve.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
