"""The paced dispatcher: keeps about three rate-limit windows of a campaign's sends in the
broker, enqueues again what the broker lost, and holds back rows inside quiet hours."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

import message_state
from models import Campaign, CampaignStatus, Message, MessageStatus, utcnow
from quiet import QuietHours, zone

@dataclass
class DispatchResult:
    enqueued: int = 0
    inflight: int = 0
    again: bool = False
    #: Rows were held back because their zone is inside quiet hours until this time (naive
    #: UTC, the earliest such end); None if none was.
    quiet_until: dt.datetime | None = None


def dispatch(
    campaign_id: int,
    token: str,
    *,
    enqueue: Callable[[Campaign, list[int]], None],
    max_inflight: int,
    requeue_after_s: float,
    quiet_hours: QuietHours | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    held_ms: int = 0,
) -> DispatchResult:
    """Enqueue sends so that at most ``max_inflight`` of the campaign are in the broker.

    Keeping only about a rate-limit window's worth ahead bounds the queues, the delayed
    messages and the workers' memory whatever the campaign's size, and lets a pause take
    effect within that window. A row enqueued longer than ``requeue_after_s`` ago and still
    pending, or left ``sending`` that long, is assumed lost by the broker (a Redis restart,
    a killed worker) and enqueued again: the claim makes a duplicate harmless, and a
    ``sending`` row is looked up at Twilio before any resend. Only the chain holding the
    campaign's current ``token`` runs.

    A row whose recipient's zone is inside ``quiet_hours`` (at ``clock()``) is not enqueued:
    it stays pending, untouched, until its window ends, and is then enqueued at the
    campaign's pace like any other. The chain goes on while any row is open, so a campaign
    waiting for a window is not taken for a stalled one.

    While the campaign's sends are held (``held_ms`` > 0: one of Twilio's signals,
    ``signal_actions``), nothing is enqueued: the chain only keeps its sign of life, and says
    when the hold ends (as ``quiet_until``).
    """
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None or campaign.dispatch_token != token or campaign.status != CampaignStatus.SENDING:
        return DispatchResult()
    Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    if held_ms > 0:
        return DispatchResult(again=True, quiet_until=utcnow() + dt.timedelta(milliseconds=held_ms))
    stale_before = utcnow() - dt.timedelta(seconds=requeue_after_s)
    queued = Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null(False)
    )
    stuck_now = (
        (Message.status == MessageStatus.SENDING) & (Message.sending_at < stale_before)
        & (Message.queued_at.is_null() | (Message.queued_at < stale_before))
    )
    stuck = Message.select(Message.id).where(Message.campaign == campaign_id, stuck_now)
    stale_pending = [row.id for row in queued.where(Message.queued_at < stale_before).limit(max_inflight)]
    stale_sending = [row.id for row in stuck.limit(max_inflight)]
    inflight = queued.where(Message.queued_at <= utcnow()).count() - len(stale_pending)
    room = max(0, max_inflight - inflight)
    requeue = stale_pending[:room]
    zones = campaign.recipient_zones()
    fresh, quiet_until = _fresh_rows(campaign_id, room - len(requeue), zones, quiet_hours, clock)
    if quiet_hours is not None and fresh:
        # Rows the fan-out committed after the campaign was read carry zones it had not
        # seen; their zones were committed with them, so they are seen now.
        latest = Campaign.get_by_id(campaign_id).recipient_zones()
        if set(latest) - set(zones):
            fresh, quiet_until = _fresh_rows(campaign_id, room - len(requeue), latest, quiet_hours, clock)
    # Each group is marked only if its rows are still as they were read, so two dispatchers
    # (a restarted chain beside a late one) never enqueue one row twice.
    ids = message_state.mark_queued(stale_sending, stuck_now)
    ids += message_state.mark_queued(requeue, (Message.status == MessageStatus.PENDING) & (Message.queued_at < stale_before))
    ids += message_state.mark_queued(fresh, (Message.status == MessageStatus.PENDING) & Message.queued_at.is_null())
    if ids:
        began = time.monotonic()
        enqueue(campaign, ids)
        if time.monotonic() - began > 1.0:
            # A long enqueue (thousands of sends on a busy machine) is progress too.
            Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    inflight += len(ids)
    open_rows = inflight > 0 or Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status.in_(MessageStatus.OPEN)).exists()
    return DispatchResult(enqueued=len(ids), inflight=inflight, again=campaign.fanout_done_at is None or open_rows,
                          quiet_until=quiet_until)


def _fresh_rows(campaign_id: int, limit: int, zones: list[str], hours: QuietHours | None,
                clock: Callable[[], dt.datetime]) -> tuple[list[int], dt.datetime | None]:
    """Up to ``limit`` never-enqueued rows whose zone is not inside quiet hours now, and the
    earliest end of the quiet hours that hold the others back (None if none do)."""
    quiet: dict[str, dt.datetime] = {}
    if hours is not None:
        now = clock()
        ends = {name: hours.next_allowed_utc(now, zone(name) or zone("UTC")) for name in zones}
        quiet = {name: end for name, end in ends.items() if end is not None}
    if limit <= 0:
        return [], min(quiet.values(), default=None)
    due = (Message.time_zone.is_null() | Message.time_zone.not_in(sorted(quiet))) if quiet else True
    rows = [
        row.id
        for row in Message.select(Message.id)
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null(), due)
        .order_by(Message.id)
        .limit(limit)
    ]
    return rows, min(quiet.values(), default=None)
