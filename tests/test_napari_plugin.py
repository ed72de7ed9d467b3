"""napari plugin: the Qt-free work (layer pages, segmentation, reader, samples) and the real widget in a viewer.

The viewer tests need Qt and an OpenGL context: CI gets both from Xvfb (pytest-xvfb
starts it when installed; ``.ci/run`` installs it). Where a viewer cannot start,
those tests skip and say why; the Qt-free tests always run.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import pytest

pytest.importorskip("napari", reason="napari not installed (pip install 'biounet[napari]')")

from biounet import napari_plugin as plug  # noqa: E402
from biounet.io import InputError, write_image  # noqa: E402
from biounet.predict import load_model  # noqa: E402


def test_pages_splits_stacks_and_refuses_other_shapes():
    assert len(plug.pages(np.zeros((5, 6)), rgb=False)) == 1
    assert len(plug.pages(np.zeros((5, 6, 3)), rgb=True)) == 1
    assert [p.shape for p in plug.pages(np.zeros((3, 5, 6)), rgb=False)] == [(5, 6)] * 3
    with pytest.raises(InputError, match="shape"):
        plug.pages(np.zeros((2, 3, 5, 6)), rgb=False)


def _run(gen):
    steps, result = [], None
    for item in gen:
        if isinstance(item, tuple):
            steps.append(item)
        else:
            result = item
    return steps, result


def test_segment_layer_gives_what_predict_gives_and_reports_progress():
    image = plug.sample_nuclei()[0][0][:96, :128]
    steps, labels = _run(plug.segment_layer(image, True, "dsb2018-nuclei"))
    expected = load_model("dsb2018-nuclei").segment(image)
    np.testing.assert_array_equal(labels, expected)
    assert labels.max() > 0
    assert [s[0] for s in steps] == [0, 1, 2] and steps[-1][2] == "done"


def test_segment_layer_stacks_give_stacks_and_em_gives_cells():
    em = plug.sample_em()[0][0][:64, :64]
    steps, cells = _run(plug.segment_layer(np.stack([em, em[::-1]]), False, "isbi2012-membrane"))
    assert cells.shape == (2, 64, 64) and np.issubdtype(cells.dtype, np.integer)
    assert len(np.unique(cells[0])) > 3  # cells, not a 0/255 membrane mask
    assert [s[2] for s in steps] == ["loading model", "slice 1/2", "slice 2/2", "done"]
    _, probs = _run(plug.segment_layer(em, False, "isbi2012-membrane", output="probabilities"))
    assert probs.shape == (64, 64) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs, load_model("isbi2012-membrane").predict(em))  # the Segmenter's sigmoid


def test_probabilities_layer_is_the_segmenters_foreground_probability():
    image = plug.sample_nuclei()[0][0][:96, :128]
    _, probs = _run(plug.segment_layer(image, True, "dsb2018-nuclei", output="probabilities"))
    want = load_model("dsb2018-nuclei").predict(image)  # (3, H, W) softmax, channel 0 the background
    assert probs.dtype == np.float32 and probs.shape == want.shape[1:]
    np.testing.assert_array_equal(probs, (1.0 - want[0]).astype(np.float32))
    assert probs.min() >= 0 and probs.max() > 0.5  # nuclei found, not a blank layer


def test_reader_opens_biounet_outputs_as_what_they_are(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:9] = 7
    write_image(tmp_path / "a.tif", labels, kind="labels")
    write_image(tmp_path / "p.tif", np.full((20, 30), 0.25, np.float32), kind="probabilities")
    write_image(tmp_path / "m.tif", (labels > 0).astype(np.uint8) * 255, kind="mask")
    write_image(tmp_path / "raw.tif", np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30))
    read = {name: plug.get_reader(str(tmp_path / name))(str(tmp_path / name))[0]
            for name in ("a.tif", "p.tif", "m.tif", "raw.tif")}
    assert read["a.tif"][2] == "labels" and read["a.tif"][0].max() == 7
    assert read["m.tif"][2] == "labels" and set(np.unique(read["m.tif"][0])) == {0, 1}
    assert read["p.tif"][2] == "image" and read["p.tif"][1]["contrast_limits"] == (0.0, 1.0)
    assert read["raw.tif"][2] == "image" and read["raw.tif"][0].shape == (3, 20, 30)
    assert plug.get_reader(str(tmp_path / "x.png")) is None and plug.get_reader([str(tmp_path / "a.tif")]) is None


def test_reader_gives_each_channel_of_a_multichannel_tiff_its_layer(tmp_path):
    cyx = np.stack([np.full((20, 30), 1, np.uint16), np.full((20, 30), 2, np.uint16)])
    tifffile.imwrite(tmp_path / "c.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    (data, meta, kind), = plug.get_reader(str(tmp_path / "c.tif"))(str(tmp_path / "c.tif"))
    assert kind == "image" and meta["channel_axis"] == 0 and np.array_equal(data, cyx)


def test_labels_layer_carries_the_measure_table_keyed_by_label_value():
    from napari.layers import Labels

    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9] = 7
    labels[10:15, 10:20] = 2
    image = np.full((20, 30), 5, np.uint8)
    image[10:15, 10:20] = 9
    data, props, kind = plug.layer_tuple(labels, "x", "labels", "m", image)
    layer = Labels(data, **props)
    assert kind == "labels" and layer.features["index"].tolist() == [2, 7]
    assert layer.features["area"].tolist() == [50, 24] and layer.features["mean_intensity"].tolist() == [9, 5]
    assert layer._label_index == {2: 0, 7: 1}  # napari finds label 7's row by the index column
    stack, props, _ = plug.layer_tuple(np.stack([labels, labels]), "x", "labels", "m")
    assert "features" not in props  # slices label independently: no one table for the stack


def test_sample_data_are_the_shipped_samples():
    for fn, rgb in ((plug.sample_nuclei, True), (plug.sample_tissue, True), (plug.sample_em, False)):
        (data, meta, kind), = fn()
        assert kind == "image" and meta["rgb"] is rgb and data.ndim == (3 if rgb else 2) and data.size > 0


def test_manifest_is_valid():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(Path(plug.__file__).with_name("napari.yaml"))
    manifest.validate_imports()  # every python_name resolves
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment", "Fine-tune"}


# ---- the real widget in a real viewer --------------------------------------------------
_PROBE = "import napari, numpy as np; v = napari.Viewer(show=False); v.add_image(np.zeros((8, 8))); v.close()"


def _viewer_problem() -> str | None:
    """Why a napari viewer cannot start here, or None. Probed in a child process, because Qt aborts the
    process that fails to open a display; and at collection, because pytest-qt's session-wide QApplication
    would be created (and abort) before any fixture of this module could skip."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    return f"napari viewer cannot start here (Qt/OpenGL): {lines[-1] if lines else proc.returncode}"


_PROBLEM = _viewer_problem()
needs_viewer = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


@needs_viewer
def test_widget_segments_in_a_worker_and_adds_a_labels_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("biounet", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("biounet", "Segment")
    assert widget.model.value == "dsb2018-nuclei" and widget.image.value is viewer.layers["nuclei"]
    widget.call_button.clicked.emit()
    assert len(viewer.layers) == 1  # the click returned at once: the model runs in a worker thread
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120_000)
    layer = viewer.layers[-1]
    assert type(layer).__name__ == "Labels" and layer.name == "nuclei_labels"
    expected = load_model("dsb2018-nuclei").segment(viewer.layers["nuclei"].data)
    np.testing.assert_array_equal(layer.data, expected)
    assert len(layer.features) == len(np.unique(expected)) - 1  # one row of measurements per nucleus
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = tmp_path / "napari-widget.png"
    write_image(path, shot[..., :3])
    print(f"screenshot: {path}")
    assert shot.shape[0] > 300 and shot[..., :3].std() > 10  # a drawn window, not a blank frame


@needs_viewer
def test_widget_probabilities_of_a_model_folder(make_napari_viewer, qtbot):
    from biounet import checkpoint

    viewer = make_napari_viewer()
    viewer.open_sample("biounet", "em")
    viewer.layers["em"].data = viewer.layers["em"].data[:64, :64]
    _, widget = viewer.window.add_plugin_dock_widget("biounet", "Segment")
    widget.model_folder.value = checkpoint.resolve_model("isbi2012-membrane")
    widget.output.value = "probabilities"
    widget.call_button.clicked.emit()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120_000)
    layer = viewer.layers[-1]
    assert type(layer).__name__ == "Image" and layer.name == "em_probabilities" and layer.data.shape == (64, 64)
    want = load_model(checkpoint.resolve_model("isbi2012-membrane")).predict(viewer.layers["em"].data)
    np.testing.assert_array_equal(np.asarray(layer.data), want)  # what the Segmenter predicts, shown unchanged
