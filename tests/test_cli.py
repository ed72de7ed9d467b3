"""The command line as a user meets it: outputs, exit codes, one-line errors, fast --help."""
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from biounet.cli import app
from biounet.io import read_stack

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["predict"], ["train"], ["evaluate"], ["submit"], ["models"], ["demo"]])
def test_help_does_not_import_torch(cmd):
    code = (
        "import sys\nfrom biounet.cli import app\n"
        "try:\n    app(args=%r + ['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n" % cmd
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_predict_stack_masks_probabilities_and_overlay(tiny_run, stack_files, tmp_path):
    vol, _ = stack_files
    res = runner.invoke(app, ["predict", "--model", str(tiny_run), "--out", str(tmp_path / "o"), "--overlays", str(vol)])
    assert res.exit_code == 0, res.output
    masks = read_stack(tmp_path / "o" / "vol.tif")
    assert masks.shape == (4, 64, 64) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 255}
    assert read_stack(tmp_path / "o" / "vol_overlay.tif").shape == (4, 64, 64, 3)  # one overlay page per page
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "p"), "--probabilities", str(vol)])
    probs = read_stack(tmp_path / "p" / "vol.tif")
    assert res.exit_code == 0 and probs.dtype == np.float32 and 0 <= probs.min() and probs.max() <= 1


def test_predict_bad_inputs_fail_with_one_line(tiny_run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(bad)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.png: cannot read image" in lines[0], lines
    assert not (tmp_path / "o").exists()  # the folder this run made is taken back when nothing was written
    (tmp_path / "o").mkdir()
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(bad)])
    assert res.exit_code == 2 and (tmp_path / "o").is_dir()  # a folder the user had stays
    assert not (tmp_path / "o" / "broken.tif").exists()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no images found" in res.output
    res = runner.invoke(app, ["predict", "-m", "no-such-model", "-o", str(tmp_path / "o"), str(bad)])
    assert res.exit_code == 2 and "not a model folder" in res.output
    rgb = tmp_path / "rgba4.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(rgb)])
    assert res.exit_code == 2 and "rgba4.tif" in res.output


def test_predict_channel_of_a_multichannel_tiff_equals_that_channel_alone(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    cyx = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "second.tif", cyx[1])
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(tmp_path / "two.tif")])
    assert res.exit_code == 2 and "two.tif: has 2 channels" in res.output and "--channel" in res.output
    assert not (tmp_path / "o" / "two.tif").exists()
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--channel", "1",
                              str(tmp_path / "two.tif")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(tmp_path / "second.tif")])
    assert res.exit_code == 0, res.output
    got, alone = read_stack(tmp_path / "o" / "two.tif"), read_stack(tmp_path / "o" / "second.tif")
    assert got.shape == (1, 64, 64) and np.array_equal(got, alone)


@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--skip-existing"]])
def test_an_output_that_would_replace_its_input_is_refused_whatever_the_flags(tiny_run, tmp_path, flag):
    """Regression: `predict -o imgs --overwrite imgs/` replaced each input TIFF with its labels."""
    (tmp_path / "imgs").mkdir()
    img = tmp_path / "imgs" / "a.tif"
    tifffile.imwrite(img, np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8))
    before = img.read_bytes()
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "imgs" / "."), *flag,
                              str(tmp_path / "imgs")])
    assert res.exit_code == 2 and "a.tif: the output would replace this input image" in res.output, res.output
    assert img.read_bytes() == before


def test_a_bad_file_does_not_stop_the_batch_and_outputs_are_checked_first(tiny_run, tmp_path):
    """#14: bad files are listed at the end; clashing names, an --out file and existing outputs are refused."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = tmp_path / "a" / "x.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8))
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(bad), str(good)])
    assert res.exit_code == 2 and "1 image(s) -> " in res.output and "1 image(s) failed" in res.output
    assert (tmp_path / "o" / "x.tif").is_file()  # the good image after the bad one was predicted
    # existing outputs: refused, resumed, or replaced
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), str(good)])
    assert res.exit_code == 2 and "x.tif: exists" in res.output and "--overwrite" in res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--skip-existing", str(good)])
    assert res.exit_code == 0 and "skipping 1 image(s)" in res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--overwrite", str(good)])
    assert res.exit_code == 0
    # two inputs, one output name: refused before anything runs
    other = tmp_path / "b" / "x.png"
    import imageio.v3 as iio

    iio.imwrite(other, np.zeros((8, 8), np.uint8))
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o2"), str(good), str(other)])
    assert res.exit_code == 2 and "would write x.tif" in res.output and not (tmp_path / "o2" / "x.tif").exists()
    # --out naming a file: one line, no traceback
    (tmp_path / "file").write_text("")
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "file"), str(good)])
    assert res.exit_code == 2 and res.output.strip() == f"error: {tmp_path / 'file'}: --out is an existing file; give a folder"


def test_submit_after_predict_with_overlays(tmp_path):
    """#14: `predict --overlays` then `submit` on the same folder reads only the label images."""
    labels = np.zeros((6, 5), np.uint16)
    labels[1:3, 1:3] = 1
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "lab" / "img1.tif", labels)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "lab" / "img1_overlay.png", np.zeros((6, 5, 3), np.uint8))
    res = runner.invoke(app, ["submit", "--out", str(tmp_path / "sub.csv"), str(tmp_path / "lab")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sub.csv").read_text().splitlines() == ["ImageId,EncodedPixels", "img1,8 2 14 2"]


def test_version():
    from biounet import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"biounet {__version__}"


def test_evaluate_stacks_prints_and_writes_json(stack_files, tmp_path):
    _, labels = stack_files
    lab = read_stack(labels)
    pred = np.where(lab == 0, 255, 0).astype(np.uint8)  # perfect membrane mask
    tifffile.imwrite(tmp_path / "pred.tif", pred, photometric="minisblack")
    res = runner.invoke(app, ["evaluate", "--truth", str(labels), "--pred", str(tmp_path / "pred.tif"),
                              "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "v_rand" in res.output
    import json

    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["v_rand"] == pytest.approx(1.0) and scores["pixel_error"] == 0.0


def test_submit_writes_kaggle_csv(tmp_path):
    labels = np.zeros((4, 3), np.uint16)
    labels[0, :] = 1  # top row: column-major pixels 1, 5, 9
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "lab" / "img1.tif", labels)
    res = runner.invoke(app, ["submit", "--out", str(tmp_path / "sub.csv"), str(tmp_path / "lab")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sub.csv").read_text().splitlines() == ["ImageId,EncodedPixels", "img1,1 1 5 1 9 1"]
    before = (tmp_path / "lab" / "img1.tif").read_bytes()  # an --out naming an input label image is refused
    res = runner.invoke(app, ["submit", "--out", str(tmp_path / "lab" / "img1.tif"), str(tmp_path / "lab")])
    assert res.exit_code == 2 and "img1.tif: --out writes a CSV file; give a path ending in .csv" in res.output
    assert (tmp_path / "lab" / "img1.tif").read_bytes() == before


@pytest.mark.parametrize("option, suffix", [("--json", ".json"), ("--per-image", ".csv"), ("--report", ".html")])
def test_evaluate_refuses_a_report_path_of_another_kind_before_scoring(tmp_path, option, suffix):
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    labels = np.zeros((4, 3), np.uint16)
    labels[0] = 1
    for d in ("t", "p"):
        tifffile.imwrite(tmp_path / d / "a.tif", labels)
    before = (tmp_path / "p" / "a.tif").read_bytes()
    res = runner.invoke(app, ["evaluate", "--truth", str(tmp_path / "t"), "--pred", str(tmp_path / "p"),
                              option, str(tmp_path / "p" / "a.tif")])
    assert res.exit_code == 2 and f"a.tif: {option} writes a" in res.output and f"ending in {suffix}" in res.output
    assert (tmp_path / "p" / "a.tif").read_bytes() == before
    assert "dsb_score" not in res.output  # refused before scoring


def test_train_explains_a_folder_without_labels_and_a_resume_without_a_run(tmp_path):
    (tmp_path / "imgs").mkdir()
    tifffile.imwrite(tmp_path / "imgs" / "a.tif", np.zeros((16, 16), np.uint8))
    res = runner.invoke(app, ["train", "--task", "nuclei", "--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "imgs: a folder of images needs --labels" in res.output
    assert "(or holds images/ and masks/" in res.output
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "r"), "--resume"])
    assert res.exit_code == 2 and "r: no run to resume here (no config.json)" in res.output
    assert not (tmp_path / "r").exists()


def test_train_rejects_bad_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 1\n")
    res = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "r"), "--set", "train.nope=1"])
    assert res.exit_code == 2 and "unknown key 'nope'" in res.output


def test_models_lists_each_shipped_model_on_one_line():
    from biounet.checkpoint import shipped_models

    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    names = list(shipped_models())
    if not names:
        assert lines == ["no shipped models"]
    else:
        assert [ln.split()[0] for ln in lines] == names
        from biounet.checkpoint import load_config, read_metrics
        from biounet.cli import _METRIC_NAMES
        from biounet.tasks import get_task

        for line, folder in zip(lines, shipped_models().values()):  # held-out scores when the model has them
            m, headline = read_metrics(folder), get_task(load_config(folder)).headline
            # #51: each number named for what it is ("validation, tuned thresholds: DSB 0.540"), not "dsb=0.540"
            tuned = [f"{_METRIC_NAMES[k]} {m['tuned_' + k]:.3f}" for k in headline if "tuned_" + k in m]
            held = [f"{_METRIC_NAMES[k]} {m['holdout_' + k]:.3f}" for k in headline
                    if isinstance(m.get("holdout_" + k), float)]
            assert tuned and "=" not in line
            assert line.split("validation, tuned thresholds: ")[1].split(";")[0] == ", ".join(tuned)
            assert ("held-out" in line) == bool(held)
            assert all(h in line.split("held-out")[-1] for h in held)
            # a nuclei model's scores say they were taken without the size estimate that predict applies
            assert ("--diameter none" in line) == bool(m.get("object_diameter"))


@pytest.mark.parametrize("task, scores, warned", [
    ("nuclei", {"dsb": 0.0, "ap50": 0.0, "tuned_dsb": 0.0, "tuned_ap50": 0.0, "holdout_dsb": 0.0}, True),
    ("binary", {"dice": 0.0, "iou": 0.0, "tuned_dice": 0.004, "tuned_iou": 0.002}, True),
    ("nuclei", {"dsb": 0.41, "ap50": 0.7, "tuned_dsb": 0.45, "tuned_ap50": 0.72, "holdout_dsb": 0.43}, False),
])
def test_training_ends_with_named_scores_and_a_warning_when_nothing_is_found(tmp_path, monkeypatch, task, scores,
                                                                               warned):
    """#51: the last line mixed dsb= and tuned_dsb= unnamed; a run scoring Dice 0 / DSB 0 ended as if all was well."""
    import biounet.train

    monkeypatch.setattr(biounet.train, "train", lambda cfg, out, resume=False, progress=True: dict(scores, epoch=3))
    res = runner.invoke(app, ["train", "--task", task, "--data", str(tmp_path / "v.tif"), "--labels",
                              str(tmp_path / "l.tif"), "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    done = next(ln for ln in res.output.splitlines() if ln.startswith("done:"))
    assert "=" not in done  # no bare key=value: every number is in a named group
    first = {"nuclei": "DSB", "binary": "Dice"}[task]
    plain = {"nuclei": "validation at the config's thresholds",  # binary scores each validation at its best threshold
             "binary": "validation, threshold tuned at each validation"}[task]
    assert f"{plain}: {first} {scores[first.lower()]:.3f}" in done
    assert f"validation, tuned thresholds: {first} {scores['tuned_' + first.lower()]:.3f}" in done
    assert ("held-out: DSB" in done) == ("holdout_dsb" in scores)
    warning = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert bool(warning) == warned, res.output
    if warned:
        assert res.output.strip().splitlines()[-1] == warning[0]  # the run's last word
        assert f"validation {first} is 0.00" in warning[0] and "predicts nothing useful" in warning[0]
        assert "--epochs" in warning[0] and "check the labels" in warning[0]


def test_train_needs_a_config_unless_resuming(tmp_path):
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "give --config or --task" in res.output
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "missing"), "--resume"])
    assert res.exit_code == 2 and "config.json" in res.output


def test_train_bad_config_value_fails_before_reading_any_data(tmp_path):
    """A wrong type is reported at load, naming the key, even though the data path does not exist."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('task = "nuclei"\n[data]\nimages = "/nonexistent/stage1_train.zip"\n[train]\nepochs = "5"\n')
    res = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output.strip() == f'error: {cfg}: config: train.epochs = "5" must be an integer'
    assert not (tmp_path / "r").exists()


def test_train_from_a_task_alone(stack_files, tmp_path):
    vol, lab = stack_files
    res = runner.invoke(app, ["train", "--task", "membrane", "--data", str(vol), "--labels", str(lab),
                              "-o", str(tmp_path / "r"), "--epochs", "1", "--quiet", "--set", "data.patch_size=32",
                              "--set", "data.patches_per_epoch=4", "--set", "model.base_features=4",
                              "--set", "model.depth=2", "--set", "data.val_indices=[3]"])
    assert res.exit_code == 0, res.output
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["task"] == "membrane" and saved["data"]["target"] == "membrane" and saved["format"] == 2
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0


def test_predict_reports_objects_per_image_and_the_time_taken(tiny_run, tmp_path):
    """#51: it said only 'N image(s) -> out/': how many objects each image gave, and how long it all took."""
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "in" / f"img{i}.tif", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "out"), "--instances",
                              "--diameter", "none", str(tmp_path / "in")])
    assert res.exit_code == 0, res.output
    counts = [len(set(np.unique(read_stack(tmp_path / "out" / f"img{i}.tif")).tolist()) - {0}) for i in range(2)]
    for i, n in enumerate(counts):
        assert f"img{i}.tif: {n} object(s) -> {tmp_path / 'out' / f'img{i}.tif'}" in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith(f"2 image(s) -> {tmp_path / 'out'}/ in ") and last.endswith(f" s, {sum(counts)} object(s)")
    masks = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "masks"), str(tmp_path / "in")])
    assert masks.exit_code == 0 and "object(s)" not in masks.output  # a mask has no objects to count
    assert masks.output.strip().splitlines()[-1].startswith(f"2 image(s) -> {tmp_path / 'masks'}/ in ")


@pytest.mark.slow
def test_demo_ends_by_naming_the_pictures_to_open(tmp_path):
    """#51: the demo listed every file it wrote and left the user to guess which to look at."""
    import os

    from biounet.checkpoint import shipped_models

    if not shipped_models():
        pytest.skip("no shipped models in this build")
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    start = lines.index("open these to see the results (outlines drawn over the images):")
    pictures = [ln.strip() for ln in lines[start + 1:]]
    assert pictures and all(p.endswith(("_overlay.png", "_overlay.tif")) for p in pictures)
    assert all(p.startswith(str(tmp_path / "demo")) and os.path.isfile(p) for p in pictures)


@pytest.mark.slow
def test_torchrun_predict_shards_files_and_matches_one_process(tiny_run, tmp_path):
    """2 CPU processes over a folder write exactly the files (and bytes) one process writes."""
    import shutil
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(5):
        tifffile.imwrite(tmp_path / "in" / f"img{i}.tif", rng.integers(0, 255, (40 + i, 50), dtype=np.uint8))
    one = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "one"), str(tmp_path / "in")])
    assert one.exit_code == 0, one.output
    from tests.conftest import run_torchrun

    two = run_torchrun([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "biounet.cli", "predict",
                        "-m", str(tiny_run), "-o", str(tmp_path / "two"), str(tmp_path / "in")], tmp_path / "two")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "5 image(s)" in two.stdout and "2 processes: 3, 2" in two.stdout
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 5
    for name in names:
        assert np.array_equal(tifffile.imread(tmp_path / "one" / name), tifffile.imread(tmp_path / "two" / name))


def test_predict_instances_from_a_membrane_model_and_evaluate_them(tiny_run, stack_files, tmp_path):
    vol, labels = stack_files
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "--instances", "-o", str(tmp_path / "o"), str(vol)])
    assert res.exit_code == 0, res.output
    cells = read_stack(tmp_path / "o" / "vol.tif")
    assert cells.dtype in (np.uint16, np.uint32) and cells.shape == read_stack(vol).shape
    assert cells.min() >= 1  # every pixel belongs to a cell: zero-width boundaries
    res = runner.invoke(app, ["evaluate", "--truth", str(labels), "--pred", str(tmp_path / "o" / "vol.tif")])
    assert res.exit_code == 0, res.output
    assert "v_rand" in res.output and "pixel_error" not in res.output  # labels are scored as labels


def test_train_refuses_to_replace_a_run_and_guesses_folder_data(stack_files, tmp_path):
    """#14: an existing run is not silently replaced; --data imgs/ --labels masks/ needs no data.kind."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    res = runner.invoke(app, ["train", "--task", "binary", "--data", "x.tif", "-o", str(run)])
    # #51: config.json alone is a run stopped before its first epoch ended (Ctrl-C, out of memory): free to restart
    assert "already holds a run" not in res.output
    (run / "last.pt").write_bytes(b"state")
    res = runner.invoke(app, ["train", "--task", "binary", "--data", "x.tif", "-o", str(run)])
    assert res.exit_code == 2 and "already holds a run; --resume continues it, --overwrite starts again" in res.output
    from biounet.data.dataset import guess_kind

    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    assert guess_kind(tmp_path / "imgs", tmp_path / "masks") == "folders"
    assert guess_kind("stage1_train.zip") == "dsb" and guess_kind("vol.tif", "lab.tif") == "stack"
    assert guess_kind("ann.json") == "coco" and guess_kind(tmp_path / "imgs") is None
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        iio.imwrite(tmp_path / "imgs" / f"i{i}.png", img)
        iio.imwrite(tmp_path / "masks" / f"i{i}.png", ((img > 128) * 255).astype(np.uint8))
    res = runner.invoke(app, ["train", "--task", "binary", "--data", str(tmp_path / "imgs"), "--labels",
                              str(tmp_path / "masks"), "-o", str(tmp_path / "r2"), "--epochs", "1", "--quiet",
                              "--set", "data.patch_size=32", "--set", "data.patches_per_epoch=4",
                              "--set", "model.base_features=4", "--set", "model.depth=2"])
    assert res.exit_code == 0, res.output


def test_train_and_check_data_take_one_folder_holding_images_and_masks(tmp_path):
    """--data set/ where set/ holds images/ and masks/ (the common layout) trains with no --labels or kind."""
    import json

    import imageio.v3 as iio

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        iio.imwrite(tmp_path / "set" / "images" / f"i{i}.png", img)
        iio.imwrite(tmp_path / "set" / "masks" / f"i{i}.png", ((img > 128) * 255).astype(np.uint8))
    res = runner.invoke(app, ["check-data", str(tmp_path / "set")])
    assert res.exit_code == 0 and "3 image(s) checked: 0 error(s)" in res.output, res.output
    res = runner.invoke(app, ["train", "--task", "binary", "--data", str(tmp_path / "set"), "-o", str(tmp_path / "r"),
                              "--epochs", "1", "--quiet", "--set", "data.patch_size=32", "--set",
                              "data.patches_per_epoch=4", "--set", "model.base_features=4", "--set", "model.depth=2"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r" / "config.json").read_text())["data"]
    assert data["kind"] == "folders" and data["images"] == str(tmp_path / "set") and not data["labels"]


def test_train_fails_at_start_on_a_bad_validation_pair(tmp_path):
    """#14: a mask/image size mismatch in a validation image surfaces before the first epoch."""
    import imageio.v3 as iio

    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        iio.imwrite(tmp_path / "imgs" / f"i{i}.png", np.zeros((32, 32), np.uint8))
        iio.imwrite(tmp_path / "masks" / f"i{i}.png", np.zeros((32, 32 if i != 2 else 30), np.uint8))
    res = runner.invoke(app, ["train", "--task", "binary", "--data", str(tmp_path / "imgs"), "--labels",
                              str(tmp_path / "masks"), "-o", str(tmp_path / "r"), "--epochs", "50", "--quiet",
                              "--set", "data.val_indices=[2]", "--set", "model.base_features=4"])
    assert res.exit_code == 2 and "i2.png: mask size (32, 30) != image size (32, 32)" in res.output
    assert not (tmp_path / "r" / "history.jsonl").exists()
    # the same bad pair among the training images fails in setup(), before the loop draws a patch
    from biounet.io import InputError
    from biounet.tasks import build_config
    from biounet.train import setup

    cfg = build_config({"task": "binary", "data": {"kind": "folders", "images": str(tmp_path / "imgs"),
                                                   "labels": str(tmp_path / "masks"), "val_indices": [0]},
                        "model": {"base_features": 4}})
    with pytest.raises(InputError, match=r"i2.png: mask size \(32, 30\) != image size \(32, 32\)"):
        setup(cfg, tmp_path / "r2")


def test_ensemble_bad_inputs_fail_with_one_line(tiny_run, tmp_path):
    res = runner.invoke(app, ["ensemble", str(tiny_run), "-o", str(tmp_path / "e")])
    assert res.exit_code == 2 and "an ensemble needs at least two runs" in res.output
    res = runner.invoke(app, ["ensemble", str(tiny_run), str(tmp_path / "nope"), "-o", str(tmp_path / "e")])
    assert res.exit_code == 2 and "nope: not a model folder" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "e").exists()  # nothing written before the inputs are checked
    before = (tiny_run / "model.safetensors").read_bytes()
    for extra in ([], ["--overwrite"]):  # --overwrite must not replace a member with the ensemble
        res = runner.invoke(app, ["ensemble", str(tiny_run), str(tiny_run), "-o", str(tiny_run), *extra])
        assert res.exit_code == 2 and "is one of the runs being averaged" in res.output
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_retune_stores_fresh_thresholds_and_refuses_a_missing_model(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the fixture is shared: retune a copy
    (run / "thresholds.json").unlink()
    res = runner.invoke(app, ["retune", str(run)])
    assert res.exit_code == 0, res.output
    assert "tuned_v_rand=" in res.output and (run / "thresholds.json").is_file()
    res = runner.invoke(app, ["retune", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope: not a model folder" in res.output and "Traceback" not in res.output


def test_a_model_trained_on_one_channel_predicts_that_channel_by_default(tmp_path):
    """data.channel is saved with the run, so predict reads the channel the model learned, unless told."""
    from tests.conftest import synthetic_pair

    rng = np.random.default_rng(3)
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    for i in range(3):
        img, lab = synthetic_pair(rng)
        noise = rng.integers(0, 255, img.shape, dtype=np.uint8)
        tifffile.imwrite(tmp_path / "im" / f"{i}.tif", np.stack([noise, img]), imagej=True, metadata={"axes": "CYX"})
        tifffile.imwrite(tmp_path / "mk" / f"{i}.tif", lab)
    res = runner.invoke(app, ["train", "--task", "binary", "--data", str(tmp_path / "im"), "--out", str(tmp_path / "run"),
                              "--set", "data.kind=folders", "--set", f"data.labels={tmp_path / 'mk'}",
                              "--set", "data.channel=1", "--set", "data.patch_size=32", "--set", "data.patches_per_epoch=4",
                              "--set", "model.base_features=4", "--set", "model.depth=2", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", "-m", str(tmp_path / "run"), "-o", str(tmp_path / "o"), str(tmp_path / "im" / "0.tif")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", "-m", str(tmp_path / "run"), "-o", str(tmp_path / "o1"), "--channel", "1",
                              str(tmp_path / "im" / "0.tif")])
    assert np.array_equal(read_stack(tmp_path / "o" / "0.tif"), read_stack(tmp_path / "o1" / "0.tif"))
    res = runner.invoke(app, ["predict", "-m", str(tmp_path / "run"), "-o", str(tmp_path / "o0"), "--channel", "0",
                              str(tmp_path / "im" / "0.tif")])
    assert res.exit_code == 0 and (tmp_path / "o0" / "0.tif").exists()


def test_measure_needs_instance_labels_and_writes_a_table_per_image(tiny_run, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--measure", str(tmp_path / "a.tif")])
    assert res.exit_code == 2 and "--measure needs instance labels" in res.output
    assert not (tmp_path / "o").exists()  # refused before anything is written
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--measure", "--instances",
                              str(tmp_path / "a.tif")])
    assert res.exit_code == 0, res.output
    labels = read_stack(tmp_path / "o" / "a.tif")[0]
    header, *rows = (tmp_path / "o" / "a.csv").read_text().splitlines()
    assert header.startswith("label,y,x,area,") and len(rows) == len(np.unique(labels[labels > 0]))


def test_pixel_size_needs_measure_and_adds_micrometre_columns(tiny_run, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--instances",
                              "--pixel-size", "0.65", str(tmp_path / "a.tif")])
    assert res.exit_code == 2 and "add --measure" in res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--instances", "--measure",
                              "--pixel-size", "0.65", str(tmp_path / "a.tif")])
    assert res.exit_code == 0, res.output
    header = (tmp_path / "o" / "a.csv").read_text().splitlines()[0].split(",")
    assert {"area_um2", "equivalent_diameter_um", "touches_border"} <= set(header)


def test_outlines_need_instance_labels_and_a_known_format(tiny_run, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--outlines", "svg",
                              str(tmp_path / "a.tif")])
    assert res.exit_code == 2 and "--outlines must be imagej or geojson" in res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--outlines", "imagej",
                              str(tmp_path / "a.tif")])
    assert res.exit_code == 2 and "--outlines needs instance labels" in res.output
    res = runner.invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "o"), "--outlines", "imagej",
                              "--instances", str(tmp_path / "a.tif")])
    assert res.exit_code == 0, res.output
    labels = read_stack(tmp_path / "o" / "a.tif")[0]
    import roifile

    assert len(roifile.roiread(tmp_path / "o" / "a_rois.zip") or []) == len(np.unique(labels[labels > 0]))


def test_check_data_checks_the_channel_training_will_read(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:15] = 1
    for i in range(2):
        tifffile.imwrite(tmp_path / "im" / f"{i}.tif", np.zeros((2, 40, 50), np.uint8), imagej=True,
                         metadata={"axes": "CYX"})
        tifffile.imwrite(tmp_path / "mk" / f"{i}.tif", mask)
    args = ["check-data", str(tmp_path / "im"), "--labels", str(tmp_path / "mk")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "0.tif: has 2 channels" in res.output
    res = runner.invoke(app, args + ["--channel", "1"])
    assert res.exit_code == 0 and "2 image(s) checked: 0 error(s)" in res.output


@pytest.mark.parametrize("args, extra", [(["predict", "--help"], "biounet[onnx]"),
                                         (["export", "--help"], "biounet[bioimageio]")])
def test_help_shows_pip_extras_in_brackets(args, extra):
    # rich reads "[onnx]" as a markup tag and drops it unless escaped; the user needs it to install the extra
    out = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert out.exit_code == 0 and extra in out.output


def test_every_command_summary_is_one_line():
    # the first docstring paragraph is the command list's entry; a line break inside it shows mid-sentence there
    import typer.main

    for cmd in typer.main.get_command(app).commands.values():
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert first and "\n" not in first, f"biounet {cmd.name}: summary spans lines: {first!r}"


def test_every_command_maps_user_errors_to_one_line_and_debug_keeps_the_traceback(tmp_path):
    """One handler for all commands (#52): registered through biounet.cli.command, which wraps the whole command."""
    from biounet.io import InputError

    assert all(getattr(c.callback, "__wrapped__", None) for c in app.registered_commands)
    res = runner.invoke(app, ["check-data", str(tmp_path / "nothing.tif"), "--kind", "stack", "--labels",
                              str(tmp_path / "nothing-labels.tif")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: ")
    res = runner.invoke(app, ["--debug", "check-data", str(tmp_path / "nothing.tif"), "--kind", "stack", "--labels",
                              str(tmp_path / "nothing-labels.tif")])
    assert isinstance(res.exception, InputError)


def test_help_names_the_registrys_tasks_and_data_kinds():
    """--help stays light (no import of the registries), so the lists it prints are checked against them."""
    from biounet.config import DATA_KINDS
    from biounet.tasks import TASKS

    train_help = next(c for c in app.registered_commands if c.callback.__name__ == "train").callback
    import inspect

    params = inspect.signature(train_help).parameters
    assert f"({', '.join(TASKS)})" in params["task"].default.help
    check = next(c for c in app.registered_commands if c.name == "check-data").callback
    assert f"({', '.join(DATA_KINDS)})" in inspect.signature(check).parameters["kind"].default.help


def test_train_flags_set_config_values_as_they_are_not_as_parsed_strings(tmp_path, monkeypatch):
    """--data 123 is a folder named 123, not the number 123 that a "data.images=123" override would parse to."""
    import biounet.train

    seen = {}
    monkeypatch.setattr(biounet.train, "train", lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "123" / "images").mkdir(parents=True)
    (tmp_path / "123" / "masks").mkdir()
    res = runner.invoke(app, ["train", "--task", "nuclei", "--data", "123", "--epochs", "3", "--out", "run"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.data.images == "123" and cfg.data.kind == "folders" and cfg.train.epochs == 3
