"""Beat runs once, however many beat processes are started (``beat_scheduler``).

Every beat process uses :class:`LeaderScheduler`: it sends due tasks only while it holds the
leader lease in Redis (``vibebox:beat:leader``, renewed every third of its
``BEAT_LEADER_TTL_SECONDS``); the others stand by and take over within one TTL of the
leader's death. The sweepers' own locks (``workers.base.sweeper``) keep two runs of a sweep
from overlapping; this lease keeps a second beat from doubling the sweeps at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler

from app.config import BeatSettings, CelerySettings

log = logging.getLogger(__name__)

LEADER_KEY = "vibebox:beat:leader"
# Renew our own lease, or take a free one: 1 when we lead afterwards, else 0.
_LEAD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def leader_ttl() -> float:
    return max(1.0, BeatSettings.from_env().leader_ttl_seconds)


class LeaderScheduler(PersistentScheduler):
    """A ``PersistentScheduler`` that sends only while it holds the leader lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.leader_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = leader_ttl()
        self._redis = redis.Redis.from_url(
            CelerySettings.from_env().redis_url,
            socket_connect_timeout=5,
            socket_timeout=5,
        )
        self._leading: bool | None = None
        super().__init__(*args, **kwargs)

    def is_leader(self) -> bool:
        """Renew or take the lease; False (stand by) when another beat holds it or Redis is
        unreachable - better no sweep for a while than two beats each thinking it leads."""
        try:
            leading = bool(
                self._redis.eval(_LEAD, 1, LEADER_KEY, self.leader_token, int(self.ttl * 1000))
            )
        except redis.RedisError as exc:
            log.warning("beat: cannot reach Redis for the leader lease (%s); standing by", exc)
            leading = False
        if leading != self._leading:
            log.info(
                "beat: %s (%s)",
                "leading: sending due tasks" if leading else "another beat leads; standing by",
                self.leader_token,
            )
            self._leading = leading
        return leading

    def tick(self, *args: Any, **kwargs: Any) -> float:
        renew_in = self.ttl / 3
        if not self.is_leader():
            return renew_in
        return min(float(super().tick(*args, **kwargs)), renew_in)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._leading:  # hand over at once rather than after the TTL
                with contextlib.suppress(redis.RedisError):
                    self._redis.eval(_RELEASE, 1, LEADER_KEY, self.leader_token)
