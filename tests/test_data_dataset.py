"""Dataset helpers: normalization, channel matching, splits, modality balancing."""
import numpy as np
import pytest

from biounet.config import DataConfig
from biounet.data.dataset import Item, match_channels, modality, modality_weights, normalize, split_items
from biounet.io import InputError


def test_percentile_normalization_is_bit_depth_invariant():
    img8 = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    img16 = img8.astype(np.uint16) * 257
    assert np.allclose(normalize(img8, "percentile"), normalize(img16, "percentile"), atol=1e-5)


def test_match_channels():
    gray = np.ones((4, 4, 1), np.float32)
    assert match_channels(gray, 3).shape == (4, 4, 3)
    assert match_channels(np.ones((4, 4, 3), np.float32), 1).shape == (4, 4, 1)
    with pytest.raises(InputError, match="has 4 channels but the model expects 3"):
        match_channels(np.ones((4, 4, 4), np.float32), 3)


def test_split_is_seeded_and_explicit_indices_win():
    items = [Item(str(i), "file", f"{i}.png", f"{i}.png") for i in range(10)]
    a = split_items(items, DataConfig(val_fraction=0.3), seed=1)
    b = split_items(items, DataConfig(val_fraction=0.3), seed=1)
    assert [i.name for i in a[1]] == [i.name for i in b[1]] and len(a[1]) == 3
    train, val = split_items(items, DataConfig(val_indices=(8, 9)), seed=1)
    assert [i.name for i in val] == ["8", "9"] and len(train) == 8


class _Fake(Item):
    def load(self):
        return self.extra, np.zeros((4, 4), np.int32)


def test_modality_weights_balance_rare_kinds():
    dark = np.zeros((4, 4, 3), np.uint8)
    bright = np.full((4, 4, 3), 200, np.uint8)
    colour = np.stack([np.full((4, 4), 200), np.full((4, 4), 50), np.full((4, 4), 150)], -1).astype(np.uint8)
    assert [modality(x) for x in (dark, bright, colour)] == ["dark", "bright", "colour"]
    items = [_Fake(str(i), "file", "", extra=dark) for i in range(8)] + [_Fake("c", "file", "", extra=colour)]
    p = modality_weights(items)
    assert p[-1] == pytest.approx(0.5) and p[:-1].sum() == pytest.approx(0.5)
