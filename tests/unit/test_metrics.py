"""LatencyWindow: a bounded window of samples, copied out and cleared between windows."""

from __future__ import annotations

import numpy as np

from agent.metrics import LatencyWindow


def test_samples_come_out_oldest_first_and_bounded() -> None:
    window = LatencyWindow(size=3)
    for v in (0.1, 0.2, 0.3, 0.4):
        window.add(v)
    samples = window.samples_s()
    np.testing.assert_allclose(samples, [0.2, 0.3, 0.4])
    samples[0] = 9.0  # a copy: the window is not changed through it
    np.testing.assert_allclose(window.samples_s(), [0.2, 0.3, 0.4])
    assert window.percentiles_ms((50,)) == {"p50": 300.0}
    assert window.count == 4


def test_clear_starts_a_new_window_and_keeps_the_count() -> None:
    window = LatencyWindow()
    window.add(1.0)
    window.clear()
    assert window.samples_s().size == 0
    assert window.percentiles_ms((99,)) == {"p99": None} and window.mean_s() is None
    window.add(0.05)
    assert window.percentiles_ms((99,)) == {"p99": 50.0} and window.count == 2
