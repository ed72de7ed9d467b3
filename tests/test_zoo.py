"""bioimage.io export: packages bioimageio.core accepts offline, that reproduce biounet, and that fail when wrong."""
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="bioimage.io export is the optional 'bioimageio' extra")

from biounet import zoo  # noqa: E402
from biounet.cli import app  # noqa: E402
from biounet.export import export_model  # noqa: E402
from biounet.io import InputError  # noqa: E402
from biounet.predict import load_model  # noqa: E402
from tests.test_export import _tiny_run  # noqa: E402


def _no_urls(text: str) -> None:
    assert "http://" not in text and "https://" not in text, "a package file points at a URL"


@pytest.mark.slow
def test_shipped_nuclei_model_exports_to_a_package_that_passes_and_reproduces_biounet(tmp_path):
    out = export_model("dsb2018-nuclei", "bioimageio", tmp_path / "nuclei")  # tested inside; raises if not
    names = {p.name for p in out.iterdir()}
    assert {"rdf.yaml", "weights.onnx", "weights_torchscript.pt", "test_input.npy", "test_output.npy",
            "cover.png", "README.md"} <= names
    rdf = (out / "rdf.yaml").read_text()
    _no_urls(rdf)
    _no_urls((out / "README.md").read_text())
    assert "format_version: 0.5" in rdf and "scale_range" in rdf and "10.1007/978-3-319-24574-4_28" in rdf
    assert zoo.check_package(out / "rdf.yaml") == []  # both weight formats, again, from the written files
    # the package's test output is what biounet itself predicts for that (fluorescence) input
    x, y = np.load(out / "test_input.npy"), np.load(out / "test_output.npy")
    ours = load_model("dsb2018-nuclei").predict(x[0, 0])
    assert y.shape == (1, 3) + x.shape[2:] and np.abs(y[0] - ours).max() < 1e-3


def test_cli_exports_the_membrane_model_as_a_zip_and_refuses_to_overwrite(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "membrane.zip"
    res = CliRunner().invoke(app, ["export", "--format", "bioimageio", "--model", "isbi2012-membrane",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(out) as z:
        assert {"rdf.yaml", "weights.onnx", "weights_torchscript.pt"} <= set(z.namelist())
        _no_urls(z.read("rdf.yaml").decode())
        x = np.load(z.open("test_input.npy"))
        y = np.load(z.open("test_output.npy"))
    # the membrane model's normalisation is exactly the spec's scale_range
    assert np.abs(y[0, 0] - load_model("isbi2012-membrane").predict(x[0, 0])).max() < 1e-4
    again = CliRunner().invoke(app, ["export", "--format", "bioimageio", "--model", "isbi2012-membrane",
                                     "--out", str(out)])
    assert again.exit_code != 0 and "exists; use --overwrite" in again.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_package_whose_test_output_is_wrong_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    folder, _ = _tiny_run(tmp_path)
    good = zoo.expected_output
    monkeypatch.setattr(zoo, "expected_output", lambda traced, x: good(traced, x) + 0.5)
    with pytest.raises(InputError, match="failed bioimageio.core's test"):
        zoo.export_bioimageio(folder, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_never_replaces_a_folder_that_is_not_a_package(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a bioimage.io package"):
        export_model("isbi2012-membrane", "bioimageio", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "data.txt").read_text() == "keep me"


def test_scale_range_is_biounets_percentile_normalisation():
    from biounet.normalize import normalize

    x = np.random.default_rng(0).gamma(2.0, 30.0, (1, 1, 48, 64)).astype(np.float32)
    np.testing.assert_allclose(zoo.scale_range(x)[0, 0], normalize(x[0, 0], "percentile")[..., 0], atol=1e-5)
