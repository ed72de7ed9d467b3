"""After training (biounet.tune): re-tuning a finished run scores its held-out images again."""
import json
from unittest.mock import patch

import pytest
from typer.testing import CliRunner

from biounet import tune
from biounet.cli import app
from biounet.checkpoint import load_post
from biounet.data.dataset import split_run
from biounet.predict import load_model
from biounet.tasks import get_task
from biounet.train import train

from .test_train import tiny_config

HELD = {"data.val_indices": "[]", "data.val_fraction": 0.34, "data.holdout_fraction": 0.25, "train.epochs": 1}


def test_biounet_retune_scores_the_held_out_images_with_the_new_thresholds(stack_files, tmp_path):
    cfg = tiny_config(*stack_files, **HELD)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    stale = json.loads((run / "metrics.json").read_text())
    assert stale["holdout_items"]
    stale.update(holdout_v_rand=-1.0, holdout_pixel_error=-1.0)  # scores of thresholds no longer in use
    stale.update(holdout_gone=0.5, tuned_gone=0.5)  # a score the task no longer computes
    (run / "metrics.json").write_text(json.dumps(stale))

    real = tune.tune_post

    def other_grid(task, preds, base, grid=None, refine=None):  # as if the task's grid had changed
        return real(task, preds, base, {"threshold": [0.3]}, {})

    with patch.object(tune, "tune_post", other_grid):
        res = CliRunner().invoke(app, ["retune", str(run)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    post = json.loads((run / "thresholds.json").read_text())
    assert post["threshold"] == 0.3 and metrics["post"] == post
    _, _, held = split_run(cfg)
    want = tune.score_predictions(get_task(cfg), tune.predict_items(load_model(run), held),
                                  load_post(run, cfg.post))
    assert metrics["holdout_items"] == [it.name for it in held]
    for k, v in want.items():
        assert metrics["holdout_" + k] == pytest.approx(v), k
    assert metrics["holdout_v_rand"] != -1.0 and "holdout_gone" not in metrics and "tuned_gone" not in metrics
    assert metrics["format"] == 2 and metrics["epoch"] == stale["epoch"]  # training's record kept
