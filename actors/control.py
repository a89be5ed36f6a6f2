"""Operator controls that touch both the database and the broker: pause, resume, cancel,
schedule. Each is also a plain function for the Python shell."""

from __future__ import annotations

import datetime as dt

import dramatiq

import campaigns
from ratelimit import RateLimit


def _rate_limit() -> RateLimit | None:
    return next((m for m in dramatiq.get_broker().middleware if isinstance(m, RateLimit)), None)


def stop_group(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def stop_campaign(campaign_id: int | None, stopped: bool = True) -> None:
    """Refuse rate-limit slots to the campaign's messages (or allow them again)."""
    limiter = _rate_limit()
    if campaign_id is not None and limiter is not None:
        limiter.stop(stop_group(campaign_id), stopped)


def pause(campaign_id: int, reason: str = "paused by an operator") -> bool:
    """Stop new sends at once; pending customers stay pending and no thread is held."""
    paused = campaigns.pause_campaign(campaign_id, reason)
    if paused:
        stop_campaign(campaign_id)
    return paused


def resume(campaign_id: int) -> bool:
    """Resume a paused campaign exactly where it stopped."""
    from actors.campaigns import dispatch_campaign

    token = campaigns.resume_campaign(campaign_id)
    if token is None:
        return False
    stop_campaign(campaign_id, stopped=False)
    dispatch_campaign.send(campaign_id, token)
    return True


def cancel(campaign_id: int, reason: str = "cancelled by an operator") -> int | None:
    """Cancel: every customer not yet sent is recorded as cancelled."""
    stop_campaign(campaign_id)
    cancelled = campaigns.cancel_campaign(campaign_id, reason)
    from actors.campaigns import request_metrics_update

    request_metrics_update(campaign_id)
    return cancelled


def start(campaign_id: int, at_utc: dt.datetime | None = None) -> None:
    """Start the campaign now, or schedule it for ``at_utc`` (naive UTC): the sweeper
    starts it when due, so a schedule survives the broker losing its messages."""
    from actors.campaigns import send_campaign

    if at_utc is None:
        send_campaign.send(campaign_id)
        return
    if not campaigns.schedule_campaign(campaign_id, at_utc):
        raise ValueError(f"campaign {campaign_id} cannot be scheduled (it is not a draft)")
    delay_ms = int((at_utc - campaigns.utcnow()).total_seconds() * 1000)
    if 0 < delay_ms < 6 * 86_400_000:
        send_campaign.send_with_options(args=(campaign_id,), delay=delay_ms)
