"""Waiting for a condition in tests: poll until it holds, with a generous limit, and fail
with what was awaited and the last value seen. Tests never assert on how long it took."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 30.0,
    what: str = "the condition",
    *,
    interval: float = 0.1,
) -> T:
    """Call ``condition`` until it returns something truthy and return that; raise
    AssertionError after ``timeout`` seconds (checked once more at the limit)."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
