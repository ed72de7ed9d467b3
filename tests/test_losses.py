"""Losses: on logits, hand-checked values, weights, empty masks."""
import math

import pytest
import torch
import torch.nn.functional as F

from biounet.losses import bce_loss, ce_loss, get_loss, soft_dice_loss_binary, soft_dice_loss_multiclass


def test_bce_takes_logits_and_matches_hand_value():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # (1,1,1,2)
    target = torch.tensor([[[0.0, 1.0]]])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_is_the_weighted_mean():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.tensor([[[0.0, 1.0]]])
    w = torch.tensor([[[3.0, 1.0]]])
    expected = (3 * math.log(2) + math.log(1 + math.exp(-2))) / 4
    assert bce_loss(logits, target, w).item() == pytest.approx(expected, rel=1e-6)


def test_dice_perfect_and_empty():
    target = torch.zeros(1, 8, 8)
    target[0, 2:5, 2:5] = 1
    perfect = (target * 40 - 20)[:, None]
    assert soft_dice_loss_binary(perfect, target).item() < 1e-3
    empty_logits = torch.full((1, 1, 8, 8), -30.0)
    assert soft_dice_loss_binary(empty_logits, torch.zeros(1, 8, 8)).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss_binary(-perfect, target).item() > 0.9


def test_ce_matches_torch_and_weights_change_it():
    logits = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(1))
    assert ce_loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    w = torch.ones(2, 5, 5)
    w[0] = 5
    per = F.cross_entropy(logits, target, reduction="none")
    assert ce_loss(logits, target, w).item() == pytest.approx(((per * w).sum() / w.sum()).item(), rel=1e-6)


def test_multiclass_dice_ignores_background_class():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    target[0, 4:6, 4:6] = 2
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40
    assert soft_dice_loss_multiclass(logits, target).item() < 1e-3


def test_get_loss_rejects_mismatched_heads():
    with pytest.raises(ValueError, match="out_channels >= 2"):
        get_loss("ce", 1)
    with pytest.raises(ValueError, match="binary head"):
        get_loss("bce_dice", 3)
    with pytest.raises(ValueError, match="must be one of"):
        get_loss("focal", 1)


@pytest.mark.parametrize("name,k", [("bce", 1), ("dice", 1), ("bce_dice", 1), ("ce", 3), ("ce_dice", 3)])
def test_losses_decrease_under_gradient_descent(name, k):
    torch.manual_seed(0)
    target = (torch.rand(2, 8, 8) * k).long() if k > 1 else (torch.rand(2, 8, 8) > 0.5).float()
    logits = torch.zeros(2, k, 8, 8, requires_grad=True)
    fn = get_loss(name, k)
    first = fn(logits, target, None).item()
    opt = torch.optim.SGD([logits], lr=50.0)
    for _ in range(40):
        opt.zero_grad()
        fn(logits, target, None).backward()
        opt.step()
    assert fn(logits, target, None).item() < first * 0.8
