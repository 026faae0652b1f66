"""The trained 2D examples reach within 3x the noise floor with 2,000 training steps (a sixth of most
examples' training; the full runs reach ratios of 0.8-0.9, see examples/README.md), measured on 1,000
points.

Apart from tests/test_examples.py because these runs are the suite's longest: pytest-xdist hands out
whole files (``--dist loadfile``), so in a file of their own they run beside the rest of the examples'
tests, not after them on the same worker.
"""

from __future__ import annotations

import pytest
from test_examples import FEWER_POINTS, SHORT_TRAINING, TRAINED, run_example

from flowkit.testing import make_manager


@pytest.fixture(scope="module")
def manager():
    return make_manager()


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_trained_example_is_within_3_times_the_noise_floor(name, manager, tmp_path):
    metrics = run_example(name, manager, tmp_path, [*SHORT_TRAINING, *FEWER_POINTS])
    assert metrics["train_steps"] == 2000 and metrics["n_evaluated"] == 1000
    assert metrics["distance"] <= 3.0 * metrics["noise_floor"], metrics
