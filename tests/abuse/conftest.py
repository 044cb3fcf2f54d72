"""The abuse reproducers drive the real stack like the end-to-end tests: same fixtures."""

from tests.e2e.conftest import add_to_pool, admin, live, make_user  # noqa: F401
