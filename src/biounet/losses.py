"""Segmentation losses on logits.

Every loss takes raw logits ``(B, K, H, W)``: binary losses apply the sigmoid
inside ``binary_cross_entropy_with_logits`` (never before it), multi-class
losses the softmax inside ``cross_entropy``. An optional per-pixel weight map
``(B, H, W)`` (e.g. the U-Net paper's map from :mod:`biounet.data.targets`)
weights the cross-entropy terms.

Multi-class losses take either integer classes ``(B, H, W)`` or soft targets,
class probabilities ``(B, K, H, W)`` (float; ``data.target = "depth3"``).

Empty masks: soft Dice uses ``smooth = 1``, so an all-background target with
an all-background prediction has loss ~0 and never divides by zero.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _weighted_mean(per_pixel: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_pixel.mean()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-8)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy; logits (B, 1, H, W), target (B, H, W) or (B, 1, H, W) in {0, 1}."""
    target = target.reshape(logits.shape).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")[:, 0]
    return _weighted_mean(per_pixel, weight)


def soft_dice_loss_binary(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """1 - soft Dice of the sigmoid foreground, pooled over the batch (stable on empty patches)."""
    prob = torch.sigmoid(logits)
    target = target.reshape(logits.shape).to(prob.dtype)
    if weight is not None:
        w = weight.reshape(logits.shape)
        inter, denom = (w * prob * target).sum(), (w * (prob + target)).sum()
    else:
        inter, denom = (prob * target).sum(), (prob + target).sum()
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def _is_soft(target: torch.Tensor, logits: torch.Tensor) -> bool:
    """Class probabilities (B, K, H, W) rather than integer classes (B, H, W)."""
    return target.ndim == logits.ndim and target.is_floating_point()


def _class_probs(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Targets as (B, K, H, W) probabilities: soft targets as they are, classes one-hot."""
    if _is_soft(target, logits):
        return target.to(logits.dtype)
    return F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)


def ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy; logits (B, K, H, W), target (B, H, W) integer classes or (B, K, H, W)
    class probabilities (then the cross-entropy against them, which is lowest at the target itself)."""
    if _is_soft(target, logits):
        per_pixel = F.cross_entropy(logits, target.to(logits.dtype), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    return _weighted_mean(per_pixel, weight)


def soft_dice_loss_multiclass(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """Mean over foreground classes (1..K-1) of 1 - soft Dice of the softmax probabilities."""
    prob = torch.softmax(logits, dim=1)
    onehot = _class_probs(target, prob)
    dims = (0, 2, 3)
    if weight is not None:
        w = weight[:, None]
        inter, denom = (w * prob * onehot).sum(dims), (w * (prob + onehot)).sum(dims)
    else:
        inter, denom = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice[1:].mean()


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss's Lovász extension at pixels sorted by error (Berman et al. 2018, alg. 1)."""
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018): a convex surrogate of 1 - IoU, per image and foreground class.

    Why: the DSB score counts a nucleus only when its IoU passes 0.5-0.95, and cross-entropy and
    pooled Dice optimise IoU only indirectly; this loss is the tight convex extension of the
    per-image Jaccard loss, so an image with few small nuclei weighs as much as one with many.
    Classes 1..K-1 that are present in an image are averaged, then images; a patch with no
    foreground scores 0 here (cross-entropy still sees it). Takes integer classes only; the
    weight map is ignored (a region overlap has no per-pixel weight).
    """
    if _is_soft(target, logits):
        raise ValueError("the Lovász loss needs integer class targets, not class probabilities")
    prob = torch.softmax(logits.float(), dim=1)
    per_image = []
    for b in range(logits.shape[0]):
        labels = target[b].reshape(-1).long()
        per_class = []
        for c in range(1, logits.shape[1]):
            fg = (labels == c).to(prob.dtype)
            if fg.sum() == 0:
                continue
            errors = (fg - prob[b, c].reshape(-1)).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            per_class.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
        if per_class:
            per_image.append(torch.stack(per_class).mean())
    if not per_image:
        return logits.sum() * 0.0  # keeps the graph; nothing to overlap
    return torch.stack(per_image).mean()


def _combo(a: LossFn, b: LossFn) -> LossFn:
    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return a(logits, target, weight) + b(logits, target, None)

    return loss


def with_class_weights(loss_fn: LossFn, class_weights: Sequence[float]) -> LossFn:
    """``loss_fn`` with each pixel's weight multiplied by its target class's weight.

    Why: a rare class (the 2-px touching border that splits nuclei) is otherwise
    a few percent of the cross-entropy, so the network under-predicts it and
    touching nuclei merge. Multiplies any per-pixel weight map that is passed.
    """
    table = torch.tensor([float(w) for w in class_weights])
    if table.numel() == 0 or bool((table < 0).any()) or float(table.sum()) == 0.0:
        raise ValueError(f"class weights must be >= 0 and not all 0, got {list(class_weights)}")

    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        t = table.to(logits.device)
        # a soft target's pixel weighs the mean of the class weights under its class probabilities
        per_class = (t[:, None, None] * target).sum(1) if _is_soft(target, logits) else t[target.long()]
        return loss_fn(logits, target, per_class if weight is None else per_class * weight)

    return loss


def get_loss(name: str, out_channels: int, class_weights: Sequence[float] = ()) -> LossFn:
    """Loss by config name; binary names need a 1-channel head, ``ce*`` a K-channel head.

    In the combined losses the weight map weights the cross-entropy term only:
    it encodes per-pixel importance, which Dice (a region overlap) has no notion of.
    ``class_weights`` (softmax heads only, one per class) scale that weight per target class.
    """
    binary = out_channels == 1
    table: dict[str, LossFn] = {
        "bce": bce_loss,
        "dice": soft_dice_loss_binary if binary else soft_dice_loss_multiclass,
        "bce_dice": _combo(bce_loss, soft_dice_loss_binary),
        "ce": ce_loss,
        "ce_dice": _combo(ce_loss, soft_dice_loss_multiclass),
        "ce_lovasz": _combo(ce_loss, lovasz_softmax_loss),
    }
    if name not in table:
        raise ValueError(f"train.loss must be one of {sorted(table)}, got {name!r}")
    if binary and name.startswith("ce"):
        raise ValueError(f"loss {name!r} needs model.out_channels >= 2 (softmax head)")
    if not binary and name.startswith("bce"):
        raise ValueError(f"loss {name!r} needs model.out_channels == 1 (binary head); use 'ce' or 'ce_dice'")
    if not class_weights:
        return table[name]
    if binary or len(class_weights) != out_channels:
        raise ValueError(f"train.class_weights needs one weight per class of a softmax head "
                         f"({out_channels} channels), got {list(class_weights)}")
    return with_class_weights(table[name], class_weights)
