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
    assert page.index("bad: image") < page.index("good: image")


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


def test_error_picture_draws_matches_misses_and_false_positives_in_three_colours():
    """#51: truth and prediction were two similar colours with no key; misses and false positives unmarked."""
    from biounet.report import FALSE_POSITIVE, MATCHED, MISSED, match_picture

    truth = np.zeros((120, 160), np.int32)
    truth[10:40, 10:40] = 1  # found
    truth[70:100, 20:50] = 2  # missed
    pred = np.zeros_like(truth)
    pred[12:40, 10:40] = 5  # matches 1 (IoU 0.93)
    pred[60:90, 110:140] = 9  # false positive
    image = np.full(truth.shape, 60, np.uint8)
    image[truth > 0] = 200
    pic = match_picture(image, truth, pred)
    assert pic.shape == (120, 160, 3) and pic.dtype == np.uint8
    def colours(pixels: np.ndarray) -> set:
        return {tuple(int(v) for v in px) for px in pixels}

    assert colours(pic[70, 20:50]) == {MISSED}  # the top row of each object: its outline
    assert colours(pic[60, 110:140]) == {FALSE_POSITIVE}
    assert colours(pic[12, 10:40]) == {MATCHED}
    inside_miss, inside_fp = pic[85, 35].astype(int), pic[75, 125].astype(int)
    assert inside_miss[0] > inside_miss[2] + 30  # tinted vermillion (red over blue) ...
    assert inside_fp[0] > inside_fp[2] + 30 and inside_fp[1] > inside_fp[2] + 30  # ... and yellow
    assert (pic[25, 25] == pic[25, 25][0]).all() and (pic[110, 80] == pic[110, 80][0]).all()  # elsewhere gray
    assert len({MATCHED, MISSED, FALSE_POSITIVE}) == 3
    big = match_picture(np.zeros((512, 512), np.uint8), np.pad(truth, ((0, 392), (0, 352))),
                        np.pad(pred, ((0, 392), (0, 352))))
    key = (big > 200).all(-1)  # the key's white text, away from every object
    assert key.sum() > 100 and not (key & (np.pad(truth + pred, ((0, 392), (0, 352))) > 0)).any()


def test_report_has_a_colour_key_and_scores_by_modality_and_group(tmp_path):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (tmp_path / "pred").mkdir()
    lab = np.zeros((64, 64), np.uint16)
    lab[5:25, 5:25], lab[35:60, 30:60] = 1, 2
    for name, background, nucleus in (("fluo", 10, 200), ("bright", 220, 60)):
        img = np.full((64, 64), background, np.uint8)
        img[lab > 0] = nucleus
        tifffile.imwrite(root / "images" / f"{name}.tif", img)
        tifffile.imwrite(root / "masks" / f"{name}.tif", lab)
        tifffile.imwrite(tmp_path / "pred" / f"{name}.tif", np.where(lab == 2, 0, lab) if name == "bright" else lab)
    (tmp_path / "groups.csv").write_text("image,group\nfluo,stained-nuclei\nbright,tissue\n")
    res = CliRunner().invoke(app, ["evaluate", "--truth", str(root), "--pred", str(tmp_path / "pred"),
                                   "--report", str(tmp_path / "r.html"), "--groups", str(tmp_path / "groups.csv")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    key = re.search(r"<div class='key'>(.*?)</div>", page).group(1)
    assert "matched" in key and "missed" in key and "false positive" in key and key.count("swatch") == 3
    by_modality = page.split("Scores by modality</h2>")[1].split("</table>")[0]
    assert re.search(r"<tr><td>brightfield</td><td>1</td><td>0\.5000</td>", by_modality)  # worst first
    assert re.search(r"<tr><td>fluorescence</td><td>1</td><td>1\.0000</td>", by_modality)
    by_group = page.split("Scores by group</h2>")[1].split("</table>")[0]
    assert "<td>tissue</td>" in by_group and "<td>stained-nuclei</td>" in by_group
    assert "max-width:1100px" not in page  # the page uses the window's width


def test_a_bad_groups_file_fails_before_scoring(tmp_path):
    truth, pred = _label_folders(tmp_path)
    (tmp_path / "g.csv").write_text("name,kind\na,b\n")
    res = CliRunner().invoke(app, ["evaluate", "--truth", str(truth), "--pred", str(pred),
                                   "--report", str(tmp_path / "r.html"), "--groups", str(tmp_path / "g.csv")])
    assert res.exit_code != 0 and "columns image and group" in res.output
    assert not (tmp_path / "r.html").exists()
