"""Logging set-up with a last-line redaction filter.

Code must never log secrets in the first place; the filter is a safety net for library
messages (for example a request body echoed by a debug handler).
"""

from __future__ import annotations

import logging
import re

_RULES = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[REDACTED]"),
    # "password": "...", 'token': '...', secret=..., ?token=...&
    (
        re.compile(
            r"""(?i)(["']?(?:password|passwd|token|secret|access_token|refresh_token|"""
            r"""authorization|api_key|private_key)["']?\s*[:=]\s*)(["']?)[^"'&\s,}]+"""
        ),
        r"\1\2[REDACTED]",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_configured = False


def configure(level: str = "INFO") -> None:
    global _configured
    root = logging.getLogger()
    if not _configured:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        handler.addFilter(RedactingFilter())
        if not root.handlers:
            root.addHandler(handler)
        for existing in root.handlers:
            existing.addFilter(RedactingFilter())
        _configured = True
    root.setLevel(level)
    # Alembic's INFO lines are noise when /readyz reads the migration scripts.
    logging.getLogger("alembic").setLevel(logging.WARNING)
