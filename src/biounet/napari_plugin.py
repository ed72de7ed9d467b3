"""napari plugin (``pip install 'biounet[napari]'``): Segment and Fine-tune widgets, a reader and sample data.

The manifest is ``napari.yaml`` beside this file. The Segment widget runs the model in
a worker thread (:func:`napari.qt.threading.thread_worker`), so the viewer
stays responsive; its progress bar advances per stage and per slice of a
stack, and the result arrives as a Labels layer (instances or mask) or an Image
layer (probabilities) named after the input. Everything segmentation-specific
is :mod:`biounet.predict`'s: the widget only gathers options and moves arrays.

The Fine-tune widget collects (image layer, corrected labels layer) pairs in a
:class:`TrainingList` and runs :func:`biounet.finetune.finetune` on them in a worker
(:func:`finetune_pairs`), showing the stage, loss and the scores before and after;
the new model folder joins the Segment widget's model list (:func:`remember_model`).
"""
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

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
    # 0 = estimate per image (--diameter auto, the CLI's and the API's default too)
    options = PredictOptions(tta=tta, diameter=diameter or "auto", tile=tile)
    seg = load_model(model, options=options).with_post(mode="instances")
    results = []
    passes = seg.passes(images, "layer")  # one size estimate for all slices, as the CLI does a stack
    for i in range(len(images)):
        yield i + 1, total, f"slice {i + 1}/{len(images)}" if len(images) > 1 else "segmenting"
        done = next(passes)
        results.append(seg.labels_of(done) if output == "labels"
                       else foreground_prob(done.probs).astype(np.float32))
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


FINETUNED: list[str] = []  # model folders fine-tuned in this session (by the Fine-tune widget), oldest first
_SEGMENT_WIDGETS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the open Segment widgets, for remember_model


def model_choices(_widget: Any = None) -> list[tuple[str, str]]:
    """(shown, value) for the model drop-downs: the shipped models by name, then this session's fine-tuned
    folders (by path; shown by folder name)."""
    names = [(name, name) for name in sorted(checkpoint.shipped_models())]
    tuned = []
    for folder in FINETUNED:
        shown = f"{Path(folder).name} (fine-tuned)"
        clash = any(s == shown for s, _ in names + tuned)
        tuned.append((f"{folder} (fine-tuned)" if clash else shown, folder))
    return names + tuned


def nuclei_model_choices(_widget: Any = None) -> list[tuple[str, str]]:
    """:func:`model_choices` less the shipped models that fine-tuning refuses (not instance models)."""
    from .tasks import get_task

    shipped = checkpoint.shipped_models()
    return [(shown, value) for shown, value in model_choices()
            if value not in shipped or get_task(checkpoint.load_config(shipped[value])).instances]


def remember_model(folder: str | Path) -> str:
    """Add a fine-tuned model folder to :func:`model_choices` (once) and select it in every open Segment
    widget, so the next image is segmented with it; returns the drop-down value (the folder's absolute path)."""
    value = str(Path(folder).resolve())
    if value not in FINETUNED:
        FINETUNED.append(value)
    for widget in list(_SEGMENT_WIDGETS):
        try:
            widget.model.reset_choices()
            widget.model.value = value
            if widget.model_folder.value and str(widget.model_folder.value) not in ("", "."):
                widget.model_folder.value = value  # the folder field wins over the list: point it at the new model too
        except RuntimeError:  # a closed viewer's widget whose Qt side is gone
            _SEGMENT_WIDGETS.discard(widget)
    return value


# ---- fine-tuning, free of Qt (tested directly) -----------------------------------------
class TrainingList:
    """The (image, corrected labels) pairs the Fine-tune widget trains on, each checked when added.

    :meth:`add` takes a layer's arrays: a 2D image with its (H, W) labels is one pair; a stack
    (Z, H, W[, C]) with a (Z, H, W) label stack gives one pair per slice that holds labels (unlabelled
    slices are left out). The arrays are copied, so later edits of the layers do not change a pair;
    adding the same two layers again replaces their pairs (add again after more corrections).
    """

    def __init__(self) -> None:
        self.pairs: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, image, labels)
        self._keys: list[tuple[str, str]] = []  # (image name, labels name) of each pair

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, image: np.ndarray, labels: np.ndarray, rgb: bool = False, image_name: str = "image",
            labels_name: str = "labels") -> int:
        """Check and add a layer pair; the number of pairs it gave, or a one-line :class:`InputError`."""
        from types import SimpleNamespace

        from .finetune import check_pair

        title = f"{image_name} + {labels_name}"
        images = pages(image, rgb)
        lab = np.asarray(labels)
        if len(images) == 1 and lab.ndim == 3 and lab.shape[0] == 1:
            lab = lab[0]  # a one-slice label stack over a 2D image
        label_pages = [lab] if len(images) == 1 else None
        if label_pages is None:
            if lab.ndim != 3 or lab.shape[0] != len(images):
                raise InputError(f"{title}: the image is a stack of {len(images)} slices but the labels have shape "
                                 f"{lab.shape}; give a label stack of as many slices")
            label_pages = list(lab)
        cfg = SimpleNamespace(data=SimpleNamespace(channel=-1))  # check_pair's only use of a config: channel picking
        new = []
        for z, (img, lb) in enumerate(zip(images, label_pages)):
            name = title if len(images) == 1 else f"{title}, slice {z}"
            if len(images) > 1 and not np.asarray(lb).any():
                continue  # a slice not labelled (yet): not a pair
            check_pair(name, np.asarray(img), np.asarray(lb), cfg, in_memory=True)  # raises the one-line error
            new.append((name, np.array(img, copy=True), np.array(lb, copy=True)))
        if not new:
            raise InputError(f"{title}: its labels hold no object (all 0) in any slice; label some nuclei first")
        key = (image_name, labels_name)
        kept = [i for i, k in enumerate(self._keys) if k != key]
        self.pairs = [self.pairs[i] for i in kept] + new
        self._keys = [self._keys[i] for i in kept] + [key] * len(new)
        return len(new)

    def clear(self) -> None:
        self.pairs, self._keys = [], []

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The pairs as :func:`biounet.finetune.finetune` takes them; its "image i" is line i of :meth:`lines`."""
        return [(img, lab) for _, img, lab in self.pairs]

    def lines(self) -> list[str]:
        """One line per pair: number, name, size and labelled objects."""
        from .finetune import count_objects

        if not self.pairs:
            return ["no training pairs yet: choose an image and its corrected labels, then Add pair"]
        return [f"{i}. {name}: {img.shape[1]}x{img.shape[0]}, {count_objects(lab.astype(np.int64, copy=False))} "
                f"objects" for i, (name, img, lab) in enumerate(self.pairs, start=1)]


def pairs_text(training: TrainingList) -> str:
    """The Fine-tune widget's list of pairs: a heading and :meth:`TrainingList.lines`."""
    return "\n".join(["training pairs:", *training.lines()] if len(training) else training.lines())


def finetune_pairs(
    pairs: "TrainingList | Sequence[tuple[np.ndarray, np.ndarray]]", model: str | Path, out: str | Path,
    minutes: float = 10.0, *, overwrite: bool = False, steps: int = 0, device: str = "cpu", cancel: Any = None,
) -> Iterator[Any]:
    """Fine-tune ``model`` on the pairs into the folder ``out`` (a new path or an empty folder; a model folder
    with ``overwrite``); yields each
    :class:`~biounet.finetune.Progress` as it comes and finally the :class:`~biounet.finetune.FinetuneResult`.

    :func:`biounet.finetune.finetune` runs in a thread of its own and its progress is relayed here, so the
    caller (the widget's worker thread, or a test) iterates at its own pace. ``cancel`` (a
    :class:`threading.Event` or a callable) stops it between steps with
    :class:`~biounet.finetune.FinetuneCancelled`, as does closing the generator: nothing is written then,
    and a model already in ``out`` is kept. Input problems raise their one-line :class:`InputError`.
    """
    import queue
    import threading

    from .finetune import finetune

    arrays = pairs.arrays() if isinstance(pairs, TrainingList) else list(pairs)
    if not arrays:
        raise InputError("no training pairs: add an image and its corrected labels first")
    out = Path(out).expanduser()
    if out.is_dir() and not any(out.iterdir()):
        overwrite = True  # an empty folder (a folder dialog's "new folder") is a place to write, not a model to keep
    stop = threading.Event()
    if cancel is None:
        stopped = stop.is_set
    else:
        user = cancel.is_set if hasattr(cancel, "is_set") else cancel
        def stopped() -> bool:  # noqa: E306
            return stop.is_set() or bool(user())
    events: "queue.Queue[Any]" = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = finetune(model, arrays, out, minutes=minutes, steps=steps, overwrite=overwrite,
                                         device=device, progress=events.put, cancel=stopped, bar=False)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread below)
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=work, name="biounet-finetune", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not None:
            yield item
    finally:
        stop.set()  # a no-op once finetune has returned; else (the generator closed early) it stops at its next poll
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


def progress_text(p: Any) -> str:
    """One status line for a :class:`~biounet.finetune.Progress`: the stage, its count, the loss, time left."""
    from .finetune import duration

    if p.stage == "training":
        text = f"training: step {p.done}/{p.total}"
        if p.loss is not None:
            text += f", loss {p.loss:.4f}"
        if p.eta is not None:
            text += f", about {duration(p.eta)} left"
        return text
    if p.stage.startswith("scoring") and p.total:
        return f"{p.stage}: image {min(p.done + 1, p.total)}/{p.total}"
    return p.stage


def user_message(exc: BaseException) -> str:
    """The one line the widget shows for a failed fine-tuning, in the widget's words (not the CLI's flags)."""
    from .finetune import FinetuneCancelled

    if isinstance(exc, FinetuneCancelled):
        return "fine-tuning cancelled; nothing was written"
    if isinstance(exc, InputError):
        text = str(exc)
        for cli, gui in (("use --overwrite to replace it", "tick 'replace existing' to replace it"),
                         ("another --out", "another output folder"), ("--minutes", "minutes")):
            text = text.replace(cli, gui)
    else:
        text = f"fine-tuning failed: {type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def score_change(result: Any) -> str:
    """'DSB 0.412 -> 0.631' for a :class:`~biounet.finetune.FinetuneResult` (retuned scores when retuned)."""
    after = result.retuned if result.retuned is not None else result.after
    return f"DSB {result.before.get('dsb', 0.0):.3f} -> {after.get('dsb', 0.0):.3f}"


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
        diameter={"min": 0.0, "max": 1000.0, "step": 1.0, "tooltip": "object diameter in px (0: estimated per image)"},
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
    widget = _widget_factory()()
    _SEGMENT_WIDGETS.add(widget)  # the Fine-tune widget puts its new model in this widget's list
    return widget


def _finetune_factory():
    """The Fine-tune dock widget: a magicgui Container; the work is :class:`TrainingList` and :func:`finetune_pairs`."""
    import logging
    import threading

    import napari
    from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                                  PushButton, create_widget)
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error, show_info
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    from .finetune import FinetuneCancelled, FinetuneResult, Progress, duration

    training = TrainingList()
    image = create_widget(annotation=napari.layers.Image, name="image", label="image")
    labels = create_widget(annotation=napari.layers.Labels, name="labels_layer", label="corrected labels")
    add_pair = PushButton(name="add_pair", text="Add pair",
                          tooltip="add the chosen image and labels layers (a copy of them now) to the training list")
    clear = PushButton(name="clear_pairs", text="Clear list")
    pairs = Label(name="pairs", value=pairs_text(training))
    model = ComboBox(name="model", label="start from", choices=nuclei_model_choices,
                     tooltip="a nuclei model: shipped, or fine-tuned in this session (ignored when a folder is given)")
    model_folder = FileEdit(name="model_folder", mode="d", label="or model folder", nullable=True,
                            tooltip="a biounet nuclei run or model folder to start from")
    out = FileEdit(name="out", mode="d", label="save to", nullable=True,
                   tooltip="the new model folder: a new path or an empty folder (written complete at the end, "
                           "or not at all)")
    overwrite = CheckBox(name="overwrite", text="replace existing", value=False,
                         tooltip="replace the model already in that folder (kept if fine-tuning fails or is cancelled)")
    minutes = FloatSpinBox(name="minutes", label="minutes", min=0.01, max=600.0, step=0.5, value=10.0,
                           tooltip="wall-time budget of the whole fine-tuning, scoring included")
    run = PushButton(name="finetune", text="Fine-tune")
    cancel = PushButton(name="cancel", text="Cancel", enabled=False,
                        tooltip="stop after the current step; nothing is written")
    bar = ProgressBar(name="progress", label="progress", value=0, max=1)
    status = Label(name="status", value="")
    report = Label(name="report", value="")
    for text in (pairs, status, report):  # the dock's width, wrapped; selectable (paths, scores)
        text.native.setWordWrap(True)
        text.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        text.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    widget = Container(widgets=[
        image, labels, Container(widgets=[add_pair, clear], layout="horizontal", labels=False),
        Container(widgets=[pairs], labels=False), model, model_folder, out, overwrite, minutes,
        Container(widgets=[run, cancel], layout="horizontal", labels=False), bar,
        Container(widgets=[status, report], labels=False)])
    # the buttons and texts sit in rows of their own (full width): reachable from the widget too (tests, scripts)
    widget.training, widget.add_pair, widget.clear_pairs, widget.finetune, widget.cancel = (
        training, add_pair, clear, run, cancel)
    widget.pairs, widget.status, widget.report = pairs, status, report
    widget.worker = None
    state: dict[str, Any] = {}

    def fail(message: str) -> None:
        status.value = message
        show_error(message)

    def on_add() -> None:
        img, lab = image.value, labels.value
        if img is None or lab is None:
            return fail("choose an image layer and its corrected labels layer first")
        if img.multiscale or lab.multiscale:
            return fail(f"{img.name}: a multiscale layer; fine-tuning takes single-scale images")
        try:
            n = training.add(np.asarray(img.data), np.asarray(lab.data), bool(img.rgb), img.name, lab.name)
        except InputError as exc:
            return fail(str(exc))
        pairs.value = pairs_text(training)
        status.value = f"added {img.name} + {lab.name}" + (f" ({n} labelled slices)" if n > 1 else "")

    def on_clear() -> None:
        training.clear()
        pairs.value = pairs_text(training)
        status.value = report.value = ""

    def on_run() -> None:
        if widget.worker is not None:
            return
        if not len(training):
            return fail("no training pairs: choose an image and its corrected labels, then Add pair")
        if out.value is None or str(out.value) in ("", "."):
            return fail("choose a folder to save the fine-tuned model in (save to)")
        folder = model_folder.value
        start = str(folder) if folder is not None and str(folder) not in ("", ".") else model.value
        target = Path(out.value).expanduser()
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        stop = threading.Event()
        state.update(stop=stop, result=None, target=target, failed=False)
        worker = create_worker(work, training.arrays(), start, target, float(minutes.value),
                               overwrite=bool(overwrite.value), device=device, cancel=stop, _ignore_errors=True)
        worker.yielded.connect(on_progress)
        worker.errored.connect(on_error)
        worker.aborted.connect(stop.set)  # napari's activity dock can quit the worker: stop the fine-tuning too
        worker.finished.connect(on_finished)
        widget.worker = worker
        run.enabled, cancel.enabled = False, True
        bar.max, bar.value = 0, 0  # busy until the first count
        status.value, report.value = f"starting from {Path(start).name} on {len(training)} pair(s)...", ""
        worker.start()

    def work(*args: Any, **kwargs: Any) -> Iterator[Any]:
        """finetune_pairs in the worker, its exception yielded, not raised: the one line goes to the widget, and
        napari 0.9's own handler of a worker's ``errored`` signal fails (a TypeError in the event loop)."""
        try:
            yield from finetune_pairs(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            yield exc

    def on_progress(item: Any) -> None:
        if isinstance(item, Exception):
            on_error(item)
        elif isinstance(item, Progress):
            bar.max = item.total
            bar.value = min(item.done, item.total)
            status.value = progress_text(item)
        elif isinstance(item, FinetuneResult):
            state["result"] = item

    def on_error(exc: Exception) -> None:
        state["failed"] = True
        message = user_message(exc)
        if not isinstance(exc, (InputError, FinetuneCancelled)):
            logging.getLogger(__name__).error("fine-tuning failed", exc_info=exc)
        if isinstance(exc, FinetuneCancelled):
            target = state["target"]
            if (target / checkpoint.CONFIG).is_file():
                message += f"; the model in {target} is kept"
            status.value = message
            show_info(message)
        else:
            fail(message)

    def on_finished() -> None:
        widget.worker = None
        run.enabled, cancel.enabled = True, False
        result = state.get("result")
        bar.max, bar.value = 1, 1 if result is not None else 0
        if result is None:
            if not state.get("failed"):  # the worker quit from napari's activity dock
                status.value = "fine-tuning stopped; nothing was written"
            return
        remember_model(result.out)
        model.reset_choices()
        where = "selected in Segment" if len(_SEGMENT_WIDGETS) else "added to Segment's model list"
        status.value = (f"done in {duration(result.seconds)}: {score_change(result)}; "
                        f"saved as {result.out.name}, {where}")
        report.value = "\n".join(result.lines())
        show_info(f"biounet: fine-tuned model saved to {result.out} ({score_change(result)})")

    def on_cancel() -> None:
        if "stop" in state and widget.worker is not None:
            state["stop"].set()
            cancel.enabled = False
            status.value = "cancelling after the current step..."

    add_pair.changed.connect(on_add)
    clear.changed.connect(on_clear)
    run.changed.connect(on_run)
    cancel.changed.connect(on_cancel)
    return widget


def finetune_widget():
    """npe2 widget command: the Fine-tune dock widget."""
    return _finetune_factory()


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
