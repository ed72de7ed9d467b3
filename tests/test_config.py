"""Config: TOML loading, overrides, clear errors, JSON round trip."""
import pytest

from biounet.config import RunConfig, did_you_mean, from_dict, to_dict
from biounet.tasks import apply_overrides, load_config
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
    with pytest.raises(InputError, match=r"c.toml: config: unknown key 'epochz' in \[train\]; did you mean 'epochs'\?"):
        load_config(p)


@pytest.mark.parametrize("bad, hint", [
    ("train.lrr=1", "unknown key 'lrr'; did you mean 'lr'?"),
    ("trian.lr=1", "unknown section 'trian'; did you mean 'train'?"),
    ("post.treshold=0.5", "unknown key 'treshold'; did you mean 'threshold'?"),
])
def test_a_near_miss_names_the_key_it_meant(bad, hint):
    with pytest.raises(InputError) as e:
        apply_overrides(RunConfig(), [bad])
    assert str(e.value).endswith(hint)


def test_did_you_mean_offers_nothing_for_a_far_miss():
    assert did_you_mean("zzz", ["lr", "epochs"]) == ""
    assert did_you_mean("epoch", ["lr", "epochs", "seed"]) == "; did you mean 'epochs'?"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "none.toml")
    p = tmp_path / "b.toml"
    p.write_text("[train\n")
    with pytest.raises(InputError, match="cannot parse"):
        load_config(p)


def test_list_values_become_tuples_and_round_trip():
    cfg = apply_overrides(RunConfig(), ["task=nuclei", "train.class_weights=[1, 1, 3]"])
    assert cfg.train.class_weights == (1, 1, 3)
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override,match", [
    ('train.epochs="5"', 'config: train.epochs = "5" must be an integer'),
    ("train.epochs=2.5", "config: train.epochs = 2.5 must be an integer"),
    ("post.threshold=true", "config: post.threshold = true must be a number"),
    ("augment.elastic=1", "config: augment.elastic = 1 must be true or false"),
    ("train.loss=focal", 'config: train.loss = "focal" is not allowed \\(allowed: bce, dice, bce_dice, ce, ce_dice, ce_lovasz\\)'),
    ("model.padding=full", 'config: model.padding = "full" is not allowed \\(allowed: same, valid\\)'),
    ("data.normalize=zscore", 'data.normalize = "zscore" is not allowed \\(allowed: percentile, percentile_invert'),
    ("train.epochs=0", "config: train.epochs = 0 must be >= 1"),
    ("post.threshold=1.5", r"config: post.threshold = 1.5 must be in \[0, 1\]"),
    ("data.border_fraction=-1", "config: data.border_fraction = -1.0 must be >= 0"),
    ("data.val_indices=[1, \"a\"]", r'config: data.val_indices\[1\] = "a" must be an integer'),
    ("train.class_weights=3", "config: train.class_weights = 3 must be a list of numbers"),
    ("augment.scale_range=[2, 1]", r"config: augment.scale_range = \[2.0, 1.0\] must be \[lo, hi\] with 0 < lo <= hi"),
    ("augment.scale_range=[0.8]", r"config: augment.scale_range = \[0.8\] must be \[lo, hi\]"),
    ("augment.scale_range=[0, 2]", r"augment.scale_range = \[0.0, 2.0\] must be \[lo, hi\] with 0 < lo"),
    ("train.swa=0.95", r"config: train.swa = 0.95 must be in \[0, 0.9\]"),
])
def test_values_are_checked_for_type_allowed_value_and_range(override, match):
    with pytest.raises(InputError, match=match) as err:
        apply_overrides(RunConfig(), [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,match", [
    (["train.swa=0.25", "train.ema=0.99"], "config: train.swa and train.ema are two ways of averaging the weights"),
    (["train.swa=0.25", "train.schedule=step"], 'config: train.swa needs train.schedule = "cosine"'),
])
def test_weight_averaging_options_that_cannot_work_together_are_refused(overrides, match):
    with pytest.raises(InputError, match=match):
        apply_overrides(RunConfig(), overrides)
    apply_overrides(RunConfig(), overrides[:1])  # either alone is fine


@pytest.mark.parametrize("overrides,match", [
    (["data.folds=1"], "config: data.folds = 1 is not cross-validation"),
    (["data.folds=5", "data.fold=5"], r"config: data.fold = 5 must be below data.folds = 5 \(0..4\)"),
    (["data.folds=5", "data.val_indices=[1]"], "config: data.folds and data.val_indices both choose"),
])
def test_cross_validation_settings_that_cannot_work_are_refused(overrides, match):
    with pytest.raises(InputError, match=match):
        apply_overrides(RunConfig(), overrides)
    assert apply_overrides(RunConfig(), ["data.folds=5", "data.fold=4"]).data.fold == 4


def test_numbers_are_converted_where_harmless():
    cfg = apply_overrides(RunConfig(), ["train.lr=1", "post.threshold=0"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0 and cfg.post.threshold == 0.0


def test_a_bad_toml_value_names_the_file_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('task = "nuclei"\n[train]\nloss = "bce"\n')
    with pytest.raises(InputError, match=r"c.toml: config: task 'nuclei': train.loss = 'bce' does not fit"):
        load_config(p)
    p.write_text("[model]\nbase_features = \"wide\"\n")
    with pytest.raises(InputError, match=r'c.toml: config: model.base_features = "wide" must be an integer'):
        load_config(p)
    p.write_text("model = 3\n")
    with pytest.raises(InputError, match=r"config: \[model\] must be a table"):
        load_config(p)
