"""Object-size estimation (biounet.size) and --diameter auto around prediction."""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.measure import label
from skimage.transform import resize

from biounet import size as S


def disks(diameter: float, side: int = 256, seed: int = 0) -> np.ndarray:
    """Label image of non-touching disks of one ``diameter`` on a jittered grid."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((side, side), np.int32)
    step = int(diameter * 1.6) + 2
    k = 0
    for y in range(step // 2, side - step // 2, step):
        for x in range(step // 2, side - step // 2, step):
            k += 1
            rr, cc = disk((y + rng.integers(-1, 2), x + rng.integers(-1, 2)), diameter / 2, shape=lab.shape)
            lab[rr, cc] = k
    return lab


def test_object_diameters_of_disks_and_of_nothing():
    lab = disks(20)
    d = S.object_diameters(lab)
    assert len(d) == lab.max() and np.allclose(d, 20, rtol=0.08)
    assert len(S.object_diameters(np.zeros((5, 5), int))) == 0


@pytest.mark.parametrize("probes,expect", [
    # the finest probe that the next coarser one confirms (same size in image px, within x/÷ 1.3) is trusted
    ([(1.0, [21.0] * 5), (0.5, [11.0] * 5)], 21.0),
    ([(1.0, [60.0] * 5), (0.5, [30.0] * 5), (0.25, [15.0] * 5)], 60.0),  # large nuclei, seen alike at all scales
    ([(1.0, [6.0] * 5), (0.5, [18.0] * 5), (0.25, [9.0] * 5)], 36.0),  # native sees fragments; 0.5 and 0.25 agree
    # brightfield: native and 0.5 see the nuclei (24, 30); at 0.25 whole cells shrink to 19, nearer 20 but alone
    ([(1.0, [24.0] * 5), (0.5, [15.0] * 5), (0.25, [19.0] * 5)], 24.0),
    # nuclei far too large for native: it finds training-sized specks (17); 0.5 and 0.25 agree on 152-156
    ([(1.0, [17.0] * 5), (0.5, [76.0] * 5), (0.25, [39.0] * 5)], 152.0),
    # none confirmed: the finest probe that sees a size the network knows (x/÷ 2.25 of 20). Brightfield
    # as the fold-0 networks saw it: nuclei (31) at native, cells at 0.5 (48) and 0.25 (87, i.e. 22 px)
    ([(1.0, [31.0] * 5), (0.5, [24.0] * 5), (0.25, [22.0] * 5)], 31.0),
    ([(1.0, [100.0] * 5), (0.5, [30.0] * 5), (0.25, [47.0] * 5)], 60.0),  # native not a known size: 0.5
    ([(1.0, [3.0] * 5), (0.5, [3.0] * 5), (0.25, [60.0] * 5)], 240.0),  # none known: the nearest, 0.25
    ([(1.0, [7.0] * 5), (0.5, [2.0] * 1)], 7.0),  # tiny nuclei, vanished when shrunk: the only probe
    ([(1.0, [40.0] * 2), (0.5, [20.0] * 2)], 0.0),  # fewer than MIN_OBJECTS everywhere: no estimate
])
def test_pick_diameter_trusts_the_finest_confirmed_probe(probes, expect):
    d, _ = S.pick_diameter(20.0, [(s, np.array(v)) for s, v in probes])
    assert d == pytest.approx(expect)


def test_scale_for_keeps_the_band_and_clips():
    assert S.scale_for(20, 20) == 1.0
    assert S.scale_for(20 * S.NATIVE_BAND * 0.99, 20) == 1.0
    assert S.scale_for(60, 20) == pytest.approx(1 / 3)
    assert S.scale_for(5, 20) == 4.0 and S.scale_for(2, 20) == S.MAX_SCALE  # clipped
    assert S.scale_for(0, 20) == 1.0  # nothing found: native


def fake_network(calls: list):
    """predict_at for a 'network' that sees disks only when they are 10-40 px across (trained at 20):
    larger ones come out as rings of specks, smaller ones not at all, like a real one out of its range."""
    def predict_at(x, scale):
        calls.append((scale, x.shape))
        img = x[0] if scale == 1.0 else resize(x[0], [round(n * scale) for n in x.shape[1:]], order=1)
        fg = img > 0.5
        lab = label(fg)
        d = S.object_diameters(lab)
        keep, large = np.zeros(lab.max() + 1, bool), np.zeros(lab.max() + 1, bool)
        keep[1:], large[1:] = (d >= 10) & (d <= 40), d > 40
        seen = keep[lab]
        big = large[lab] & ~ndi.binary_erosion(fg, iterations=2)  # big ones: only edge specks
        specks = big & (np.indices(fg.shape).sum(0) % 8 < 2)
        p = (seen | specks).astype(np.float32)
        return p[None] if scale == 1.0 else resize(p, x.shape[1:], order=1)[None]
    return predict_at


def segment(probs):
    return label(probs[0] > 0.5)


@pytest.mark.parametrize("true_d", [6.0, 20.0, 60.0, 90.0])
def test_estimate_recovers_the_diameter_and_picks_the_scale(true_d):
    x = (disks(true_d, side=512) > 0).astype(np.float32)[None]
    calls = []
    est, probs = S.estimate(x, 20.0, fake_network(calls), segment)
    if true_d == 6.0:  # too small for every probe: no estimate, native
        assert est.diameter == 0 and est.scale == 1.0
        return
    assert est.diameter == pytest.approx(true_d, rel=0.2)
    assert est.scale == pytest.approx(S.scale_for(est.diameter, 20.0), rel=1e-3) or probs is not None
    if true_d == 20.0:  # at the training size: the native probe is the answer, no extra pass
        assert est.scale == 1.0 and probs is not None
        assert len(calls) <= len(S.PROBE_SCALES)


def test_estimate_stops_probing_once_two_probes_agree():
    x = (disks(28.0, side=512) > 0).astype(np.float32)[None]  # seen at 1x (28 px) and 0.5x (14 px)
    calls = []
    est, probs = S.estimate(x, 20.0, fake_network(calls), segment)
    assert [s for s, _ in calls] == [1.0, 0.5]  # 0.5 confirmed native: the 0.25 probe never ran
    assert est.diameter == pytest.approx(28.0, rel=0.1) and est.scale == 1.0 and probs is not None


def test_settled_stops_the_probes_only_when_the_estimate_cannot_change():
    """Stopping at the first agreeing pair gives what all probes would: every probe list's prefix that
    :func:`settled` accepts picks the same diameter as the whole list."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        probes = [(s, rng.choice([3.0, 8.0, 12.0, 20.0, 30.0, 50.0], size=int(rng.integers(1, 6))) * s * rng.uniform(2, 8))
                  for s in S.PROBE_SCALES]
        whole = S.pick_diameter(20.0, probes)
        for k in range(1, len(probes) + 1):
            if S.settled(probes[:k]):
                assert S.pick_diameter(20.0, probes[:k]) == whole
                break


def test_estimate_probes_a_big_image_on_its_centre_only():
    x = np.zeros((1, 3000, 2500), np.float32)
    x[0, 1000:2000, 800:1700] = (disks(20, side=1000)[:, :900] > 0)
    calls = []
    est, probs = S.estimate(x, 20.0, fake_network(calls), segment)
    assert all(shape[1:] == (S.PROBE_MAX_SIDE, S.PROBE_MAX_SIDE) for _, shape in calls)
    assert probs is None  # the crop's probabilities are not the image's
    assert est.diameter == pytest.approx(20, rel=0.2) and est.scale == 1.0


def test_auto_on_a_model_at_its_training_scale_equals_no_estimate():
    """--diameter auto must not change images already at the training size: same probabilities, one
    estimate recorded; and it costs the probes, at most 1.31 passes."""
    import torch

    from biounet.config import PostConfig, RunConfig
    from biounet.models.unet import UNet
    from biounet.predict import Segmenter
    from biounet.tasks import apply_overrides

    torch.manual_seed(0)
    cfg = apply_overrides(RunConfig(), ["task=nuclei", "model.base_features=4", "model.depth=2", "model.out_channels=3",
                                        "data.target=contour3", "data.normalize=nuclei"])
    seg = Segmenter(module=UNet(cfg.model).eval(), config=cfg, post=PostConfig(mode="instances"), train_diameter=20.0)
    img = (disks(20, side=128) > 0).astype(np.uint8) * 200
    auto, none = seg.with_options(diameter="auto"), seg.with_options(diameter=None)
    assert auto.auto_size and not none.auto_size
    probs, est = auto.predict_sized(auto.view(img))
    ref, nothing = none.predict_sized(none.view(img))
    assert nothing is None and est is not None
    if est.scale == 1.0:
        assert np.array_equal(probs, ref)
    else:  # an untrained net's objects may look any size: then the image was resized, at the same shape
        assert probs.shape == ref.shape


def test_parse_diameter_words_numbers_and_errors():
    from biounet.io import InputError
    from biounet.predict import PredictOptions, parse_diameter

    assert parse_diameter("auto") == "auto" and parse_diameter("None") is None and parse_diameter("30") == 30.0
    for bad in ("big", "0", "-3"):
        with pytest.raises(InputError, match="--diameter"):
            parse_diameter(bad)
    assert PredictOptions().diameter == "auto"
    with pytest.raises(InputError, match="--diameter"):
        PredictOptions(diameter="huge")


def test_cli_auto_diameter_on_a_sample_enlarged_3x_finds_the_size_and_writes_it(tmp_path):
    """The shipped nuclei model on a shipped sample blown up 3x: --diameter auto (the default) estimates about
    3x the sample's own nuclei, segments about as many nuclei as at native size, and --measure records it."""
    from pathlib import Path

    import tifffile
    from typer.testing import CliRunner

    from biounet.cli import app
    from biounet.io import read_image

    sample = sorted((Path(__file__).resolve().parents[1] / "src/biounet/samples/dsb2018").glob("*.png"))[0]
    img = read_image(sample)
    big = np.clip(resize(img, (img.shape[0] * 3, img.shape[1] * 3) + img.shape[2:], order=1, preserve_range=True),
                  0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", big)
    tifffile.imwrite(tmp_path / "native.tif", img)
    out = {}
    for mode in ("auto", "none"):
        res = CliRunner().invoke(app, ["predict", "-m", "dsb2018-nuclei", "-o", str(tmp_path / mode), "--measure",
                                       "--diameter", mode, str(tmp_path / "big.tif"), str(tmp_path / "native.tif")])
        assert res.exit_code == 0, res.output
        out[mode] = {n: (tmp_path / mode / f"{n}.csv").read_text().splitlines() for n in ("big", "native")}
    header = out["auto"]["big"][0].split(",")
    assert "estimated_diameter" in header and "estimated_diameter" not in out["none"]["big"][0]
    col = header.index("estimated_diameter")
    est_big = float(out["auto"]["big"][1].split(",")[col])
    est_native = float(out["auto"]["native"][1].split(",")[col])
    assert est_big == pytest.approx(3 * est_native, rel=0.25)
    n_native = len(out["none"]["native"]) - 1
    assert abs((len(out["auto"]["big"]) - 1) - n_native) <= max(2, 0.2 * n_native)


def _tiny_nuclei_segmenter():
    import torch

    from biounet.config import PostConfig, RunConfig
    from biounet.models.unet import UNet
    from biounet.predict import Segmenter
    from biounet.tasks import apply_overrides

    torch.manual_seed(0)
    cfg = apply_overrides(RunConfig(), ["task=nuclei", "model.base_features=4", "model.depth=2", "model.out_channels=3",
                                        "data.target=contour3", "data.normalize=nuclei"])
    return Segmenter(module=UNet(cfg.model).eval(), config=cfg, post=PostConfig(mode="instances"), train_diameter=20.0)


def test_a_reused_probe_is_segmented_once(monkeypatch):
    """With --diameter auto, the probe that is the pass was segmented to be measured: its labels are the
    answer, with no second watershed; the labels equal segmenting its probabilities."""
    from biounet import predict as P
    from biounet.size import Probe, SizeEstimate

    seg = _tiny_nuclei_segmenter().with_options(diameter="auto")
    img = (disks(20, side=128) > 0).astype(np.uint8) * 200
    x = seg.prepare(img)
    probs = seg._predict_at(x, 1.0)
    labels = seg.segment_probs(probs)
    monkeypatch.setattr(S, "estimate", lambda *a: (SizeEstimate(20.0, 1.0, 5), Probe(probs, labels)))
    calls = []
    real = P.Segmenter.segment_probs
    monkeypatch.setattr(P.Segmenter, "segment_probs", lambda self, p: calls.append(1) or real(self, p))
    out, size = seg.segment_sized(img)
    assert calls == [] and out is labels and size.scale == 1.0
    assert np.array_equal(out, real(seg, probs))


def test_a_stack_is_resized_by_one_estimate_made_on_its_middle_page(monkeypatch):
    """Pages of one z-stack must not be resized differently: the estimate runs once, on the middle page,
    and every page is predicted at its scale."""
    from biounet import predict as P
    from biounet.size import SizeEstimate

    seg = _tiny_nuclei_segmenter().with_options(diameter="auto")
    stack = np.stack([(disks(d, side=96) > 0).astype(np.uint8) * (100 + 40 * i) for i, d in enumerate((10, 20, 40))])
    estimated, scales = [], []
    monkeypatch.setattr(S, "estimate", lambda x, *a: estimated.append(x.name) or (SizeEstimate(40.0, 0.5, 5), None))
    real = P.Segmenter._predict_at
    monkeypatch.setattr(P.Segmenter, "_predict_at", lambda self, x, s, out=None: scales.append(s) or real(self, x, s, out))
    labels = seg.segment_stack(stack, "z")
    assert estimated == ["z[1]"] and scales == [0.5, 0.5, 0.5] and labels.shape == stack.shape
    assert np.array_equal(labels[0], seg.with_options(diameter=40.0).segment(stack[0]))


def test_min_size_is_counted_in_the_network_pixels_after_a_resize():
    """After a pass on the image enlarged 3x, the labels come back on the image's grid, where an object the
    network saw at 9x its area is small: the tuned min_size (in the network's pixels) is divided by 9 there,
    and multiplied by 4 after a pass at half size. Unresized, nothing changes."""
    from skimage.draw import disk

    seg = _tiny_nuclei_segmenter().with_post(min_size=20)
    probs = np.zeros((3, 48, 48), np.float32)
    probs[0] = 1.0
    for centre, r in (((12, 12), 2), ((32, 32), 4)):  # areas 13 and 49 px on the image's grid
        rr, cc = disk(centre, r)
        probs[:, rr, cc] = np.array([0.0, 1.0, 0.0])[:, None]
    assert seg.post_at(1.0) is seg.post
    assert (seg.post_at(3.0).min_size, seg.post_at(0.5).min_size) == (2, 80)
    assert len(np.unique(seg.segment_probs(probs))) - 1 == 1  # the small one dropped, as before
    assert len(np.unique(seg.segment_probs(probs, 3.0))) - 1 == 2  # both kept: 117 and 441 px to the network
    assert len(np.unique(seg.segment_probs(probs, 0.5))) - 1 == 0  # 3 and 12 px to the network: dropped


def test_a_fixed_diameter_segments_with_the_scaled_min_size(monkeypatch):
    """--diameter N resizes by train / N and segments the pass's probabilities with post_at of that scale,
    whole-image and block by block alike."""
    from biounet import predict as P

    seg = _tiny_nuclei_segmenter().with_post(min_size=20).with_options(diameter=10.0)  # scale 2
    img = (disks(10, side=96) > 0).astype(np.uint8) * 200
    seen = []
    real = P.Segmenter.segment_probs
    monkeypatch.setattr(P.Segmenter, "segment_probs", lambda self, p, scale=1.0: seen.append(scale) or real(self, p, scale))
    seg.segment(img)
    assert seen == [2.0]
    from biounet.parallel import block_result, make_plan

    plan, _ = make_plan(seg, img, "img.tif", None, None, "instances", "img")
    block_result(seg, plan, 0, 0, img)  # one block of the --workers path
    assert plan.scale == 2.0 and seen == [2.0, 2.0]
