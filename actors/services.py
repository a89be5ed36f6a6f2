"""The collaborators actors use, built once per process from settings and replaceable
in one call (tests inject a backend pointed at a fake Twilio, for example)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import dramatiq

import sending
from actors.stops import hold, held_ms, stop_campaign
from batching import WriteBehind
from claims import QuietPolicy
from message_types import SentRecord
from metrics import MetricsDebouncer
from quiet import QuietHours
from ratelimit import RateLimit
from models import database
from settings import get_settings
from signal_actions import SignalActions
from smsservice import SmsBackend, make_backend
from twilio_permits import MemoryPermits, PermitPool, RedisPermits


@dataclass(frozen=True)
class Services:
    backend: SmsBackend
    debouncer: MetricsDebouncer
    short_url_base: str
    default_region: str
    default_time_zone: str
    fanout_batch_size: int
    sms_rate_limit: str
    reconcile_after_s: float
    requeue_after_s: float
    sweep_stale_after_s: float
    error_storm: tuple[int, int, float]
    quiet: QuietPolicy | None
    #: The send path's "sent" records, written by a thread of their own (see ``send_sms``).
    sent_records: WriteBehind[SentRecord]
    #: FREQUENCY_CAP_H: numbers texted by another campaign this recently are skipped.
    frequency_cap_h: int = 0
    #: The sender given to a campaign that has none when it starts (``senders.py``).
    default_sender: str | None = None
    #: Acts on Twilio's signals (holds, pauses of a sender's campaigns, slow-downs).
    signals: SignalActions | None = None
    #: FILTERING_STORM_WINDOW, _MIN_OUTCOMES, _RATIO: a spike of 30007 pauses the campaign.
    filtering_storm: tuple[int, int, float] = (50, 20, 0.2)
    #: This process's share of TWILIO_MAX_CONCURRENT (None: no cap, as in-process tests).
    permits: PermitPool | None = None


_services: Services | None = None
_building = threading.Lock()


def get_services() -> Services:
    """This process's services, built once (the first messages of a worker's threads ask
    at the same moment: one builds, the others wait for it)."""
    if _services is None:
        with _building:
            if _services is None:
                _build_services()
    return _services


def _build_services() -> None:
    global _services
    if _services is None:
        settings = get_settings()
        redis_client = getattr(dramatiq.get_broker(), "redis_client", None)
        _services = Services(
            backend=ConnectionFreeWhileWaiting(AnswersTimed(make_backend(settings))),
            permits=PermitPool(
                RedisPermits(redis_client, prefix=f"{settings.dramatiq_namespace}:twilio-permits")
                if redis_client is not None else MemoryPermits(),
                cap=settings.twilio_max_concurrent, max_wait_s=120.0,
            ),
            debouncer=MetricsDebouncer(
                redis=getattr(dramatiq.get_broker(), "redis_client", None),
                delay_ms=settings.metrics_delay_ms,
                prefix=f"{settings.dramatiq_namespace}:metrics-pending",
            ),
            short_url_base=settings.short_url_base,
            default_region=settings.default_region,
            default_time_zone=settings.default_time_zone,
            fanout_batch_size=settings.fanout_batch_size,
            frequency_cap_h=settings.frequency_cap_h,
            default_sender=settings.sender,
            sms_rate_limit=settings.sms_rate_limit,
            reconcile_after_s=settings.reconcile_after_s,
            requeue_after_s=settings.requeue_after_s,
            sweep_stale_after_s=settings.sweep_stale_after_s,
            error_storm=(settings.error_storm_window, settings.error_storm_min_attempts, settings.error_storm_ratio),
            filtering_storm=(settings.filtering_storm_window, settings.filtering_storm_min_outcomes,
                             settings.filtering_storm_ratio),
            signals=SignalActions(
                hold=hold, held_ms=held_ms, stop_campaign=stop_campaign,
                global_rate_limit=settings.sms_rate_limit, retry_after_max_s=settings.twilio_retry_after_max_s,
            ),
            quiet=quiet_policy(settings),
            sent_records=WriteBehind(
                sending.write_sent, on_written=_request_metrics, on_exit=sending.release_connection,
                refused=sending.refused, name="sent-records",
            ),
        )


class ConnectionFreeWhileWaiting:
    """An ``SmsBackend`` whose calling thread gives its database connection back to the
    pool before each request (unless a transaction is open): a thread waiting on Twilio
    holds none, so many requests in flight share a few connections."""

    def __init__(self, backend: SmsBackend) -> None:
        self.backend = backend

    def _let_go(self) -> None:
        if not database.is_closed() and not database.in_transaction():
            database.close()

    def send(self, **kwargs):
        self._let_go()
        return self.backend.send(**kwargs)

    def find_sent(self, **kwargs):
        self._let_go()
        return self.backend.find_sent(**kwargs)


class AnswersTimed:
    """An ``SmsBackend`` that tells the calling thread's rate-limit gate when its request
    left and when Twilio answered it, for the fastest-answer bound (``ratelimit``). A
    request that raised is left to the actor (an error answer is reported at the answer's
    time; one without an answer stays bounded by its slot and the HTTP timeout)."""

    def __init__(self, backend: SmsBackend) -> None:
        self.backend = backend

    def send(self, **kwargs):
        gate = RateLimit.current_gate()
        request_at = time.monotonic()
        result = self.backend.send(**kwargs)
        if gate is not None:
            gate.answered(request_at=request_at)
        return result

    def find_sent(self, **kwargs):
        return self.backend.find_sent(**kwargs)


def _request_metrics(records: list[SentRecord]) -> None:
    """Ask for the metrics update once the sends are committed, so that it counts them."""
    for campaign_id in {record.campaign_id for record in records if record.campaign_id is not None}:
        request_metrics_update(campaign_id)


def request_metrics_update(campaign_id: int) -> None:
    """Ask for an analytics update; asks within one window share one aggregation. The
    ``update_metrics`` actor is found in the broker's registry, so that this module (below
    every actor module) imports none of them."""
    services = get_services()
    if services.debouncer.claim(campaign_id):
        actor = dramatiq.get_broker().get_actor("update_metrics")
        actor.send_with_options(args=(campaign_id,), delay=services.debouncer.delay_ms)


def quiet_policy(settings) -> QuietPolicy | None:
    if not settings.quiet_hours or settings.quiet_hours.lower() == "off":
        return None
    return QuietPolicy(QuietHours.parse(settings.quiet_hours), settings.default_time_zone)


def configure_services(**overrides) -> Services:
    """Replace some collaborators (keyword names of ``Services``) for this process."""
    global _services
    _services = replace(get_services(), **overrides)
    return _services


def close_services(timeout_s: float = 10.0) -> None:
    """Write what the process still holds (at worker shutdown); rows it cannot write stay
    ``sending`` and are looked up at Twilio later."""
    if _services is not None:
        _services.sent_records.close(timeout_s)
        if _services.permits is not None:
            _services.permits.close()


def reset_services() -> None:
    global _services
    close_services()
    _services = None
