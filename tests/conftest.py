"""Shared fixtures: real PostgreSQL and Redis, the Flask app, a real Celery worker.

`make test` starts (or reuses) PostgreSQL and Redis and exports DATABASE_URL / REDIS_URL.
Each xdist worker gets its own database (``<name>_<worker>``) built once with
``alembic upgrade head`` and its own Redis logical database, so parallel tests never
share state. Within a test, the database work is rolled back (savepoints).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from app.config import Settings, normalize_database_url
from tests.support.sshd import box_user_prefix

# Metrics in prometheus_client's multiprocess mode, as under `make run`: a fresh directory per
# test process (each xdist worker imports this module itself), set before prometheus_client
# is imported; the Celery worker and API subprocesses started from here inherit it.
PROMETHEUS_DIR = tempfile.mkdtemp(prefix="vibebox-prometheus-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_DIR
atexit.register(shutil.rmtree, PROMETHEUS_DIR, True)

# The test boxes are sshds on this very machine: a Fabric bootstrap run by a test (cloud
# servers, `pool bootstrap`) must never edit this machine's /etc/environment. Whatever its
# environment step writes lands in this per-process file instead (and, not being read by any
# sshd, makes the bootstrap's verification fail loudly rather than change the host).
BOOTSTRAP_SINK_DIR = tempfile.mkdtemp(prefix="vibebox-bootstrap-")
os.environ["BOOTSTRAP_ENV_METHOD"] = "pam_env"
os.environ["BOOTSTRAP_ENV_FILE"] = os.path.join(BOOTSTRAP_SINK_DIR, "environment")
atexit.register(shutil.rmtree, BOOTSTRAP_SINK_DIR, True)

_REQUIRED = ("DATABASE_URL", "REDIS_URL")
# /metrics and /readyz?workers=1 take this bearer token outside development.
METRICS_TOKEN = "test-metrics-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def _worker_index(config: pytest.Config) -> int:
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    return int(worker[2:]) if worker.startswith("gw") else 0


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in _REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.exit(
            f"{', '.join(missing)} not set: run the suite with `make test`, which starts "
            "PostgreSQL and Redis (embedded ones when none are configured)",
            returncode=2,
        )
    _isolate_environment(_worker_index(config))


def _isolate_environment(index: int) -> None:
    """Point DATABASE_URL and REDIS_URL at this test process's own database and Redis db."""
    # Derive from the URLs `make test` gave, even in processes that inherit ours.
    base_db = os.environ.setdefault("VIBEBOX_TEST_BASE_DATABASE_URL", os.environ["DATABASE_URL"])
    base_redis = os.environ.setdefault("VIBEBOX_TEST_BASE_REDIS_URL", os.environ["REDIS_URL"])
    base = make_url(normalize_database_url(base_db))
    name = f"{base.database or 'vibebox'}_t{index}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = base.set(database=name).render_as_string(hide_password=False)
    head, _, tail = base_redis.rpartition("/")
    root = head if tail.isdigit() and head.count("/") >= 2 else base_redis.rstrip("/")
    redis_url = f"{root}/{1 + index % 15}"
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "VIBEBOX_ENV": "testing",
            "BCRYPT_ROUNDS": "4",
            "PAYMENT_PROVIDERS": "dev",
            # Pool servers only on this machine: nothing a test (or the fuzzer) adds to the
            # pool is ever looked for beyond loopback.
            "POOL_ALLOWED_NETWORKS": "127.0.0.0/8",
            "METRICS_TOKEN": METRICS_TOKEN,
            # The product's box users on the test servers carry this process's prefix,
            # so the fleet removes exactly its own (tests/support/sshd.py).
            "BOX_USER_PREFIX": box_user_prefix(),
        }
    )
    if "workers" in sys.modules:  # imported before this: its Celery settings are stale
        import celery_config
        from app.config import BeatSettings, CelerySettings
        from workers import celery_app

        celery_app.conf.update(
            celery_config.options(CelerySettings.from_env(), BeatSettings.from_env())
        )


# --- test tiers (README: Tests) ------------------------------------------------------------
# A test's tier markers follow from what it needs: the fixtures it uses (directly or through
# other fixtures) and where it lives. Tests that start such processes themselves carry the
# marker in their module. `make test-fast` deselects them all and sets VIBEBOX_TEST_TIER=fast,
# under which the support classes refuse to start a worker, beat, sshd or RabbitMQ
# (tests/support/tiers.py): a test missing its marker fails there instead of slowing the tier.
TIER_FIXTURES = {
    "e2e": frozenset({"celery_worker", "celery_beat", "live"}),
    "sshd": frozenset({"box_fleet", "box", "do_double", "pool_fleet"}),
    "rabbitmq": frozenset({"rabbitmq"}),
}
TIER_DIRECTORIES = {"e2e": "e2e", "ops": "ops", "fuzz": "fuzz"}  # tests/<directory>/ -> marker
TESTS_ROOT = os.path.dirname(os.path.abspath(__file__))


def tier_markers(fixturenames: Any, path: str) -> set[str]:
    """The tier markers of a test using ``fixturenames`` in the file ``path``."""
    markers = {marker for marker, names in TIER_FIXTURES.items() if names & set(fixturenames)}
    parts = os.path.relpath(path, TESTS_ROOT).split(os.sep)
    markers.update(m for m, directory in TIER_DIRECTORIES.items() if parts[0] == directory)
    return markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in sorted(tier_markers(getattr(item, "fixturenames", ()), str(item.path))):
            item.add_marker(marker)


STRIPE_WEBHOOK_SECRET = "whsec_test_vibebox"
STRIPE_SECRET_KEY = "sk_test_vibebox"
# Stripe prices mirror the seeded plans (USD cents), as an operator would configure them.
STRIPE_PRICES = {
    "basic:monthly": ("price_basic_monthly", 2900, "month"),
    "basic:yearly": ("price_basic_yearly", 29000, "year"),
    "pro:monthly": ("price_pro_monthly", 7900, "month"),
    "pro:yearly": ("price_pro_yearly", 79000, "year"),
    "enterprise:monthly": ("price_enterprise_monthly", 19900, "month"),
    "enterprise:yearly": ("price_enterprise_yearly", 199000, "year"),
}


@pytest.fixture(scope="session")
def payment_doubles():  # type: ignore[no-untyped-def]
    """Local doubles of Stripe, WeChat Pay and Alipay (real SDKs, real signatures), and the
    environment that points the app and the worker at them."""
    import json
    from types import SimpleNamespace

    from tests.support.payments import alipay_double
    from tests.support.payments.stripe_double import Price, StripeDouble
    from tests.support.payments.wechat_double import WeChatPayDouble, make_keys

    stripe = StripeDouble(
        [Price(pid, amount, "usd", interval) for pid, amount, interval in STRIPE_PRICES.values()],
        api_key=STRIPE_SECRET_KEY,
    ).start()
    wechat = WeChatPayDouble(make_keys()).start()
    alipay_keys = alipay_double.make_keys()
    alipay = alipay_double.AlipayDouble(
        app_public_key=alipay_keys.app_public, alipay_private_key=alipay_keys.alipay_private
    ).start()
    env = {
        "PAYMENT_PROVIDERS": "dev,stripe,wechat,alipay",
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe.url,
        "STRIPE_PRICE_IDS": json.dumps({k: v[0] for k, v in STRIPE_PRICES.items()}),
        **wechat.provider_env(),
        "ALIPAY_APP_ID": alipay_double.DEFAULT_APP_ID,
        "ALIPAY_SELLER_ID": alipay_double.DEFAULT_SELLER_ID,
        "ALIPAY_PRIVATE_KEY": alipay_keys.app_private,
        "ALIPAY_PUBLIC_KEY": alipay_keys.alipay_public,
        "ALIPAY_GATEWAY": alipay.url,
    }
    os.environ.update(env)
    yield SimpleNamespace(
        stripe=stripe,
        wechat=wechat,
        alipay=alipay,
        alipay_private_key=alipay_keys.alipay_private,
        env=env,
    )
    stripe.stop()
    wechat.stop()
    alipay.stop()


@pytest.fixture(scope="session")
def settings(payment_doubles: Any) -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def migrated_engine(settings: Settings) -> Iterator[Engine]:
    """The test database, rebuilt from scratch with `alembic upgrade head` once per session."""
    from alembic import command

    from app.services.readiness import alembic_config

    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_client(settings: Settings):  # type: ignore[no-untyped-def]
    from app.extensions import get_redis

    client = get_redis(settings.redis_url)
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def app(settings: Settings, migrated_engine: Engine, redis_client: Any):  # type: ignore[no-untyped-def]
    from app import create_app

    return create_app(settings=settings)


@pytest.fixture
def db(app: Any, migrated_engine: Engine) -> Iterator[Connection]:
    """Per-test transaction: everything a test (and the app under test) writes is rolled
    back, while the code's own commits become savepoint releases."""
    from app.db import SessionFactory, db_session
    from app.services import jobs

    connection = migrated_engine.connect()
    outer = connection.begin()
    db_session.remove()
    SessionFactory.configure(bind=connection, join_transaction_mode="create_savepoint")
    # No worker runs here: what the code enqueues is collected, never sent to a broker
    # (payment events are applied by the test client after each request: InProcessClient).
    published: list[object] = []
    _published[:] = [published]
    jobs.set_publisher(published.append)
    try:
        yield connection
    finally:
        jobs.set_publisher(None)
        _published.clear()
        db_session.remove()
        SessionFactory.kw.pop("join_transaction_mode", None)  # back to the default
        SessionFactory.configure(bind=migrated_engine)
        outer.rollback()
        connection.close()


_addresses = count(1)
_published: list[list[object]] = []  # the current test's collected jobs (``db``)


def run_payment_jobs() -> int:
    """Do what the worker's ``billing.apply_payment_event`` does for every payment event a
    webhook recorded in this test (in-process tests have no worker). Returns how many."""
    from app.db import db_session
    from app.services import billing
    from app.services.jobs import PaymentJob

    done = 0
    while _published:
        queue = _published[0]
        todo = [j for j in queue if isinstance(j, PaymentJob)]
        if not todo:
            return done
        queue[:] = [j for j in queue if not isinstance(j, PaymentJob)]
        for job in todo:
            billing.apply_recorded_event(db_session(), uuid.UUID(job.event_id))
            db_session.commit()
            db_session.remove()
            done += 1
    return done


class InProcessClient(FlaskClient):
    """The Flask test client, plus the payment worker's part after each request."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        run_payment_jobs()
        return response


@pytest.fixture
def client_ip() -> str:
    """A distinct client address per test, so per-IP rate limits never leak between tests."""
    n = next(_addresses) + os.getpid() * 1000
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


@pytest.fixture
def client(app: Any, db: Connection, client_ip: str):  # type: ignore[no-untyped-def]
    from app.services import login_throttle

    # Per-account login throttling counts by account name, whatever the address: start each
    # test with no failed logins left over from an earlier one in this process.
    login_throttle.clear_all(app.config["VIBEBOX_SETTINGS"])
    test_client = InProcessClient(app, app.response_class, use_cookies=True)
    test_client.environ_base["REMOTE_ADDR"] = client_ip
    return test_client


@pytest.fixture
def session(db: Connection):  # type: ignore[no-untyped-def]
    from app.db import db_session

    return db_session()


@pytest.fixture(scope="session")
def happy_double():  # type: ignore[no-untyped-def]
    """The local Happy server double (real ed25519 checks), one per test process."""
    from tests.support.happy_double import HappyDouble

    with HappyDouble() as double:
        yield double


@pytest.fixture(scope="session")
def box_fleet(happy_double: Any):  # type: ignore[no-untyped-def]
    """Real OpenSSH boxes on 127.0.0.1 (own user, port, host key, `happy` stand-in)."""
    from tests.support.sshd import BoxFleet

    with BoxFleet(happy_double.url) as fleet:
        yield fleet


@pytest.fixture(scope="session")
def do_double(box_fleet: Any):  # type: ignore[no-untyped-def]
    """The DigitalOcean v2 API double; its droplets are real sshd machines on loopback."""
    from tests.support.do_double import DigitalOceanDouble

    with DigitalOceanDouble(box_fleet) as double:
        yield double


@pytest.fixture
def box(box_fleet: Any):  # type: ignore[no-untyped-def]
    """A fresh box, destroyed after the test."""
    new_box = box_fleet.new_box()
    yield new_box
    box_fleet.remove(new_box)


# Short budgets so fault tests finish in seconds; the code paths are the production ones.
WORKER_TEST_ENV = {
    "PROVISION_MAX_ATTEMPTS": "4",
    "PROVISION_RETRY_BASE_SECONDS": "1",
    "PROVISION_RETRY_MAX_SECONDS": "2",
    "CAPACITY_RETRY_MAX_SECONDS": "1",
    "STUCK_STEP_SECONDS": "6",
    "RECONCILE_INTERVAL_SECONDS": "2",
    "MARK_RUNNING_TIMEOUT_SECONDS": "10",
    "MARK_RUNNING_POLL_SECONDS": "0.2",
    "HAPPY_TIMEOUT_SECONDS": "2",
    "SSH_CONNECT_TIMEOUT_SECONDS": "3",
    "SSH_COMMAND_TIMEOUT_SECONDS": "20",
    "SUBSCRIPTION_GRACE_SECONDS": "0",
    "HEALTH_UNHEALTHY_AFTER": "2",
    "HEALTH_PROBE_TIMEOUT_SECONDS": "2",
    "DAEMON_MAX_RESTARTS": "2",
    "DAEMON_RESTART_BACKOFF_SECONDS": "1",
    "CLOUD_SWEEP_INTERVAL_SECONDS": "2",
    "CLOUD_POLL_SECONDS": "0.5",
}


@pytest.fixture(scope="session")
def worker_env(happy_double: Any, payment_doubles: Any) -> dict[str, str]:
    env = {**WORKER_TEST_ENV, **payment_doubles.env, "HAPPY_SERVER_URL": happy_double.url}
    os.environ.update(env)  # the API in this process must agree with the worker
    return env


@pytest.fixture(scope="session")
def celery_worker(  # type: ignore[no-untyped-def]
    migrated_engine: Engine,
    redis_client: Any,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
):
    """A real `celery worker` process on this test process's database, Redis and Happy."""
    from tests.support.worker import CeleryWorkerProcess

    # The shipped provisioning pool (Procfile: threads); here it also serves maintenance.
    worker = CeleryWorkerProcess(
        tmp_path_factory.mktemp("celery"), concurrency=6, extra_env=worker_env, pool="threads"
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def celery_beat(celery_worker: Any, worker_env: dict[str, str], tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real `celery beat` driving the reconciler every RECONCILE_INTERVAL_SECONDS."""
    from tests.support.worker import CeleryBeatProcess

    beat = CeleryBeatProcess(tmp_path_factory.mktemp("beat"), extra_env=worker_env)
    beat.start()
    yield beat
    beat.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A RabbitMQ node of this test process's own (Debian's rabbitmq-server on free ports,
    its data under a temp dir), never the machine's; stopped by PID at the end."""
    from tests.support.rabbitmq import RabbitMQServer

    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server
