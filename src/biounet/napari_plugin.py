"""napari plugin (``pip install 'biounet[napari]'``): a Segment widget, a reader and sample data.

The manifest is ``napari.yaml`` beside this file. The widget runs the model in
a worker thread (:func:`napari.qt.threading.thread_worker`), so the viewer
stays responsive; its progress bar advances per stage and per slice of a
stack, and the result arrives as a Labels layer (instances or mask) or an Image
layer (probabilities) named after the input. Everything segmentation-specific
is :mod:`biounet.predict`'s: the widget only gathers options and moves arrays.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from . import checkpoint
from .io import InputError, output_kind, read_stack, tiff_channels
from .postprocess import foreground_prob

if TYPE_CHECKING:
    import napari  # noqa: F401  (the widget's "napari.layers.Image" annotation; magicgui resolves it)

SAMPLES = Path(__file__).parent / "samples"
OUTPUTS = ("labels", "probabilities")


# ---- the work, free of Qt (tested directly) -------------------------------------------
def pages(data: np.ndarray, rgb: bool) -> list[np.ndarray]:
    """A layer's array as a list of 2D images: (H, W[, C]) is one page, (Z, H, W[, C]) many."""
    arr = np.asarray(data)
    single = arr.ndim == (3 if rgb else 2)
    if not single and arr.ndim != (4 if rgb else 3):
        raise InputError(f"image layer has shape {arr.shape}; expected a 2D image or a stack of 2D images")
    return [arr] if single else list(arr)


def segment_layer(
    data: np.ndarray, rgb: bool, model: str | Path, output: str = "labels", tta: bool = False,
    diameter: float = 0.0, tile: int = 0,
) -> Iterator[tuple[int, int, str] | np.ndarray]:
    """Segment a layer's data; yields ``(step, total, stage)`` as it goes and finally the result array.

    ``output="labels"`` gives instance labels (an EM membrane model gives one
    label per cell) as (H, W) or (Z, H, W) integers; ``"probabilities"`` the
    foreground probability (1 - background for multi-class heads) as float32.
    """
    from .predict import PredictOptions, load_model

    if output not in OUTPUTS:
        raise InputError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    images = pages(data, rgb)
    total = len(images) + 1
    yield 0, total, "loading model"
    options = PredictOptions(tta=tta, diameter=diameter or None, tile=tile)
    seg = load_model(model, options=options).with_post(mode="instances")
    results = []
    for i, image in enumerate(images):
        yield i + 1, total, f"slice {i + 1}/{len(images)}" if len(images) > 1 else "segmenting"
        probs = seg.predict(image)
        results.append(seg.segment_probs(probs) if output == "labels"
                       else foreground_prob(probs).astype(np.float32))
    yield total, total, "done"
    yield results[0] if len(results) == 1 else np.stack(results)


def layer_tuple(result: np.ndarray, name: str, output: str, model_name: str,
                image: np.ndarray | None = None) -> tuple[np.ndarray, dict, str]:
    """The napari LayerDataTuple for a result: Labels for labels, a 0..1 Image for probabilities.

    Labels of one 2D image carry ``predict --measure``'s table as layer features (napari shows a
    label's row when the pointer is over it); ``image``, the layer segmented, adds its intensities.
    """
    meta = {"biounet_model": model_name}
    if output == "labels":
        props = {"name": f"{name}_labels", "metadata": meta}
        if result.ndim == 2:
            from .measure import object_table

            table = object_table(result, image if image is not None and image.shape[:2] == result.shape else None)
            props["features"] = {"index": table["label"], **table}  # "index": the label value of each row
        return result, props, "labels"
    return result, {"name": f"{name}_probabilities", "contrast_limits": (0.0, 1.0), "colormap": "magma",
                    "metadata": meta}, "image"


def model_choices(_widget: Any = None) -> list[str]:
    """Shipped model names, for the widget's drop-down."""
    return sorted(checkpoint.shipped_models())


# ---- the widget -----------------------------------------------------------------------
# magicgui reads the widget's annotations at run time, so this module keeps them evaluated
# (no ``from __future__ import annotations``) and imports napari's types inside the factory.
def _widget_factory():
    from magicgui import magic_factory
    from napari.qt.threading import FunctionWorker, thread_worker
    from napari.types import LayerDataTuple
    from qtpy.QtCore import QTimer

    @magic_factory(
        call_button="Segment",
        model={"choices": model_choices, "tooltip": "a shipped model (ignored when a model folder is given)"},
        model_folder={"mode": "d", "label": "or model folder", "nullable": True,
                      "tooltip": "a biounet run or model folder"},
        output={"choices": list(OUTPUTS), "tooltip": "labels: one id per object; probabilities: foreground"},
        tta={"label": "test-time augmentation", "tooltip": "average 8 flips/rotations (8x slower)"},
        diameter={"min": 0.0, "max": 1000.0, "step": 1.0, "tooltip": "object diameter in px (0: as trained)"},
        tile={"min": 0, "max": 8192, "step": 16, "tooltip": "tile side in px (0: automatic)"},
    )
    def segment(
        image: "napari.layers.Image",
        model: str = "dsb2018-nuclei",
        model_folder: Path | None = None,
        output: str = "labels",
        tta: bool = False,
        diameter: float = 0.0,
        tile: int = 0,
    ) -> FunctionWorker[LayerDataTuple]:
        if image is None:
            raise InputError("choose an image layer first")
        chosen: str | Path = model_folder if model_folder and str(model_folder) not in ("", ".") else model
        data, rgb, name = image.data, bool(image.rgb), image.name

        @thread_worker(progress={"total": len(pages(data, rgb)) + 1, "desc": f"biounet: {name}"})
        def run() -> LayerDataTuple:
            result = None
            for item in segment_layer(data, rgb, chosen, output, tta, diameter, tile):
                if isinstance(item, tuple):
                    yield item  # progress
                else:
                    result = item
            return layer_tuple(result, name, output, Path(chosen).name, np.asarray(data))

        worker = run()
        # napari connects the result to the viewer when this returns; start only after that
        QTimer.singleShot(0, worker.start)
        return worker

    return segment


def segment_widget():
    """npe2 widget command: the Segment dock widget."""
    return _widget_factory()()


# ---- reader and sample data ------------------------------------------------------------
def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader: biounet outputs (labels / mask / probabilities by their metadata) and TIFF stacks."""
    if isinstance(path, list):
        return None
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    return read_layers


def read_layers(path: str) -> list[tuple]:
    """One layer: a biounet output as what it is, any other TIFF (stack) as an image."""
    path = Path(path)
    kind = output_kind(path)
    if kind is None and tiff_channels(path) > 1:  # DAPI + a membrane stain...: one napari layer per channel
        import tifffile

        with tifffile.TiffFile(path) as tf:  # read once, as the file orders its axes
            series = tf.series[0]
            return [(series.asarray(), {"name": path.stem, "channel_axis": series.axes.index("C")}, "image")]
    arr = read_stack(path)
    arr = arr[0] if arr.shape[0] == 1 else arr
    if kind in ("labels", "mask"):
        data = arr if kind == "labels" else (arr > 0).astype(np.uint8)
        return [(data, {"name": path.stem}, "labels")]
    meta = {"name": path.stem}
    if kind == "probabilities":
        meta.update(contrast_limits=(0.0, 1.0), colormap="magma")
    rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8
    return [(arr, {**meta, "rgb": rgb}, "image")]


def _sample(relative: str, name: str) -> list[tuple]:
    image = read_stack(SAMPLES / relative)[0]
    rgb = image.ndim == 3
    return [(image, {"name": name, "rgb": rgb}, "image")]


def sample_nuclei() -> list[tuple]:
    """DSB 2018 fluorescence nuclei (not trained on by the shipped model)."""
    return _sample("dsb2018/03398329ced0c23b9ac3fac84dd53a87d9ffe4d9d10f1b5fe8df8fac12380776.png", "nuclei")


def sample_tissue() -> list[tuple]:
    """DSB 2018 stained tissue (purple, H&E-like)."""
    return _sample("dsb2018/2c61fdcb36fd1b2944895af6204279e9f6c164ba894198b40c8b7a3c9bf500ea.png", "tissue")


def sample_em() -> list[tuple]:
    """ISBI 2012 serial-section TEM, test slice 15 (no labels; for the membrane model)."""
    return _sample("isbi2012/test-volume-15.tif", "em")
