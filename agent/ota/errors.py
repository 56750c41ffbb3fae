"""Why an update stopped: one str-enum of reason codes and one small exception hierarchy.

    OtaError(reason, detail)        fatal for this update: report, do not retry this sequence
    +-- RetriableError              transient (network, server 5xx): retry with backoff

The reason code travels in `reported` (`update.reason`), so the controller can tell a
tampered artifact from a slow model without parsing prose.
"""

from __future__ import annotations

import enum


class ReasonCode(str, enum.Enum):
    # manifest (agent.ota.manifest.ManifestCode values, plus the device's own checks)
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    MISMATCH = "mismatch"
    """The signed manifest disagrees with the desired ref or with the artifact's content."""
    MANIFEST_UNAVAILABLE = "manifest_unavailable"
    # download
    TOO_LARGE = "too_large"
    NO_SPACE = "no_space"
    DOWNLOAD_FAILED = "download_failed"
    SHA_MISMATCH = "sha_mismatch"
    # staging and validation
    BAD_ARCHIVE = "bad_archive"
    INVALID_MODEL = "invalid_model"
    GOLDEN_FAILED = "golden_failed"
    TOO_SLOW = "too_slow"
    INVALID_CONFIG = "invalid_config"
    STAGING_FAILED = "staging_failed"
    # activation and probation
    ACTIVATION_FAILED = "activation_failed"
    PROBATION_ERRORS = "probation_errors"
    PROBATION_FPS = "probation_fps"
    PROBATION_DETECTIONS = "probation_detections"
    CRASH_LOOP = "crash_loop"
    """The process died repeatedly while the new version was activating or on probation."""
    SUPERSEDED = "superseded"
    """A newer desired ref arrived before this update went live."""
    INTERNAL = "internal"


class OtaError(Exception):
    """An update that cannot go on; `reason` is reported, `detail` is for humans."""

    retriable = False

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class RetriableError(OtaError):
    """A transient failure: the same step may succeed later (network, server error)."""

    retriable = True


__all__ = ["OtaError", "ReasonCode", "RetriableError"]
