"""The models shipped in the package load without flags and still score on held-out real data."""
import numpy as np
import pytest

from biounet.checkpoint import shipped_models, unseen_images
from biounet.predict import load_model

from .conftest import require_shared


def _require_model(name: str):
    if name not in shipped_models():
        pytest.skip(f"model {name} is not shipped in this checkout")
    return load_model(name)


def test_shipped_models_describe_themselves():
    for name, folder in shipped_models().items():
        for f in ("config.json", "model.safetensors", "thresholds.json", "metrics.json"):
            assert (folder / f).is_file(), f"{name}: {f}"
        # small enough to ship in the package: a width-16 network is 3.9 MB in fp16, the nuclei model holds three
        assert (folder / "model.safetensors").stat().st_size < 16 * 2**20


def test_isbi_model_on_a_validation_slice():
    import tifffile

    from biounet.metrics.em import evaluate_membranes

    seg = _require_model("isbi2012-membrane")
    data = require_shared("isbi2012")
    i = seg.config.data.val_indices[0]  # a slice the model never trained on
    img = tifffile.imread(data / "train-volume.tif", key=i)
    truth = tifffile.imread(data / "train-labels.tif", key=i) != 0
    mask = seg.segment(img)
    assert mask.shape == img.shape and mask.dtype == np.uint8
    scores = evaluate_membranes(truth, mask == 0)
    assert scores["v_rand"] > 0.85 and scores["pixel_error"] < 0.12


def test_nuclei_model_on_validation_images():
    from biounet.tasks import apply_overrides
    from biounet.data.dataset import items_from_config, items_named
    from biounet.data.dsb import load_dsb_pair
    from biounet.metrics.instance import evaluate_instances

    seg = _require_model("dsb2018-nuclei")
    zip_path = require_shared("dsb2018", "stage1_train.zip")
    data = apply_overrides(seg.config, [f"data.images={zip_path}"]).data
    # held-out images if the model has them (never trained on, nothing picked on them), else validation ones
    val = items_named(items_from_config(data), unseen_images(shipped_models()["dsb2018-nuclei"])[1])
    pairs = []
    for item in val[:6]:
        img, truth = load_dsb_pair(item.extra)
        labels = seg.segment(img, item.name)
        assert labels.shape == truth.shape
        pairs.append((item.name, truth, labels))
    summary, _ = evaluate_instances(pairs)
    assert summary["dsb_score"] > 0.35 and summary["ap50"] > 0.5


@pytest.mark.parametrize("name", ["isbi2012-membrane", "dsb2018-nuclei"])
def test_fast_path_and_onnxruntime_agree_with_the_plain_path_on_the_samples(name):
    from pathlib import Path

    from biounet.io import read_image

    seg = _require_model(name)
    samples = Path(__file__).resolve().parents[1] / "src/biounet/samples" / name.split("-")[0]
    backends = {"fast": seg, "plain": seg.with_options(fast=False)}
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        backends["onnxruntime"] = seg.with_options(backend="onnxruntime")
    except ImportError:
        pass
    for path in sorted(samples.iterdir())[:2]:
        img = read_image(path)
        probs = {k: s.predict(img) for k, s in backends.items()}
        for k in backends:
            assert np.abs(probs[k] - probs["plain"]).max() < 1e-4, (path.name, k)
        labels = {k: s.segment_probs(p if p.ndim == 3 else p[None]) for (k, s), p in zip(backends.items(), probs.values())}
        for k in backends:  # the same objects: at most a handful of pixels at exact ties differ
            assert (labels[k] != labels["plain"]).mean() < 1e-4, (path.name, k)
            assert labels[k].max() == labels["plain"].max(), (path.name, k)
