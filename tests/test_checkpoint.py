"""Run folders: weights round trip (fp16 too), clear errors, no unpickling of arbitrary objects."""
import pickle

import pytest
import torch

from biounet.checkpoint import load_state, load_weights, save_state, save_weights
from biounet.config import ModelConfig
from biounet.io import InputError
from biounet.models.unet import UNet


def test_weights_round_trip_and_half(tmp_path):
    torch.manual_seed(0)
    a, b = UNet(ModelConfig(base_features=4, depth=2)), UNet(ModelConfig(base_features=4, depth=2))
    save_weights(tmp_path / "w.safetensors", a)
    load_weights(tmp_path / "w.safetensors", b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    save_weights(tmp_path / "h.safetensors", a, half=True)
    load_weights(tmp_path / "h.safetensors", b)
    assert b.head.weight.dtype == torch.float32
    assert torch.allclose(a.head.weight, b.head.weight, atol=1e-3)


def test_half_weights_keep_large_batchnorm_statistics(tmp_path):
    """A running variance above fp16's max (65504) must survive shipping, not become inf."""
    a, b = UNet(ModelConfig(base_features=4, depth=2)), UNet(ModelConfig(base_features=4, depth=2))
    bn = next(m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(2.0e5)
    bn.running_mean.fill_(-7.0e4)
    save_weights(tmp_path / "h.safetensors", a, half=True)
    load_weights(tmp_path / "h.safetensors", b)
    for x, y in zip(a.buffers(), b.buffers()):
        assert torch.isfinite(y.float()).all() and torch.equal(x, y)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-2)


def test_mismatched_architecture_is_a_clear_error(tmp_path):
    save_weights(tmp_path / "w.safetensors", UNet(ModelConfig(base_features=4, depth=2)))
    with pytest.raises(InputError, match="do not match config.json"):
        load_weights(tmp_path / "w.safetensors", UNet(ModelConfig(base_features=8, depth=2)))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read weights"):
        load_weights(tmp_path / "bad.safetensors", UNet(ModelConfig(base_features=4, depth=2)))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_training_state_refuses_arbitrary_pickles(tmp_path):
    save_state(tmp_path / "ok.pt", {"epoch": 3, "t": torch.ones(2)})
    assert load_state(tmp_path / "ok.pt")["epoch"] == 3
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"x": Evil()}, fh, pickle_module=pickle)
    with pytest.raises(InputError, match="cannot load training state"):
        load_state(tmp_path / "evil.pt")
