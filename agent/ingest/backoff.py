"""Capped exponential backoff with jitter for reconnecting cameras.

Jitter matters on a fleet: without it every camera (and every device) that lost
the same network would retry in lockstep. With a seeded `random.Random` the
sequence is deterministic, which the tests rely on.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays initial_s, initial_s*m, initial_s*m^2, ... capped at max_s, each +/- jitter.

    The cap applies before jitter, so a delay never exceeds max_s * (1 + jitter).
    """

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        self._initial = initial_s
        self._max = max_s
        self._multiplier = multiplier
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (not crypto)
        self._attempt = 0
        self._base = self._initial

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset (consecutive failures)."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until reset()."""
        base = self._base
        self._base = min(self._max, self._base * self._multiplier)  # no overflow, ever
        self._attempt += 1
        if self._jitter == 0:
            return base
        return max(0.0, base * (1.0 + self._rng.uniform(-self._jitter, self._jitter)))

    def reset(self) -> None:
        """Back to initial_s (call after a success)."""
        self._attempt = 0
        self._base = self._initial
