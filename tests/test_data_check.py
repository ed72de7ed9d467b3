"""check-data: a table of bad training sets, each found with its file named; a good set passes."""
import imageio.v3 as iio
import numpy as np
from typer.testing import CliRunner

from biounet.cli import app

runner = CliRunner()


def folders(tmp_path, n=3, bad=None):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (24, 32), dtype=np.uint8)
        lab = np.zeros((24, 32), np.uint8)
        lab[2:8, 2:8] = 1
        lab[12:20, 10:20] = 2
        if bad == "size" and i == 1:
            lab = lab[:, :30]
        if bad == "empty" and i == 2:
            lab[:] = 0
        iio.imwrite(tmp_path / "imgs" / f"i{i}.png", img)
        iio.imwrite(tmp_path / "masks" / f"i{i}.png", lab)
    if bad == "corrupt":
        (tmp_path / "imgs" / "i0.png").write_bytes(b"\x89PNG broken")
    return tmp_path / "imgs", tmp_path / "masks"


def run(imgs, masks):
    return runner.invoke(app, ["check-data", str(imgs), "--labels", str(masks)])


def test_a_good_set_passes_with_a_summary(tmp_path):
    res = run(*folders(tmp_path))
    assert res.exit_code == 0, res.output
    assert "3 image(s) checked: 0 error(s), 0 warning(s)" in res.output
    assert "objects 6" in res.output and "object area px (5/50/95 %) 36/" in res.output


def test_size_mismatch_is_an_error_naming_the_mask(tmp_path):
    res = run(*folders(tmp_path, bad="size"))
    assert res.exit_code == 2 and "i1.png: mask size (24, 30) != image size (24, 32)" in res.output


def test_corrupt_image_is_an_error_and_the_rest_are_still_checked(tmp_path):
    res = run(*folders(tmp_path, bad="corrupt"))
    assert res.exit_code == 2 and "i0.png: cannot read image" in res.output
    assert "images 2" in res.output


def test_an_image_without_objects_is_a_warning(tmp_path):
    res = run(*folders(tmp_path, bad="empty"))
    assert res.exit_code == 0 and "warning: i2: no object in its labels" in res.output


def test_masks_that_no_image_takes_are_a_warning_naming_them(tmp_path):
    imgs, masks = folders(tmp_path)
    (imgs / "i2.png").rename(imgs / "i2 copy.png")  # a renamed image leaves its mask behind ...
    (masks / "i2 copy.png").write_bytes((masks / "i2.png").read_bytes())  # ... and this copy pairs with it
    res = run(imgs, masks)
    assert res.exit_code == 0, res.output
    assert f"warning: {masks}: 1 mask(s) match no image and are not used: i2.png" in res.output
    (masks / "i2.png").unlink()
    assert "0 warning(s)" in run(imgs, masks).output


def test_unknown_data_kind_is_one_line(tmp_path):
    res = runner.invoke(app, ["check-data", str(tmp_path)])
    assert res.exit_code == 2 and "give --kind" in res.output


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    """#51: two images without a mask and one broken image are three error lines, then a non-zero exit."""
    imgs, masks = folders(tmp_path, n=5, bad="corrupt")
    (masks / "i3.png").unlink()
    (masks / "i4.png").unlink()
    res = run(imgs, masks)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3, res.output
    assert any("i3.png: no mask named i3" in e for e in errors) and any("i4.png: no mask named i4" in e for e in errors)
    assert any("i0.png: cannot read image" in e for e in errors)
    assert "5 image(s) checked: 3 error(s)" in res.output and "images 2" in res.output  # the good two still summed up
