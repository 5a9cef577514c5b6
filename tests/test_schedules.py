"""Per-iteration cosine schedules with linear warmup (paper Appendix D)."""
import math

import numpy as np
import pytest

from dino_tutorial.schedules import cosine_schedule


def test_schedule_has_one_value_per_iteration():
    assert len(cosine_schedule(1.0, 0.0, epochs=7, niter_per_ep=13, warmup_epochs=2)) == 7 * 13


def test_warmup_ramps_linearly_and_reaches_base_at_its_last_iteration():
    s = cosine_schedule(0.5, 1e-6, epochs=10, niter_per_ep=4, warmup_epochs=2, start_warmup_value=0.1)
    np.testing.assert_allclose(s[:8], np.linspace(0.1, 0.5, 8))
    assert s[7] == pytest.approx(0.5)
    assert s[8] == pytest.approx(0.5)                  # cosine starts at the base value


def test_cosine_decays_monotonically_towards_the_final_value():
    s = cosine_schedule(0.996, 1.0, epochs=100, niter_per_ep=10)
    assert s[0] == pytest.approx(0.996)
    assert np.all(np.diff(s) >= 0)
    n = 1000
    assert s[-1] == pytest.approx(1.0 - 0.004 * 0.5 * (1 + math.cos(math.pi * (n - 1) / n)))
    assert s[n // 2] == pytest.approx(0.998)           # halfway is the midpoint


def test_constant_when_base_equals_final():
    np.testing.assert_allclose(cosine_schedule(1e-4, 1e-4, 3, 5), 1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs and niter_per_ep must be >= 1"),
    ({"niter_per_ep": 0}, "epochs and niter_per_ep must be >= 1"),
    ({"warmup_epochs": 11}, r"warmup_epochs must be in \[0, epochs=10\], got 11"),
])
def test_bad_schedule_parameters_are_named(kwargs, message):
    args = {"base_value": 1.0, "final_value": 0.0, "epochs": 10, "niter_per_ep": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        cosine_schedule(**args)


def test_the_smallest_schedules_are_valid_one_iteration_and_all_warmup():
    np.testing.assert_allclose(cosine_schedule(0.5, 0.1, epochs=1, niter_per_ep=1), [0.5])
    np.testing.assert_allclose(cosine_schedule(0.5, 0.1, epochs=2, niter_per_ep=3, warmup_epochs=2),
                               np.linspace(0.0, 0.5, 6))                       # warmup over the whole run
    np.testing.assert_allclose(cosine_schedule(0.5, 0.1, epochs=1, niter_per_ep=2), [0.5, 0.3])
