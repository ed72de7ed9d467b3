"""The HTML report: self-contained, worst images first, and it renders in a real headless browser."""
import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from biounet.cli import app
from biounet.report import render_report


def _label_folders(tmp_path):
    """Truth and prediction label folders: image 'good' predicted exactly, 'bad' with one nucleus missed."""
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    for name, miss in (("good", False), ("bad", True)):
        lab = np.zeros((64, 96), np.uint16)
        lab[5:20, 5:20] = 1
        lab[30:50, 40:70] = 2
        tifffile.imwrite(tmp_path / "truth" / f"{name}.tif", lab)
        pred = lab.copy()
        if miss:
            pred[pred == 2] = 0
        tifffile.imwrite(tmp_path / "pred" / f"{name}.tif", pred)
    return tmp_path / "truth", tmp_path / "pred"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_is_one_self_contained_page_worst_first(tmp_path):
    truth, pred = _label_folders(tmp_path)
    res = CliRunner().invoke(app, ["evaluate", "--truth", str(truth), "--pred", str(pred),
                                   "--report", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "http" not in page.replace("<!doctype html>", "") and "src='/" not in page  # nothing outside the file
    pngs = _images(page)
    assert len(pngs) == 4 and all(p.startswith(b"\x89PNG") for p in pngs)  # 2 images x (truth, prediction)
    rows = re.findall(r"<tr><td>(good|bad)</td>", page)
    assert rows == ["bad", "good"]  # per-image table, worst first
    assert page.index("bad: truth") < page.index("good: truth")


def test_render_report_embeds_a_training_curve(tmp_path):
    from biounet.report import png_data_uri

    curve = base64.b64decode(png_data_uri(np.zeros((4, 4, 3), np.uint8)).split(",")[1])
    page = render_report("t", {"dsb_score": 0.5}, curve_png=curve)
    assert "Training" in page and len(_images(page)) == 1


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_broken_images(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (Debian package 'chromium')")
    truth, pred = _label_folders(tmp_path)
    CliRunner().invoke(app, ["evaluate", "--truth", str(truth), "--pred", str(pred), "--report", str(tmp_path / "r.html")])
    probe = tmp_path / "probe.html"  # the report plus a script that says whether every image decoded
    probe.write_text((tmp_path / "r.html").read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title=[...document.images].every("
                   "i=>i.complete&&i.naturalWidth>0)?'images-ok':'broken-images';}</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<title>images-ok</title>" in dom.stdout, dom.stderr[-500:]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1400", (tmp_path / "r.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
