"""napari Fine-tune widget: the training list and the fine-tuning generator without Qt, then the real widget.

The viewer test needs Qt and an OpenGL context (Xvfb in CI, as for the Segment widget's tests); it
skips with the reason where a viewer cannot start. Fine-tuning here is a step or two of a tiny model.
"""
import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari not installed (pip install 'biounet[napari]')")

from biounet import napari_plugin as plug  # noqa: E402
from biounet.finetune import FinetuneCancelled, FinetuneResult, Progress  # noqa: E402
from biounet.io import InputError, write_image  # noqa: E402
from biounet.predict import load_model  # noqa: E402

from .test_finetune import disk_pair, leftovers, tiny_nuclei_model  # noqa: E402,F401  (a module-scoped fixture)
from .test_napari_plugin import needs_viewer  # noqa: E402


@pytest.fixture(autouse=True)
def no_session_models(monkeypatch):
    """Each test starts with no fine-tuned models in the drop-downs."""
    monkeypatch.setattr(plug, "FINETUNED", [])


def _drain(gen) -> tuple[list[Progress], FinetuneResult | None]:
    seen, result = [], None
    for item in gen:
        if isinstance(item, Progress):
            seen.append(item)
        else:
            result = item
    return seen, result


# ---- the training list -----------------------------------------------------------------------
def test_training_list_copies_pairs_takes_labelled_slices_and_replaces_a_re_added_pair():
    rng = np.random.default_rng(1)
    img, lab = disk_pair(rng)
    training = plug.TrainingList()
    assert "no training pairs yet" in training.lines()[0]
    assert training.add(img, lab, image_name="cells", labels_name="fixed") == 1
    lab[:] = 0  # the layer edited after Add pair: the pair keeps what was added
    assert training.arrays()[0][1].max() == 4
    stack = np.stack([img, img, img])
    labs = np.stack([lab, disk_pair(rng)[1], disk_pair(rng)[1]])  # slice 0 unlabelled
    assert training.add(stack, labs, image_name="z", labels_name="zl") == 2
    assert training.lines() == ["1. cells + fixed: 48x48, 4 objects", "2. z + zl, slice 1: 48x48, 4 objects",
                                "3. z + zl, slice 2: 48x48, 4 objects"]
    assert training.add(img, disk_pair(rng, nuclei=2)[1], image_name="cells", labels_name="fixed") == 1
    assert len(training) == 3 and training.lines()[-1] == "3. cells + fixed: 48x48, 2 objects"  # replaced, not added
    rgb = np.repeat(img[..., None], 3, axis=2)
    training.add(rgb, disk_pair(rng)[1], rgb=True, image_name="rgb", labels_name="l")
    assert training.arrays()[-1][0].shape == (48, 48, 3)
    training.clear()
    assert len(training) == 0 and training.arrays() == []


@pytest.mark.parametrize("change, message", [
    ("size", r"^cells \+ fixed: labels are 40x48 but the image is 48x48; they must match pixel for pixel$"),
    ("empty", r"^cells \+ fixed: its labels hold no object \(all 0\)"),
    ("float", r"^cells \+ fixed: labels are float32; expected integer labels"),
    ("stack", r"^cells \+ fixed: the image is a stack of 2 slices but the labels have shape \(48, 48\)"),
    ("empty stack", r"^cells \+ fixed: its labels hold no object \(all 0\) in any slice"),
])
def test_bad_pairs_are_refused_in_one_line_when_added(change, message):
    img, lab = disk_pair(np.random.default_rng(2))
    if change == "size":
        lab = lab[:40]
    elif change == "empty":
        lab = np.zeros_like(lab)
    elif change == "float":
        lab = lab.astype(np.float32)
    elif change == "stack":
        img = np.stack([img, img])
    elif change == "empty stack":
        img, lab = np.stack([img, img]), np.zeros((2, 48, 48), np.uint16)
    training = plug.TrainingList()
    with pytest.raises(InputError, match=message) as err:
        training.add(img, lab, image_name="cells", labels_name="fixed")
    assert "\n" not in str(err.value) and len(training) == 0


# ---- fine-tuning from the list ----------------------------------------------------------------
def test_finetune_pairs_reports_progress_and_its_model_segments_the_next_image(tiny_nuclei_model, tmp_path):
    rng = np.random.default_rng(3)
    training = plug.TrainingList()
    for i in range(2):
        training.add(*disk_pair(rng), image_name=f"img{i}", labels_name=f"lab{i}")
    (tmp_path / "mine").mkdir()  # an empty folder (made in a folder dialog) is written into, no 'replace' needed
    seen, result = _drain(plug.finetune_pairs(training, tiny_nuclei_model, tmp_path / "mine", minutes=0.5, steps=2))
    assert isinstance(result, FinetuneResult) and result.steps == 2 and result.out == tmp_path / "mine"
    stages = [p.stage for p in seen]
    assert stages[0] == "checking data" and stages[-1] == "writing" and "scoring the fine-tuned model" in stages
    trained = [p for p in seen if p.stage == "training"]
    assert [p.done for p in trained] == [1, 2] and all(p.loss is not None and p.loss > 0 for p in trained)
    assert plug.progress_text(trained[-1]).startswith("training: step 2/2, loss ")
    assert plug.score_change(result).startswith("DSB ") and " -> " in plug.score_change(result)
    assert any(line.startswith("before: DSB") for line in result.lines())
    image = disk_pair(np.random.default_rng(4))[0]
    labels = load_model(tmp_path / "mine").segment(image)  # the new folder is a model like any other
    assert labels.shape == image.shape and np.issubdtype(labels.dtype, np.integer)
    value = plug.remember_model(result.out)
    assert ("mine (fine-tuned)", value) in plug.model_choices() and value == str((tmp_path / "mine").resolve())
    assert ("dsb2018-nuclei", "dsb2018-nuclei") in plug.nuclei_model_choices()
    assert "isbi2012-membrane" not in [v for _, v in plug.nuclei_model_choices()]  # fine-tuning refuses it


def test_finetune_pairs_refuses_bad_input_in_one_line(tiny_nuclei_model, tmp_path):
    rng = np.random.default_rng(5)
    one = plug.TrainingList()
    one.add(*disk_pair(rng, nuclei=1), image_name="a", labels_name="b")
    cases = [
        (one, tiny_nuclei_model, "only 1 labelled object in all 1 image(s); fine-tuning needs at least 2"),
        ([disk_pair(rng)], "isbi2012-membrane", "isbi2012-membrane: is a membrane model; fine-tuning takes a nuclei"),
        ([], tiny_nuclei_model, "no training pairs: add an image and its corrected labels first"),
        ([disk_pair(rng)], tiny_nuclei_model, "exists; tick 'replace existing' to replace it"),
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")  # a model folder already there
    for pairs, model, message in cases:
        out = tmp_path / ("taken" if "exists" in message else "out")
        with pytest.raises(InputError) as err:
            _drain(plug.finetune_pairs(pairs, model, out, minutes=0.1, steps=1))
        text = plug.user_message(err.value)
        assert message in text and "\n" not in text, text
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    unexpected = plug.user_message(RuntimeError("CUDA out of memory\nmore"))
    assert unexpected == "fine-tuning failed: RuntimeError: CUDA out of memory"


def test_cancel_writes_nothing_and_keeps_the_model_already_saved(tiny_nuclei_model, tmp_path):
    import shutil

    out = tmp_path / "mine"
    shutil.copytree(tiny_nuclei_model, out)
    before = (out / "model.safetensors").read_bytes()
    stop = threading.Event()
    gen = plug.finetune_pairs([disk_pair(np.random.default_rng(6))], tiny_nuclei_model, out, minutes=1.0,
                              steps=200, overwrite=True, cancel=stop)
    with pytest.raises(FinetuneCancelled):
        for item in gen:
            if isinstance(item, Progress) and item.stage == "training":
                stop.set()  # the Cancel button
    assert (out / "model.safetensors").read_bytes() == before and leftovers(tmp_path) == []
    assert plug.user_message(FinetuneCancelled("x")) == "fine-tuning cancelled; nothing was written"
    # closing the generator (the widget's worker quitting) stops the fine-tuning thread too
    gen = plug.finetune_pairs([disk_pair(np.random.default_rng(7))], tiny_nuclei_model, tmp_path / "other",
                              minutes=1.0, steps=200)
    next(gen)
    gen.close()
    assert not (tmp_path / "other").exists() and leftovers(tmp_path) == []
    assert not any(t.name == "biounet-finetune" for t in threading.enumerate())


# ---- the real widget in a real viewer ----------------------------------------------------------
@needs_viewer
def test_widget_finetunes_on_layers_and_segment_uses_the_new_model(make_napari_viewer, qtbot, tiny_nuclei_model,
                                                                   tmp_path):
    viewer = make_napari_viewer(show=True)
    image, labels = disk_pair(np.random.default_rng(8), size=64)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels[:40], name="wrong size")
    viewer.add_labels(labels.astype(np.int32), name="corrected")
    _, seg = viewer.window.add_plugin_dock_widget("biounet", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("biounet", "Fine-tune")
    assert ft.image.value is viewer.layers["cells"]
    assert ft.model.value == "dsb2018-nuclei" and "isbi2012-membrane" not in ft.model.choices

    ft.labels_layer.value = viewer.layers["wrong size"]
    ft.add_pair.native.click()  # a one-line message in the widget, no traceback, nothing added
    assert ft.status.value == ("cells + wrong size: labels are 40x64 but the image is 64x64; "
                               "they must match pixel for pixel")
    assert len(ft.training) == 0
    ft.labels_layer.value = viewer.layers["corrected"]
    ft.add_pair.native.click()
    assert ft.pairs.value == "training pairs:\n1. cells + corrected: 64x64, 4 objects"

    ft.model_folder.value = tiny_nuclei_model
    ft.out.value = tmp_path / "mine"
    ft.finetune.native.click()
    ft.cancel.native.click()  # at once: it stops at its first check, nothing written
    qtbot.waitUntil(lambda: ft.worker is None, timeout=120_000)
    assert ft.status.value == "fine-tuning cancelled; nothing was written" and not (tmp_path / "mine").exists()

    ft.minutes.value = 0.01  # the smallest budget: one training step
    ft.finetune.native.click()
    assert ft.worker is not None and not ft.finetune.enabled  # running in a worker thread
    qtbot.waitUntil(lambda: ft.worker is None, timeout=120_000)
    assert ft.status.value.startswith("done in "), ft.status.value
    assert "before: DSB" in ft.report.value and "after:  DSB" in ft.report.value
    new = str((tmp_path / "mine").resolve())
    assert json.loads((tmp_path / "mine" / "metrics.json").read_text())["finetune"]["steps"] >= 1
    assert seg.model.value == new and ("mine (fine-tuned)", new) in [(c.text, c.data) for c in _items(seg.model)]
    assert new in ft.model.choices  # and it can be fine-tuned further

    seg.image.value = viewer.layers["cells"]
    seg.call_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=120_000)
    layer = viewer.layers[-1]
    assert layer.name == "cells_labels" and layer.metadata["biounet_model"] == "mine"
    np.testing.assert_array_equal(layer.data, load_model(new).segment(image))

    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = tmp_path / "napari-finetune.png"
    write_image(path, shot[..., :3])
    print(f"screenshot: {path}")
    assert shot.shape[0] > 300 and shot[..., :3].std() > 10


def _items(combo):
    """A ComboBox's (shown, value) pairs, as Qt holds them."""
    from types import SimpleNamespace

    box = combo.native
    return [SimpleNamespace(text=box.itemText(i), data=box.itemData(i)) for i in range(box.count())]
