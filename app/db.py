"""Engine and session for the API, the workers and the CLI (plain SQLAlchemy 2).

One scoped session per thread; the boundary (request teardown, Celery task_postrun)
calls ``db_session.remove()``. Services receive a ``Session`` and never commit.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

SessionFactory = sessionmaker(expire_on_commit=False)
db_session: scoped_session[Session] = scoped_session(SessionFactory)

_engines: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One pooled engine per URL per process (forked workers get their own)."""
    engine = _engines.get(url)
    if engine is None:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        _engines[url] = engine
    return engine


def init_db(url: str) -> Engine:
    engine = get_engine(url)
    SessionFactory.configure(bind=engine)
    return engine


def dispose_engines() -> None:
    """Drop pooled connections (after fork: never share sockets between processes)."""
    for engine in _engines.values():
        engine.dispose(close=False)
