"""Per-account login throttling with growing delays, in Redis.

The per-IP limit (flask-limiter, ``RATELIMIT_AUTH``) does not stop a password guesser who
spreads the attempts over many addresses; this one counts the attempts on one account name,
whatever address they come from.

- The key is the name as typed (username or email, trimmed and lower-cased), hashed; an
  unknown name is throttled exactly like a known one, so throttling does not reveal which
  accounts exist.
- Every attempt is counted *before* the password is checked (atomically, in one Lua
  script), and a successful login clears the count. So parallel attempts cannot slip through
  between the check and the count, and "count" means consecutive failed attempts.
- The first ``free_failures`` attempts are free. The next one starts a delay of
  ``base``, the one after ``2 * base``, then ``4 * base`` ... capped at ``max`` (default
  1 s, 2 s, 4 s ... 15 min). During the delay every attempt for that name is refused with
  429 and Retry-After, *even with the right password* (else the delay would not slow down a
  guesser, who would learn the password the moment it is tried), and it is not counted.
- The count is forgotten ``reset`` seconds after the last counted attempt.

A real user is never locked out for longer than the cap (15 min by default); an attacker who
keeps guessing can keep one account at the cap, which is the price of throttling at all.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from app.config import Settings

KEY_PREFIX = "vibebox:login-throttle:"

# KEYS[1] attempt count, KEYS[2] delay lock; ARGV free, base ms, max ms, reset ms.
# Returns {1, count} when the attempt may go on, {0, remaining ms} when it is refused.
_BEGIN = """
local remaining = redis.call('PTTL', KEYS[2])
if remaining > 0 then
  return {0, remaining}
end
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local free = tonumber(ARGV[1])
if count > free then
  local exponent = math.min(count - free - 1, 40)
  local delay = math.min(tonumber(ARGV[2]) * 2 ^ exponent, tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], '1', 'PX', math.max(1, math.floor(delay)))
end
return {1, count}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_seconds: int = 0  # whole seconds, >= 1 when refused


def _keys(login: str) -> tuple[str, str]:
    digest = hashlib.sha256(login.strip().lower().encode("utf-8", "replace")).hexdigest()
    return f"{KEY_PREFIX}{digest}:count", f"{KEY_PREFIX}{digest}:lock"


def _redis(settings: Settings) -> Any:
    from app.extensions import get_redis

    return get_redis(settings.redis_url)


def begin_attempt(settings: Settings, login: str) -> Verdict:
    """Count a login attempt for ``login``, or refuse it while the account's delay runs."""
    count_key, lock_key = _keys(login)
    allowed, value = _redis(settings).eval(
        _BEGIN,
        2,
        count_key,
        lock_key,
        settings.login_free_failures,
        int(settings.login_delay_base_seconds * 1000),
        int(settings.login_delay_max_seconds * 1000),
        int(settings.login_failure_reset_seconds * 1000),
    )
    if int(allowed):
        return Verdict(True)
    return Verdict(False, max(1, math.ceil(int(value) / 1000)))


def succeeded(settings: Settings, login: str) -> None:
    """A correct password: the account's count and delay start over."""
    _redis(settings).delete(*_keys(login))


def clear_all(settings: Settings) -> None:
    """Forget every account's count and delay (operators; tests)."""
    client = _redis(settings)
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
    if keys:
        client.delete(*keys)
