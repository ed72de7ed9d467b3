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


@pytest.mark.parametrize("name,k", [("bce", 1), ("dice", 1), ("bce_dice", 1), ("ce", 3), ("ce_dice", 3),
                                    ("ce_lovasz", 3)])
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


def test_class_weights_hand_value_for_cross_entropy():
    # Two pixels with equal logits over 3 classes: each pixel's CE is log(3).
    # Targets 1 and 2 with class weights (1, 1, 3): the weighted mean is (1 + 3) log 3 / 4 = log 3,
    # so use unequal logits to make the weights matter.
    logits = torch.tensor([[[[0.0, 0.0]], [[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[1, 2]]])
    ce_a = -math.log(math.exp(2) / (math.exp(2) + 2))  # pixel 0, class 1
    ce_b = math.log(3)  # pixel 1, class 2
    got = get_loss("ce", 3, (1.0, 1.0, 3.0))(logits, target, None)
    assert math.isclose(got.item(), (ce_a + 3 * ce_b) / 4, rel_tol=1e-6)


def test_class_weights_equal_an_explicit_weight_map_and_multiply_a_given_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    cw = torch.tensor([0.5, 1.0, 4.0])
    pixel_w = torch.rand(2, 8, 8) + 0.1
    for name in ("ce", "ce_dice"):
        plain, weighted = get_loss(name, 3), get_loss(name, 3, tuple(cw.tolist()))
        assert torch.allclose(weighted(logits, target, None), plain(logits, target, cw[target]))
        assert torch.allclose(weighted(logits, target, pixel_w), plain(logits, target, cw[target] * pixel_w))
        assert torch.allclose(get_loss(name, 3, (2.0, 2.0, 2.0))(logits, target, None), plain(logits, target, None))
    assert not torch.allclose(get_loss("ce", 3, (1.0, 1.0, 4.0))(logits, target, None), ce_loss(logits, target))


@pytest.mark.parametrize("name, k, weights", [("ce", 3, (1.0, 2.0)), ("bce", 1, (1.0,)),
                                              ("ce", 3, (1.0, -1.0, 1.0)), ("ce", 3, (0.0, 0.0, 0.0))])
def test_class_weights_reject_bad_values(name, k, weights):
    with pytest.raises(ValueError, match="class.weights"):
        get_loss(name, k, weights)


# ---- soft targets (class probabilities, data.target = "depth3") ------------------------------
def _logits_and_classes():
    logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    target = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(5))
    return logits, target


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice"])
def test_one_hot_soft_targets_give_the_class_target_loss(name):
    from biounet.losses import with_class_weights

    logits, target = _logits_and_classes()
    soft = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    w = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(6))
    fn = get_loss(name, 3)
    assert fn(logits, soft, w).item() == pytest.approx(fn(logits, target, w).item(), rel=1e-5)
    weighted = with_class_weights(fn, [1.0, 2.0, 5.0])
    assert weighted(logits, soft, w).item() == pytest.approx(weighted(logits, target, w).item(), rel=1e-5)


def test_soft_cross_entropy_is_lowest_at_the_target_probabilities():
    p = torch.softmax(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7)), 1)
    at_target = torch.log(p).requires_grad_(True)
    loss = ce_loss(at_target, p)
    loss.backward()
    assert at_target.grad.abs().max().item() < 1e-6  # softmax(logits) - p = 0
    other = torch.log(torch.softmax(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(8)), 1))
    assert ce_loss(other, p).item() > loss.item()
    # by hand at one pixel: -sum p log q
    q = torch.tensor([0.2, 0.3, 0.5])
    t = torch.tensor([0.0, 0.25, 0.75])
    expected = -(0.25 * math.log(0.3) + 0.75 * math.log(0.5))
    assert ce_loss(torch.log(q)[None, :, None, None], t[None, :, None, None]).item() == pytest.approx(expected, rel=1e-6)


# ---- Lovász-softmax (train.loss = "ce_lovasz") ----------------------------------------------
def _saturated(pred: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is (numerically) the one-hot of ``pred`` (B, H, W)."""
    return F.one_hot(pred, 3).permute(0, 3, 1, 2).double() * 60


def test_lovasz_of_a_hard_prediction_is_one_minus_iou_by_hand():
    from biounet.losses import lovasz_softmax_loss

    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, 0, :4] = 1  # 4 nucleus pixels
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 0, :3] = 1  # 3 of them found ...
    pred[0, 1, :2] = 1  # ... and 2 false ones: IoU 3 / 6; class 2 is absent from the truth, so not counted
    assert lovasz_softmax_loss(_saturated(pred), truth).item() == pytest.approx(0.5, abs=1e-9)
    truth[0, 3, 3] = 2
    pred[0, 3, 3] = 2  # class 2 present and found exactly: mean of 0.5 and 0
    assert lovasz_softmax_loss(_saturated(pred), truth).item() == pytest.approx(0.25, abs=1e-9)
    assert lovasz_softmax_loss(_saturated(truth), truth).item() == pytest.approx(0.0, abs=1e-9)


def test_lovasz_averages_images_and_skips_those_without_nuclei():
    from biounet.losses import lovasz_softmax_loss

    truth = torch.zeros(3, 4, 4, dtype=torch.long)
    pred = torch.zeros(3, 4, 4, dtype=torch.long)
    truth[0, 0, :4] = 1
    pred[0, 0, :2] = 1  # IoU 2 / 4
    truth[1, 2, :2] = 1
    pred[1, 2, :2] = 1  # perfect
    pred[2, 3, :] = 1  # image 2 has no nuclei: left to the cross-entropy
    # per image, not pooled: pooled would be 1 - 4 / 6 + the false ones
    assert lovasz_softmax_loss(_saturated(pred), truth).item() == pytest.approx((0.5 + 0.0) / 2, abs=1e-9)
    empty = torch.zeros(1, 3, 4, 4, requires_grad=True)
    loss = lovasz_softmax_loss(empty, torch.zeros(1, 4, 4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None


def test_lovasz_refuses_soft_targets_and_the_task_refuses_depth3_with_it():
    from biounet.io import InputError
    from biounet.losses import lovasz_softmax_loss
    from biounet.tasks import build_config

    logits, target = _logits_and_classes()
    with pytest.raises(ValueError, match="integer class targets"):
        lovasz_softmax_loss(logits, F.one_hot(target, 3).permute(0, 3, 1, 2).float())
    build_config({"task": "nuclei", "train": {"loss": "ce_lovasz"}})  # contour3: fine
    with pytest.raises(InputError, match="ce_lovasz"):
        build_config({"task": "nuclei", "train": {"loss": "ce_lovasz"}, "data": {"target": "depth3"}})
