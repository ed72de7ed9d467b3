"""benchmarks/dsb_compare.py: the paired bootstrap of a per-image score difference."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dsb_compare import paired_bootstrap  # noqa: E402


def test_a_constant_shift_has_a_zero_width_interval_at_the_shift():
    a = np.linspace(0.2, 0.8, 30)
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    mean, lo, hi = paired_bootstrap(a, a + 0.05)
    assert np.isclose(mean, 0.05) and np.isclose(lo, 0.05) and np.isclose(hi, 0.05)


def test_interval_brackets_zero_for_noise_and_excludes_it_for_a_clear_gain():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.3, 0.7, 50)
    noise = rng.normal(0, 0.05, 50)
    noise -= noise.mean()  # differences that average exactly 0
    mean, lo, hi = paired_bootstrap(a, a + noise)
    assert abs(mean) < 1e-12 and lo < 0 < hi
    # the interval is about +-1.96 standard errors of the mean difference
    assert np.isclose(hi - lo, 2 * 1.96 * noise.std() / np.sqrt(50), rtol=0.15)
    mean, lo, hi = paired_bootstrap(a, a + noise + 0.05)
    assert 0 < lo < mean < hi and np.isclose(mean, 0.05)
    b = a + noise
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)  # seeded: reruns print the same
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)
