"""The per-customer send actor, rate limited globally by ``ratelimit.RateLimit``."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

import campaigns
from actors.campaigns import request_metrics_update
from actors.services import get_services
from errors import PermanentError, TransientError
from ratelimit import RateLimit, Throttled
from settings import get_settings


_settings = get_settings()


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
        outcome = campaigns.send_message(
            message_id, backend=services.backend, short_url_base=services.short_url_base,
            deferrals=deferrals, acquire_slot=gate.acquire if gate is not None else None,
            reconcile_after_s=services.reconcile_after_s,
        )
    except Throttled as exc:
        gate.defer(exc)
    except TransientError as exc:
        raise dramatiq.Retry(exc.reason, delay=exc.retry_after_ms) from None
    if outcome.campaign_id is not None and outcome.status != "pending":
        request_metrics_update(outcome.campaign_id)


@dramatiq.actor(queue_name="sms", max_retries=20)
def send_sms_exhausted(message_data: dict, retry_info: dict) -> None:
    """Record a message whose transient errors outlasted its retries as failed."""
    message_id = message_data["args"][0]
    campaign_id = campaigns.give_up(message_id, retries=retry_info.get("retries", 0))
    if campaign_id is not None:
        request_metrics_update(campaign_id)
