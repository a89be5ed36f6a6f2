"""Builds the broker and its middleware, then imports the actor modules.

``dramatiq actors`` (the worker dynos) and ``from actors import send_campaign`` (a shell,
the CLI, the demo) both come through here, so they always share one setup. Building the
broker does no I/O: Redis is first contacted when a message is sent or consumed.
"""

from __future__ import annotations

import atexit

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries

import logsafety
from middleware import DatabaseConnection, Drain, Sweeper
from observability import ProjectMetrics
from models import configure_database
from ratelimit import MemoryWindows, RateLimit, RedisWindows
from settings import Settings, get_settings


def redis_pool(url: str) -> redis.ConnectionPool:
    """A pool for ``url``; Heroku's ``rediss://`` uses a self-signed certificate."""
    options = {"socket_connect_timeout": 5, "socket_timeout": 30, "health_check_interval": 30, "retry_on_timeout": True}
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = None
    return redis.ConnectionPool.from_url(url, **options)


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker == "stub":
        broker = StubBroker()
        broker.redis_client = None
        windows = MemoryWindows()
    else:
        pool = redis_pool(settings.redis_url)
        client = redis.Redis(connection_pool=pool)
        broker = RedisBroker(
            client=client, namespace=settings.dramatiq_namespace,
            heartbeat_timeout=settings.dramatiq_heartbeat_timeout_ms,
            maintenance_chance=settings.dramatiq_maintenance_chance,
        )
        broker.redis_client = client
        windows = RedisWindows(client, prefix=f"{settings.dramatiq_namespace}:ratelimit")
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.max_retries = settings.worker_max_retries
    broker.add_middleware(
        RateLimit(
            limits=settings.rate_limits, windows=windows,
            margin_ms=settings.rate_limit_margin_ms, hold_ms=settings.rate_limit_hold_ms,
            lead_ms=settings.rate_limit_lead_ms,
        )
    )
    broker.add_middleware(DatabaseConnection())
    broker.add_middleware(CurrentMessage())
    if settings.prometheus == "on":
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
        broker.add_middleware(ProjectMetrics())
    return broker


logsafety.install()
settings = get_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
configure_database(settings.database_url)

from actors.services import close_services  # noqa: E402
from actors.sms import send_sms, send_sms_exhausted  # noqa: E402
from actors.campaigns import dispatch_campaign, send_campaign, sweep, update_metrics  # noqa: E402
from actors.control import cancel, pause, resume, start  # noqa: E402

broker.add_middleware(Sweeper(interval_s=settings.sweep_interval_s, sweep=sweep))
broker.add_middleware(Drain(drain=close_services))
# A second SIGTERM (Heroku signals every process of the dyno, and the dramatiq parent passes
# its own on) exits a worker process without the orderly shutdown that runs ``Drain``.
atexit.register(close_services)

__all__ = ["broker", "build_broker", "cancel", "dispatch_campaign", "pause", "resume", "send_campaign", "start", "sweep", "send_sms", "send_sms_exhausted", "update_metrics"]
