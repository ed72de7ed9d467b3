"""The held-out benchmarks run end to end: a tiny nuclei run on a synthetic DSB folder, each script on it.

The scripts' helpers have unit tests of their own; this catches what those cannot, a script whose
main path no longer runs (they share ``_report.held_out_split``).
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
    ("tried/modality_post.py", [], "per_modality"),
    ("tried/colour_gamma.py", ["--gammas", "1,0.5"], "holdout"),
    ("tried/colour_gamma.py", ["--gammas", "1,0.5", "--modality", "dark"], "holdout"),
    ("tried/colour_inputs.py", [], "by_modality"),
    ("tried/scale_tta.py", ["--sets", "1", "0.5,1"], "summary"),
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


def test_swapping_a_member_for_itself_changes_no_score(tiny_nuclei, tmp_path):
    run, data = tiny_nuclei
    out = tmp_path / "swap.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tried" / "swap_fixed.py"), str(run), str(run),
                          str(run), "--model", str(run), "--data", str(data), "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"control", "swapped", "first_alone", "other_alone"}
    scores = [{k: v for k, v in r.items() if k != "what"} for r in rows.values()]
    assert all(s == scores[0] for s in scores) and scores[0]["holdout"]["n_images"] == 5
    assert all(p == {"mean": 0.0, "ci95": [0.0, 0.0]} for p in json.loads(out.read_text())["paired"].values())


def test_time_benchmark_names_a_commit_it_cannot_read(tiny_nuclei):
    run, data = tiny_nuclei
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dsb_time.py"), "--model", str(run), "--data",
                          str(data), "--baseline-commit", "no-such-commit"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "at commit no-such-commit" in res.stderr and "Traceback" not in res.stderr


def test_swap_rows_average_the_members_with_the_new_network_in_the_first_ones_place():
    import importlib.util

    spec = importlib.util.spec_from_file_location("swap_fixed", ROOT / "benchmarks" / "tried" / "swap_fixed.py")
    swap_fixed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swap_fixed)
    probs = {f: {"im": np.full((2, 2), v)} for f, v in (("a", 0.1), ("b", 0.4), ("c", 0.7), ("new", 1.0))}
    rows = swap_fixed.swap_rows(probs, "new", ["a", "b", "c"])
    expected = {"control": 0.4, "swapped": 0.7, "first_alone": 0.1, "other_alone": 1.0}  # (.1+.4+.7)/3, (1+.4+.7)/3
    assert {k: float(r["im"][0, 0]) for k, r in rows.items()} == pytest.approx(expected)


def _tried(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "tried" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pixel_auc_counts_the_pairs_a_nucleus_pixel_wins():
    colour_inputs = _tried("colour_inputs")
    truth = np.array([False, True, False, True])
    # nucleus pixels 2 and 4 against others 1 and 3: 2>1, 2<3, 4>1, 4>3 -> 3 of 4 pairs
    assert colour_inputs.pixel_auc(np.array([1.0, 2, 3, 4]), truth) == pytest.approx(0.75)
    assert colour_inputs.pixel_auc(np.array([4.0, 3, 2, 1]), truth) == pytest.approx(0.25)
    assert colour_inputs.pixel_auc(np.array([1.0, 1]), np.array([True, False])) == pytest.approx(0.5)  # a tie: half


def test_the_fisher_input_finds_a_difference_no_single_channel_shows():
    colour_inputs = _tried("colour_inputs")
    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.3
    # nuclei: red and green up by the same amount as blue goes down, so gray is flat and red alone overlaps
    base = rng.normal(120, 12, (4000, 1)) + rng.normal(0, 2, (4000, 3))
    rgb = base + np.where(truth[:, None], [6.0, 6.0, -12.0], 0.0)
    scores = colour_inputs.input_scores(rgb, truth, dark=True)
    assert abs(scores["gray"] - 0.5) < 0.05 and scores["red"] < 0.75
    assert scores["best linear"] > 0.99


def _touching_disks() -> np.ndarray:
    """Two disks of radius 10 whose centres are 19 px apart: they share a straight contact, no background between."""
    from skimage.draw import disk

    lab = np.zeros((64, 64), np.int32)
    for i, cx in enumerate((22, 41), start=1):
        rr, cc = disk((32, cx), 10, shape=lab.shape)
        free = lab[rr, cc] == 0
        lab[rr[free], cc[free]] = i
    return lab


def test_star_rays_stop_at_a_touching_nucleus_not_at_its_far_side():
    star_rays = _tried("star_rays")
    lab = _touching_disks()
    d = star_rays.star_distances(lab, 32)
    # from the first disk's centre: 10 px to its outline every way, up to pixel rounding
    assert np.all(np.abs(d[:, 32, 22] - 10) <= 1)
    # ray 0 points at +x, into the second disk: it stops at the contact (x 31 | 32), not at x 51
    assert d[0, 32, 22] == pytest.approx(9.5)
    assert d[0, 32, 30] == pytest.approx(1.5)  # 1 px inside, the contact half a pixel further
    assert np.all(d[:, lab == 0] == 0)


def test_star_target_dips_between_touching_nuclei_and_its_polygons_give_them_back():
    from biounet.metrics.instance import dsb_score

    star_rays = _tried("star_rays")
    lab = _touching_disks()
    target = star_rays.StarTarget(None, 32).target(lab)
    prob, dist = target[0], target[1:]
    assert prob[32, 22] == prob[32, 41] == 1 and prob[32, 31] < 0.2  # peaks at the centres, a dip at the contact
    out = star_rays.polygons_to_labels(prob, dist, prob_thresh=0.5, overlap=0.4)
    assert len(np.unique(out)) == 3 and dsb_score(lab, out) == 1.0  # both nuclei back, exactly


def test_a_polygon_mostly_on_painted_objects_is_dropped():
    star_rays = _tried("star_rays")
    prob = np.zeros((32, 32), np.float32)
    prob[16, 10], prob[16, 13] = 1.0, 0.9  # two peaks 3 px apart, the second weaker
    dist = np.zeros((8, 32, 32), np.float32)
    dist[:, 16, 10] = dist[:, 16, 13] = 6.0  # two discs of radius 6 that overlap by most of their area
    assert set(np.unique(star_rays.polygons_to_labels(prob, dist, 0.5, overlap=0.4))) == {0, 1}
    assert set(np.unique(star_rays.polygons_to_labels(prob, dist, 0.5, overlap=0.9))) == {0, 1, 2}


def test_star_rays_script_trains_tunes_and_scores_held_out_images(tiny_nuclei, tmp_path):
    _, data = tiny_nuclei
    out = tmp_path / "star.json"
    sets = ["data.holdout_fraction=0.25", "data.val_fraction=0.25", "data.patch_size=32", "data.patches_per_epoch=8",
            "model.base_features=4", "model.depth=2", "train.epochs=1"]
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tried" / "star_rays.py"), "--out", str(tmp_path / "run"),
                          "--data", str(data), "--rays", "8", "--json", str(out), *(a for s in sets for a in ("--set", s))],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["holdout"]["n_images"] == 5 and len(result["holdout_images"]) == 5  # a quarter of 20
    assert (tmp_path / "run" / "star.pt").is_file()
    # its object probability mixed into a 3-class run's interior map
    run, _ = tiny_nuclei
    mixed = tmp_path / "seeds.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tried" / "star_seeds.py"), "--model", str(run),
                          "--data", str(data), "--star", str(tmp_path / "run"), "--weights", "0,0.5", "--json", str(mixed),
                          *(a for s in sets for a in ("--set", s))], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # the tiny runs score 0, so only the shape of the result is checked here; weight 0 leaving the run as it is
    # is test_mixing_the_star_probability_moves_only_the_interior_channel's
    assert set(json.loads(mixed.read_text())["holdout"]) == {"0.0", "0.5"}


def test_mixing_the_star_probability_moves_only_the_interior_channel():
    star_seeds = _tried("star_seeds")
    probs = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.6), np.full((2, 2), 0.2)])
    star = np.full((2, 2), 1.0)
    assert np.array_equal(star_seeds.mix_interior(probs, star, 0.0), probs)
    mixed = star_seeds.mix_interior(probs, star, 0.25)
    assert np.allclose(mixed[1], 0.7) and np.array_equal(mixed[[0, 2]], probs[[0, 2]])  # 0.75 * 0.6 + 0.25 * 1
    assert probs[1, 0, 0] == 0.6  # the input is not changed in place


def test_ray_errors_are_measured_at_nucleus_centres_only():
    star_rays = _tried("star_rays")
    target = star_rays.StarTarget(None, 8).target(_touching_disks())
    errors, lengths = star_rays.ray_errors(target[1:], target)
    assert errors.size == lengths.size > 0 and not errors.any()  # the target itself: no error
    longer = target[1:] + 2.0 * (target[:1] > 0)  # every ray of every nucleus pixel 2 px too long
    errors, _ = star_rays.ray_errors(longer, target)
    assert np.allclose(errors, 2.0)
    assert lengths.min() > 4  # centres only: no ray there is as short as at an outline


def test_rank_agreement_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    val_holdout = _tried("val_holdout")
    same = val_holdout.rank_agreement([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.9, 1.0])
    assert same["spearman"] == pytest.approx(1) and same["kendall"] == pytest.approx(1) and same["n"] == 4
    flipped = val_holdout.rank_agreement([0.1, 0.2, 0.3, 0.4], [1.0, 0.9, 0.6, 0.5])
    assert flipped["spearman"] == pytest.approx(-1) and flipped["kendall"] == pytest.approx(-1)
    # one swapped neighbour pair of 6 pairs: tau = (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15)
    one = val_holdout.rank_agreement([1, 2, 3, 4], [1, 3, 2, 4])
    assert one["kendall"] == pytest.approx(4 / 6) and one["spearman"] == pytest.approx(0.8)
    assert one["validation_range"] == [1, 4]
    with pytest.raises(ValueError):
        val_holdout.rank_agreement([1, 2], [1, 2])


def test_val_holdout_reads_every_tried_run_with_both_scores(tmp_path):
    val_holdout = _tried("val_holdout")
    assert [val_holdout.group(n) for n in ("q-lr1", "ens-touch", "shipped", "nuclei-lovasz")] == [
        "quick", "ensemble", "ensemble", "single"]
    out = tmp_path / "vh.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tried" / "val_holdout.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    both = [p for p in (ROOT / "benchmarks" / "tried").glob("dsb2018-*.json")
            if "tuned_dsb" in (json.loads(p.read_text()).get("validation") or {})]
    assert len(got["rows"]) == len(both) + 1  # and the shipped model
    assert all(0 < r["validation"] < 1 and 0 < r["held_out"] < 1 for r in got["rows"])
    assert sum(g["n"] for g in got["by_group"].values()) == len(got["rows"])


def test_scale_sets_parse_sorted_and_cost_the_pixels_they_run():
    scale_tta = _tried("scale_tta")
    assert scale_tta.parse_sets(["1", "1.25,0.8,1", "1,1"]) == [(1.0,), (0.8, 1.0, 1.25), (1.0,)]
    assert scale_tta.cost((0.8, 1.0, 1.25)) == pytest.approx(0.64 + 1 + 1.5625)
    with pytest.raises(SystemExit):
        scale_tta.parse_sets(["0,1"])
