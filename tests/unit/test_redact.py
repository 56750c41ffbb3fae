"""Credentials never reach logs: redact_url / redact_text."""

from __future__ import annotations

import pytest

from agent.ingest.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***:***@10.0.0.5:554/stream1"),
        ("rtsps://admin:hunter2@cam.local/live", "rtsps://***:***@cam.local/live"),
        ("http://user:pw@host:8080/snapshot.jpg", "http://***:***@host:8080/snapshot.jpg"),
        ("rtsp://viewer@10.0.0.5/s", "rtsp://***@10.0.0.5/s"),
        ("rtsp://admin:@10.0.0.5/s", "rtsp://***:***@10.0.0.5/s"),
        ("rtsp://admin:p@ss@10.0.0.5/s", "rtsp://***:***@10.0.0.5/s"),
        ("rtsp://admin:pa/ss?x@10.0.0.5/s", "rtsp://***:***@10.0.0.5/s"),
        ("RTSP://Admin:Secret@H/s", "RTSP://***:***@H/s"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
        ("http://host/path/user@example", "http://host/path/user@example"),
        ("/var/video/cam@1.mp4", "/var/video/cam@1.mp4"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_covers_every_url_in_an_ffmpeg_message() -> None:
    message = (
        "[Errno 111] Connection refused: 'rtsp://admin:hunter2@10.0.0.5:554/s' "
        "(fallback http://ops:s3cr3t@10.0.0.6/cgi failed too)"
    )
    redacted = redact_text(message)
    assert "hunter2" not in redacted
    assert "s3cr3t" not in redacted
    assert "admin" not in redacted
    assert "'rtsp://***:***@10.0.0.5:554/s'" in redacted
    assert "http://***:***@10.0.0.6/cgi" in redacted
    assert redacted.startswith("[Errno 111] Connection refused: ")


def test_redact_text_leaves_text_without_credentials_alone() -> None:
    text = "opened rtsp://10.0.0.5/s at 10 fps; mail ops@example.com"
    assert redact_text(text) == text
