"""Operator controls that touch both the database and the broker: pause, resume, cancel,
schedule. Each is also a plain function for the Python shell."""

from __future__ import annotations

import datetime as dt

import campaigns
from models import Campaign, CampaignStatus, utcnow
from actors.campaigns import dispatch_campaign, send_campaign
from actors.services import request_metrics_update
from actors.stops import stop_campaign


def pause(campaign_id: int, reason: str = "paused by an operator") -> bool:
    """Stop new sends at once; pending customers stay pending and no thread is held."""
    paused = campaigns.pause_campaign(campaign_id, reason)
    if paused:
        stop_campaign(campaign_id)
    return paused


def resume(campaign_id: int) -> bool:
    """Resume a paused campaign exactly where it stopped."""
    token = campaigns.resume_campaign(campaign_id)
    if token is None:
        return False
    stop_campaign(campaign_id, stopped=False)
    dispatch_campaign.send(campaign_id, token)
    return True


def cancel(campaign_id: int, reason: str = "cancelled by an operator") -> int | None:
    """Cancel: every customer not yet sent is recorded as cancelled. None if there is
    nothing to cancel (no such campaign, or it is finished): then nothing is written, in the
    database or in Redis."""
    campaign = Campaign.get_or_none(Campaign.id == campaign_id) if campaigns.is_campaign_id(campaign_id) else None
    if campaign is None or campaign.status in CampaignStatus.FINISHED:
        return None
    # The stop first: a message in flight gets no slot from here on, whatever the update finds.
    stop_campaign(campaign_id)
    cancelled = campaigns.cancel_campaign(campaign_id, reason)
    request_metrics_update(campaign_id)
    return cancelled


def start(campaign_id: int, at_utc: dt.datetime | None = None) -> dt.datetime | None:
    """Start the campaign now, or schedule it for ``at_utc`` (naive UTC): the sweeper
    starts it when due, so a schedule survives the broker losing its messages. Returns the
    time it is scheduled for, None if it starts now (``at_utc`` within
    ``campaigns.NOW_TOLERANCE_S`` of now counts as now). Raises ``campaigns.Refused`` (a
    ValueError) if the campaign cannot be sent or ``at_utc`` is in the past."""
    campaigns.check_action(campaign_id, "send")
    when = None if at_utc is None else campaigns.check_send_at(at_utc)
    if when is None:
        campaigns.make_due(campaign_id)  # a scheduled one: now is its time
        send_campaign.send(campaign_id)
        return None
    if not campaigns.schedule_campaign(campaign_id, when):
        campaigns.check_action(campaign_id, "send")  # says what it became meanwhile
        raise campaigns.Refused(f"campaign {campaign_id} cannot be scheduled (it is not a draft)")
    delay_ms = int((when - utcnow()).total_seconds() * 1000)
    if 0 < delay_ms < 6 * 86_400_000:
        send_campaign.send_with_options(args=(campaign_id,), delay=delay_ms)
    return when
