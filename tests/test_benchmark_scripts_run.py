"""The held-out benchmarks run end to end: a tiny nuclei run on a synthetic DSB folder, each script on it.

The scripts' helpers have unit tests of their own; this catches what those cannot, a script whose
main path no longer runs (they share ``_report.held_out_split``). These are the scripts under benchmarks/ that
the README and docs cite; the ended experiments of benchmarks/tried/ have one smoke test, in
test_benchmark_tried.py.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_nuclei(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, DSB folder): 20 images 64 x 64, one in three stained, a quarter held out."""
    import imageio.v3 as iio
    from skimage.draw import disk

    from biounet.config import RunConfig
    from biounet.tasks import apply_overrides
    from biounet.train import train

    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for i in range(20):
        stained = i % 3 == 0
        img = np.full((64, 64, 3), 230 if stained else 10, np.uint8)
        item = root / "dsb" / f"img{i:02d}"
        (item / "images").mkdir(parents=True)
        (item / "masks").mkdir()
        for k, (y, x) in enumerate(((16, 16), (16, 46), (46, 20), (44, 48))):
            rr, cc = disk((y + rng.integers(-3, 4), x + rng.integers(-3, 4)), 6, shape=(64, 64))
            mask = np.zeros((64, 64), np.uint8)
            mask[rr, cc] = 255
            img[rr, cc] = (120, 60, 160) if stained else (200, 200, 200)
            iio.imwrite(item / "masks" / f"m{k}.png", mask)
        iio.imwrite(item / "images" / f"img{i:02d}.png", img)
    cfg = apply_overrides(RunConfig(), [
        "task=nuclei", f"data.images={root / 'dsb'}", "data.kind=dsb", "data.holdout_fraction=0.25",
        "data.val_fraction=0.25", "data.patch_size=32", "data.patches_per_epoch=8", "model.base_features=4",
        "model.depth=2", "train.epochs=1"])
    train(cfg, root / "run", progress=False)
    return root / "run", root / "dsb"


@pytest.mark.parametrize("script, extra, key", [
    ("dsb_post.py", ["--grid", "min_size=10", "--no-refine"], "holdout_by_modality"),
    ("dsb_scale.py", ["--factors", "1", "2"], "rule_by_ratio"),
])
def test_script_runs_on_a_run_with_held_out_images(tiny_nuclei, tmp_path, script, extra, key):
    run, data = tiny_nuclei
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--model", str(run), "--data", str(data),
                          "--json", str(out), *extra], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert key in json.loads(out.read_text())


def test_a_run_without_held_out_images_is_refused_by_name(tiny_run):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dsb_post.py"), "--model", str(tiny_run)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "recorded no held-out images" in res.stderr


def test_sampler_benchmark_times_every_variant_on_the_same_images(tiny_nuclei, tmp_path):
    import importlib.util

    _, data = tiny_nuclei
    out = tmp_path / "sampler.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampler.py"), "--data", str(data), "--images", "4",
                          "--patches", "2", "--rounds", "1", "--json", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("sampler", ROOT / "benchmarks" / "sampler.py")
    sampler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sampler)
    ms = json.loads(out.read_text())["ms_per_patch"]
    assert set(ms) == {"the config as it is", *sampler.VARIANTS} and all(v > 0 for v in ms.values())
    assert res.stdout.count("| ") >= len(ms) + 1  # a table row per variant, under its header


def test_time_benchmark_times_both_models_in_turns_and_reports_their_ratio(tiny_nuclei, tmp_path):
    run, data = tiny_nuclei
    out = tmp_path / "time.json"
    # the baseline read from git (HEAD's shipped nuclei model), as the default reads issue #13's
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dsb_time.py"), "--model", str(run), "--data",
                          str(data), "--baseline-commit", "HEAD", "--rounds", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["n_images"] == 5 and all(len(r) == 2 for r in got["rounds"].values())
    best = got["seconds_per_image"]
    assert best == {k: min(v) for k, v in got["rounds"].items()}
    assert np.isclose(got["ratio"], best["model"] / best["baseline"])
    assert f"ratio: {got['ratio']:.2f}x" in res.stdout


def test_time_benchmark_extracts_the_shipped_model_as_committed(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dsb_time", ROOT / "benchmarks" / "dsb_time.py")
    dsb_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dsb_time)
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout: there is no history to read a model from")
    got = dsb_time.extract_model("HEAD", tmp_path / "m")
    shipped = ROOT / dsb_time.WEIGHTS
    committed = subprocess.run(["git", "ls-files", dsb_time.WEIGHTS], cwd=ROOT, capture_output=True,
                               text=True).stdout.split()
    assert sorted(p.name for p in got.iterdir()) == sorted(Path(p).name for p in committed)
    assert (got / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()


def test_time_benchmark_names_a_commit_it_cannot_read(tiny_nuclei):
    run, data = tiny_nuclei
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dsb_time.py"), "--model", str(run), "--data",
                          str(data), "--baseline-commit", "no-such-commit"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "at commit no-such-commit" in res.stderr and "Traceback" not in res.stderr
