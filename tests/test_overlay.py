"""Overlays: masks are filled, labels outlined, the image stays visible elsewhere."""
import numpy as np

from biounet.overlay import overlay


def test_mask_overlay_colours_only_the_mask():
    img = np.full((10, 10), 100, np.uint8)
    img[0, 0] = 0  # give the stretch a range
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    out = overlay(img, mask)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[3, 3] != out[8, 8]).any()  # inside differs from outside
    assert out[8, 8, 0] == out[8, 8, 1] == out[8, 8, 2]  # outside stays gray


def test_label_outlines_touch_only_object_borders():
    img = np.random.default_rng(0).integers(0, 255, (12, 12), dtype=np.uint8)
    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[6:11, 6:11] = 2
    labels[1:4, 8:11] = 3
    out = overlay(img, labels)
    gray = overlay(img, np.zeros_like(labels) + 0)  # no objects -> plain display image
    changed = (out != gray).any(axis=-1)
    assert changed[1, 1] and changed[6, 6] and not changed[3, 3] and not changed[0, 11]


def _disk_labels(n=64):
    yy, xx = np.mgrid[:n, :n]
    labels = np.zeros((n, n), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[(yy - 40) ** 2 + (xx - 42) ** 2 <= 144] = 2
    return labels


def test_outline_colour_contrasts_with_what_lies_under_it():
    """#15: pale outlines vanished on purple tissue and dark ones on black-clipped brightfield nuclei."""
    from biounet.overlay import PALETTE, outline_colour

    where = np.ones((8, 8), bool)
    for background in [(0, 0, 0), (255, 255, 255), (120, 60, 160)]:  # fluorescence, brightfield, H&E purple
        rgb = np.zeros((8, 8, 3), np.uint8) + np.uint8(background)
        chosen = outline_colour(rgb, where)
        assert chosen in PALETTE.values()
        dist = {c: np.linalg.norm(np.float32(c) - np.float32(background)) for c in PALETTE.values()}
        assert dist[chosen] == max(dist.values())


def test_label_outlines_are_two_pixels_in_one_colour_with_a_legend():
    labels = _disk_labels()
    img = np.zeros((64, 64), np.uint8)
    img[labels > 0] = 200
    out = overlay(img, labels, title="dsb2018-nuclei")
    plain = overlay(img, np.zeros_like(labels))
    changed = (out != plain).any(-1)
    # along a row through disk 2's centre: the outline is 2 px thick on each side, the centre untouched
    row = changed[40, 25:60]
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0])))[::2]
    assert list(runs) == [2, 2] and not changed[40, 42]
    colours = {tuple(c) for c in out[changed & (labels > 0)]}
    assert len(colours) == 1  # one fixed colour, not random per object
    wide = np.zeros((60, 300), np.uint8)
    framed = overlay(wide, np.pad(labels[:60, :60], ((0, 0), (0, 240))), title="dsb2018-nuclei")
    assert (framed[2:12, 2:100] > 200).all(-1).any() and (framed[2:12, 2:100] == 0).all(-1).any()  # white on black


def test_a_stack_gets_one_overlay_page_per_page(tiny_run, tmp_path):
    import tifffile

    from biounet.io import read_stack
    from biounet.predict import OutputOptions, load_model, predict_file

    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    written = predict_file(load_model(tiny_run), tmp_path / "s.tif", tmp_path / "o", OutputOptions(overlays=True))
    assert [w.name for w in written] == ["s.tif", "s_overlay.tif"]
    pages = read_stack(written[1])
    assert pages.shape == (3, 40, 40, 3) and pages.dtype == np.uint8
