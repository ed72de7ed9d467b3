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
    wide_labels = np.pad(labels[:60, :60], ((0, 0), (0, 240)))
    framed = overlay(wide, wide_labels, title="dsb2018-nuclei")
    text = (framed > 200).all(-1)
    assert text.any() and not (text & (wide_labels > 0)).any()  # white, off the objects (#51: not top-left)
    rows, cols = np.nonzero(text)
    assert (framed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all(-1).any()  # on black


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


def test_legend_avoids_the_objects_when_the_top_left_is_full_of_them():
    """#51: the legend sat top-left and hid the objects there."""
    img = np.full((256, 256), 40, np.uint8)
    labels = np.zeros((256, 256), np.int32)
    for k, (y, x) in enumerate((y, x) for y in range(0, 128, 8) for x in range(0, 128, 8)):
        labels[y + 1 : y + 7, x + 1 : x + 7] = k + 1  # the top-left quarter tiled with small objects
    img[labels > 0] = 220
    with_legend = overlay(img, labels, title="dsb2018-nuclei")
    without = overlay(img, labels)
    drawn = (with_legend != without).any(-1)
    assert drawn.sum() > 200  # there is a legend ...
    assert not (drawn & (labels > 0)).any()  # ... and it covers no labelled pixel


def test_legend_picks_the_least_covered_spot():
    from biounet.overlay import place_box

    occupied = np.ones((100, 200), bool)
    occupied[80:, :30] = False  # only the bottom-left corner is (mostly) free
    assert place_box(occupied, (20, 40)) == (80, 0)
    assert place_box(np.zeros((100, 200), bool), (20, 40)) == (0, 0)  # nothing to avoid: top-left


def _text_rows(rgb: np.ndarray) -> int:
    """Height (px) of the white text drawn on a black image."""
    rows = np.flatnonzero((rgb > 200).all(-1).any(-1))
    return int(rows.max() - rows.min() + 1) if rows.size else 0


def test_legend_text_grows_with_the_image():
    """#51: an 11-px font was unreadable on 1024 px images and invisible on 4000 px ones."""
    from biounet.overlay import font_size, legend

    heights = {n: _text_rows(legend(np.zeros((n, n, 3), np.uint8), "dsb2018-nuclei  42 objects"))
               for n in (256, 1024, 4000)}
    assert 8 <= heights[256] <= 16  # the small images keep a small legend
    assert heights[1024] >= 14  # readable at full size
    assert heights[4000] >= 3 * heights[1024] and heights[4000] >= 40  # readable fitted to a screen (~1/4)
    assert font_size((4000, 4000)) > font_size((1024, 1024)) > font_size((256, 256))


def test_outlines_thicken_on_large_images_but_not_past_small_objects():
    from biounet.overlay import outline_width

    assert outline_width((512, 512)) == outline_width((1024, 1024)) == 2
    assert outline_width((4000, 4000)) >= 6
    few_large = np.zeros((2048, 2048), np.int32)
    few_large[100:400, 100:400] = 1
    many_small = np.zeros((2048, 2048), np.int32)
    many_small[100:112, 100:112] = 1
    assert outline_width(few_large.shape, few_large) == 4 and outline_width(many_small.shape, many_small) == 2
    img = np.zeros((2048, 2048), np.uint8)
    out = overlay(img, few_large * 2, title="")  # label 2: instance outlines, not a filled mask
    row = (out[250] != 0).any(-1)
    assert row[100:104].all() and not row[104] and row[396:400].all() and not row[395]  # 4 px inside
