"""Run folders: weights round trip (fp16 too), clear errors, no unpickling of arbitrary objects."""
import pickle

import numpy as np

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


# ---- the run folder's config: format versions ---------------------------------------
def _v1_config(target: str, metric: str = "auto") -> dict:
    """A config.json as biounet wrote it before tasks (format 1: no 'format', no 'task', train.val_metric)."""
    from biounet.config import RunConfig, to_dict

    data = to_dict(RunConfig())
    data["data"]["target"] = target
    data["train"]["val_metric"] = metric
    if target in ("border3", "contour3"):
        data["model"]["out_channels"] = 3
        data["train"]["loss"] = "ce_dice"
        data["post"]["mode"] = "instances"
    return data


@pytest.mark.parametrize("target,metric,task", [("membrane", "auto", "membrane"), ("contour3", "auto", "nuclei"),
                                                ("border3", "dsb", "nuclei"), ("binary", "auto", "binary")])
def test_format_1_folders_are_migrated(tmp_path, target, metric, task):
    import json

    from biounet.checkpoint import load_config, save_config

    (tmp_path / "config.json").write_text(json.dumps(_v1_config(target, metric)))
    cfg = load_config(tmp_path)
    assert cfg.task == task and cfg.data.target == target
    save_config(tmp_path, cfg)  # written back in the current format, which reads the same
    assert json.loads((tmp_path / "config.json").read_text())["format"] == 2
    assert load_config(tmp_path) == cfg


def test_newer_or_broken_config_json_is_a_clear_error(tmp_path):
    import json

    from biounet.checkpoint import load_config

    data = _v1_config("membrane")
    del data["train"]["val_metric"]
    (tmp_path / "config.json").write_text(json.dumps({"format": 99, "task": "membrane", **data}))
    with pytest.raises(InputError, match=r"config.json: model format 99 is newer than this biounet reads \(up to 2\)"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model": ')
    with pytest.raises(InputError, match="config.json: invalid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": 2, "task": "membrane", "model": {"depth": "4"}}))
    with pytest.raises(InputError, match=r'config.json: config: model.depth = "4" must be an integer'):
        load_config(tmp_path)


def test_ship_writes_a_loadable_model_folder_in_the_current_format(tiny_run, tmp_path):
    import json

    from biounet.checkpoint import ship, validation_names
    from biounet.predict import load_model

    dest = ship(tiny_run, tmp_path / "shipped")
    assert json.loads((dest / "config.json").read_text())["format"] == 2
    assert validation_names(dest) == validation_names(tiny_run) == ["vol[2]"]
    a, b = load_model(tiny_run), load_model(dest)
    img = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    assert np.abs(a.predict(img) - b.predict(img)).max() < 1e-2  # fp16 parameters
    assert not list(dest.glob(".*"))  # no temporary files left


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """#14: the write fails (ENOSPC) -> the old last.pt is intact and no temporary file is left."""
    import errno

    save_state(tmp_path / "last.pt", {"epoch": 3, "t": torch.ones(2)})

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_state(tmp_path / "last.pt", {"epoch": 4, "t": torch.zeros(2)})
    monkeypatch.undo()
    assert load_state(tmp_path / "last.pt")["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_weights_are_a_clear_error(tmp_path):
    net = UNet(ModelConfig(base_features=4, depth=2))
    save_weights(tmp_path / "w.safetensors", net)
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"w.safetensors: cannot read weights") as err:
        load_weights(tmp_path / "w.safetensors", net)
    assert "\n" not in str(err.value)


def test_shipped_metrics_json_load_unchanged_as_typed_records():
    """The shipped metrics.json files (format 1: no "format" key) read into RunMetrics and back to the same dict."""
    import json

    from biounet.checkpoint import METRICS, load_metrics, read_metrics, shipped_models

    folders = shipped_models()
    assert folders
    for name, folder in folders.items():
        on_disk = json.loads((folder / METRICS).read_text())
        assert "format" not in on_disk
        assert read_metrics(folder) == on_disk, name
        m = load_metrics(folder)
        assert m.tuned and m.post == on_disk["post"] and m.val_items == tuple(on_disk["val_items"])
    nuclei = load_metrics(folders["dsb2018-nuclei"])
    assert len(nuclei.members) == 3 and nuclei.object_diameter > 0 and nuclei.epoch is None
    assert set(nuclei.holdout) == {"dsb", "ap50", "ap75"} and len(nuclei.holdout_items) > 0
    membrane = load_metrics(folders["isbi2012-membrane"])
    assert membrane.epoch == 50 and membrane.scores["n_slices"] == 5 and not membrane.holdout


def test_metrics_json_is_written_with_its_format_and_read_back(tmp_path):
    import json

    from biounet.checkpoint import METRICS_FORMAT, RunMetrics, load_metrics, save_metrics, write_metrics

    m = RunMetrics(epoch=3, scores={"dice": 0.5}, tuned={"dice": 0.6}, holdout={"dice": 0.55},
                   post={"threshold": 0.4}, val_items=("a",), holdout_items=("b",), extra={"record": {"run": "x"}})
    save_metrics(tmp_path, m)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == {"format": METRICS_FORMAT, "epoch": 3, "dice": 0.5, "tuned_dice": 0.6, "post": {"threshold": 0.4},
                       "val_items": ["a"], "holdout_dice": 0.55, "holdout_items": ["b"], "record": {"run": "x"}}
    assert load_metrics(tmp_path) == m
    write_metrics(tmp_path, {"epoch": 1, "v_rand": 0.9})  # the dict view goes through the record too
    assert load_metrics(tmp_path) == RunMetrics(epoch=1, scores={"v_rand": 0.9})
    assert load_metrics(tmp_path / "none") == RunMetrics()


def test_newer_or_mistyped_metrics_json_is_a_clear_error(tmp_path):
    import json

    from biounet.checkpoint import load_metrics

    (tmp_path / "metrics.json").write_text(json.dumps({"format": 99, "epoch": 1}))
    with pytest.raises(InputError, match=r"metrics.json: metrics format 99 is newer than this biounet reads"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"val_items": "a.png"}))
    with pytest.raises(InputError, match=r"metrics.json: val_items must be a list of names, got 'a.png'"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="metrics.json: expected a JSON object"):
        load_metrics(tmp_path)
