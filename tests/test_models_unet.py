"""The U-Net's geometry and gradients."""
import pytest
import torch
from torch import nn

from biounet.config import ModelConfig
from biounet.models.unet import UNet, build_model, receptive_field


def _convs(model: torch.nn.Module) -> int:
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())


def test_paper_configuration_maps_572_to_388_with_23_convolutions():
    cfg = ModelConfig(in_channels=1, out_channels=2, base_features=64, depth=4, padding="valid", batch_norm=False)
    net = UNet(cfg)
    assert _convs(net) == 23
    assert net.output_size(572) == 388
    # a real forward pass on a cheap net of the same geometry (width does not change sizes)
    small = UNet(ModelConfig(in_channels=1, out_channels=2, base_features=2, depth=4, padding="valid"))
    with torch.no_grad():
        assert small(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def _reference_output_size(n: int, depth: int, k: int, p: int) -> int | None:
    """Independent recomputation, level by level, of a valid net's output length."""
    loss = 2 * (k - 1)
    for _ in range(depth):
        n -= loss
        if n <= 0 or n % p:
            return None
        n //= p
    n -= loss
    if n <= 0:
        return None
    for _ in range(depth):
        n = n * p - loss
    return n if n > 0 else None


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_valid_output_size_is_computed_and_matches_forward(depth):
    net = UNet(ModelConfig(base_features=2, depth=depth, padding="valid", batch_norm=False))
    n = net.valid_input_size(140 if depth < 5 else 200)
    expected = _reference_output_size(n, depth, 3, 2)
    assert expected is not None and net.output_size(n) == expected
    with torch.no_grad():
        assert net(torch.zeros(1, 1, n, n)).shape[-1] == expected
    assert net.margin * 2 == n - expected


def test_invalid_valid_size_raises_with_next_valid_size():
    net = UNet(ModelConfig(base_features=2, depth=4, padding="valid"))
    with pytest.raises(ValueError, match="next valid size is 188"):
        net.output_size(187)


def test_same_net_keeps_odd_sizes():
    net = UNet(ModelConfig(in_channels=3, out_channels=4, base_features=4, depth=4, padding="same")).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 37, 53)).shape == (2, 4, 37, 53)
        assert net(torch.zeros(1, 3, 1, 9)).shape == (1, 4, 1, 9)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"upsampling": "resize"},
        {"activation": "elu", "dropout": 0.5},
        {"padding": "valid", "batch_norm": False, "kernel_size": 3},
        {"pool_size": 3, "depth": 2},
    ],
)
def test_gradients_are_finite(kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"base_features": 4, "depth": 3, **kw})
    net = UNet(cfg)
    n = net.valid_input_size(64)
    x = torch.randn(2, 1, n, n, requires_grad=True)
    out = net(x)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_wrong_channel_count_is_a_clear_error():
    net = UNet(ModelConfig(in_channels=3, base_features=2, depth=1))
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        net(torch.zeros(1, 1, 16, 16))


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="padding"):
        UNet(ModelConfig(padding="full"))


def test_receptive_field_of_known_stacks():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    assert receptive_field(conv, 2) == 3
    stack = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 1, 5, padding=2)).train()
    assert receptive_field(stack, 1) == 7
    assert stack.training  # mode restored
    torch.manual_seed(0)
    net = UNet(ModelConfig(base_features=4, depth=2, padding="valid")).eval()
    assert 2 * net.margin + 1 <= receptive_field(net, 1) <= 2 * net.margin + 1 + 2 * 3  # pooling phase


def test_geometry_is_the_tiling_contract():
    net = UNet(ModelConfig(base_features=4, depth=2, padding="valid"))
    geo = net.geometry
    assert (geo.margin, geo.align, geo.min_input) == (net.margin, 4, net.valid_input_size(1))
    assert geo.context == receptive_field(net, 1)
    assert net.geometry is geo  # measured once


def test_ensemble_returns_the_mean_of_its_members_probabilities_as_logits():
    from biounet.models.unet import Ensemble, inference_copy

    for out_channels in (1, 3):
        cfg = ModelConfig(in_channels=2, out_channels=out_channels, base_features=4, depth=2, members=3)
        torch.manual_seed(0)
        ens = build_model(cfg).eval()
        assert isinstance(ens, Ensemble) and len(ens.members) == 3
        x = torch.randn(2, 2, 29, 35)
        act = (lambda z: torch.sigmoid(z)) if out_channels == 1 else (lambda z: torch.softmax(z, 1))
        with torch.no_grad():
            expected = torch.stack([act(m(x)) for m in ens.members]).mean(0)
            got = act(ens(x))
            fast = act(inference_copy(ens)(x.contiguous(memory_format=torch.channels_last)))
        assert got.shape == expected.shape == (2, out_channels, 29, 35)
        assert (got - expected).abs().max() < 1e-5 and (fast - expected).abs().max() < 1e-4
        assert ens.geometry == ens.members[0].geometry and ens.output_shape((29, 35)) == (29, 35)
