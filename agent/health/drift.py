"""Drift monitor: has a camera's input or the model's output moved away from its baseline?

Per camera, a few cheap statistics of a small sampled image (brightness, contrast, sharpness,
colour cast, difference to the previous sample) and of the detector's output (detections per
frame, confidence distribution) are collected. The first `baseline_samples` after start or
`rebaseline()` form the baseline; a rolling window of recent samples is compared with it by
the population stability index (PSI) over quantile bins learned from the baseline. A frozen
input (identical frames) has its own indicator. Threshold crossings are reported once, with
hysteresis. The statistics and the monitor are pure numpy: no I/O, no logging, no clock.

`agent.health.samples.SampleKeeper` is the side-effect edge that stores frames picked by
`DriftMonitor.keep_reason` for later labelling. Formulas and thresholds: docs/drift.md.
"""

from __future__ import annotations

import collections
import enum
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.config.health import DriftConfig

if TYPE_CHECKING:
    import av
    from av.video.reformatter import VideoReformatter

FloatArray = npt.NDArray[np.float64]
_INPUT_FEATURES = ("brightness", "contrast", "sharpness", "colour_bg", "colour_rg")


class DriftCode(str, enum.Enum):
    BRIGHTNESS = "brightness"
    CONTRAST = "contrast"
    SHARPNESS = "sharpness"
    COLOUR = "colour"
    FROZEN = "frozen"
    DETECTION_RATE = "detection_rate"
    CONFIDENCE = "confidence"


class DriftError(Exception):
    """Base of the drift monitor's errors."""


@dataclass(frozen=True)
class FrameStats:
    """Statistics of one sampled frame; `luma` feeds the next sample's difference."""

    brightness: float
    """Mean luma, 0-255."""
    contrast: float
    """Standard deviation of luma."""
    sharpness: float
    """Variance of the 4-neighbour Laplacian of luma."""
    colour_bg: float
    """Mean of B - G (colour cast towards blue if positive)."""
    colour_rg: float
    """Mean of R - G (colour cast towards red if positive)."""
    diff: float | None
    """Mean absolute luma difference to the previous sample; None without one."""
    luma: npt.NDArray[np.float32] = field(repr=False, compare=False)


@dataclass(frozen=True)
class DriftChange:
    """A drift indicator crossed its threshold (raised) or fell below the clear level."""

    camera: str
    code: DriftCode
    raised: bool
    score: float
    threshold: float
    t: float


def sample_image(
    frame: av.VideoFrame,
    width: int = 160,
    height: int = 120,
    reformatter: VideoReformatter | None = None,
) -> npt.NDArray[Any]:
    """A small BGR image of `frame` for statistics, scaled by swscale (area filter).

    Pass a long-lived `reformatter` where this runs repeatedly: a fresh one per call
    starts its own swscale thread pool each time.
    """
    if reformatter is None:
        return frame.to_ndarray(width=width, height=height, format="bgr24", interpolation="AREA")
    small = reformatter.reformat(
        frame, width=width, height=height, format="bgr24", interpolation="AREA", threads=1
    )
    return small.to_ndarray()


def frame_stats(
    image: npt.NDArray[Any], previous_luma: npt.NDArray[np.float32] | None = None
) -> FrameStats:
    """Statistics of a small gray (HxW) or BGR (HxWx3) uint8 image, e.g. 160x120."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        luma, bg, rg = img, 0.0, 0.0
    elif img.ndim == 3 and img.shape[2] == 3:
        b, g, r = img[..., 0], img[..., 1], img[..., 2]
        luma = 0.114 * b + 0.587 * g + 0.299 * r
        bg, rg = float(np.mean(b - g)), float(np.mean(r - g))
    else:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    diff = None
    if previous_luma is not None and previous_luma.shape == luma.shape:
        diff = float(np.mean(np.abs(luma - previous_luma)))
    return FrameStats(
        brightness=float(luma.mean()),
        contrast=float(luma.std()),
        sharpness=float(lap.var()) if lap.size else 0.0,
        colour_bg=bg,
        colour_rg=rg,
        diff=diff,
        luma=luma,
    )


def quantile_edges(baseline: npt.ArrayLike, bins: int) -> FloatArray:
    """Interior bin edges at the baseline's quantiles, midway between neighbouring samples.

    Midpoints keep continuous samples off the edges; a value repeated across a quantile
    (a point mass, e.g. zero detections) becomes an edge of its own.
    """
    s = np.sort(np.asarray(baseline, dtype=np.float64).ravel())
    if s.size < 2:
        return s
    j = np.clip((np.arange(1, bins) * s.size) // bins, 1, s.size - 1)
    return np.unique((s[j - 1] + s[j]) / 2)


def bin_counts(values: npt.ArrayLike, edges: FloatArray) -> npt.NDArray[np.int64]:
    """Counts in the 2k+1 bins (-inf,e0), {e0}, (e0,e1), ..., {e_k-1}, (e_k-1,inf)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    i = np.searchsorted(edges, v, side="left")
    exact = np.zeros(v.shape, dtype=bool)
    inside = i < edges.size
    exact[inside] = edges[i[inside]] == v[inside]
    return np.bincount(2 * i + exact, minlength=2 * edges.size + 1)


def psi(base: npt.ArrayLike, recent: npt.ArrayLike, epsilon: float) -> float:
    """Population stability index of two histograms (counts or proportions, same bins).

    PSI = sum_i (r_i - b_i) ln(r_i / b_i) over proportions with `epsilon` added to each bin
    (and renormalised), so an empty bin costs a large but finite amount.
    """
    b = np.asarray(base, dtype=np.float64)
    r = np.asarray(recent, dtype=np.float64)
    if b.sum() <= 0 or r.sum() <= 0:
        return 0.0
    b = b / b.sum() + epsilon
    r = r / r.sum() + epsilon
    b, r = b / b.sum(), r / r.sum()
    return float(np.sum((r - b) * np.log(r / b)))


def kernel_mass(values: npt.ArrayLike, edges: FloatArray, tolerance: float) -> FloatArray:
    """Proportions in the k+1 bins split at `edges` of a box-kernel density (+/- tolerance).

    Each value contributes a uniform density on [v - tol, v + tol]; the mass of a bin is the
    exact overlap. Bins: (-inf, e0), [e0, e1), ..., [e_k-1, inf).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(edges.size + 1)
    cdf = np.clip((edges[None, :] - v[:, None] + tolerance) / (2 * tolerance), 0.0, 1.0)
    return np.diff(np.concatenate(([0.0], cdf.mean(axis=0), [1.0])))


@dataclass(frozen=True)
class _Reference:
    """A baseline feature: its tolerance, bin edges and bin proportions."""

    tolerance: float
    edges: FloatArray
    props: FloatArray

    @classmethod
    def learn(cls, values: npt.ArrayLike, bins: int, tolerance: float) -> _Reference:
        edges = quantile_edges(values, bins)
        return cls(tolerance, edges, cls._props(values, edges, tolerance))

    @staticmethod
    def _props(values: npt.ArrayLike, edges: FloatArray, tolerance: float) -> FloatArray:
        if tolerance > 0:
            return kernel_mass(values, edges, tolerance)
        return bin_counts(values, edges).astype(np.float64)

    def score(self, values: npt.ArrayLike, epsilon: float) -> float:
        return psi(self.props, self._props(values, self.edges, self.tolerance), epsilon)


class _Window:
    """The baseline (first n samples), then a rolling window of the most recent ones."""

    def __init__(self, baseline_n: int, window_n: int) -> None:
        self.baseline_n = baseline_n
        self.baseline: list[Any] = []
        self.recent: collections.deque[Any] = collections.deque(maxlen=window_n)

    @property
    def ready(self) -> bool:
        return len(self.baseline) >= self.baseline_n

    def add(self, item: Any) -> bool:
        """Store a sample; True when it completed the baseline."""
        if self.ready:
            self.recent.append(item)
            return False
        self.baseline.append(item)
        return self.ready

    def clear(self) -> None:
        self.baseline.clear()
        self.recent.clear()


class DriftMonitor:
    """Drift scores of one camera against its baseline. Thread-safe; no I/O, no clock."""

    def __init__(self, cfg: DriftConfig, camera: str = "") -> None:
        self.cfg = cfg
        self.camera = camera
        self._lock = threading.Lock()
        self._inputs = _Window(cfg.baseline_samples, cfg.window_samples)
        self._outputs = _Window(cfg.baseline_samples, cfg.window_samples)
        self._diffs: collections.deque[float] = collections.deque(maxlen=cfg.frozen_window_samples)
        self._in_ref: dict[str, _Reference] = {}
        self._out_ref: dict[str, _Reference | None] = {}
        self._prev_luma: npt.NDArray[np.float32] | None = None
        self._last_input_t: float | None = None
        self._last_kept_t: float | None = None
        self._active: set[DriftCode] = set()

    def due(self, t: float) -> bool:
        """Whether a frame at time `t` should be sampled (one per `sample_every_s`)."""
        last = self._last_input_t
        # a relative slack so frame times like i / fps land on the interval despite rounding
        return last is None or t - last >= self.cfg.sample_every_s * (1 - 1e-6)

    def observe_image(self, image: npt.NDArray[Any], t: float) -> FrameStats:
        """Compute `frame_stats` of a small image against the previous sample and observe it."""
        stats = frame_stats(image, self._prev_luma)
        self.observe_input(stats, t)
        return stats

    def observe_input(self, stats: FrameStats, t: float) -> None:
        row = np.array([getattr(stats, name) for name in _INPUT_FEATURES], dtype=np.float64)
        row[2] = np.log1p(row[2])  # sharpness varies by orders of magnitude between scenes
        with self._lock:
            self._last_input_t = t
            self._prev_luma = stats.luma
            if stats.diff is not None:
                self._diffs.append(stats.diff)
            if self._inputs.add(row):
                base = np.stack(self._inputs.baseline)
                self._in_ref = {
                    name: _Reference.learn(base[:, i], self.cfg.bins, tol)
                    for i, (name, tol) in enumerate(
                        zip(_INPUT_FEATURES, self._tolerances(), strict=True)
                    )
                }

    def observe_output(self, n_dets: int, scores: npt.ArrayLike, t: float) -> None:
        """Detections of one sampled frame (call it for the same frames as observe_input)."""
        del t  # part of the interface for symmetry; windows count samples, not seconds
        conf = np.asarray(scores, dtype=np.float64).ravel().copy()
        with self._lock:
            if self._outputs.add((float(n_dets), conf)):
                counts = [n for n, _ in self._outputs.baseline]
                confs = np.concatenate([c for _, c in self._outputs.baseline])
                cfg = self.cfg
                self._out_ref = {
                    DriftCode.DETECTION_RATE.value: _Reference.learn(
                        counts, cfg.bins, cfg.tolerance_detections
                    ),
                    DriftCode.CONFIDENCE.value: _Reference.learn(
                        confs, cfg.bins, cfg.tolerance_confidence
                    )
                    if confs.size >= cfg.min_scores
                    else None,
                }

    def _tolerances(self) -> tuple[float, ...]:
        c = self.cfg
        return (
            c.tolerance_brightness,
            c.tolerance_contrast,
            c.tolerance_sharpness,
            c.tolerance_colour,
            c.tolerance_colour,
        )

    def rebaseline(self) -> None:
        """Start collecting a new baseline; drift scores read 0 until it and a window fill."""
        with self._lock:
            self._inputs.clear()
            self._outputs.clear()
            self._in_ref, self._out_ref = {}, {}

    @property
    def baseline_progress(self) -> float:
        """Fraction of the input baseline collected, 0-1."""
        with self._lock:
            return min(1.0, len(self._inputs.baseline) / self.cfg.baseline_samples)

    def scores(self) -> dict[str, float]:
        """Current score per DriftCode value (PSI; FROZEN: fraction of frozen samples)."""
        with self._lock:
            out = dict.fromkeys((c.value for c in DriftCode), 0.0)
            out.update(self._input_scores())
            out.update(self._output_scores())
            out[DriftCode.FROZEN.value] = self._frozen_fraction()
        return {k: round(v, 4) for k, v in out.items()}

    def _input_scores(self) -> dict[str, float]:
        if not self._in_ref or len(self._inputs.recent) < self.cfg.min_recent_samples:
            return {}
        recent = np.stack(self._inputs.recent)
        eps = self.cfg.epsilon
        s = {n: self._in_ref[n].score(recent[:, i], eps) for i, n in enumerate(_INPUT_FEATURES)}
        return {
            DriftCode.BRIGHTNESS.value: s["brightness"],
            DriftCode.CONTRAST.value: s["contrast"],
            DriftCode.SHARPNESS.value: s["sharpness"],
            DriftCode.COLOUR.value: max(s["colour_bg"], s["colour_rg"]),
        }

    def _output_scores(self) -> dict[str, float]:
        if not self._out_ref or len(self._outputs.recent) < self.cfg.min_recent_samples:
            return {}
        eps = self.cfg.epsilon
        rate_ref = self._out_ref[DriftCode.DETECTION_RATE.value]
        out = {}
        if rate_ref is not None:
            counts = [n for n, _ in self._outputs.recent]
            out[DriftCode.DETECTION_RATE.value] = rate_ref.score(counts, eps)
        conf_ref = self._out_ref[DriftCode.CONFIDENCE.value]
        confs = np.concatenate([c for _, c in self._outputs.recent])
        if conf_ref is not None and confs.size >= self.cfg.min_scores:
            out[DriftCode.CONFIDENCE.value] = conf_ref.score(confs, eps)
        return out

    def _frozen_fraction(self) -> float:
        if len(self._diffs) < self.cfg.frozen_window_samples:
            return 0.0
        d = np.fromiter(self._diffs, dtype=np.float64, count=len(self._diffs))
        return float(np.mean(d <= self.cfg.frozen_max_diff))

    def threshold(self, code: DriftCode) -> float:
        return self.cfg.frozen_fraction if code is DriftCode.FROZEN else self.cfg.threshold

    def check(self, t: float) -> list[DriftChange]:
        """Threshold crossings since the last check: each raised once, cleared once."""
        scores = self.scores()
        changes = []
        with self._lock:
            for code in DriftCode:
                score, limit = scores[code.value], self.threshold(code)
                if code not in self._active and score > limit:
                    self._active.add(code)
                    changes.append(DriftChange(self.camera, code, True, score, limit, t))
                elif code in self._active and score < limit * self.cfg.hysteresis:
                    self._active.discard(code)
                    changes.append(DriftChange(self.camera, code, False, score, limit, t))
        return changes

    @property
    def active(self) -> frozenset[DriftCode]:
        """Drift indicators raised and not yet cleared."""
        with self._lock:
            return frozenset(self._active)

    def keep_reason(self, scores: npt.ArrayLike, t: float) -> str | None:
        """Why the current frame is worth keeping for labelling (rate-limited), or None.

        A frame is kept while any drift is raised, or when its best detection score lies in
        the `low_confidence` band; at most one per `keep_every_s`.
        """
        cfg = self.cfg
        with self._lock:
            if not cfg.keep_samples or (
                self._last_kept_t is not None and t - self._last_kept_t < cfg.keep_every_s
            ):
                return None
            reason = None
            if self._active:
                reason = "drift-" + "-".join(sorted(c.value for c in self._active))
            else:
                conf = np.asarray(scores, dtype=np.float64)
                lo, hi = cfg.low_confidence
                if conf.size and lo <= float(conf.max()) < hi:
                    reason = "low_confidence"
            if reason is not None:
                self._last_kept_t = t
            return reason

    def health(self) -> dict[str, Any]:
        """Scores and state for the health report."""
        return {
            "baseline_progress": round(self.baseline_progress, 3),
            "scores": self.scores(),
            "active": sorted(c.value for c in self.active),
        }
