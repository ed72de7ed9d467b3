"""benchmarks/dsb_scale.py's diameter rule: resize only when the estimate is far from the training size."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dsb_scale import rule_factor  # noqa: E402

FACTORS = [0.5, 0.7, 1.0, 1.4, 2.0]


@pytest.mark.parametrize("est,r,want", [
    (20.0, 1.3, 1.0),   # 22/20 = 1.1 lies inside [1/1.3, 1.3]: left alone
    (11.0, 1.3, 2.0),   # objects half the training size: doubled
    (11.0, 2.5, 1.0),   # ... unless the ratio allowed is wider
    (16.0, 1.3, 1.4),   # 1.375: the nearest factor on a log scale
    (44.0, 1.3, 0.5),   # twice the training size: halved
    (0.0, 1.3, 2.0),    # nothing found (estimate 0): read as 1 px, the largest factor
])
def test_rule_picks_the_nearest_factor_outside_the_allowed_ratio(est, r, want):
    assert rule_factor(22.0, est, r, FACTORS) == want
