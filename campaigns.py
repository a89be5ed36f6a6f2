"""The campaign lifecycle: fail, pause, resume, cancel, schedule, start when due, and the
sweep that restarts a stalled campaign's work; and what an operator may ask of a campaign
in its state (``check_action``, ``check_send_at``), which the CLI says in one line when it
is refused. The fan-out is ``fanout.py``, the paced dispatcher ``dispatch.py``, analytics
``analytics.py``, reports ``reports.py``; every change of a message's state is
``message_state.py``.

Actors call these with IDs; nothing here knows about Dramatiq.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Callable

import campaign_status
import message_state
import senders
from errors import CampaignError
from events import record_event
from peewee import fn

from models import Campaign, CampaignStatus, Message, MessageStatus, utcnow

#: The largest id a campaign can have: ``campaign.id`` is a PostgreSQL ``integer`` (SQLite's
#: would go further, but an id is given the same answer on both).
MAX_ID = 2**31 - 1

#: A start time this far in the past is taken for "now" (the time it took to type it); one
#: further back is refused (``check_send_at``).
NOW_TOLERANCE_S = 60


class Refused(CampaignError, ValueError):
    """An operator's action that the campaign's state does not allow; the reason says what
    is true (``campaign 3 is completed: nothing to send``)."""


def is_campaign_id(value) -> bool:
    """Whether ``value`` can be a campaign's id at all (an int from 1 to ``MAX_ID``)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def describe(campaign: Campaign) -> str:
    """The campaign's state as the rest of a sentence: ``is a draft``, ``has failed (...)``."""
    reason = " ".join((campaign.status_reason or "").split())
    reason = f" ({reason[:200]})" if reason else ""
    if campaign.status == CampaignStatus.DRAFT:
        return "is a draft"
    if campaign.status == CampaignStatus.SCHEDULED:
        return f"is scheduled for {campaign.send_at:%Y-%m-%d %H:%M} UTC" if campaign.send_at else "is scheduled"
    if campaign.status == CampaignStatus.FAILED:
        return "has failed" + reason
    if campaign.status == CampaignStatus.PAUSED:
        return "is paused" + reason
    return f"is {campaign.status}"


#: What each operator action needs (the states it is allowed in) and what it does not do.
_ALLOWED = {
    "send": ((CampaignStatus.DRAFT, CampaignStatus.SCHEDULED), "nothing to send"),
    "pause": ((CampaignStatus.SENDING,), "nothing to pause"),
    "resume": ((CampaignStatus.PAUSED,), "nothing to resume"),
    "cancel": ((CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED),
               "nothing to cancel"),
    "status": (None, ""),  # any state
    "preview": (None, ""),
    "test": (None, ""),
    "export": (None, ""),
    "clone": (None, ""),
    "retry": ((CampaignStatus.SENDING, CampaignStatus.COMPLETED), "nothing to retry"),
    "delete": ((CampaignStatus.DRAFT,), "only a draft can be deleted"),
    "edit": ((CampaignStatus.DRAFT,), "only a draft can be edited (clone it to change a copy)"),
}


def check_action(campaign_id: int, action: str) -> Campaign:
    """The campaign, if the operator's ``action`` (send, pause, resume, cancel, status,
    preview) is allowed in its state; else ``Refused`` saying what is true."""
    allowed, nothing = _ALLOWED[action]
    campaign = Campaign.get_or_none(Campaign.id == campaign_id) if is_campaign_id(campaign_id) else None
    if campaign is None:
        raise Refused(f"campaign {campaign_id} does not exist", code="campaign_not_found")
    if allowed is None or campaign.status in allowed:
        return campaign
    if (action, campaign.status) in (("send", CampaignStatus.SENDING), ("resume", CampaignStatus.SENDING),
                                     ("pause", CampaignStatus.PAUSED)):
        raise Refused(f"campaign {campaign_id} is already {campaign.status}", code="campaign_state")
    if action == "send" and campaign.status == CampaignStatus.PAUSED:
        raise Refused(f"campaign {campaign_id} {describe(campaign)}: resume it to send the rest", code="campaign_state")
    if action == "retry" and campaign.status == CampaignStatus.PAUSED:
        raise Refused(f"campaign {campaign_id} {describe(campaign)}: resume it, then retry", code="campaign_state")
    raise Refused(f"campaign {campaign_id} {describe(campaign)}: {nothing}", code="campaign_state")


def check_send_at(send_at_utc: dt.datetime, now: dt.datetime | None = None) -> dt.datetime | None:
    """``send_at_utc`` (naive UTC) as a start time: None for "now" (up to ``NOW_TOLERANCE_S``
    ago), itself if it is later; ``Refused`` if it is further in the past, which is a typo
    (a year, a day), never a wish to send at once: that is asked by giving no time."""
    now = now or utcnow()
    if send_at_utc > now:
        return send_at_utc
    if send_at_utc >= now - dt.timedelta(seconds=NOW_TOLERANCE_S):
        return None
    raise Refused(f"{send_at_utc:%Y-%m-%d %H:%M:%S} UTC is in the past (it is {now:%Y-%m-%d %H:%M:%S} UTC): "
                  "give a later time, or no time to send now", code="send_at_in_past")


def make_due(campaign_id: int) -> bool:
    """A scheduled campaign's time becomes now (sent at once, as asked): the next fan-out
    starts it, like the sweeper does a due one."""
    return bool(
        Campaign.update(send_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SCHEDULED)
        .execute()
    )


def fail_campaign(campaign_id: int, reason: str) -> None:
    (
        Campaign.update(status=CampaignStatus.FAILED, status_reason=reason, completed_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status.not_in(CampaignStatus.FINISHED))
        .execute()
    )
    record_event(campaign_id, "campaign_failed", reason)


def pause_campaign(campaign_id: int, reason: str) -> bool:
    changed = (
        Campaign.update(status=CampaignStatus.PAUSED, status_reason=reason)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING)
        .execute()
    )
    if changed:
        record_event(campaign_id, "campaign_paused", reason, level="warning")
    return bool(changed)


def pause_sender_campaigns(sender: str | None, reason: str, *, campaign_id: int | None = None) -> list[int]:
    """Pause every sending campaign of ``sender`` (a number or a messaging service) with the
    reason, each with its event; ``campaign_id`` too, whatever its sender (one whose sender is
    not fixed yet). Returns the campaigns paused now."""
    of_sender = Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.SENDING)
    if sender is None:
        ids = [campaign_id] if campaign_id is not None else []
    else:
        column = Campaign.messaging_service_sid if senders.is_service(sender) else Campaign.from_number
        ids = [row.id for row in of_sender.where(column == sender)]
        if campaign_id is not None and campaign_id not in ids:
            ids.append(campaign_id)
    return [cid for cid in ids if pause_campaign(cid, reason)]


def slow_down(campaign_id: int, *, rate_limit: str, previous: str | None, cooldown_s: float,
              now: dt.datetime | None = None) -> bool:
    """Give the campaign the slower ``rate_limit``, if it still has ``previous`` and was not
    slowed in the last ``cooldown_s`` (one conditional UPDATE: concurrent reports of one burst
    slow it once)."""
    now = now or utcnow()
    same = Campaign.rate_limit.is_null() if previous is None else (Campaign.rate_limit == previous)
    cooled = Campaign.slowed_at.is_null() | (Campaign.slowed_at < now - dt.timedelta(seconds=cooldown_s))
    return bool(Campaign.update(rate_limit=rate_limit, slowed_at=now).where(
        Campaign.id == campaign_id, same, cooled, Campaign.status.not_in(CampaignStatus.FINISHED)).execute())


def resume_campaign(campaign_id: int) -> str | None:
    """Resume a paused campaign where it stopped; returns the new dispatcher token."""
    token = uuid.uuid4().hex
    changed = (
        Campaign.update(status=CampaignStatus.SENDING, status_reason=None, dispatch_token=token, heartbeat_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.PAUSED)
        .execute()
    )
    if not changed:
        return None
    message_state.unqueue_pending(campaign_id)
    record_event(campaign_id, "campaign_resumed", "resumed by an operator", level="info")
    return token


def reopen_for_retry(campaign_id: int) -> str | None:
    """A completed (or still sending) campaign sends again, for the rows an operator's retry
    put back: it becomes ``sending`` with a new dispatcher token (an older chain stops at its
    next run); its fan-out is done and is not run again. Returns the token, None if the
    campaign is in no state to retry (``check_action(..., "retry")`` says which)."""
    token = uuid.uuid4().hex
    changed = (
        Campaign.update(status=CampaignStatus.SENDING, status_reason=None, completed_at=None, dispatch_token=token,
                        heartbeat_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.SENDING, CampaignStatus.COMPLETED]))
        .execute()
    )
    return token if changed else None


def cancel_campaign(campaign_id: int, reason: str = "cancelled by an operator") -> int | None:
    """Cancel a campaign: every customer not yet sent is recorded as cancelled. Returns the
    number of rows cancelled, None if the campaign was already finished."""
    changed = (
        Campaign.update(status=CampaignStatus.CANCELLED, status_reason=reason, completed_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status.not_in(CampaignStatus.FINISHED))
        .execute()
    )
    if not changed:
        return None
    rows = message_state.cancel_pending(campaign_id, reason)
    record_event(campaign_id, "campaign_cancelled", f"{reason}; {rows} unsent customers cancelled", level="warning")
    return rows


def schedule_campaign(campaign_id: int, send_at_utc: dt.datetime) -> bool:
    """Mark a draft campaign to start at ``send_at_utc`` (naive UTC); the sweeper starts it."""
    return bool(
        Campaign.update(status=CampaignStatus.SCHEDULED, send_at=send_at_utc)
        .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SCHEDULED]))
        .execute()
    )


def start_due_campaigns(now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """Move due scheduled campaigns to ``sending`` (each once, whatever the number of
    sweepers) and return them with their dispatch token; the caller enqueues their fan-out
    with that token, the only one that fans the campaign out (the delayed message of the
    schedule itself finds it started). If that message is lost, the campaign's heartbeat
    goes stale and a later sweep restarts the fan-out."""
    now = now or utcnow()
    started = []
    for campaign in Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at <= now):
        token = uuid.uuid4().hex
        # The heartbeat says the fan-out was just asked for: the sweep that started it must
        # not take it for a stalled campaign and start a second one.
        if Campaign.update(status=CampaignStatus.SENDING, heartbeat_at=now, fanout_beat_at=now, dispatch_token=token,
                           started_at=fn.COALESCE(Campaign.started_at, now)).where(
            Campaign.id == campaign.id, Campaign.status == CampaignStatus.SCHEDULED
        ).execute():
            started.append((campaign.id, token))
    return started


@dataclass
class SweepResult:
    checked: int = 0
    restarted: list[int] = field(default_factory=list)
    #: Rows left ``sending`` under a paused or cancelled campaign, sent to be reconciled.
    reconciling: list[int] = field(default_factory=list)


def sweep(
    *,
    stale_after_s: Callable[[Campaign], float],
    restart_fan_out: Callable[[int, str], None],
    restart_dispatch: Callable[[int, str], None],
    request_metrics: Callable[[int], None],
    reconcile: Callable[[Campaign, list[int]], None] = lambda campaign, message_ids: None,
    stuck_after_s: float = 1200.0,
) -> SweepResult:
    """Restart the work of every sending campaign whose fan-out or dispatcher has gone
    quiet, as happens when Redis loses its keys or a worker dies mid-chain.

    Rows left ``sending`` for ``stuck_after_s`` under a campaign no dispatcher runs for (paused
    or cancelled: a worker died before their outcome was written) go to ``reconcile``, once
    per ``stuck_after_s``: found at Twilio they are recorded sent, otherwise they go back to
    pending or are cancelled.

    Only the database is consulted, so this works whatever the broker has forgotten; the
    takeover is a conditional UPDATE, so concurrent sweepers restart a campaign once.
    """
    result = SweepResult()
    now = utcnow()
    message_state.cancel_pending_of_cancelled_campaigns()
    stopped = Campaign.select(Campaign.id).where(Campaign.status.in_([CampaignStatus.PAUSED, CampaignStatus.CANCELLED]))
    stuck_before = now - dt.timedelta(seconds=stuck_after_s)
    stuck_now = (
        (Message.status == MessageStatus.SENDING) & (Message.sending_at < stuck_before)
        & (Message.queued_at.is_null() | (Message.queued_at < stuck_before))
    )
    stuck = Message.select(Message.id, Message.campaign).where(Message.campaign.in_(stopped), stuck_now).limit(1000)
    by_campaign: dict[int, list[int]] = {}
    for row in stuck:
        by_campaign.setdefault(row.campaign_id, []).append(row.id)
    for campaign in Campaign.select().where(Campaign.id.in_(list(by_campaign))) if by_campaign else ():
        ids = message_state.mark_queued(by_campaign[campaign.id], stuck_now)  # not again before stuck_after_s
        if ids:
            reconcile(campaign, ids)
            result.reconciling += ids
    for campaign in Campaign.select().where(Campaign.status == CampaignStatus.SENDING):
        result.checked += 1
        request_metrics(campaign.id)
        cutoff = now - dt.timedelta(seconds=stale_after_s(campaign))
        fan_out_silent = campaign.fanout_done_at is None and (campaign.fanout_beat_at is None or campaign.fanout_beat_at < cutoff)
        if not fan_out_silent and campaign.heartbeat_at is not None and campaign.heartbeat_at >= cutoff:
            continue
        # The takeover is conditional on the sign of life it found stale, and gives the
        # campaign a new token: the old chain stops at its next run.
        field, seen = (Campaign.fanout_beat_at, campaign.fanout_beat_at) if fan_out_silent else (Campaign.heartbeat_at, campaign.heartbeat_at)
        token = uuid.uuid4().hex
        changes = {"dispatch_token": token, "heartbeat_at": now}
        # A fan-out not done is restarted with the dispatcher (the new token stops the old
        # one at its next batch, and its restart starts the dispatcher), never left behind.
        restart_fan = fan_out_silent or campaign.fanout_done_at is None
        if restart_fan:
            changes["fanout_beat_at"] = now
        taken = (
            Campaign.update(**changes)
            .where(Campaign.id == campaign.id, Campaign.status == CampaignStatus.SENDING,
                   field.is_null() if seen is None else field == seen)
            .execute()
        )
        if not taken:
            continue
        silent = "the fan-out" if fan_out_silent else "the dispatcher"
        record_event(campaign.id, "campaign_restarted", f"no progress from {silent}; restarted", level="warning")
        result.restarted.append(campaign.id)
        if restart_fan:
            restart_fan_out(campaign.id, token)
        else:
            restart_dispatch(campaign.id, token)
    return result


def campaign_of(message_id: int) -> int | None:
    return Message.select(Message.campaign).where(Message.id == message_id).scalar()


def is_sending(campaign_id: int | None) -> bool:
    return campaign_id is not None and Campaign.select().where(
        Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING
    ).exists()


def status_report(campaign_id: int, **options) -> dict:
    """The campaign's live status as plain data: counts, rate, ETA, quiet-hours holds, start
    time, delivery and clicks (``campaign_status.status_report``, which takes ``now``,
    ``settings`` and ``rate_window_s``)."""
    return campaign_status.status_report(campaign_id, **options)
