"""Config: TOML loading, overrides, clear errors, JSON round trip."""
import pytest

from biounet.config import RunConfig, apply_overrides, from_dict, load_config, to_dict
from biounet.io import InputError


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nbase_features = 8\n[data]\nval_indices = [1, 2]\n[train]\nlr = 0.01\n')
    cfg = load_config(p)
    assert cfg.model.base_features == 8 and cfg.data.val_indices == (1, 2) and cfg.train.lr == 0.01
    cfg2 = apply_overrides(cfg, ["train.epochs=3", "model.padding=valid", "augment.elastic=false"])
    assert cfg2.train.epochs == 3 and cfg2.model.padding == "valid" and cfg2.augment.elastic is False
    assert cfg.train.epochs != 3  # frozen original untouched


def test_round_trip_through_dict():
    cfg = apply_overrides(RunConfig(), ["data.val_indices=[3,4]", "post.threshold=0.3"])
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "bad,match",
    [(["train.epoch=3"], "unknown key 'epoch'"), (["nosuch.x=1"], "unknown section"), (["train.lr"], "expected")],
)
def test_bad_overrides_are_clear(bad, match):
    with pytest.raises(InputError, match=match):
        apply_overrides(RunConfig(), bad)


def test_unknown_toml_key_names_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochz = 3\n")
    with pytest.raises(InputError, match=r"unknown key 'epochz' in \[TrainConfig\]"):
        load_config(p)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "none.toml")
    p = tmp_path / "b.toml"
    p.write_text("[train\n")
    with pytest.raises(InputError, match="cannot parse"):
        load_config(p)


def test_list_values_become_tuples_and_round_trip():
    cfg = apply_overrides(RunConfig(), ["train.class_weights=[1, 1, 3]"])
    assert cfg.train.class_weights == (1, 1, 3)
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
