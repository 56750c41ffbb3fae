"""Constant-velocity Kalman filter over (cx, cy, aspect, h), batched over tracks.

The state is ByteTrack's 8-vector (cx, cy, a, h, vcx, vcy, va, vh) with velocities
in units per *second*, so frames that arrive with irregular gaps (the live
pipeline drops stale frames) are predicted by their real elapsed time `dt`:

    x' = F(dt) x,    P' = F(dt) P F(dt)^T + Q(dt),    Q(dt) = diag(q^2) * dt

where q scales with the box height, as in ByteTrack/DeepSORT (a near, tall
object moves more pixels than a far one). Measurement noise is likewise
proportional to the height. Every function takes stacked arrays, means (N, 8)
and covariances (N, 8, 8), and returns new arrays; nothing is mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

NDIM = 4
"""Measured dimensions: cx, cy, aspect, h."""

_MIN_H = 1e-3


@dataclass(frozen=True, slots=True)
class KalmanFilter:
    """Noise model of the filter; the defaults suit pedestrians and vehicles at 5-30 fps.

    Position-like terms are fractions of the box height (per sqrt(second) for
    process noise), aspect terms are absolute.
    """

    measurement_std: float = 1.0 / 20.0
    """Detector box noise, fraction of h (ByteTrack's std_weight_position)."""
    aspect_measurement_std: float = 0.1
    position_process_std: float = 0.2
    """Random-walk noise of the position, fraction of h per sqrt(s)."""
    velocity_process_std: float = 0.5
    """Random-walk noise of the velocity (acceleration), fraction of h per s per sqrt(s)."""
    aspect_process_std: float = 0.03
    aspect_velocity_process_std: float = 1e-4
    initial_position_std: float = 2.0 / 20.0
    """Position uncertainty of a new track, fraction of h."""
    initial_velocity_std: float = 1.0
    """Velocity uncertainty of a new track, fraction of h per s."""
    initial_aspect_std: float = 1e-2
    initial_aspect_velocity_std: float = 1e-5

    def initiate(self, measurements: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """New tracks from (N, 4) xyah measurements: zero velocity, wide velocity prior."""
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, NDIM)
        n = z.shape[0]
        mean = np.concatenate([z, np.zeros((n, NDIM))], axis=1)
        h = np.maximum(z[:, 3], _MIN_H)
        pos = self.initial_position_std * h
        vel = self.initial_velocity_std * h
        std = np.stack(
            [
                pos,
                pos,
                np.full(n, self.initial_aspect_std),
                pos,
                vel,
                vel,
                np.full(n, self.initial_aspect_velocity_std),
                vel,
            ],
            axis=1,
        )
        return mean, _diag(std**2)

    def predict(
        self, mean: npt.ArrayLike, cov: npt.ArrayLike, dt: float
    ) -> tuple[FloatArray, FloatArray]:
        """Advance every track by `dt` seconds (dt <= 0 leaves the state unchanged)."""
        m = np.asarray(mean, dtype=np.float64).reshape(-1, 2 * NDIM)
        p = np.asarray(cov, dtype=np.float64).reshape(-1, 2 * NDIM, 2 * NDIM)
        if dt <= 0.0 or m.shape[0] == 0:
            return m.copy(), p.copy()
        f = transition(dt)
        h = np.maximum(m[:, 3], _MIN_H)
        n = m.shape[0]
        std = np.stack(
            [
                self.position_process_std * h,
                self.position_process_std * h,
                np.full(n, self.aspect_process_std),
                self.position_process_std * h,
                self.velocity_process_std * h,
                self.velocity_process_std * h,
                np.full(n, self.aspect_velocity_process_std),
                self.velocity_process_std * h,
            ],
            axis=1,
        )
        new_mean = m @ f.T
        new_mean[:, 3] = np.maximum(new_mean[:, 3], _MIN_H)
        new_cov = f @ p @ f.T + _diag(std**2 * dt)
        return new_mean, new_cov

    def project(self, mean: npt.ArrayLike, cov: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Measurement-space mean (N, 4) and innovation covariance S (N, 4, 4)."""
        m = np.asarray(mean, dtype=np.float64).reshape(-1, 2 * NDIM)
        p = np.asarray(cov, dtype=np.float64).reshape(-1, 2 * NDIM, 2 * NDIM)
        return m[:, :NDIM].copy(), p[:, :NDIM, :NDIM] + _diag(self._measurement_var(m))

    def update(
        self, mean: npt.ArrayLike, cov: npt.ArrayLike, measurements: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """Correct each track i with measurement i (all arrays row-aligned)."""
        m = np.asarray(mean, dtype=np.float64).reshape(-1, 2 * NDIM)
        p = np.asarray(cov, dtype=np.float64).reshape(-1, 2 * NDIM, 2 * NDIM)
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, NDIM)
        if m.shape[0] == 0:
            return m.copy(), p.copy()
        z_pred, s = self.project(m, p)
        # K = P H^T S^-1; with S symmetric, K^T = S^-1 (H P), solved without an inverse.
        gain = np.swapaxes(np.linalg.solve(s, p[:, :NDIM, :]), 1, 2)
        innovation = z - z_pred
        new_mean = m + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = p - gain @ s @ np.swapaxes(gain, 1, 2)
        new_cov = (new_cov + np.swapaxes(new_cov, 1, 2)) / 2.0
        return new_mean, new_cov

    def _measurement_var(self, mean: FloatArray) -> FloatArray:
        h = np.maximum(mean[:, 3], _MIN_H)
        std = np.stack(
            [
                self.measurement_std * h,
                self.measurement_std * h,
                np.full(mean.shape[0], self.aspect_measurement_std),
                self.measurement_std * h,
            ],
            axis=1,
        )
        return std**2


def transition(dt: float) -> FloatArray:
    """Constant-velocity transition matrix F(dt), (8, 8)."""
    f = np.eye(2 * NDIM)
    f[:NDIM, NDIM:] = dt * np.eye(NDIM)
    return f


def _diag(values: FloatArray) -> FloatArray:
    """(N, K) -> (N, K, K) batch of diagonal matrices."""
    n, k = values.shape
    out = np.zeros((n, k, k))
    idx = np.arange(k)
    out[:, idx, idx] = values
    return out
