"""Builds the broker and its middleware, then imports the actor modules.

``dramatiq actors`` (the worker dynos) and ``from actors import send_campaign`` (a shell,
the CLI, the demo) both come through here, so they always share one setup. Building the
broker does no I/O: Redis is first contacted when a message is sent or consumed, and, in a
``dramatiq`` worker process only, by the start-up check (``middleware.StartupCheck``).

A bad setting raises ``ConfigurationError`` at import, which the CLI and the demo print in
one line; imported by a ``dramatiq`` worker process, the same line goes to stderr and the
process exits with code 2 (dramatiq's own code for a failed import), not a traceback.
"""

from __future__ import annotations

import atexit
import sys

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries

import logsafety
from errors import ConfigurationError
from middleware import DatabaseConnection, Drain, Probe, StartupCheck, Sweeper, ping_database
from observability import ProjectMetrics
from models import configure_database
from ratelimit import FASTEST_AFTER_ANSWERS, MemoryWindows, RateLimit, RedisWindows
from settings import Settings, get_settings

#: dramatiq.cli.RET_IMPORT, "Module import(s) failed": a worker process with a bad setting.
CONFIGURATION_EXIT_CODE = 2


def redis_pool(url: str, *, verify: bool = True) -> redis.ConnectionPool:
    """A pool for ``url``. A ``rediss://`` server's certificate and host name are checked
    unless ``verify`` is false (``REDIS_TLS_VERIFY=off``: Heroku's Redis presents a
    self-signed certificate)."""
    options = {"socket_connect_timeout": 5, "socket_timeout": 30, "health_check_interval": 30, "retry_on_timeout": True}
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required" if verify else "none"
    return redis.ConnectionPool.from_url(url, **options)


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker == "stub":
        broker = StubBroker()
        broker.redis_client = None
        windows = MemoryWindows()
    else:
        pool = redis_pool(settings.redis_url, verify=settings.redis_tls_verify == "on")
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
            in_flight_ms=int(settings.twilio_timeout_s * 1000) if settings.rate_limit_bound != "slot" else None,
            fastest_after=FASTEST_AFTER_ANSWERS if settings.rate_limit_bound == "fastest" else None,
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


def startup_probes(settings: Settings, broker: dramatiq.Broker) -> list[Probe]:
    """What a worker process checks before it consumes: the database, and Redis if the
    broker uses it."""
    probes = [Probe("DATABASE_URL", settings.database_url, ping_database)]
    client = getattr(broker, "redis_client", None)
    if client is not None:
        probes.append(Probe("REDIS_URL", settings.redis_url, client.ping))
    return probes


def dramatiq_worker_id() -> int | None:
    """The id of the ``dramatiq`` CLI's worker process this import runs in, else None (a
    shell, the CLI, the web app, the demo, the tests): found by the CLI's ``worker_process``
    function on the call stack, which imports the broker's module."""
    cli = sys.modules.get("dramatiq.cli")
    code = getattr(getattr(cli, "worker_process", None), "__code__", None)
    frame = sys._getframe(1) if code is not None else None
    while frame is not None:
        if frame.f_code is code:
            worker_id = frame.f_locals.get("worker_id")
            return worker_id if isinstance(worker_id, int) else 0
        frame = frame.f_back
    return None


def exit_if_worker_process(exc: ConfigurationError) -> None:
    """In a ``dramatiq`` worker process: the error in one line on stderr, and exit code 2.
    Every process meets the same settings, so only the first says it."""
    worker_id = dramatiq_worker_id()
    if worker_id is None:
        return
    if worker_id == 0:
        print(f"configuration error: {exc.reason}", file=sys.stderr, flush=True)
    raise SystemExit(CONFIGURATION_EXIT_CODE)


logsafety.install()
try:
    settings = get_settings()
    broker = build_broker(settings)
except ConfigurationError as exc:
    exit_if_worker_process(exc)
    raise
dramatiq.set_broker(broker)
configure_database(settings.database_url, max_connections=settings.database_max_connections)

from actors.services import close_services  # noqa: E402
from actors.sms import send_sms, send_sms_exhausted  # noqa: E402
from actors.campaigns import dispatch_campaign, send_campaign, sweep, update_metrics  # noqa: E402
from actors.control import cancel, pause, resume, start  # noqa: E402

broker.add_middleware(Sweeper(interval_s=settings.sweep_interval_s, sweep=sweep))
broker.add_middleware(Drain(drain=close_services))
# Last, so that its after_process_boot runs first (dramatiq runs after_* hooks in reverse).
broker.add_middleware(StartupCheck(probes=lambda: startup_probes(settings, broker)))
# A second SIGTERM (Heroku signals every process of the dyno, and the dramatiq parent passes
# its own on) exits a worker process without the orderly shutdown that runs ``Drain``.
atexit.register(close_services)

__all__ = ["broker", "build_broker", "cancel", "dispatch_campaign", "pause", "resume", "send_campaign", "start", "sweep", "send_sms", "send_sms_exhausted", "update_metrics"]
