"""Credential redaction for source URLs and for any text that may quote one.

Camera URLs carry passwords (`rtsp://user:secret@host/...`), and FFmpeg repeats the
URL in its error messages. Every log line and exception message of the ingest stage
that mentions a source goes through `redact_url` or `redact_text`.
"""

from __future__ import annotations

import re

_REDACTED_PAIR = "***:***@"
_REDACTED_USER = "***@"

# scheme://user[:password]@ . The user part stops at '/', '?', '#', whitespace or quotes.
# A password runs to the last '@' of the whitespace-delimited token, so passwords with
# unencoded '@', '/' or '?' are covered too. This errs on the safe side: a URL without
# credentials but with 'host:port/path@x' loses 'host:port/path' in the log line.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#\"'<>@:]*(?::[^\s\"'<>]*)?)@",
)


def _replace(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    marker = _REDACTED_PAIR if ":" in userinfo else _REDACTED_USER
    return match.group("scheme") + marker


def redact_url(url: str) -> str:
    """`url` with any `user:password@` replaced by `***:***@` (or `user@` by `***@`)."""
    return _URL_CREDENTIALS.sub(_replace, url, count=1)


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL inside it redacted."""
    return _URL_CREDENTIALS.sub(_replace, text)
