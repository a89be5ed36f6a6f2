"""The per-customer send actor, rate limited globally by ``ratelimit.RateLimit``."""

from __future__ import annotations

import contextlib
import functools
import time

import dramatiq
from dramatiq.middleware import CurrentMessage, SkipMessage

import campaigns
import message_state
import sending
from actors.services import get_services, request_metrics_update
from actors.stops import stop_campaign
from claims import QuietNow
from errors import PermanentError, TransientError
from events import record_event
from limits import parse
import observability
from models import Message, MessageStatus
from observability import count_deferral
from ratelimit import Gate, RateLimit, Stopped, Throttled
from settings import get_settings
from twilio_permits import NoPermit

_settings = get_settings()
#: Dramatiq refuses delays of 7 days or more; quiet hours never need that much.
MAX_DELAY_MS = 6 * 86_400_000


@dramatiq.actor(
    queue_name="sms",
    rate_limit="sms",
    max_retries=_settings.sms_max_retries,
    min_backoff=_settings.sms_min_backoff_ms,
    max_backoff=15 * 60_000,
    time_limit=120_000,
    throws=(PermanentError,),
    on_retry_exhausted="send_sms_exhausted",
)
def send_sms(message_id: int) -> None:
    """Send one campaign message (by its row id) exactly once."""
    services = get_services()
    current = CurrentMessage.get_current_message()
    deferrals = current.options.get("deferrals", 0) if current is not None else 0
    gate = RateLimit.current_gate()
    try:
        # The permit comes first: the slot is then taken right before the request, as when
        # no cap is reached; a thread waiting for a permit holds no slot, no claim, no connection.
        with services.permits.permit() if services.permits is not None else contextlib.nullcontext():
            outcome = sending.send_message(
                message_id, backend=services.backend, short_url_base=services.short_url_base,
                deferrals=deferrals, acquire_slot=SlotTaker(gate, services.debouncer) if gate is not None else None,
                reconcile_after_s=services.reconcile_after_s, quiet=services.quiet,
                record_sent=services.sent_records.put, max_attempts=_settings.sms_max_retries,
                default_sender=services.default_sender, signals=services.signals,
            )
    except NoPermit as exc:
        raise dramatiq.Retry(str(exc), delay=1000) from None
    except Throttled as exc:
        count_deferral("rate_limit")
        gate.defer(exc)
    except Stopped:
        # Paused: resume re-dispatches the row. Cancelled: the row is recorded as such.
        # Sending after all (a pause and a resume crossed): the stale stop is lifted.
        campaign_id = campaigns.campaign_of(message_id)
        if message_state.settle_cancelled(message_id):
            request_metrics_update(campaign_id)
        elif campaigns.is_sending(campaign_id):
            stop_campaign(campaign_id, stopped=False)
        return
    except QuietNow as exc:
        count_deferral("quiet_hours")
        defer_until(current, exc.until_utc, services.quiet.clock())
    except TransientError as exc:
        raise dramatiq.Retry(exc.reason, delay=exc.retry_after_ms) from None
    if gate is not None:
        gate.answered()  # Twilio answered (or no request was made): the slot's bound is now
    if services.permits is not None:
        say_if_limit_unreachable(services.permits)
    if observability.enabled():
        reason = outcome_code(message_id) if outcome.status in (MessageStatus.FAILED, MessageStatus.SKIPPED) else None
        observability.count_outcome(outcome.status, campaign_id=outcome.campaign_id, reason=reason)
    if outcome.pause_reason and campaigns.pause_campaign(outcome.campaign_id, outcome.pause_reason):
        stop_campaign(outcome.campaign_id)
    if outcome.pause_reason:
        message_state.settle_cancelled(message_id)  # the campaign was cancelled meanwhile
    if outcome.campaign_id is not None and outcome.status != "pending" and not outcome.written_behind:
        request_metrics_update(outcome.campaign_id)


class SlotTaker:
    """``acquire_slot`` for the send path (``claims.BatchSlots``).

    The slot's round trip also reads the TTL of the campaign's pending metrics update, which
    usually spares the send its own ask. The thread that claims a batch of messages takes
    their slots too, in one round trip (``take_many``), so a send waits on one shared step
    for both, not two.
    """

    def __init__(self, gate: Gate, debouncer) -> None:
        self.gate = gate
        self.debouncer = debouncer

    def group(self, campaign_id: int) -> tuple:
        return (self.gate.group, self.debouncer.key(campaign_id))

    def take_many(self, costs: list[int], campaign_id: int) -> list[tuple | None]:
        seen_at = time.monotonic()
        tries = self.gate.take_many(costs, watch=self.debouncer.key(campaign_id))
        return [None if taken is None else (*taken, seen_at) for taken in tries]

    def __call__(self, cost: int, campaign_id: int, first: tuple | None = None) -> None:
        if first is None:
            seen_at = time.monotonic()
            ttl_ms = self.gate.acquire(cost, watch=self.debouncer.key(campaign_id))
        else:
            *taken, seen_at = first  # the gate's (wait_ms, watched PTTL, token), then when
            ttl_ms = self.gate.acquire(cost, watch=self.debouncer.key(campaign_id), first=tuple(taken))
        self.debouncer.saw_ttl(campaign_id, ttl_ms, seen_at=seen_at)


def say_if_limit_unreachable(permits) -> None:
    """Once per process, when ``SMS_RATE_LIMIT`` cannot be reached under
    ``TWILIO_MAX_CONCURRENT`` at the hold times measured: a warning and an event."""
    limit = _sms_limit()
    sentence = permits.unreachable(limit.amount / limit.get_expiry())
    if sentence is not None:
        record_event(None, "twilio_concurrency_ceiling", sentence, level="warning")


@functools.lru_cache(maxsize=1)
def _sms_limit():
    return parse(_settings.sms_rate_limit)


def defer_until(message, until_utc, now_utc) -> None:
    """Put the message back until ``until_utc``: a deferral, not a retry (no budget spent)."""
    delay_ms = max(1, min(int((until_utc - now_utc).total_seconds() * 1000), MAX_DELAY_MS))
    quiet = message.options.get("quiet_deferrals", 0) + 1
    dramatiq.get_broker().enqueue(message.copy(options={"quiet_deferrals": quiet}), delay=delay_ms)
    raise SkipMessage(f"quiet hours; deferred by {delay_ms} ms")


@dramatiq.actor(queue_name="sms", max_retries=20)
def send_sms_exhausted(message_data: dict, retry_info: dict) -> None:
    """Record a message whose transient errors outlasted its retries as failed."""
    message_id = message_data["args"][0]
    campaign_id = sending.give_up(message_id, retries=retry_info.get("retries", 0))
    if observability.enabled() and outcome_code(message_id) == "retries_exhausted":
        observability.count_outcome(MessageStatus.FAILED, campaign_id=campaign_id, reason="retries_exhausted")
    if campaign_id is not None:
        request_metrics_update(campaign_id)


def outcome_code(message_id: int) -> str | None:
    """The code of a message's recorded reason (for the counters, which are on only with
    ``PROMETHEUS=on``: a failed or skipped message's one read)."""
    return Message.select(Message.error_code).where(Message.id == message_id).scalar()
