"""bioimage.io model packages: a biounet model as the model zoo (and deepImageJ, ilastik, ...) loads it.

``biounet export --format bioimageio`` writes an ``rdf.yaml`` (format 0.5)
with ONNX and TorchScript weights (probabilities out: the head's sigmoid or
softmax is inside the graph), the normalisation as the spec's ``scale_range``
pre-processing, a test input cut from a shipped sample and the output
biounet computes for it, a cover picture, a README and the citations. Every
file lies in the package; nothing points at a URL. The package is tested with
``bioimageio.core`` before it is moved into place, so a written package is one
that reproduces its own test output.

Needs the optional extra ``biounet[bioimageio]`` (bioimageio.core, which
brings bioimageio.spec); biounet itself does not.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint
from .config import to_dict
from .graph_export import ONNX_OPSET, model_metadata, to_onnx, to_torchscript
from .io import InputError, read_image, write_image
from .normalize import PERCENTILES, SPEC_EPS, scale_range
from .postprocess import foreground_prob
from .tasks import TASKS

SAMPLES = Path(__file__).parent / "samples"
CITATIONS = [
    ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
     "MICCAI 2015, LNCS 9351, 234-241.", "10.1007/978-3-319-24574-4_28"),
    ("Caicedo JC et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
     "Nature Methods 16, 1247-1253 (2019).", "10.1038/s41592-019-0612-7"),
    ("Arganda-Carreras I et al. Crowdsourcing the creation of image segmentation algorithms for connectomics. "
     "Frontiers in Neuroanatomy 9:142 (2015).", "10.3389/fnana.2015.00142"),
]


def _spec():
    try:
        import bioimageio.core  # noqa: F401  (tests the package; brings bioimageio.spec)
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise InputError(f"bioimage.io export needs bioimageio.core: pip install 'biounet[bioimageio]' ({exc})") \
            from None
    return v0_5


def make_test_input(task: str, sample: str | Path | None = None) -> np.ndarray:
    """The (1, 1, S, S) float32 test tensor: a centre crop of the task's shipped sample (or ``sample``), gray."""
    name, side = TASKS[task].sample
    img = read_image(sample or SAMPLES / name).astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    h, w = img.shape
    side = min(side, h - h % 16, w - w % 16)
    if side < 16:
        raise InputError(f"{sample}: test image is smaller than 16x16")
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(img[top:top + side, left:left + side])[None, None]


def expected_output(traced: Any, x: np.ndarray) -> np.ndarray:
    """What the package's weights give for ``x`` after its pre-processing: the test output tensor."""
    import torch

    with torch.inference_mode():
        return traced(torch.from_numpy(scale_range(x))).numpy().astype(np.float32)


def _describable(cfg) -> str:
    """How much of biounet's normalisation the spec can say (goes into the README and description)."""
    mode = cfg.data.normalize
    if mode == "percentile":
        return "exactly biounet's normalisation (1st..99.8th percentile of each image -> 0..1)"
    if mode in ("nuclei", "percentile_invert"):
        return ("biounet's normalisation for images with a dark background (fluorescence). For brightfield or "
                "stained (H&E) images, biounet first inverts the image (nuclei must be bright) and, for colour, "
                "reads the red channel; the spec cannot express that choice, so invert such images before "
                "using this package, or use `biounet predict`, which does it")
    return f"not biounet's normalisation '{mode}', which the spec cannot express; use `biounet predict`"


def _cover(x: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the test input beside the network's foreground probability."""
    from .overlay import to_display_rgb

    left = to_display_rgb(x[0, 0])
    fg = foreground_prob(probs[0])
    right = np.repeat((np.clip(fg, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    write_image(path, np.concatenate([left, right], axis=1))


def _readme(cfg, metrics: dict, post: dict, describable: str) -> str:
    head = TASKS[cfg.task].channels
    scores = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    return f"""# {cfg.name}

A 2D U-Net trained with biounet (task `{cfg.task}`).

- Input: one gray channel, axes (batch, channel, y, x), float32; y and x multiples of
  {cfg.model.pool_size ** cfg.model.depth}.
- Pre-processing in this package: `scale_range` over y and x, percentiles {PERCENTILES[0]} and
  {PERCENTILES[1]}: {describable}.
- Output: {len(head)} channel(s) ({", ".join(head)}), probabilities
  ({"softmax" if len(head) > 1 else "sigmoid"} inside the network), same y and x as the input.
- biounet's post-processing, not part of this package: {post}.

The test input is a crop of a biounet sample image the model did not train on; the test output is what
these weights give for it. Weights in ONNX (opset {ONNX_OPSET}) and TorchScript.

# Validation

Scores on the validation images of the training run (biounet's own post-processing applied):
{scores}. `biounet evaluate` reproduces them; `bioimageio test rdf.yaml` checks this package.

Training configuration (biounet `config.json`):

```json
{json.dumps(checkpoint.config_dict(cfg), indent=2)}
```
"""


def describe(folder: Path, work: Path, sample: str | Path | None = None):
    """Write the package's files into ``work`` and return its validated ``ModelDescr``."""
    import io as _io

    import torch

    v0_5 = _spec()
    cfg, module = checkpoint.load_module(folder)
    if cfg.model.padding != "same":
        raise InputError(f"{folder}: bioimage.io export supports 'same' nets (output size = input size); "
                         "this one is 'valid'")
    meta = model_metadata(folder)
    (work / "weights.onnx").write_bytes(to_onnx(module, probabilities=True, metadata=meta))
    ts = to_torchscript(module, probabilities=True, metadata=meta)
    (work / "weights_torchscript.pt").write_bytes(ts)
    traced = torch.jit.load(_io.BytesIO(ts))
    x = make_test_input(cfg.task, sample)
    y = expected_output(traced, x)
    np.save(work / "test_input.npy", x)
    np.save(work / "test_output.npy", y)
    _cover(x, y, work / "cover.png")
    post = to_dict(checkpoint.load_post(folder, cfg.post))
    (work / "README.md").write_text(_readme(cfg, checkpoint.read_metrics(folder), post, _describable(cfg)))
    checkpoint.save_config(work, cfg)  # the model folder's own config.json, attached

    align = cfg.model.pool_size ** cfg.model.depth
    space_in = [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=align, step=align))
                for a in ("y", "x")]
    space_out = [v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), size=v0_5.SizeReference(
        tensor_id=v0_5.TensorId("input"), axis_id=v0_5.AxisId(a))) for a in ("y", "x")]
    inputs = v0_5.InputTensorDescr(
        id=v0_5.TensorId("input"), description="gray image; any intensity range (scaled per image)",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("gray")]), *space_in],
        test_tensor=v0_5.FileDescr(source=work / "test_input.npy"),
        preprocessing=[v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=[v0_5.AxisId("y"), v0_5.AxisId("x")], min_percentile=PERCENTILES[0],
            max_percentile=PERCENTILES[1], eps=SPEC_EPS))])
    outputs = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("probabilities"), description=f"{cfg.task} class probabilities",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in TASKS[cfg.task].channels]),
              *space_out],
        test_tensor=v0_5.FileDescr(source=work / "test_output.npy"))
    return v0_5.ModelDescr(
        name=cfg.name if len(cfg.name) >= 5 else f"biounet {cfg.name}",  # the spec wants 5+ characters
        description=f"biounet 2D U-Net, task {cfg.task}: {', '.join(TASKS[cfg.task].channels)} probabilities",
        covers=[v0_5.FileDescr(source=work / "cover.png")],
        authors=[v0_5.Author(name="biounet developers")],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in CITATIONS],
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=work / "README.md"),
        tags=["unet", "segmentation", "2d", "biounet", cfg.task],
        attachments=[v0_5.FileDescr(source=work / checkpoint.CONFIG)],
        inputs=[inputs],
        outputs=[outputs],
        weights=v0_5.WeightsDescr(
            onnx=v0_5.OnnxWeightsDescr(source=work / "weights.onnx", opset_version=ONNX_OPSET,
                                       parent="torchscript"),
            torchscript=v0_5.TorchscriptWeightsDescr(source=work / "weights_torchscript.pt",
                                                     pytorch_version=v0_5.Version(torch.__version__.split("+")[0]))),
    )


def check_package(source: str | Path) -> list[str]:
    """Run bioimageio.core's test of a package (both weight formats, offline); the failures, if any."""
    _spec()
    from bioimageio.core import test_description

    failures = []
    for fmt in ("onnx", "torchscript"):
        summary = test_description(source, weight_format=fmt)
        # the overall status can read "valid-format" even when reproducing the test output failed,
        # so every check is looked at
        for detail in summary.details:
            if detail.status == "failed":
                msgs = [e.msg for e in detail.errors] or ["failed"]
                failures += [f"{fmt}: {detail.name}: {m.splitlines()[0]}" for m in msgs]
    return failures


def export_bioimageio(model: str | Path, out: str | Path, sample: str | Path | None = None) -> Path:
    """Write ``model`` as a bioimage.io package: a folder, or a ``.zip`` when ``out`` ends so; tested first."""
    _spec()
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    folder = checkpoint.resolve_model(model)
    out = Path(out)
    parent = out.parent if out.parent != Path("") else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: folder {parent} does not exist")
    with tempfile.TemporaryDirectory(prefix=".biounet-zoo-", dir=parent) as tmp:
        work, staged = Path(tmp) / "files", Path(tmp) / ("package.zip" if out.suffix == ".zip" else "package")
        work.mkdir()
        descr = describe(folder, work, sample)
        if out.suffix == ".zip":
            save_bioimageio_package(descr, output_path=staged)
        else:
            save_bioimageio_package_as_folder(descr, output_path=staged)
        failures = check_package(staged if out.suffix == ".zip" else staged / "rdf.yaml")
        if failures:
            raise InputError(f"{out}: the package failed bioimageio.core's test: {failures[0]}")
        if out.is_dir() and (out / "rdf.yaml").exists():  # --overwrite of an earlier package
            shutil.rmtree(out)
        staged.replace(out)
    return out
