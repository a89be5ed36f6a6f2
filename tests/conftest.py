"""Fixtures for databases, brokers, workers and the fake Twilio API, in the manner of
dramatiq's own ``tests/conftest.py``.

The in-process tests run on a StubBroker; the environment below is set before ``actors``
is first imported, because the broker is built at that import.
"""

from __future__ import annotations

import os
import queue
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.endpoints import POSTGRES_URL, REDIS_URL  # noqa: E402
FROM_NUMBER = "+12125550100"

os.environ.update(
    BROKER="stub",
    SMS_BACKEND="console",
    DATABASE_URL="sqlite:///" + os.path.join(ROOT, ".pytest-default.db"),
    SMS_RATE_LIMIT="1000/second",
    METRICS_DELAY_MS="50",
    RECONCILE_AFTER_S="1",
    QUIET_HOURS="off",
    TWILIO_TIMEOUT_S="0.5",
)

import dramatiq  # noqa: E402
from dramatiq import Worker  # noqa: E402

import actors  # noqa: E402
from actors.services import configure_services, get_services, reset_services  # noqa: E402
from models import MODELS, configure_database, database  # noqa: E402
from ratelimit import MemoryWindows, RateLimit  # noqa: E402
from schema import create_schema  # noqa: E402
from settings import Settings  # noqa: E402
from smsservice import make_backend  # noqa: E402
from tests.fake_twilio import FakeTwilio  # noqa: E402


def _use_database(url: str):
    db = configure_database(url)
    if not db.is_closed():
        db.close()
    with database.connection_context():
        database.drop_tables(MODELS, safe=True, cascade=not url.startswith("sqlite"))
    create_schema()
    database.connect()
    return db


@pytest.fixture
def sqlite_db(tmp_path):
    db = _use_database(f"sqlite:///{tmp_path / 'campaigns.db'}")
    yield db
    if not db.is_closed():
        db.close()


@pytest.fixture
def postgres_db():
    db = _use_database(POSTGRES_URL)
    yield db
    if not db.is_closed():
        db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request):
    """Every test that takes ``db`` runs on both SQLite and PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_db")


@pytest.fixture
def stub_broker():
    broker = actors.broker
    assert isinstance(broker, dramatiq.brokers.stub.StubBroker)
    broker.flush_all()
    broker.dead_letters_by_queue.clear()
    for name in list(broker.queues):
        # A message a stopped worker held in memory stays unfinished in the old queue.
        broker.queues[name] = queue.Queue()
    reset_services()
    for middleware in broker.middleware:
        if isinstance(middleware, RateLimit):
            middleware.windows = MemoryWindows()  # campaign ids repeat across test databases
    yield broker
    broker.flush_all()
    reset_services()


@pytest.fixture
def stub_worker(stub_broker):
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def fake_twilio():
    with FakeTwilio() as fake:
        yield fake


def twilio_settings(fake: FakeTwilio, **overrides) -> Settings:
    values = dict(
        sms_backend="twilio",
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        twilio_from_number=FROM_NUMBER,
        twilio_api_base_url=fake.base_url,
        twilio_timeout_s=0.5,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def twilio_backend(fake_twilio, stub_broker):
    """The real twilio client, pointed at the fake, injected into the actors."""
    backend = make_backend(twilio_settings(fake_twilio))
    configure_services(backend=backend)
    return backend


def join_all(broker, timeout_ms: int = 30_000, fail_fast: bool = True) -> None:
    """Wait until every queue, delayed ones included, is drained (twice: a drained queue
    can be refilled by a message from another), and the sends' records written behind."""
    for _ in range(3):
        for name in ("campaigns", "sms", "metrics"):
            if name in broker.queues:
                broker.join(name, timeout=timeout_ms, fail_fast=fail_fast)
        assert get_services().sent_records.flush(timeout_ms / 1000), "sent records not written"


def wait_for(condition, timeout_s: float = 10) -> None:
    """Poll ``condition`` until it holds (for what no queue join can wait on)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def unique_namespace():
    return f"test-{uuid.uuid4().hex[:12]}"
