"""Engine and session for the API, the workers and the CLI (plain SQLAlchemy 2).

One scoped session per thread; the boundary (request teardown, Celery task_postrun)
calls ``db_session.remove()``. Services receive a ``Session`` and never commit.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

SessionFactory = sessionmaker(expire_on_commit=False)
db_session: scoped_session[Session] = scoped_session(SessionFactory)

_engines: dict[str, Engine] = {}

#: A pooled connection idle longer than this is pinged before use (a server restart or an
#: idle-connection kill shows up there, not in a request). Busy connections are not pinged:
#: ``pool_pre_ping`` cost one round trip on EVERY checkout, a third of a status poll's.
LIVENESS_IDLE_SECONDS = 10.0
#: Connections are replaced after this long whatever happens (server-side idle limits,
#: proxies that drop old flows).
POOL_RECYCLE_SECONDS = 1800
_IDLE_SINCE = "vibebox_idle_since"


#: Pooled connections kept open per process unless the caller asks for more.
POOL_SIZE = 5


def get_engine(url: str, pool_size: int = POOL_SIZE) -> Engine:
    """One pooled engine per URL per process (forked workers get their own). Up to
    ``pool_size`` connections stay open; 10 more are opened when needed and closed again."""
    engine = _engines.get(url)
    if engine is None:
        engine = create_engine(
            url, pool_recycle=POOL_RECYCLE_SECONDS, pool_size=pool_size, max_overflow=10
        )
        install_idle_liveness_check(engine)
        _engines[url] = engine
    return engine


def init_db(url: str, pool_size: int = POOL_SIZE) -> Engine:
    engine = get_engine(url, pool_size)
    SessionFactory.configure(bind=engine)
    return engine


def autocommit_reads(session: Session) -> Session:
    """Let ``session`` run its statements without a transaction (psycopg autocommit): no
    ``BEGIN`` before the first statement and no ``ROLLBACK`` at the end, two of the three
    round trips of a one-statement read. Only for read-only work: each statement still sees
    one consistent snapshot, as it would in a READ COMMITTED transaction. Call it before the
    session's first statement. A session bound to a connection (the tests' rolled-back
    transaction) is left as it is."""
    if isinstance(session.get_bind(), Engine) and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return session


def dispose_engines() -> None:
    """Drop pooled connections (after fork: never share sockets between processes)."""
    for engine in _engines.values():
        engine.dispose(close=False)


def install_idle_liveness_check(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat idle longer than
    ``LIVENESS_IDLE_SECONDS``; a dead one is replaced (the pool retries the checkout). A
    connection that dies while in steady use fails its statement once, and SQLAlchemy then
    invalidates every connection of the pool opened before that moment."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _note_idle(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since <= LIVENESS_IDLE_SECONDS:
            return  # new, or used a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any DBAPI failure: the connection is unusable
            raise DisconnectionError(f"pooled connection failed its liveness ping: {exc}") from exc
