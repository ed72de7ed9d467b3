"""DSB 2018 layout from folders and zips: labels, channels, zip safety, bad data."""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from biounet.data import dsb
from biounet.data.dsb import list_dsb_items, load_dsb_image, load_dsb_labels, load_dsb_pair
from biounet.io import InputError

REAL_ZIP = Path("/work/shared/data/dsb2018/stage1_train.zip")
H, W = 5, 7


def _png(arr: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", arr, extension=".png")


def _rgba(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    img[..., 3] = 255
    return img


def _mask(rows: slice, cols: slice, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[rows, cols] = 255
    return m


def _fixture_files(items: dict[str, tuple[np.ndarray, list[np.ndarray] | None]]) -> dict[str, bytes]:
    """Relative path -> PNG bytes in the DSB layout; masks named so sorting keeps list order."""
    files = {}
    for image_id, (image, masks) in items.items():
        files[f"{image_id}/images/{image_id}.png"] = _png(image)
        for i, m in enumerate(masks or []):
            files[f"{image_id}/masks/m{i:03d}.png"] = _png(m)
    return files


def write_dsb_folder(root: Path, items: dict[str, tuple[np.ndarray, list[np.ndarray] | None]]) -> Path:
    """Write a DSB stage folder; ``masks=None`` means no masks/ folder (a test image)."""
    for rel, data in _fixture_files(items).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def write_dsb_zip(path: Path, items: dict, prefix: str = "stage1_train/", extra: dict[str, bytes] | None = None) -> Path:
    """Write the layout under ``prefix``; ``extra`` adds or replaces members by full name."""
    members = {prefix + rel: data for rel, data in _fixture_files(items).items()}
    members.update(extra or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _items() -> dict:
    return {
        "bbb": (_rgba(1), [_mask(slice(0, 2), slice(0, 2)), _mask(slice(3, 5), slice(4, 7))]),
        "aaa": (_rgba(2), [_mask(slice(1, 4), slice(2, 3))]),
    }


def _expected_labels() -> dict[str, np.ndarray]:
    bbb = np.zeros((H, W), np.int32)
    bbb[0:2, 0:2], bbb[3:5, 4:7] = 1, 2
    aaa = np.zeros((H, W), np.int32)
    aaa[1:4, 2:3] = 1
    return {"aaa": aaa, "bbb": bbb}


@pytest.fixture(autouse=True)
def _fresh_zip_cache():
    yield
    dsb._close_zips()


def test_folder_items_images_and_labels(tmp_path) -> None:
    stage = write_dsb_folder(tmp_path / "stage1_train", _items())
    items = list_dsb_items(stage)
    assert [i.image_id for i in items] == ["aaa", "bbb"]
    assert all(i.has_masks and not i.is_zip for i in items)
    assert items[1].masks == ("bbb/masks/m000.png", "bbb/masks/m001.png")
    for item in items:
        image, labels = load_dsb_pair(item)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, _items()[item.image_id][0][..., :3])
        np.testing.assert_array_equal(labels, _expected_labels()[item.image_id])
        np.testing.assert_array_equal(load_dsb_labels(item), labels)


def test_parent_folder_with_one_stage_is_accepted_two_are_not(tmp_path) -> None:
    write_dsb_folder(tmp_path / "stage1_train", _items())
    assert [i.image_id for i in list_dsb_items(tmp_path)] == ["aaa", "bbb"]
    write_dsb_folder(tmp_path / "stage1_test", {"ccc": (_rgba(3), None)})
    with pytest.raises(InputError, match="several DSB stage folders"):
        list_dsb_items(tmp_path)


@pytest.mark.parametrize("prefix", ["stage1_train/", "", "deep/er/stage/"])
def test_zip_matches_folder(tmp_path, prefix) -> None:
    folder_items = list_dsb_items(write_dsb_folder(tmp_path / "stage", _items()))
    zip_items = list_dsb_items(write_dsb_zip(tmp_path / "d.zip", _items(), prefix=prefix))
    assert [i.image_id for i in zip_items] == [i.image_id for i in folder_items]
    assert zip_items[1].masks == tuple(f"{prefix}bbb/masks/m{i:03d}.png" for i in range(2))
    for fi, zi in zip(folder_items, zip_items):
        assert zi.is_zip and zi.has_masks
        np.testing.assert_array_equal(load_dsb_image(zi), load_dsb_image(fi))
        np.testing.assert_array_equal(load_dsb_labels(zi), load_dsb_labels(fi))


def test_test_images_without_masks_are_prediction_inputs(tmp_path) -> None:
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    stage = write_dsb_folder(tmp_path / "stage1_test", {"ccc": (gray, None)})
    zpath = write_dsb_zip(tmp_path / "t.zip", {"ccc": (gray, None)}, prefix="stage1_test/")
    for item in (list_dsb_items(stage)[0], list_dsb_items(zpath)[0]):
        assert not item.has_masks and item.masks == ()
        image = load_dsb_image(item)
        # Gray is replicated so every image has the three channels the model expects.
        assert image.shape == (H, W, 3)
        np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=-1))
        with pytest.raises(InputError, match="no masks/"):
            load_dsb_labels(item)


def test_empty_masks_folder_means_annotated_without_nuclei(tmp_path) -> None:
    stage = write_dsb_folder(tmp_path / "s", {"ddd": (_rgba(4), None)})
    (stage / "ddd" / "masks").mkdir()
    (item,) = list_dsb_items(stage)
    assert item.has_masks
    assert not load_dsb_labels(item).any()


def test_overlap_later_mask_wins_and_warns(tmp_path, caplog) -> None:
    masks = [_mask(slice(0, 3), slice(0, 3)), _mask(slice(2, 4), slice(2, 4))]
    (item,) = list_dsb_items(write_dsb_folder(tmp_path / "s", {"eee": (_rgba(5), masks)}))
    with caplog.at_level(logging.WARNING, logger="biounet.data.dsb"):
        labels = load_dsb_labels(item)
    assert labels[2, 2] == 2 and labels[0, 0] == 1 and labels[3, 3] == 2
    assert "1 pixels lie in more than one mask" in caplog.text


def test_mask_size_mismatch_names_the_mask(tmp_path) -> None:
    masks = [_mask(slice(0, 1), slice(0, 1)), _mask(slice(0, 1), slice(0, 1), shape=(H + 1, W))]
    (item,) = list_dsb_items(write_dsb_folder(tmp_path / "s", {"fff": (_rgba(6), masks)}))
    with pytest.raises(InputError, match=r"fff/masks/m001\.png: mask is 6x7, image is 5x7"):
        load_dsb_labels(item)
    (zitem,) = list_dsb_items(write_dsb_zip(tmp_path / "f.zip", {"fff": (_rgba(6), masks)}))
    with pytest.raises(InputError, match=r"f\.zip::stage1_train/fff/masks/m001\.png: mask is 6x7"):
        load_dsb_labels(zitem)


@pytest.mark.parametrize("entry", ["../evil.png", "/etc/evil.png", "stage1_train/x/../../evil.png", "C:/evil.png"])
def test_zip_slip_entries_are_rejected(tmp_path, entry) -> None:
    path = write_dsb_zip(tmp_path / "z.zip", _items(), extra={entry: b"x"})
    with zipfile.ZipFile(path) as zf:
        stored = [n for n in zf.namelist() if "evil" in n][0]
    with pytest.raises(InputError, match="unsafe zip entry") as exc:
        list_dsb_items(path)
    assert repr(stored) in str(exc.value)


def test_duplicate_zip_entries_are_rejected(tmp_path) -> None:
    # Two members with one name: readers disagree on which one wins, so refuse.
    path = write_dsb_zip(tmp_path / "d.zip", _items())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr("stage1_train/aaa/images/aaa.png", b"other")
    with pytest.raises(InputError, match="duplicate zip entry 'stage1_train/aaa/images/aaa.png'"):
        list_dsb_items(path)


def test_nothing_to_read(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DSB items"):
        list_dsb_items(tmp_path / "empty")
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(InputError, match="no DSB items"):
        list_dsb_items(path)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot open zip"):
        list_dsb_items(tmp_path / "fake.zip")
    with pytest.raises(InputError, match="no such file"):
        list_dsb_items(tmp_path / "missing")


def test_corrupt_png_names_file_and_member(tmp_path) -> None:
    stage = write_dsb_folder(tmp_path / "s", _items())
    (stage / "aaa" / "masks" / "m000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match=r"aaa/masks/m000\.png: cannot read image"):
        load_dsb_labels(list_dsb_items(stage)[0])
    zpath = write_dsb_zip(tmp_path / "c.zip", _items(), extra={"stage1_train/aaa/images/aaa.png": b"junk"})
    with pytest.raises(InputError, match=r"c\.zip::stage1_train/aaa/images/aaa\.png: cannot read image"):
        load_dsb_image(list_dsb_items(zpath)[0])


def test_items_pickle_and_each_process_opens_its_own_handle(tmp_path, monkeypatch) -> None:
    zpath = write_dsb_zip(tmp_path / "p.zip", _items())
    item = pickle.loads(pickle.dumps(list_dsb_items(zpath)[0]))
    load_dsb_image(item)
    parent = dict(dsb._ZIP_CACHE)
    assert len(parent) == 1
    # A forked worker has another pid: it must open a new handle, not reuse the parent's.
    monkeypatch.setattr(dsb.os, "getpid", lambda: -12345)
    load_dsb_image(item)
    (child_key,) = dsb._ZIP_CACHE
    assert child_key[1] == -12345
    assert dsb._ZIP_CACHE[child_key] is not next(iter(parent.values()))


@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"real DSB 2018 zip not present at {REAL_ZIP}")
def test_real_stage1_train_zip() -> None:
    items = list_dsb_items(REAL_ZIP)
    assert len(items) == 564 and all(i.has_masks for i in items)
    image, labels = load_dsb_pair(items[0])
    assert image.shape[:2] == labels.shape and image.shape[2] == 3 and image.dtype == np.uint8
    assert labels.max() == len(items[0].masks)


def test_an_all_zero_nucleus_mask_is_named_not_silent(tmp_path, caplog) -> None:
    """#14: an empty mask file used to be accepted without a word."""
    masks = [_mask(slice(0, 3), slice(0, 3)), np.zeros((H, W), np.uint8)]
    (item,) = list_dsb_items(write_dsb_folder(tmp_path / "s", {"fff": (_rgba(5), masks)}))
    with caplog.at_level(logging.WARNING, logger="biounet.data.dsb"):
        labels = load_dsb_labels(item)
    assert labels.max() == 1 and "mask is empty (no nucleus pixel)" in caplog.text and "fff" in caplog.text


def test_zip_entries_declaring_absurd_sizes_are_refused(tmp_path, monkeypatch) -> None:
    """#14: a zip bomb entry (tiny compressed, huge declared) is refused before it is inflated."""
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stage1_train/zzz/images/zzz.png", b"\0" * (8 * 2**20))  # 8 MiB of zeros, ~8 KB stored
        zf.writestr("stage1_train/zzz/masks/m.png", b"\0" * 16)
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(dsb, "MAX_ZIP_MEMBER", 2**20)
    (item,) = list_dsb_items(path)
    with pytest.raises(InputError, match=r"zzz.png: entry declares 8 MiB uncompressed \(limit 1 MiB\); refusing"):
        load_dsb_image(item)
    dsb._close_zips()
