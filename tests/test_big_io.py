"""Big images where they live (#50): OME-Zarr in and out, tiled TIFFs read region by region, vendor files
through bioio, and per-object tables measured block by block. Images are small (256 px); the streamed
paths are reached by lowering ``STREAM_PIXELS``."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

zarr = pytest.importorskip("zarr")

from biounet import big, formats, ngff  # noqa: E402
from biounet import predict as P  # noqa: E402
from biounet.cli import app  # noqa: E402
from biounet.io import InputError  # noqa: E402

runner = CliRunner()
SIZE = 256


def nuclei(seed: int = 0, size: int = SIZE, n: int = 25) -> np.ndarray:
    """Bright discs on a noisy background, some touching, as uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(30, 5, (size, size))
    for _ in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        r = rng.integers(5, 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def seg():
    return P.load_model("dsb2018-nuclei", options=P.PredictOptions(diameter=None))


def write_ome_zarr(path: Path, data: np.ndarray, axes: str, version: str = "0.4", levels: int = 2,
                   channels: list[str] | None = None) -> Path:
    """An OME-Zarr image written by hand: ``levels`` levels halving y and x, NGFF ``version`` metadata."""
    fmt = 3 if version == "0.5" else 2
    enc = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if fmt == 2 else {}
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    datasets = []
    for i in range(levels):
        f = 2**i
        arr = data[(..., slice(None, None, f), slice(None, None, f))]
        g.create_array(str(i), data=arr, chunks=(*([1] * (arr.ndim - 2)), 64, 64), **enc)
        scale = [1.0 if a in "tc" else 0.5 * f for a in axes]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    types = {"t": "time", "c": "channel"}
    ms = {"axes": [{"name": a, "type": types.get(a, "space")} for a in axes], "datasets": datasets, "name": "img"}
    omero = {"channels": [{"label": c} for c in channels]} if channels else None
    if fmt == 2:
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
        if omero:
            g.attrs["omero"] = omero
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms], **({"omero": omero} if omero else {})}
    return path


def attrs(folder: Path) -> dict:
    """A group's attributes read as plain JSON (what a viewer sees), for Zarr v2 and v3."""
    if (folder / "zarr.json").exists():
        return json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    return json.loads((folder / ".zattrs").read_text())


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects (a one-to-one map of ids, 0 onto 0)."""
    a, b = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.fixture(scope="module")
def reference(seg, tmp_path_factory):
    """The labels and table of the test image predicted from a plain TIFF, as biounet always did."""
    root = tmp_path_factory.mktemp("ref")
    img = nuclei()
    tifffile.imwrite(root / "img.tif", img)
    lab_path, csv_path = P.predict_file(seg, root / "img.tif", root / "out", P.OutputOptions(measure=True))
    return img, tifffile.imread(lab_path), csv_path.read_text()


# ---- OME-Zarr in ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_labels_go_into_its_own_store_and_equal_the_tiff_labels(seg, reference, tmp_path, version):
    img, want, _ = reference
    store = write_ome_zarr(tmp_path / "img.ome.zarr", img[None], "cyx", version)
    written = P.predict_file(seg, store, tmp_path / "out", P.OutputOptions(), out_format="ome-zarr")
    assert written == [store / "labels" / "dsb2018-nuclei"]
    assert np.array_equal(ngff.read_labels(store), want)  # small: predicted in memory, exactly as the TIFF
    # NGFF labels metadata: listed in labels/, image-label pointing back at the image, one level per image level
    meta = attrs(store / "labels")
    meta = meta["ome"] if version == "0.5" else meta
    assert meta["labels"] == ["dsb2018-nuclei"]
    lab_meta = attrs(store / "labels" / "dsb2018-nuclei")
    if version == "0.5":
        assert lab_meta["ome"]["version"] == "0.5"
        lab_meta = lab_meta["ome"]
    assert lab_meta["image-label"]["source"] == {"image": "../../"}
    ms = lab_meta["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]  # the image's axes less the channel
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[0.5, 0.5], [1.0, 1.0]]
    assert ngff.read_labels(store, level=1).shape == (SIZE // 2, SIZE // 2)
    assert np.array_equal(ngff.read_labels(store, level=1), want[::2, ::2])
    assert sorted(p.name for p in (store / "labels").iterdir() if p.is_dir()) == ["dsb2018-nuclei"]  # no temporary


def test_a_streamed_ome_zarr_is_read_region_by_region_and_labelled_as_the_tiff(seg, reference, tmp_path, monkeypatch):
    img, want, table = reference
    store = write_ome_zarr(tmp_path / "img.zarr", img[None], "cyx", "0.5")
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)
    lab, csv = P.predict_file(seg, store, tmp_path / "out", P.OutputOptions(measure=True), out_format="ome-zarr")
    assert same_up_to_renumbering(ngff.read_labels(store), want)
    assert csv == tmp_path / "out" / "img.csv"
    assert csv.read_text() == table  # measured block by block, same numbers
    # the same store into a TIFF
    tif, = P.predict_file(seg, store, tmp_path / "tif", P.OutputOptions())
    assert same_up_to_renumbering(tifffile.imread(tif), want)


def test_one_time_point_and_z_plane_of_a_larger_image(seg, reference, tmp_path):
    img, want, _ = reference
    data = np.zeros((2, 2, 3, SIZE, SIZE), np.uint8)
    data[1, 0, 2] = img
    data[1, 1, 2] = 255 - img
    store = write_ome_zarr(tmp_path / "tl.ome.zarr", data, "tczyx", "0.4", channels=["DAPI", "GFP"])
    with pytest.raises(InputError, match=r"tl\.ome\.zarr: has 2 time points; choose one with --time 0\.\.1$"):
        P.predict_file(seg, store, tmp_path / "o", P.OutputOptions(), channel=0)
    with pytest.raises(InputError, match=r"has 2 channels \(0=DAPI, 1=GFP\); choose one with --channel 0\.\.1$"):
        P.predict_file(seg, store, tmp_path / "o", P.OutputOptions(), pick=formats.PlanePick(time=1, z=2))
    with pytest.raises(InputError, match=r"has 3 z-plane\(s\); --z 5 is out of range \(0\.\.2\)$"):
        P.predict_file(seg, store, tmp_path / "o", P.OutputOptions(), channel=0, pick=formats.PlanePick(time=1, z=5))
    pick = formats.PlanePick(time=1, z=2)
    P.predict_file(seg, store, tmp_path / "o", P.OutputOptions(), channel=0, pick=pick, out_format="ome-zarr")
    labels = ngff.read_labels(store)
    assert labels.shape == (2, 3, SIZE, SIZE)  # t, z, y, x: the plane in its place, the rest 0
    assert np.array_equal(labels[1, 2], want) and not labels[0].any() and not labels[1, :2].any()


def test_levels_and_bioformats2raw_scenes(seg, reference, tmp_path):
    img, want, _ = reference
    root = tmp_path / "b2r.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    write_ome_zarr(root / "0", img[None], "cyx")
    write_ome_zarr(root / "1", (255 - img)[None], "cyx")
    with pytest.raises(InputError, match=r"b2r\.zarr: has 2 scenes; choose one with --scene 0\.\.1$"):
        formats.open_source(root)
    half = formats.open_source(root, pick=formats.PlanePick(scene=0, level=1))
    assert half.plane.shape == (SIZE // 2, SIZE // 2) and np.array_equal(np.asarray(half.plane), img[::2, ::2])
    P.predict_file(seg, root, tmp_path / "o", P.OutputOptions(), pick=formats.PlanePick(scene=0),
                   out_format="ome-zarr")
    assert np.array_equal(ngff.read_labels(root / "0"), want)  # into that scene's image group
    assert not (root / "1" / "labels").exists()


def test_probabilities_go_to_a_new_store(seg, reference, tmp_path, monkeypatch):
    img, _, _ = reference
    tifffile.imwrite(tmp_path / "img.tif", img)
    want, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "t", P.OutputOptions(probabilities=True))
    store = write_ome_zarr(tmp_path / "img.ome.zarr", img[None], "cyx")
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)  # streamed from the tiles straight into the store
    got, = P.predict_file(seg, store, tmp_path / "z", P.OutputOptions(probabilities=True), out_format="ome-zarr")
    assert got == tmp_path / "z" / "img.ome.zarr"
    probs = zarr.open_array(str(got / "0"), mode="r")[...]
    assert probs.shape == (3, SIZE, SIZE) and np.allclose(probs, tifffile.imread(want), atol=1e-5)
    meta = attrs(got)
    assert [a["name"] for a in meta["multiscales"][0]["axes"]] == ["c", "y", "x"] and "image-label" not in meta


# ---- OME-Zarr out, for any input ---------------------------------------------------------------------------
def test_a_tiff_into_a_new_store_atomically(seg, reference, tmp_path, monkeypatch):
    img, want, _ = reference
    tifffile.imwrite(tmp_path / "img.tif", img)
    store, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "cells.ome.zarr", P.OutputOptions())
    assert store == tmp_path / "cells.ome.zarr"
    assert np.array_equal(ngff.read_labels(store), want)
    assert "image-label" in attrs(store) and attrs(store)["multiscales"][0]["version"] == "0.4"
    # streamed: block by block into the store; a failure half-way leaves neither the store nor a temporary
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)
    out = tmp_path / "streamed"
    lab, = P.predict_file(seg, tmp_path / "img.tif", out, P.OutputOptions(), out_format="ome-zarr")
    assert lab == out / "img.ome.zarr" and same_up_to_renumbering(ngff.read_labels(lab), want)

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("biounet.postprocess.label_blockwise", boom)
    with pytest.raises(RuntimeError):
        P.predict_file(seg, tmp_path / "img.tif", tmp_path / "failed", P.OutputOptions(), out_format="ome-zarr")
    assert list((tmp_path / "failed").iterdir()) == []


def test_pyramids_resample_labels_by_nearest_neighbour():
    lab = np.arange(12 * 10).reshape(12, 10)
    half = np.zeros((6, 5), np.int64)
    ngff.resample_nearest(lab, half, tile=4)
    assert np.array_equal(half, lab[::2, ::2])
    back = np.zeros((12, 10), np.int64)
    ngff.resample_nearest(half, back, tile=5)
    assert np.array_equal(back, np.repeat(np.repeat(half, 2, 0), 2, 1))


def test_cli_writes_ome_zarr_and_refuses_to_overwrite(reference, tmp_path):
    img, want, _ = reference
    store = write_ome_zarr(tmp_path / "img.ome.zarr", img[None], "cyx")
    args = ["predict", "--model", "dsb2018-nuclei", "--diameter", "none", "--threads", "1", "--out", str(tmp_path / "o"),
            str(store)]
    res = runner.invoke(app, args + ["--out-format", "ome-zarr"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(ngff.read_labels(store), want)
    res = runner.invoke(app, args + ["--out-format", "ome-zarr"])
    assert res.exit_code != 0 and "labels/dsb2018-nuclei: exists" in res.output and "--overwrite" in res.output
    res = runner.invoke(app, args + ["--out-format", "ome-zarr", "--overwrite"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)  # the default is still a TIFF in --out
    assert res.exit_code == 0 and np.array_equal(tifffile.imread(tmp_path / "o" / "img.ome.tif"), want)
    res = runner.invoke(app, args + ["--out-format", "png"])
    assert res.exit_code != 0 and "--out-format must be tif or ome-zarr" in res.output


# ---- tiled, compressed TIFFs ------------------------------------------------------------------------------
def test_a_big_tiled_compressed_tiff_is_read_region_by_region(seg, reference, tmp_path, monkeypatch):
    img, want, _ = reference
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib")
    assert formats.open_source(path, big_pixels=P.STREAM_PIXELS) is None  # small files: read whole, as before
    monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)

    def decoded_whole(*args, **kwargs):
        raise AssertionError("the whole image was decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", decoded_whole)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", decoded_whole)
    lab, = P.predict_file(seg, path, tmp_path / "o", P.OutputOptions())
    monkeypatch.undo()  # reading the result back decodes it whole, as it should
    assert same_up_to_renumbering(tifffile.imread(lab), want)


def test_plane_views_read_what_they_are_sliced_with():
    data = np.arange(2 * 3 * 5 * 4).reshape(2, 5, 4, 3)  # t, y, x, s
    plane = formats.Plane(data, "TYXS", {"T": 1})
    assert plane.shape == (5, 4, 3) and np.array_equal(plane[1:3, ::2], data[1, 1:3, ::2])
    assert np.array_equal(plane[..., 2], data[1, ..., 2]) and np.array_equal(np.asarray(plane), data[1])
    cyx = np.arange(2 * 5 * 4).reshape(2, 5, 4)
    assert np.array_equal(formats.Plane(cyx, "CYX", {"C": 1})[2:, 1], cyx[1, 2:, 1])
    out = np.zeros((3, 5, 4), np.int32)
    formats.Plane(out, "ZYX", {"Z": 2})[1:3, 1:2] = 7
    assert out[2, 1:3, 1:2].tolist() == [[7], [7]] and out.sum() == 14


# ---- vendor formats through bioio ---------------------------------------------------------------------------
def test_without_the_formats_extra_a_czi_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "cells.czi").write_bytes(b"ZISRAWFILE")
    monkeypatch.setitem(sys.modules, "bioio", None)  # `import bioio` now fails, as when it is not installed
    res = runner.invoke(app, ["predict", "--model", "dsb2018-nuclei", "--out", str(tmp_path / "o"),
                              str(tmp_path / "cells.czi")])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cells.czi" in lines[0] and "pip install 'biounet[formats]'" in lines[0]


def test_vendor_files_are_read_through_bioio(seg, reference, tmp_path, monkeypatch):
    """No CZI/ND2/LIF file ships with any installed package and nothing is downloaded: the bioio path
    is tested on an OME-TIFF written here and read by bioio's OME-TIFF reader (bioio-ome-tiff)."""
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    img, want, _ = reference
    data = np.zeros((2, 2, 3, SIZE, SIZE), np.uint8)
    data[1, 1, 0] = img
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    monkeypatch.setattr(formats, "BIOIO_SUFFIXES", formats.BIOIO_SUFFIXES + (".tif",))  # as a .czi would go
    assert P.expand_inputs([path]) == [path]
    with pytest.raises(InputError, match=r"cells\.ome\.tif: has 2 time points; choose one with --time 0\.\.1$"):
        P.predict_file(seg, path, tmp_path / "o", P.OutputOptions())
    with pytest.raises(InputError, match=r"has 2 channels \(0=DAPI, 1=GFP\); choose one with --channel 0\.\.1$"):
        P.predict_file(seg, path, tmp_path / "o", P.OutputOptions(), pick=formats.PlanePick(time=1, z=0))
    src = formats.open_source(path, 1, formats.PlanePick(time=1, z=0))
    assert src.kind == "bioio" and np.array_equal(np.asarray(src.plane), img)
    lab, = P.predict_file(seg, path, tmp_path / "o", P.OutputOptions(), channel=1, pick=formats.PlanePick(time=1, z=0))
    assert np.array_equal(tifffile.imread(lab), want)


def test_a_czi_written_here_is_segmented_through_the_formats_extra(reference, tmp_path):
    """A real Zeiss CZI (written here with pylibCZIrw, the library bioio-czi reads with): two channels and
    three z-planes; the nuclei are channel 1, plane 2. The CLI refuses to guess either, then segments the
    plane named into the labels the same image gets from a plain TIFF."""
    pytest.importorskip("bioio_czi")
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    img, want, _ = reference
    path = tmp_path / "cells.czi"
    with pyczi.create_czi(str(path)) as czi:
        for c in range(2):
            for z in range(3):
                plane = img if (c, z) == (1, 2) else np.full_like(img, 10 * z + c)
                czi.write(plane, plane={"C": c, "Z": z, "T": 0})
    out = tmp_path / "o"
    res = runner.invoke(app, ["predict", "--model", "dsb2018-nuclei", "--diameter", "none", "--out", str(out),
                              str(path)])
    said = [line for line in res.output.splitlines() if "cells.czi" in line]
    assert res.exit_code != 0 and len(said) == 1 and "choose one with --channel 0..1" in said[0], res.output
    res = runner.invoke(app, ["predict", "--model", "dsb2018-nuclei", "--diameter", "none", "--out", str(out),
                              "--channel", "1", str(path)])
    said = [line for line in res.output.splitlines() if "cells.czi" in line]
    assert res.exit_code != 0 and len(said) == 1 and "choose one with --z 0..2" in said[0], res.output
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    res = runner.invoke(app, ["predict", "--model", "dsb2018-nuclei", "--diameter", "none", "--out", str(out),
                              "--channel", "1", "--z", "2", str(path)])
    assert res.exit_code == 0, res.output
    labels = sorted(out.glob("cells*.tif"))
    assert len(labels) == 1 and np.array_equal(tifffile.imread(labels[0]), want)


def test_folders_and_patterns_find_stores_and_vendor_files(tmp_path):
    write_ome_zarr(tmp_path / "a.ome.zarr", np.zeros((1, 8, 8), np.uint8), "cyx", levels=1)
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "c.nd2").write_bytes(b"x")
    assert P.expand_inputs([tmp_path]) == [tmp_path / "b.tif", tmp_path / "a.ome.zarr", tmp_path / "c.nd2"]
    assert P.expand_inputs([tmp_path / "a.ome.zarr"]) == [tmp_path / "a.ome.zarr"]
    assert P.expand_inputs([str(tmp_path / "*.zarr")]) == [tmp_path / "a.ome.zarr"]


# ---- per-object tables, block by block ----------------------------------------------------------------------
def test_blockwise_measurements_equal_the_whole_image_table(tmp_path):
    from biounet.measure import object_table

    rng = np.random.default_rng(4)
    labels = np.zeros((300, 260), np.int32)
    yy, xx = np.mgrid[:300, :260]
    for k in range(1, 60):  # discs and bars crossing the 64-pixel blocks, some cut by the image border
        cy, cx, r = rng.integers(0, 300), rng.integers(0, 260), rng.integers(3, 20)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k
    labels[100:104, 10:250] = 99
    image = rng.integers(0, 4000, (300, 260, 2)).astype(np.uint16)
    want = object_table(labels, image, pixel_size=0.5)
    stored = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=labels.shape, chunks=(50, 50), dtype=np.int32)
    stored[...] = labels
    got = big.measure_blockwise(stored, image, pixel_size=0.5, block=64)
    assert list(got) == list(want)
    for k in want:
        assert np.allclose(got[k], want[k], rtol=1e-9, atol=1e-9), k
    empty = big.measure_blockwise(np.zeros((10, 10), np.int32), np.zeros((10, 10), np.uint8))
    assert len(empty["label"]) == 0 and list(empty) == list(object_table(np.zeros((10, 10), np.int32),
                                                                            np.zeros((10, 10), np.uint8)))


# ---- block-wise prediction on a local dask.distributed cluster (--workers) ---------------------------------------
def touching_across_seams() -> np.ndarray:
    """Pairs of touching nuclei across the seams of 128-pixel blocks (x = 128, y = 128, the corner), and others."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = rng.normal(30, 5, (SIZE, SIZE))
    pairs = [(60, 120), (60, 136), (200, 121), (200, 136), (120, 60), (136, 60), (124, 124), (138, 134)]
    for cy, cx in pairs + [tuple(rng.integers(12, SIZE - 12, 2)) for _ in range(12)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def matched(a: np.ndarray, b: np.ndarray, iou: float = 0.8) -> bool:
    """Every object of ``a`` overlaps exactly one object of ``b`` by at least ``iou``, and the counts agree."""
    ids_a, ids_b = np.unique(a[a > 0]), np.unique(b[b > 0])
    if len(ids_a) != len(ids_b):
        return False
    hits = 0
    for i in ids_a:
        inter = np.bincount(b[a == i].ravel(), minlength=1)[1:]
        j = int(np.argmax(inter)) + 1 if inter.any() else 0
        if j and inter[j - 1] / np.logical_or(a == i, b == j).sum() >= iou:
            hits += 1
    return hits == len(ids_a)


def test_two_dask_workers_label_as_one_process_with_no_nucleus_cut_or_doubled_at_a_seam(seg, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    img = touching_across_seams()
    tifffile.imwrite(tmp_path / "img.tif", img)
    whole = seg.segment(img)
    monkeypatch.setattr("biounet.postprocess.blockwise_layout", lambda diameter: (128, 40))  # 4 blocks, 4 seams
    one, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "one", P.OutputOptions(), workers=1)
    two, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "two", P.OutputOptions(), workers=2)
    one, two = tifffile.imread(one), tifffile.imread(two)
    assert same_up_to_renumbering(one, two)
    assert len(np.unique(one)) - 1 == len(np.unique(whole)) - 1 >= 20  # each touching pair is two nuclei
    assert matched(whole, one)  # none cut or doubled at a seam: each nucleus of the whole-image labels, once
    # into OME-Zarr as well, block by block (the same loop; in this process, to spare a second cluster's start)
    store = write_ome_zarr(tmp_path / "img.ome.zarr", img[None], "cyx")
    P.predict_file(seg, store, tmp_path / "z", P.OutputOptions(), out_format="ome-zarr", workers=1)
    assert same_up_to_renumbering(ngff.read_labels(store), one)


def test_predict_workers_starts_one_cluster_for_all_its_files(seg, tmp_path, monkeypatch):
    """--workers 2 on several files: one local cluster for the run (not one per file), and each file's labels
    equal one process's."""
    distributed = pytest.importorskip("distributed")
    started = []

    class Counted(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("dask.distributed.LocalCluster", Counted)
    monkeypatch.setattr("biounet.postprocess.blockwise_layout", lambda diameter: (128, 40))
    for i in range(2):
        tifffile.imwrite(tmp_path / f"img{i}.tif", touching_across_seams() if i else nuclei(3))
    res = runner.invoke(app, ["predict", "--model", "dsb2018-nuclei", "--diameter", "none", "--workers", "2",
                              "--out", str(tmp_path / "two"), str(tmp_path / "img0.tif"), str(tmp_path / "img1.tif")])
    assert res.exit_code == 0, res.output
    assert started == [1]
    for i in range(2):
        one, = P.predict_file(seg, tmp_path / f"img{i}.tif", tmp_path / "one", P.OutputOptions(), workers=1)
        assert same_up_to_renumbering(tifffile.imread(one), tifffile.imread(tmp_path / "two" / f"img{i}.tif"))


def test_blocks_run_on_a_running_cluster_given_its_scheduler_address(seg, tmp_path, monkeypatch):
    """--scheduler ADDRESS (a SLURM cluster through dask-jobqueue, in use) takes the same block loop: labels
    equal to one process's; an address nothing listens on is one line."""
    distributed = pytest.importorskip("distributed")
    img = touching_across_seams()
    tifffile.imwrite(tmp_path / "img.tif", img)
    monkeypatch.setattr("biounet.postprocess.blockwise_layout", lambda diameter: (128, 40))
    one, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "one", P.OutputOptions(), workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        far, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "far", P.OutputOptions(),
                              workers=cluster.scheduler_address)
    assert same_up_to_renumbering(tifffile.imread(one), tifffile.imread(far))
    with pytest.raises(P.InputError, match="--scheduler tcp://127.0.0.1:9: cannot connect"):
        P.predict_file(seg, tmp_path / "img.tif", tmp_path / "none", P.OutputOptions(), workers="tcp://127.0.0.1:9")


try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # the test skips without distributed
    _WorkerPlugin = object


class _CrashOnce(_WorkerPlugin):
    """A dask worker plugin that kills its worker process the first time any worker starts a block (a file
    marks that it happened), as a node lost mid-run would."""

    name = "crash-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        import os

        if finish == "executing" and "block_result" in str(key) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


def test_a_killed_workers_block_is_recomputed_and_the_output_is_complete(seg, tmp_path, monkeypatch):
    """Issue #50: a worker dies mid-run (its process exits); dask reschedules its block on another worker and
    the labels equal one process's."""
    distributed = pytest.importorskip("distributed")
    img = touching_across_seams()
    tifffile.imwrite(tmp_path / "img.tif", img)
    monkeypatch.setattr("biounet.postprocess.blockwise_layout", lambda diameter: (128, 40))
    one, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "one", P.OutputOptions(), workers=1)
    marker = tmp_path / "crashed"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(_CrashOnce(str(marker)))
        far, = P.predict_file(seg, tmp_path / "img.tif", tmp_path / "far", P.OutputOptions(),
                              workers=cluster.scheduler_address)
    assert marker.exists()  # a worker did die
    assert same_up_to_renumbering(tifffile.imread(one), tifffile.imread(far))


def test_the_big_benchmark_compares_labels_whole_and_counts_objects_cut_at_seams():
    """benchmarks/big.py's checks on hand-made labels: renumbering is the same labels, a merge or a split is
    not; a nucleus cut in two at a line is one touching pair there, separate nuclei are none."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from big import count_objects, same_up_to_renumbering, seam_contacts

    a = np.zeros((8, 8), np.int32)
    a[1:3, 1:3], a[5:7, 1:7] = 1, 2
    assert same_up_to_renumbering(a, np.where(a > 0, 9 - a, 0), strip=3)
    split = a.copy()
    split[5:7, 4:7] = 3  # object 2 cut at column 4
    assert not same_up_to_renumbering(a, split, strip=3)
    assert not same_up_to_renumbering(split, a, strip=3)  # a merge, seen from the other side
    assert seam_contacts(split, [4], strip=3) == 0.5  # one pair across column 4, none across row 4
    assert seam_contacts(a, [4], strip=3) == 0.0 and count_objects(split, strip=3) == 3
