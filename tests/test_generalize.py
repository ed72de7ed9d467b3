"""Leave-groups-out evaluation: the fixed grouping, group exclusion in training splits, the degrade
augmentation for other labs' images, and the robustness transforms."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from biounet.config import AugmentConfig, RunConfig
from biounet.data.transforms import augment, random_degrade
from biounet.io import InputError
from biounet.tasks import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_grouping_of_record_covers_the_shared_images_once_in_about_a_dozen_groups():
    rows = list(csv.DictReader(open(ROOT / "configs/dsb2018-groups.csv")))
    names = [r["image"] for r in rows]
    assert len(names) == len(set(names)) == 564
    groups = {r["group"] for r in rows}
    assert 10 <= len(groups) <= 16
    from generalize import FOLD0

    assert set(FOLD0) <= groups
    # a group is one experiment: one modality, one image size (the pooled '-other' groups aside)
    for g in groups - {"fluo-other", "colour-other", "bright-other"}:
        members = [r for r in rows if r["group"] == g]
        assert len({(r["modality"], r["height"], r["width"]) for r in members}) == 1, g


def test_assign_groups_splits_big_keys_by_size_and_pools_small_ones():
    from dsb_groups import MIN_GROUP, assign_groups

    rows = [{"modality": "dark", "height": 256, "width": 256, "median_diameter": d,
             "mean_intensity": 11.0} for d in [10.0] * 30 + [40.0] * 30 + [20.0] * 20]
    rows += [{"modality": "dark", "height": 100, "width": 90, "median_diameter": 20.0, "mean_intensity": 5.0}] * 3
    rows += [{"modality": "colour", "height": 64, "width": 64, "median_diameter": 20.0, "mean_intensity": 150.0}] * 10
    g = assign_groups(rows)
    assert len(set(g[:30])) == len(set(g[30:60])) == len(set(g[60:80])) == 1 and len({g[0], g[30], g[60]}) == 3
    assert (g[0], g[60], g[30]) == ("fluo-256x256-s", "fluo-256x256-m", "fluo-256x256-l")  # named small to large
    assert set(g[80:83]) == {"fluo-other"} and 3 < MIN_GROUP
    assert set(g[83:]) == {"colour-64x64"}


def write_groups(tmp_path, mapping):
    p = tmp_path / "groups.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group"])
        w.writerows(mapping.items())
    return p


def test_excluded_groups_never_reach_training_validation_or_held_out(tmp_path):
    import tifffile

    from biounet.data.dataset import split_run

    imgs, labs = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir(), labs.mkdir()
    mapping = {}
    for i in range(20):
        tifffile.imwrite(imgs / f"im{i:02d}.tif", np.full((16, 16), i, np.uint8))
        tifffile.imwrite(labs / f"im{i:02d}.tif", np.eye(16, dtype=np.uint8))
        mapping[f"im{i:02d}"] = "a" if i < 12 else "b"
    groups = write_groups(tmp_path, mapping)
    base = apply_overrides(RunConfig(), [f"data.images={imgs}", f"data.labels={labs}", "data.kind=folders",
                                         "data.holdout_fraction=0.2", "data.val_fraction=0.2"])
    full = split_run(base)
    cfg = apply_overrides(base, [f"data.groups={groups}", 'data.exclude_groups=["b"]'])
    train, val, held = split_run(cfg)
    for part in (train, val, held):
        assert all(mapping[it.name] == "a" for it in part)
    # the held-out images are the full run's, less group b (the draw happens before the exclusion)
    assert [it.name for it in held] == [it.name for it in full[2] if mapping[it.name] == "a"]
    assert len(train) + len(val) + len(held) == 12
    with pytest.raises(InputError, match="no group named 'c'"):
        split_run(apply_overrides(base, [f"data.groups={groups}", 'data.exclude_groups=["c"]']))


def test_exclude_groups_needs_a_groups_file():
    with pytest.raises(InputError, match="data.groups"):
        apply_overrides(RunConfig(), ['data.exclude_groups=["b"]'])


def test_degrade_changes_the_image_only_and_is_seeded():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 1)).astype(np.float32)
    labels = (rng.random((64, 64)) > 0.5).astype(np.int32)
    cfg = AugmentConfig(flips=False, rot90=False, affine=False, elastic=False, intensity=False, degrade=True)
    outs = [augment(image, labels, np.random.default_rng(s), cfg) for s in range(12)]
    for img, lab in outs:
        assert np.array_equal(lab, labels) and img.shape == image.shape and img.dtype == np.float32
    changed = [not np.allclose(img, image) for img, _ in outs]
    assert any(changed)  # most draws change something
    a = augment(image, labels, np.random.default_rng(3), cfg)[0]
    assert np.array_equal(a, outs[3][0])


def test_degrade_draws_cover_blur_noise_and_low_contrast():
    img = np.zeros((64, 64, 1), np.float32)
    img[20:40, 20:40] = 1.0
    blurred = noisy = low = False
    for s in range(60):
        out = random_degrade(img, np.random.default_rng(s))
        edge = out[30, 19, 0]  # outside the square, one pixel from its edge: blur lifts it
        blurred |= bool(edge > 0.05)
        noisy |= bool(out[0:10, 0:10].std() > 1e-3)
        low |= bool(out.max() - out.min() < 0.7)
    assert blurred and noisy and low


def test_uneven_dims_by_a_smooth_gain_and_lifts_soft_plateaus_keeping_the_labels():
    from biounet.data.transforms import random_uneven

    img = np.zeros((128, 128, 1), np.float32)
    img[::16, ::16] = 1.0  # a grid of one-pixel "nuclei" samples the gain everywhere
    labels = (img[..., 0] > 0).astype(np.int32)
    dimmed = lifted = False
    for s in range(40):
        out = random_uneven(img, np.random.default_rng(s))
        assert out.shape == img.shape and out.dtype == np.float32
        surround = np.minimum.reduce([out[1::16, 1::16], out[::16, 1::16], out[1::16, ::16]])
        peaks = (out[::16, ::16] - surround)[..., 0]  # each nucleus above its own surroundings
        # the gain stays within x0.25..x1 (a plateau's soft edge may tilt one pixel's surround by up to ~0.12)
        assert peaks.max() <= 1.0 + 0.12 and peaks.min() >= 0.25 - 0.12
        dimmed |= bool(peaks.min() < 0.6 and peaks.max() > 0.8)  # faint beside bright in one patch
        lifted |= bool(0.14 < np.ptp(out[1::16, 1::16]) <= 0.51)  # background lifted in places, not all
    assert dimmed and lifted
    cfg = AugmentConfig(flips=False, rot90=False, affine=False, elastic=False, intensity=False, uneven=True)
    a, lab = augment(img, labels, np.random.default_rng(5), cfg)
    assert np.array_equal(lab, labels) and np.array_equal(a, random_uneven(img, np.random.default_rng(5)))


def test_lowres_blurs_a_third_of_the_patches_and_keeps_each_object_on_its_labels():
    """Shrunk and enlarged back, a bright disk loses its sharp edge but its centre of mass stays put (no
    half-pixel shift between image and labels), its brightness is kept, and about a third of draws act."""
    from skimage.draw import disk

    from biounet.data.transforms import random_lowres

    img = np.zeros((96, 96, 1), np.float32)
    labels = np.zeros((96, 96), np.int32)
    rr, cc = disk((40.3, 51.7), 9)
    img[rr, cc] = 1.0
    labels[rr, cc] = 1
    yy, xx = np.indices(labels.shape)
    acted = 0
    for s in range(60):
        out = random_lowres(img, np.random.default_rng(s))
        assert out.shape == img.shape and out.dtype == np.float32
        if np.array_equal(out, img):
            continue
        acted += 1
        w = np.clip(out[..., 0], 0, None)
        centre = np.array([(yy * w).sum(), (xx * w).sum()]) / w.sum()
        assert np.abs(centre - [yy[labels == 1].mean(), xx[labels == 1].mean()]).max() < 0.15
        assert abs(w.sum() / img.sum() - 1) < 0.05 and 0 < out[40, 61, 0] < 1  # the edge is soft now
    assert 10 <= acted <= 30
    cfg = AugmentConfig(flips=False, rot90=False, affine=False, elastic=False, intensity=False, lowres=True)
    a, lab = augment(img, labels, np.random.default_rng(5), cfg)
    assert np.array_equal(lab, labels) and np.array_equal(a, random_lowres(img, np.random.default_rng(5)))


@pytest.mark.parametrize("name", ["x0.5", "x3", "gamma2", "contrast0.3", "poisson", "gauss", "blur2"])
def test_robustness_transforms_keep_image_and_truth_aligned(name):
    from robustness import transform

    truth = np.zeros((40, 60), np.int32)
    truth[10:20, 10:30] = 1
    truth[25:35, 40:55] = 2
    image = np.where(truth > 0, 200, 20).astype(np.uint8)
    img, lab = transform(image, truth, name, seed=1)
    assert img.dtype == np.uint8 and img.shape == lab.shape
    if name.startswith("x"):
        f = float(name[1:])
        assert lab.shape == (round(40 * f), round(60 * f)) and set(np.unique(lab)) == {0, 1, 2}
        # the bright pixels are where the resized truth says the objects are
        assert img[lab > 0].mean() > 150 and img[lab == 0].mean() < 70
    else:
        assert np.array_equal(lab, truth) and not np.array_equal(img, image)


@pytest.mark.parametrize("f", [0.25, 0.5, 0.33, 2.0, 3.0])
def test_resized_truth_sits_where_the_resized_image_shows_the_object(f):
    """Shrinking by nearest neighbour would shift objects half an original pixel off the image (x0.5:
    0.25 output px, every object the same way); the resized truth must sit, on average over objects
    at random sub-pixel places, where the resized image shows them, and keep their area."""
    from robustness import resize_labels
    from skimage.draw import disk
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    truth = np.zeros((240, 240), np.int32)
    centres = [(30 + 60 * i + rng.uniform(0, 1), 30 + 60 * j + rng.uniform(0, 1)) for i in range(4) for j in range(4)]
    for k, c in enumerate(centres, start=1):
        truth[disk(c, 14)] = k
    shape = (round(240 * f), round(240 * f))
    lab = resize_labels(truth, shape)
    yy, xx = np.indices(shape)
    offsets, areas = [], []
    for k in range(1, len(centres) + 1):
        img = resize((truth == k).astype(float), shape, order=1, anti_aliasing=f < 1)
        want = np.array([(yy * img).sum(), (xx * img).sum()]) / img.sum()
        offsets.append(np.array([yy[lab == k].mean(), xx[lab == k].mean()]) - want)
        areas.append((lab == k).sum() / ((truth == k).sum() * f * f))
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.05  # nearest neighbour: 0.25 at x0.5
    assert 0.85 < np.mean(areas) < 1.15


@pytest.mark.parametrize("f", [2.0, 3.0])
def test_enlarged_truth_keeps_objects_up_to_the_image_edges(f):
    """Enlarging x2, each pixel becomes a 2 x 2 block and the resized truth is exactly the nearest-neighbour
    one, objects touching the image's edges included; x3 rounds objects' inner corners as the bilinear
    image does, and loses nothing at the image's edges."""
    from robustness import resize_labels
    from skimage.transform import resize

    truth = np.zeros((30, 40), np.int32)
    truth[0:6, 0:9] = 1  # top-left corner
    truth[12:20, 33:40] = 2  # right edge
    truth[24:30, 10:12] = 3  # bottom edge, thin
    truth[8, 20] = 4  # one pixel
    truth[9, 21] = 5  # its diagonal neighbour
    shape = (round(30 * f), round(40 * f))
    lab = resize_labels(truth, shape)
    nearest = resize(truth, shape, order=0, anti_aliasing=False, preserve_range=True).astype(truth.dtype)
    if f == 2.0:
        assert np.array_equal(lab, nearest)
    else:
        edges = np.zeros(shape, bool)
        edges[[0, -1], :] = edges[:, [0, -1]] = True
        assert np.array_equal(lab[edges], nearest[edges])
        assert set(np.unique(lab)) == set(range(6)) and np.mean(lab != nearest) < 0.01


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """(run trained without group 'b', DSB folder, groups CSV): 16 synthetic images in two groups."""
    import imageio.v3 as iio
    from skimage.draw import disk

    from biounet.train import train

    root = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(0)
    mapping = {}
    for i in range(16):
        img = np.full((64, 64), 10, np.uint8)
        item = root / "dsb" / f"img{i:02d}"
        (item / "images").mkdir(parents=True)
        (item / "masks").mkdir()
        r = 5 if i % 4 else 9  # group b: bigger nuclei
        for k, (y, x) in enumerate(((16, 16), (16, 46), (46, 20), (44, 48))):
            rr, cc = disk((y + rng.integers(-2, 3), x + rng.integers(-2, 3)), r, shape=(64, 64))
            mask = np.zeros((64, 64), np.uint8)
            mask[rr, cc] = 255
            img[rr, cc] = 200
            iio.imwrite(item / "masks" / f"m{k}.png", mask)
        iio.imwrite(item / "images" / f"img{i:02d}.png", img)
        mapping[f"img{i:02d}"] = "a" if i % 4 else "b"
    groups = write_groups(root, mapping)
    cfg = apply_overrides(RunConfig(), [
        "task=nuclei", f"data.images={root / 'dsb'}", "data.kind=dsb", "data.holdout_fraction=0.25",
        "data.val_fraction=0.25", "data.patch_size=32", "data.patches_per_epoch=8", "model.base_features=4",
        "model.depth=2", "train.epochs=1", f"data.groups={groups}", 'data.exclude_groups=["b"]'])
    train(cfg, root / "run", progress=False)
    return root / "run", root / "dsb", mapping


def test_generalize_scores_only_the_left_out_groups_and_records_provenance(grouped_run, tmp_path):
    import subprocess

    run, data, mapping = grouped_run
    out = tmp_path / "g.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/generalize.py"), "--model", str(run), "--data", str(data),
                          "--modes", "none", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert {"commit", "command", "config", "date"} <= set(payload)
    r = payload["results"][0]["modes"]["none"]
    assert r["left_out"]["images"] == sum(g == "b" for g in mapping.values())
    assert set(r["left_out"]["by_group"]) == {"b"}
    assert set(r["held_out"]["by_group"]) <= {"a"}
    assert 0.0 <= r["left_out"]["dsb_score"] <= 1.0
    # a model trained on every group is refused: nothing to score it on honestly
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/generalize.py"), "--model", "dsb2018-nuclei",
                          "--data", str(data)], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "trained on every group" in res.stderr


def test_robustness_script_scores_every_transform_and_mode(grouped_run, tmp_path):
    import subprocess

    run, data, _ = grouped_run
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/robustness.py"), "--model", str(run), "--data",
                          str(data), "--transforms", "native,x2,gamma2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    payload = json.loads(out.read_text())
    modes = payload["results"][0]["modes"]
    assert set(modes) == {"auto", "none"} and set(modes["none"]) == {"native", "x2", "gamma2"}
    assert "commit" in payload and "| model (--diameter) | native | x2 | gamma2 |" in res.stdout
    # the ceiling row at native size is the native answer itself: --diameter none's score
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/robustness.py"), "--model", str(run), "--data",
                          str(data), "--transforms", "native,x0.5", "--modes", "ceiling", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ceiling = json.loads(out.read_text())["results"][0]["modes"]["ceiling"]
    assert ceiling["native"]["dsb_score"] == modes["none"]["native"]["dsb_score"] and "x0.5" in ceiling


def test_finetune_benchmark_scores_the_group_before_and_after_with_a_scratch_row(grouped_run, tmp_path):
    import subprocess

    run, data, mapping = grouped_run
    out = tmp_path / "f.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/finetune.py"), "--model", str(run), "--data", str(data),
                          "--groups", "b", "--k", "1,3", "--minutes", "0.05", "--scratch-k", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads(out.read_text())
    (row,) = payload["results"]
    n_b = sum(g == "b" for g in mapping.values())
    assert row["group"] == "b" and row["images"] == n_b
    runs = row["runs"]
    assert [r["k"] for r in runs] == [1, 3, 1] and runs[-1].get("from_scratch")
    for r in runs:
        assert r["scored"] == n_b - r["k"] and all(mapping[name] == "b" for name in r["train"])
        assert 0.0 <= r["after"]["dsb_score"] <= 1.0
    assert all("before" in r for r in runs[:2]) and "commit" in payload


def test_the_oracle_diameter_is_the_true_median_kept_within_the_allowed_resize():
    from types import SimpleNamespace

    from generalize import oracle_diameter

    seg = SimpleNamespace(train_diameter=20.0)
    truth = np.zeros((100, 100), np.int32)
    truth[0:10, 0:10], truth[20:30, 20:30], truth[50:70, 50:70] = 1, 2, 3  # areas 100, 100, 400
    assert oracle_diameter(seg, truth) == pytest.approx(2 * np.sqrt(100 / np.pi))
    big = np.zeros((400, 400), np.int32)
    big[:300, :300] = 1  # 338 px across: beyond 4x the training size
    assert oracle_diameter(seg, big) == pytest.approx(80.0)


def test_ceiling_labels_keep_iou_when_enlarging_and_follow_the_truth_when_shrinking():
    """The ceiling row carries the native answer onto the resized grid as the truth is carried: enlarged x2
    (nearest neighbour) a perfect answer stays perfect and an imperfect one keeps its score; shrunk, a
    perfect answer stays perfect (the same resize of the same labels), and other transforms keep the labels."""
    from robustness import ceiling_labels, resize_labels
    from skimage.draw import disk

    from biounet.metrics.instance import dsb_score

    truth = np.zeros((96, 96), np.int32)
    pred = np.zeros_like(truth)
    for k, (c, r) in enumerate([((20, 20), 9), ((20, 60), 7), ((60, 30), 11), ((70, 75), 5)], start=1):
        truth[disk(c, r, shape=truth.shape)] = k
        pred[disk((c[0] + 1, c[1]), r - 1, shape=truth.shape)] = k  # a pixel off, a pixel small
    native = dsb_score(truth, pred)
    assert 0 < native < 1
    big = (192, 192)
    assert dsb_score(resize_labels(truth, big), ceiling_labels(pred, "x2", big)) == pytest.approx(native)
    small = (32, 32)
    assert dsb_score(resize_labels(truth, small), ceiling_labels(truth, "x0.33", small)) == 1.0
    assert ceiling_labels(pred, "gamma2", truth.shape) is pred
