"""The tracker's Kalman filter: predict/update maths on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from agent.tracking.kalman import KalmanFilter, transition

KF = KalmanFilter()


def _state(
    x: float = 100.0, y: float = 50.0, a: float = 0.5, h: float = 40.0, v: tuple[float, ...] = ()
) -> np.ndarray:
    vel = list(v) + [0.0] * (4 - len(v))
    return np.array([[x, y, a, h, *vel]])


def test_initiate_sets_measurement_and_height_scaled_prior() -> None:
    # given a 40 px tall box measured at (100, 50) with aspect 0.5
    # when a track is started from it
    mean, cov = KF.initiate([[100.0, 50.0, 0.5, 40.0]])
    # then the state is the measurement at rest, with ByteTrack's height-scaled spread
    np.testing.assert_allclose(mean, [[100, 50, 0.5, 40, 0, 0, 0, 0]])
    pos, vel = (0.1 * 40) ** 2, (1.0 * 40) ** 2
    np.testing.assert_allclose(
        np.diag(cov[0]), [pos, pos, 1e-4, pos, vel, vel, 1e-10, vel], rtol=1e-12
    )
    assert np.count_nonzero(cov[0] - np.diag(np.diag(cov[0]))) == 0


def test_predict_moves_by_velocity_times_dt() -> None:
    # given a track moving at (10, -4) px/s and growing 2 px/s, unit covariance
    mean = _state(v=(10.0, -4.0, 0.0, 2.0))
    cov = np.eye(8)[None]
    # when predicted half a second ahead
    new_mean, new_cov = KF.predict(mean, cov, 0.5)
    # then the position follows the velocity and the covariance is F P F^T + Q dt
    np.testing.assert_allclose(new_mean, [[105, 48, 0.5, 41, 10, -4, 0, 2]])
    q_pos, q_vel = (0.2 * 40) ** 2 * 0.5, (0.5 * 40) ** 2 * 0.5
    assert new_cov[0, 0, 0] == pytest.approx(1 + 0.25 + q_pos)
    assert new_cov[0, 0, 4] == pytest.approx(0.5)
    assert new_cov[0, 4, 0] == pytest.approx(0.5)
    assert new_cov[0, 4, 4] == pytest.approx(1 + q_vel)
    assert new_cov[0, 2, 2] == pytest.approx(1 + 0.25 + 0.03**2 * 0.5)


def test_process_noise_grows_with_the_gap() -> None:
    # given one state
    mean, cov = KF.initiate([[100.0, 50.0, 0.5, 40.0]])
    # when predicted over a short and a long gap
    _, short = KF.predict(mean, cov, 0.1)
    _, long = KF.predict(mean, cov, 1.0)
    # then a dropped-frame gap leaves the filter less certain
    assert long[0, 0, 0] > short[0, 0, 0] > cov[0, 0, 0]


def test_predict_with_zero_or_negative_dt_is_identity() -> None:
    mean = _state(v=(10.0, 5.0))
    cov = np.eye(8)[None] * 3.0
    for dt in (0.0, -0.2):
        new_mean, new_cov = KF.predict(mean, cov, dt)
        np.testing.assert_array_equal(new_mean, mean)
        np.testing.assert_array_equal(new_cov, cov)


def test_predicted_means_compose_over_split_gaps() -> None:
    # given a moving track
    mean, cov = _state(v=(30.0, -10.0, 0.0, 1.0)), np.eye(8)[None]
    # when predicted 0.3 s at once or as 0.1 s + 0.2 s
    one, _ = KF.predict(mean, cov, 0.3)
    a, pa = KF.predict(mean, cov, 0.1)
    two, _ = KF.predict(a, pa, 0.2)
    # then the mean is the same: velocity is per second, not per frame
    np.testing.assert_allclose(one, two)
    np.testing.assert_allclose(transition(0.1) @ transition(0.2), transition(0.3))


def test_update_blends_by_known_gain() -> None:
    # given x variance 12, x-vx covariance 6, vx variance 20; measurement noise (40/20)^2 = 4
    mean = _state()
    cov = np.eye(8)[None] * 1.0
    cov[0, 0, 0], cov[0, 0, 4], cov[0, 4, 0], cov[0, 4, 4] = 12.0, 6.0, 6.0, 20.0
    # when x is measured 4 px to the right, everything else as predicted
    new_mean, new_cov = KF.update(mean, cov, [[104.0, 50.0, 0.5, 40.0]])
    # then gain 12 / 16 moves x by 3 and vx by 6 / 16 * 4
    assert new_mean[0, 0] == pytest.approx(103.0)
    assert new_mean[0, 4] == pytest.approx(1.5)
    np.testing.assert_allclose(new_mean[0, [1, 2, 3, 5, 6, 7]], [50, 0.5, 40, 0, 0, 0])
    assert new_cov[0, 0, 0] == pytest.approx(12 * 4 / 16)
    assert new_cov[0, 4, 4] == pytest.approx(20 - 36 / 16)
    np.testing.assert_allclose(new_cov[0], new_cov[0].T)


def test_batched_update_matches_textbook_per_track() -> None:
    # given several random tracks with valid covariances
    rng = np.random.default_rng(7)
    n = 6
    z0 = np.column_stack(
        [
            rng.uniform(0, 500, n),
            rng.uniform(0, 500, n),
            rng.uniform(0.3, 1, n),
            rng.uniform(20, 200, n),
        ]
    )
    mean, cov = KF.initiate(z0)
    mean[:, 4:] = rng.normal(0, 20, (n, 4))
    mean, cov = KF.predict(mean, cov, 0.37)
    z = z0 + rng.normal(0, 3, (n, 4))
    # when updated as a batch
    got_mean, got_cov = KF.update(mean, cov, z)
    # then each row equals the textbook K = P H^T (H P H^T + R)^-1 update
    h_mat = np.eye(4, 8)
    for i in range(n):
        h = mean[i, 3]
        r = np.diag([(h / 20) ** 2, (h / 20) ** 2, 0.1**2, (h / 20) ** 2])
        s = h_mat @ cov[i] @ h_mat.T + r
        k = cov[i] @ h_mat.T @ np.linalg.inv(s)
        np.testing.assert_allclose(got_mean[i], mean[i] + k @ (z[i] - h_mat @ mean[i]))
        np.testing.assert_allclose(got_cov[i], (np.eye(8) - k @ h_mat) @ cov[i], atol=1e-8)


def test_empty_batches_pass_through() -> None:
    mean, cov = np.zeros((0, 8)), np.zeros((0, 8, 8))
    assert KF.predict(mean, cov, 0.1)[0].shape == (0, 8)
    assert KF.update(mean, cov, np.zeros((0, 4)))[1].shape == (0, 8, 8)
    assert KF.initiate(np.zeros((0, 4)))[0].shape == (0, 8)
