"""benchmarks/dsb_post.py reads its --grid entries into PostConfig values."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dsb_post import parse_grid  # noqa: E402


def test_grid_entries_become_typed_value_lists():
    grid = parse_grid(["min_size=20,40", "threshold=0.5", "fill_holes=false,true"])
    assert grid == {"min_size": [20, 40], "threshold": [0.5], "fill_holes": [False, True]}
    assert isinstance(grid["min_size"][0], int) and isinstance(grid["threshold"][0], float)
    assert parse_grid(["threshold=0.4", "threshold=0.6"]) == {"threshold": [0.6]}  # the later entry wins


def test_an_entry_without_values_is_refused():
    with pytest.raises(SystemExit, match="expected field=v1,v2"):
        parse_grid(["min_size"])
