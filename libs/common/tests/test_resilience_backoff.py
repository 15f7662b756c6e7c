import random

import pytest

from backbone.resilience import Backoff


def test_delays_double_up_to_the_cap_with_equal_jitter_and_reset():
    backoff = Backoff(0.1, 0.8, rng=random.Random(1))
    nominal = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    for expected in nominal:
        delay = backoff.next_s()
        assert expected / 2 <= delay <= expected
    backoff.reset()
    assert 0.05 <= backoff.next_s() <= 0.1


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(0, 1)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(2, 1)
