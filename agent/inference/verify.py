"""Does a candidate backend compute what ONNX Runtime on the CPU does, within a stated tolerance?

`verify_backend` runs the same input tensors through two `Backend`s and compares every
output elementwise with numpy's `allclose` rule, |candidate - reference| <= atol +
rtol * |reference|. The report names, for each input and output, the largest absolute
error, where it is, and the worst error relative to the allowance (<= 1.0 passes).
`edge-agent models verify DIR` runs it on the manifest's golden input plus a fixed
random input, with `tolerance_for(precision)` as the stated tolerance.

Tolerances are for raw network outputs (YOLOX: grid offsets, log sizes, sigmoid
scores, all of order 1): FP32 engines (TF32 off) agree with ONNX Runtime to about
1e-4; FP16 engines differ by a few 1e-3 to 1e-2, hence 0.05 + 5 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.inference.backend import Backend
from agent.inference.errors import InferenceError


@dataclass(frozen=True, slots=True)
class Tolerance:
    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"|candidate - reference| <= {self.atol:g} + {self.rtol:g} * |reference|"


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3),
    "fp16": Tolerance(atol=0.05, rtol=0.05),
}


def tolerance_for(precision: str) -> Tolerance:
    """The stated tolerance for an engine precision label ('fp16+qdq' counts as fp16)."""
    base = precision.split("+", 1)[0]
    if "+qdq" in precision:
        return Tolerance(atol=0.1, rtol=0.1)
    return TOLERANCES.get(base, TOLERANCES["fp32"])


@dataclass(frozen=True, slots=True)
class OutputDiff:
    input_label: str
    output_index: int
    shape: tuple[int, ...]
    max_abs_error: float
    worst_at: tuple[int, ...]
    """Index of the largest absolute error."""
    worst_ratio: float
    """max over elements of |error| / (atol + rtol * |reference|); passes when <= 1."""
    mismatched: int
    """Elements outside the tolerance."""
    problem: str = ""
    """Shape/dtype mismatch or non-finite values ('' when comparable)."""

    @property
    def passed(self) -> bool:
        return not self.problem and self.mismatched == 0

    def line(self) -> str:
        head = f"input {self.input_label} output {self.output_index} {list(self.shape)}"
        if self.problem:
            return f"FAIL {head}: {self.problem}"
        verdict = "ok  " if self.passed else "FAIL"
        return (
            f"{verdict} {head}: max abs error {self.max_abs_error:.3g} at {list(self.worst_at)}, "
            f"worst error/allowance {self.worst_ratio:.3g}, {self.mismatched} element(s) outside"
        )


@dataclass(frozen=True, slots=True)
class VerifyReport:
    candidate: str
    reference: str
    tolerance: Tolerance
    diffs: tuple[OutputDiff, ...]
    error: str = ""
    """A run failure (the candidate raised); the report then fails."""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.diffs) and all(d.passed for d in self.diffs)

    @property
    def max_abs_error(self) -> float:
        values = [d.max_abs_error for d in self.diffs if not d.problem]
        return max(values) if values else float("nan")

    def format(self) -> str:
        lines = [
            f"verify candidate={self.candidate} reference={self.reference}",
            f"tolerance: {self.tolerance}",
            *(d.line() for d in self.diffs),
        ]
        if self.error:
            lines.append(f"FAIL run error: {self.error}")
        verdict = "PASS" if self.passed else "FAIL"
        count = len(self.diffs)
        lines.append(
            f"{verdict}: max abs error {self.max_abs_error:.3g} over {count} comparison(s)"
        )
        return "\n".join(lines)


def compare_output(
    cand: npt.NDArray[np.generic],
    ref: npt.NDArray[np.generic],
    tol: Tolerance,
    input_label: str,
    index: int,
) -> OutputDiff:
    """One output tensor of the candidate against the reference."""
    shape = tuple(int(d) for d in ref.shape)
    if cand.shape != ref.shape:
        problem = f"shape {list(cand.shape)} differs from the reference {list(shape)}"
        return OutputDiff(input_label, index, shape, float("inf"), (), float("inf"), -1, problem)
    c = np.asarray(cand, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if not np.isfinite(c).all():
        bad = int(np.size(c) - np.count_nonzero(np.isfinite(c)))
        problem = f"{bad} non-finite value(s) (NaN/Inf) in the candidate"
        return OutputDiff(input_label, index, shape, float("inf"), (), float("inf"), bad, problem)
    if c.size == 0:
        return OutputDiff(input_label, index, shape, 0.0, (), 0.0, 0)
    err = np.abs(c - r)
    ratio = err / (tol.atol + tol.rtol * np.abs(r))
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
    return OutputDiff(
        input_label,
        index,
        shape,
        float(err.max()),
        worst,
        float(ratio.max()),
        int(np.count_nonzero(ratio > 1.0)),
    )


def verify_backend(
    candidate: Backend,
    reference: Backend,
    inputs: Sequence[npt.NDArray[np.float32]] | Sequence[tuple[str, npt.NDArray[np.float32]]],
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> VerifyReport:
    """Compare `candidate` with `reference` on each input ([1, C, H, W] tensors, optionally
    labelled as (label, tensor)). The candidate's run errors end up in the report."""
    tol = Tolerance(atol, rtol)
    diffs: list[OutputDiff] = []
    error = ""
    for i, item in enumerate(inputs):
        label, tensor = item if isinstance(item, tuple) else (str(i), item)
        want = reference.infer(tensor)
        try:
            got = candidate.infer(tensor)
        except InferenceError as exc:
            error = f"input {label}: {exc}"
            break
        if len(got) != len(want):
            error = f"input {label}: {len(got)} outputs, the reference has {len(want)}"
            break
        diffs.extend(
            compare_output(g, w, tol, label, k)
            for k, (g, w) in enumerate(zip(got, want, strict=True))
        )
    return VerifyReport(candidate.name, reference.name, tol, tuple(diffs), error)


__all__ = [
    "TOLERANCES",
    "OutputDiff",
    "Tolerance",
    "VerifyReport",
    "compare_output",
    "tolerance_for",
    "verify_backend",
]
