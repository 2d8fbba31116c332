import numpy as np
import pytest

from reports.stats import bootstrap_medians, bootstrap_p, interval, mann_whitney_u


def test_ties_share_their_mean_rank():
    # combined [3, 1 | 3, 2]: ranks 3.5, 1 | 3.5, 2, so U of x = 4.5 - 3 = 1.5
    assert mann_whitney_u([3, 1], [3, 2])[0] == 1.5


def test_mann_whitney_hand_computed():
    # U = 0; mu = 4.5; sigma^2 = 3*3*7/12 = 5.25; z = (4.5 - 0.5)/sqrt(5.25); p = erfc(z/sqrt 2)
    u, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 0
    assert p == pytest.approx(0.0808556, abs=1e-6)
    # symmetric, and all-tied samples carry no evidence
    assert mann_whitney_u([4, 5, 6], [1, 2, 3])[1] == pytest.approx(p)
    assert mann_whitney_u([2, 2, 2], [2, 2])[1] == 1.0
    assert mann_whitney_u([], [1.0])[1] == 1.0


def test_bootstrap_helpers():
    rng = np.random.default_rng(0)
    meds = bootstrap_medians([1.0, 2.0, 3.0], 500, rng)
    assert meds.shape == (500,) and set(np.unique(meds)) <= {1.0, 2.0, 3.0}
    assert interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert bootstrap_p(np.full(10, 2.0)) == 0.0
    assert bootstrap_p(np.array([0.9, 1.1])) == 1.0
