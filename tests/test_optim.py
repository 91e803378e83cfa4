"""Optimisers and learning-rate schedules built from config sections."""

import math

import pytest

from jclust import config_lib, optim


def test_cosine_schedule_goes_from_peak_to_zero():
    schedule = optim.make_schedule("cosine", 1.0, 100)
    assert float(schedule(0)) == pytest.approx(1.0)
    assert float(schedule(50)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    assert optim.make_schedule("constant", 0.3) == 0.3


@pytest.mark.parametrize("call, match", [
    (lambda: optim.make_schedule("linear", 1.0, 10), "unknown lr_schedule"),
    (lambda: optim.make_schedule("cosine", 1.0, 0), "positive number of steps"),
    (lambda: optim.make_optimizer("lamb", 1.0), "unknown optimizer"),
])
def test_bad_names_are_config_errors(call, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        call()
