"""factory_boy factories bound to the test session."""

from __future__ import annotations

import factory
from factory.alchemy import SQLAlchemyModelFactory

from app.db import db_session
from app.models import User
from app.services.accounts import hash_password

TEST_PASSWORD = "correct horse battery"
_TEST_HASH = hash_password(TEST_PASSWORD, rounds=4)


class BaseFactory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session = db_session
        # Under the per-test outer transaction a commit only releases a savepoint, so the
        # rows survive request teardown (which ends the session) and still roll back.
        sqlalchemy_session_persistence = "commit"


class UserFactory(BaseFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password_hash = _TEST_HASH
    auth_provider = "local"
    is_admin = False


class AdminFactory(UserFactory):
    is_admin = True
