"""Backoff: capped exponential growth, bounded jitter, deterministic with a seed."""

from __future__ import annotations

import random

import pytest

from agent.ingest.backoff import Backoff


def test_delays_grow_geometrically_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(1.0, 8.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0


def test_jitter_stays_within_its_fraction_around_the_capped_delay() -> None:
    backoff = Backoff(0.5, 4.0, multiplier=3.0, jitter=0.25, rng=random.Random(7))
    expected = [0.5, 1.5, 4.0] + [4.0] * 197
    delays = [backoff.next_delay() for _ in expected]
    for delay, base in zip(delays, expected, strict=True):
        assert base * 0.75 <= delay <= base * 1.25
    # and the jitter really spreads the delays (no lockstep across a fleet)
    capped = delays[3:]
    assert max(capped) - min(capped) > 1.0


def test_same_seed_same_sequence_other_seed_other_sequence() -> None:
    def run(seed: int) -> list[float]:
        backoff = Backoff(1.0, 30.0, 2.0, 0.2, rng=random.Random(seed))
        return [backoff.next_delay() for _ in range(10)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_thousands_of_failures_never_overflow() -> None:
    backoff = Backoff(1.0, 30.0, multiplier=10.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert delays[-1] == 30.0


@pytest.mark.parametrize(
    ("initial", "cap", "multiplier", "jitter"),
    [(0.0, 1.0, 2.0, 0.1), (2.0, 1.0, 2.0, 0.1), (1.0, 2.0, 0.5, 0.1), (1.0, 2.0, 2.0, 1.5)],
)
def test_invalid_parameters_are_rejected(
    initial: float, cap: float, multiplier: float, jitter: float
) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, cap, multiplier, jitter)
