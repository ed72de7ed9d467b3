"""File formats: bit depths, channels, stacks, clear errors, atomic writes."""
import numpy as np
import pytest
import tifffile

from biounet.io import InputError, atomic_path, check_finite, list_images, read_image, read_stack, write_image


def test_png_rgba_drops_alpha_and_16bit_tiff_keeps_dtype(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 10
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (5, 7, 3) and img[0, 0, 0] == 10
    arr16 = (np.arange(35).reshape(5, 7) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", arr16)
    out = read_image(tmp_path / "b.tif")
    assert out.dtype == np.uint16 and np.array_equal(out, arr16)


def test_stack_pages_and_single_rgb_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 9), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "planar.tif", np.zeros((3, 8, 9), np.uint8), photometric="rgb", planarconfig="separate")
    assert read_stack(tmp_path / "planar.tif").shape == (1, 8, 9, 3)
    assert read_stack(tmp_path / "s.tif").shape == (3, 8, 9)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").shape == (8, 9, 3)
    with pytest.raises(InputError, match="stack of 3 pages"):
        read_image(tmp_path / "s.tif")


def test_a_channel_axis_needs_a_channel_and_gives_that_one(tmp_path):
    """An ImageJ CYX / ZCYX TIFF is not a stack of pages: refused without ``channel``, one channel with it."""
    cyx = np.stack([np.full((8, 9), 10, np.uint16), np.full((8, 9), 20, np.uint16)])
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(InputError, match=r"cyx\.tif: has 2 channels .*--channel 0\.\.1"):
        read_stack(tmp_path / "cyx.tif")
    one = read_stack(tmp_path / "cyx.tif", channel=1)
    assert one.shape == (1, 8, 9) and (one == 20).all()
    with pytest.raises(InputError, match=r"cyx\.tif: has 2 channel\(s\); channel 2 is out of range"):
        read_stack(tmp_path / "cyx.tif", channel=2)
    zcyx = np.arange(3 * 2 * 8 * 9, dtype=np.uint16).reshape(3, 2, 8, 9)
    tifffile.imwrite(tmp_path / "zcyx.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    assert np.array_equal(read_stack(tmp_path / "zcyx.tif", channel=0), zcyx[:, 0])
    assert np.array_equal(read_stack(tmp_path / "zcyx.tif", channel=1), zcyx[:, 1])


def test_channel_picks_a_plane_of_rgb_and_channel_zero_of_gray(tmp_path):
    import imageio.v3 as iio

    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 2] = 77
    iio.imwrite(tmp_path / "c.png", rgb)
    blue = read_stack(tmp_path / "c.png", channel=2)
    assert blue.shape == (1, 5, 7) and (blue == 77).all()
    tifffile.imwrite(tmp_path / "g.tif", np.full((5, 7), 3, np.uint8))
    assert np.array_equal(read_stack(tmp_path / "g.tif", channel=0), read_stack(tmp_path / "g.tif"))
    with pytest.raises(InputError, match=r"g\.tif: has 1 channel\(s\)"):
        read_stack(tmp_path / "g.tif", channel=1)
    with pytest.raises(InputError, match="must be >= 0"):
        read_stack(tmp_path / "g.tif", channel=-1)


def test_corrupt_missing_and_empty(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"bad\.png: cannot read image"):
        read_image(bad)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no images found \(looked for [^)]*\)$"):
        list_images(tmp_path / "empty")


def test_a_folder_holding_only_folders_names_one_to_try(tmp_path):
    """An unzipped archive wraps its data in a folder: the error says where the images may be."""
    (tmp_path / "dsb" / "stage1_train" / "abc" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match=r"dsb: no images found .*; it holds folders: point at .*dsb/stage1_train$"):
        list_images(tmp_path / "dsb")
    (tmp_path / "dsb" / "stage1_test").mkdir()
    with pytest.raises(InputError, match=r"point at .*dsb/stage1_test \(or one of its 2 folders\)$"):
        list_images(tmp_path / "dsb")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    write_image(target, np.ones((4, 4), np.uint8))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert np.array_equal(read_image(target), np.ones((4, 4), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_write_stack_round_trip(tmp_path):
    arr = np.random.default_rng(0).random((2, 6, 5)).astype(np.float32)
    write_image(tmp_path / "p.tif", arr)
    assert np.array_equal(read_stack(tmp_path / "p.tif"), arr)


def test_decompression_bomb_is_refused_by_its_header_with_the_reason(tmp_path):
    """#14: a PNG claiming 100000 x 100000 pixels is refused before allocation, and the message says why."""
    import struct
    import tracemalloc
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))
    tracemalloc.start()
    with pytest.raises(InputError, match=r"bomb.png: cannot read image \(refused: the header claims more pixels") as err:
        read_image(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "decompression bomb" in str(err.value) and "\n" not in str(err.value)
    assert peak < 50 * 2**20  # 10^10 pixels were never allocated


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_counted_in_every_row_block_and_integers_pass(tmp_path, bad):
    img = np.ones((50, 7), np.float32)
    img[3, 1] = img[49, 6] = bad  # one in the first block of 8 rows, one in the last (partial) block
    with pytest.raises(InputError, match=r"^m\.tif: 2 pixel\(s\) are NaN or infinite"):
        check_finite(img, "m.tif", rows=8)
    np.save(tmp_path / "m.npy", img)
    with pytest.raises(InputError, match="2 pixel"):  # a memory map, read block by block
        check_finite(np.load(tmp_path / "m.npy", mmap_mode="r"), "m.npy", rows=8)
    img[3, 1] = img[49, 6] = 0
    assert check_finite(img, "m.tif", rows=8) is img
    ints = np.zeros((4, 4), np.uint16)
    assert check_finite(ints, "u.tif") is ints


def test_masks_are_paired_by_their_image_stem_exact_names_first(tmp_path):
    from biounet.io import image_stem, masks_by_image_stem

    assert [image_stem(s) for s in ("a_mask", "a_cp_masks", "a_masks", "b_labels", "c", "_mask")] == \
        ["a", "a", "a", "b", "c", "_mask"]
    p = tmp_path
    got = masks_by_image_stem([p / "a_mask.png", p / "b.tif", p / "b_labels.tif", p / "c_seg.tif"])
    assert got["a"] == p / "a_mask.png" and got["b"] == p / "b.tif" and got["c"] == p / "c_seg.tif"
    with pytest.raises(InputError, match=r"d_labels\.tif: d_mask\.tif is also a mask for image 'd'"):
        masks_by_image_stem([p / "d_mask.tif", p / "d_labels.tif"])


@pytest.mark.parametrize("arr", [np.ones((8, 9), np.complex64), np.full((8, 9), "a")])
def test_pixels_that_are_not_real_numbers_are_refused_by_type(tmp_path, arr):
    """Complex or text pixels cannot be cast without losing data: an error naming the file and the type."""
    if arr.dtype.kind == "c":
        tifffile.imwrite(tmp_path / "c.tif", arr)
        with pytest.raises(InputError, match=r"^.*c\.tif: pixel type complex64 is not supported"):
            read_stack(tmp_path / "c.tif")
    from biounet.normalize import NormalizedView

    with pytest.raises(InputError, match=rf"^mem: pixel type {arr.dtype} is not supported"):
        NormalizedView(arr, "percentile", 1, "mem")
    assert NormalizedView(np.ones((8, 9), np.float32), "percentile", 1, "mem").shape == (1, 8, 9)


def test_channels_last_array_saved_as_thin_pages_is_named_with_the_fix(tmp_path):
    """tifffile.imwrite of an (H, W, 5) array without axes writes H pages of W pixels: refused, with the
    fix, rather than segmented as 64 slivers; the fix it names then reads the channel asked for."""
    arr = np.arange(64 * 64 * 5, dtype=np.uint16).reshape(64, 64, 5)
    tifffile.imwrite(tmp_path / "c5.tif", arr)
    with pytest.raises(InputError, match=r"c5\.tif: holds 64 pages of 64x5 pixels.*metadata=\{'axes': 'YXC'\}"):
        read_stack(tmp_path / "c5.tif")
    tifffile.imwrite(tmp_path / "fixed.tif", arr, metadata={"axes": "YXC"})
    assert np.array_equal(read_stack(tmp_path / "fixed.tif", channel=3)[0], arr[..., 3])
    tifffile.imwrite(tmp_path / "narrow.tif", np.zeros((3, 6, 5), np.uint8), photometric="minisblack")
    assert read_stack(tmp_path / "narrow.tif").shape == (3, 6, 5)  # small pages, not thin ones: kept


def test_renamed_and_damaged_files_read_by_content_or_say_why(tmp_path):
    import imageio.v3 as iio

    img = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", img)
    png = (tmp_path / "a.png").read_bytes()
    (tmp_path / "png_as.tif").write_bytes(png)  # a PNG named .tif is read as what it is
    np.testing.assert_array_equal(read_stack(tmp_path / "png_as.tif")[0], img)
    (tmp_path / "notes.tif").write_bytes(b"hello, these are notes")
    with pytest.raises(InputError, match=r"notes\.tif: cannot read image \(not a TIFF file, though named like one"):
        read_stack(tmp_path / "notes.tif")
    (tmp_path / "half.png").write_bytes(png[:40])
    with pytest.raises(InputError, match=r"half\.png: cannot read image \(a PNG file cut short or damaged"):
        read_stack(tmp_path / "half.png")
    tifffile.imwrite(tmp_path / "t.tif", np.ones((256, 256), np.float32))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "t.tif").read_bytes()[:20000])
    with pytest.raises(InputError, match=r"cut\.tif: cannot read image \(the file is cut short or damaged"):
        read_stack(tmp_path / "cut.tif")
