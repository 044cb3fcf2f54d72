"""The one mapping of HTTP client faults to domain errors, for every remote system we call
with ``requests`` (the Happy server, WeChat Pay, the Alipay gateway).

- A URL that cannot be used (invalid, no or unknown scheme) is the operator's configuration:
  :class:`PermanentError`, retrying cannot help.
- A timeout or a connection-level failure may go away: :class:`TransientError`, bounded by the
  caller's retry budget.
- An answer with status 5xx or 429 may go away too (:func:`is_transient_status`); other 4xx
  are the caller's to classify, since each service words its refusals differently.

Exceptions are re-raised ``from None``: the text of a ``requests`` exception can quote the URL
or the request headers, i.e. signed requests and bearer tokens, which must never reach a log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests

from app.errors import PermanentError, TransientError

_UNUSABLE_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


@contextmanager
def request_faults(
    what: str, service: str, *, timeout: float | tuple[float, float], url_setting: str
) -> Iterator[None]:
    """Map the faults of the ``requests`` call made inside the block.

    ``what`` names the call in operator messages ("POST /v1/auth"); ``service`` names the
    remote system in user-safe messages ("WeChat Pay"); ``url_setting`` names what an operator
    fixes when the URL is unusable ("WECHAT_PAY_API_BASE").
    """
    try:
        yield
    except _UNUSABLE_URL as exc:
        raise PermanentError(
            f"{what}: bad {url_setting} ({type(exc).__name__})",
            safe_message=f"{service} is misconfigured.",
        ) from None
    except requests.Timeout:
        raise TransientError(
            f"{what}: timed out after {timeout}s",
            safe_message=f"{service} did not answer in time.",
        ) from None
    except requests.RequestException as exc:
        raise TransientError(
            f"{what}: {type(exc).__name__}", safe_message=f"{service} is unreachable."
        ) from None


def is_transient_status(status: int) -> bool:
    """5xx and 429 may go away on their own; the retry budget bounds them."""
    return status >= 500 or status == 429
